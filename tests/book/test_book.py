"""The book builds without warnings from the smoke runs of every notebook, and renders offline in
headless Chromium: math typeset, images loaded, animation sliders present, no console errors."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from geomlib.book import runner

CHROMIUM = next(
    (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None
)
# Chromium logs every console message at INFO; these are the ones that mean something broke.
CONSOLE_ERROR = re.compile(r"CONSOLE.*(Uncaught|Error|Failed to load|net::ERR_)", re.IGNORECASE)


@pytest.fixture(scope="module")
def html(tmp_path_factory):
    if not Path(sys.executable).with_name("jupyter-book").exists() and not shutil.which("jupyter-book"):
        pytest.skip("jupyter-book is not installed (pip install -e '.[book]')")
    runs = runner.run_all(runner.discover(), "smoke", cell_timeout=600)  # cached after test_notebooks
    assert not [r for r in runs if r.status == "failed"], runner.format_table(runs, "smoke")
    return runner.build_book(runner.BUILD / "executed" / "smoke", output=tmp_path_factory.mktemp("book"))


def test_every_page_is_built(html):
    for page in ["index.html", "book/intro.html", "book/descriptors.html", "book/api.html"]:
        assert (html / page).exists(), page
    for notebook in runner.discover():
        assert (html / "notebooks" / f"{notebook.stem}.html").exists(), notebook.name
    assert "geomlib.jacobian_singular_values" in (html / "book/api.html").read_text()


def test_no_page_loads_anything_from_the_internet(html):
    """Stylesheets, scripts and images all come from the book (the offline reader's view)."""
    remote = re.compile(r'<(?:link|script|img)\b[^>]*\b(?:href|src)="(https?://[^"]+)"')
    for page in sorted(html.rglob("*.html")):
        assert not remote.findall(page.read_text()), (
            f"{page.relative_to(html)} loads {remote.findall(page.read_text())}"
        )
    fonts = html / "_static" / "font-awesome" / "fonts" / "fontawesome-webfont.woff2"
    assert fonts.exists()  # what the sliders' play buttons need


def render(page: Path, screenshot: Path) -> tuple[str, str]:
    """The DOM after scripts ran, and Chromium's log; also saves a screenshot."""
    flags = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-logging=stderr",
        "--v=0",
        f"--user-data-dir={screenshot.parent / 'chromium-profile'}",
        "--virtual-time-budget=10000",
    ]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    subprocess.run(
        [*flags, "--window-size=1280,1600", f"--screenshot={screenshot}", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return dom.stdout, dom.stderr


def test_pages_render_offline_in_chromium(html):
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed: `apt-get install chromium` (make test does this as root)")
    shots = runner.BUILD / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    chapters = [html / "notebooks" / f"{nb.stem}.html" for nb in runner.discover()]
    for page in [html / "book/descriptors.html", *chapters[:1]]:
        dom, log = render(page, shots / f"{page.stem}.png")
        assert "<mjx-container" in dom, f"math did not render on {page.name}"
        errors = [line for line in log.splitlines() if CONSOLE_ERROR.search(line)]
        assert not errors, f"console errors on {page.name}:\n" + "\n".join(errors)
        for source in re.findall(r'<img[^>]+src="([^"]+)"', dom):
            if not source.startswith(("data:", "http")):
                assert (page.parent / source.split("?")[0]).exists(), f"missing image {source} on {page.name}"
        assert (shots / f"{page.stem}.png").stat().st_size > 10_000
        if page in chapters:
            assert 'type="range"' in dom, f"no animation slider on {page.name}"
            assert "<img" in dom, f"no figure on {page.name}"
