"""Every notebook runs end to end in the smoke profile (one test per notebook)."""

import pytest

from geomlib.book import runner

NOTEBOOKS = runner.discover()
# A smoke cell that runs this long has hung (e.g. nbclient#312 with ipywidgets): fail, don't block CI.
SMOKE_CELL_TIMEOUT = 600


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_smoke_profile(notebook):
    run = runner.run_notebook(
        notebook, runner.BUILD / "executed" / "smoke", {"profile": "smoke"}, cell_timeout=SMOKE_CELL_TIMEOUT
    )
    assert run.status in ("ok", "cached"), f"{notebook.name} failed at {run.error}"
