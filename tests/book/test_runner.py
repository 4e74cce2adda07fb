"""The notebook runner: parameters injected, failures located, cache reused and invalidated."""

import nbformat
import pytest

from geomlib.book import runner


def write_notebook(path, body, parameters='profile = "book"'):
    cells = [nbformat.v4.new_code_cell(parameters), nbformat.v4.new_code_cell(body)]
    cells[0].metadata["tags"] = ["parameters"]
    nbformat.write(nbformat.v4.new_notebook(cells=cells), path)


@pytest.fixture
def notebook(tmp_path):
    path = tmp_path / "01_example.ipynb"
    write_notebook(path, "print('profile is', profile)")
    return path


def test_parameters_are_injected_and_cache_is_reused(notebook, tmp_path):
    out = tmp_path / "out"
    first = runner.run_notebook(notebook, out, {"profile": "smoke"})
    assert first.status == "ok" and first.seconds > 0
    executed = nbformat.read(out / notebook.name, as_version=4)
    outputs = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert "profile is smoke" in outputs
    assert runner.run_notebook(notebook, out, {"profile": "smoke"}).status == "cached"
    assert runner.run_notebook(notebook, out, {"profile": "book"}).status == "ok"  # new parameters
    write_notebook(notebook, "print('edited', profile)")
    assert runner.run_notebook(notebook, out, {"profile": "book"}).status == "ok"  # new content


def test_failure_names_the_cell_and_is_not_cached(tmp_path):
    path = tmp_path / "02_broken.ipynb"
    write_notebook(path, "raise ValueError('bad budget')")
    out = tmp_path / "out"
    run = runner.run_notebook(path, out, {"profile": "smoke"})
    assert run.status == "failed"
    assert "ValueError" in run.error and "bad budget" in run.error and "In[" in run.error
    assert runner.run_notebook(path, out, {"profile": "smoke"}).status == "failed"  # retried, not cached


def test_run_all_reports_every_notebook(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "BUILD", tmp_path / "_build")
    good, bad = tmp_path / "01_good.ipynb", tmp_path / "02_bad.ipynb"
    write_notebook(good, "x = 1")
    write_notebook(bad, "1 / 0")
    runs = runner.run_all([bad, good], "smoke")
    assert [r.status for r in runs] == ["failed", "ok"]  # the failure did not stop the next one
    table = (tmp_path / "_build" / "notebook-runs-smoke.md").read_text()
    assert "02_bad | failed" in table and "ZeroDivisionError" in table and "01_good | ok" in table


def test_discover_filters_numbered_notebooks(tmp_path):
    for name in ["01_a.ipynb", "02_b.ipynb", "scratch.ipynb"]:
        (tmp_path / name).write_text("{}")
    assert [p.name for p in runner.discover(tmp_path)] == ["01_a.ipynb", "02_b.ipynb"]
    assert [p.name for p in runner.discover(tmp_path, only=["02"])] == ["02_b.ipynb"]


def test_extra_parameters_reach_the_notebook(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "BUILD", tmp_path / "_build")
    path = tmp_path / "01_param.ipynb"
    write_notebook(
        path, "print('folder is', imagenet_folder)", parameters='profile = "book"\nimagenet_folder = None'
    )
    (run,) = runner.run_all([path], "smoke", extra={"imagenet_folder": "/data/in"})
    assert run.status == "ok"
    executed = nbformat.read(tmp_path / "_build" / "executed" / "smoke" / path.name, as_version=4)
    assert "folder is /data/in" in "".join(
        o.get("text", "") for c in executed.cells for o in c.get("outputs", [])
    )


def test_malformed_param_is_a_usage_error():
    with pytest.raises(SystemExit) as exit_info:
        runner.main(["--param", "no-equals-sign", "--only", "00"])
    assert exit_info.value.code == 2


# ------------------------------------------------------------------------- live controls


def test_parameters_go_only_to_notebooks_that_declare_them_and_a_misspelt_one_is_an_error(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(runner, "BUILD", tmp_path / "_build")
    plain = tmp_path / "01_plain.ipynb"
    write_notebook(plain, "print('ran')")
    (run,) = runner.run_all([plain], "smoke", extra={"profile": "smoke"})
    assert run.status == "ok"
    with pytest.raises(ValueError, match="imagenet_fodler"):
        runner.run_all([plain], "smoke", extra={"imagenet_fodler": "/data"})
