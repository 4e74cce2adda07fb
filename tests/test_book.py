"""The book builds without warnings: catches a broken toc entry, cross-reference or docstring."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_book_builds_without_warnings(tmp_path):
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    if not jupyter_book.exists():
        jupyter_book = shutil.which("jupyter-book")
    if jupyter_book is None:
        pytest.skip("jupyter-book is not installed (pip install -e '.[book]')")
    result = subprocess.run(
        [str(jupyter_book), "build", str(ROOT), "--path-output", str(tmp_path), "-W", "--keep-going"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    html = tmp_path / "_build" / "html"
    for page in ["book/intro.html", "book/descriptors.html", "book/api.html"]:
        assert (html / page).exists(), page
    api = (html / "book/api.html").read_text()
    assert "geomlib.jacobian_singular_values" in api  # autodoc found the package
