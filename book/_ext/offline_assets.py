"""Serve the stylesheets that notebook outputs link from a CDN from the book itself.

Matplotlib's ``to_jshtml`` (every animation slider of the book) links font-awesome 4.4 from
``maxcdn.bootstrapcdn.com`` for its play buttons; offline that link fails and the buttons lose
their icons. The book vendors the same files (``book/_vendor/font-awesome``, copied to
``_static``) and this rewrites each page's links to them.
"""

from __future__ import annotations

from typing import Any

#: CDN address -> path under ``_static`` of the vendored copy.
VENDORED: dict[str, str] = {
    "https://maxcdn.bootstrapcdn.com/font-awesome/4.4.0/css/font-awesome.min.css": (
        "_static/font-awesome/css/font-awesome.min.css"
    ),
}


def _local_links(app: Any, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    body = context.get("body")
    if not body:
        return
    for remote, local in VENDORED.items():
        if remote in body:
            body = body.replace(remote, context["pathto"](local, 1))
    context["body"] = body


def setup(app: Any) -> dict[str, Any]:
    app.connect("html-page-context", _local_links)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
