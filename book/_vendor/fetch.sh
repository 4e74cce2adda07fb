#!/bin/sh
# Re-fetch the vendored JavaScript from the npm registry (versions pinned; see README.md).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
cd "$tmp"
npm pack --silent mathjax@3.2.2 @jupyter-widgets/html-manager@1.0.15 requirejs@2.3.8 font-awesome@4.4.0 >/dev/null
for f in *.tgz; do mkdir "${f%.tgz}"; tar xzf "$f" -C "${f%.tgz}"; done
mj=mathjax-3.2.2/package/es5
rm -rf "$here/mathjax" "$here/widgets" "$here/font-awesome"
mkdir -p "$here/mathjax/output/chtml/fonts" "$here/mathjax/input/tex" "$here/widgets"
mkdir -p "$here/font-awesome/css" "$here/font-awesome/fonts"
cp "$mj/tex-chtml.js" "$here/mathjax/"
cp -r "$mj/output/chtml/fonts/woff-v2" "$here/mathjax/output/chtml/fonts/"
cp -r "$mj/input/tex/extensions" "$here/mathjax/input/tex/"
cp -r "$mj/ui" "$here/mathjax/"
cp jupyter-widgets-html-manager-1.0.15/package/dist/embed-amd.js "$here/widgets/"
cp requirejs-2.3.8/package/require.js "$here/widgets/"
fa=font-awesome-4.4.0/package
cp "$fa/css/font-awesome.min.css" "$here/font-awesome/css/"
cp "$fa/fonts/fontawesome-webfont.woff2" "$fa/fonts/fontawesome-webfont.woff" "$fa/fonts/fontawesome-webfont.ttf" "$here/font-awesome/fonts/"
rm -rf "$tmp"
