"""The book builds without warnings from the smoke runs of every notebook: catches a broken
notebook, toc entry, cross-reference or docstring."""

import shutil
import sys
from pathlib import Path

import pytest

from geomlib import runner


def test_book_builds_without_warnings(tmp_path):
    if not Path(sys.executable).with_name("jupyter-book").exists() and not shutil.which("jupyter-book"):
        pytest.skip("jupyter-book is not installed (pip install -e '.[book]')")
    runs = runner.run_all(runner.discover(), "smoke")  # cached when test_notebooks ran already
    assert not [r for r in runs if r.status == "failed"], runner.format_table(runs, "smoke")
    html = runner.build_book(runner.BUILD / "executed" / "smoke", output=tmp_path)
    for page in ["book/intro.html", "book/descriptors.html", "book/api.html"]:
        assert (html / page).exists(), page
    for notebook in runner.discover():
        assert (html / "notebooks" / f"{notebook.stem}.html").exists(), notebook.name
    assert "geomlib.jacobian_singular_values" in (html / "book/api.html").read_text()
