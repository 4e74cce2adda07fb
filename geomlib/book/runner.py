"""Execute the book's notebooks with papermill, then build the Jupyter Book from the executed copies.

    python -m geomlib.book.runner                      # profile "book": every notebook, then the HTML
    python -m geomlib.book.runner --profile smoke      # seconds per notebook (what the tests use)
    python -m geomlib.book.runner --only 02 --force    # one notebook, ignoring the cache

Each notebook runs in its own kernel with ``profile`` (and ``device``, ``model`` when given)
injected after its ``parameters`` cell. Executed copies go to ``_build/executed/<profile>/``; a copy
is reused while the notebook, the ``geomlib`` sources, the shipped ``data/`` and the parameters are
unchanged. Every notebook runs even when one fails; the run ends with a table of wall time, peak
memory and status per notebook (also written to ``_build/notebook-runs-<profile>.md`` and
``.json``) and a non-zero exit naming each failing notebook and cell.

The book is built from a staging copy of ``book/`` (with its ``_config.yml`` and ``_toc.yml``, put
at the staging root) in which ``notebooks/`` holds the executed copies, so the sources stay
output-free and Jupyter Book never executes anything itself.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from geomlib.runtime.cache import KEY_LENGTH

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "_build"
#: Sources whose change invalidates every executed notebook.
CACHE_INPUTS = ("geomlib", "data")


@dataclass
class NotebookRun:
    """What happened to one notebook: ``status`` is ``ok``, ``cached`` or ``failed``."""

    name: str
    status: str
    seconds: float
    peak_memory_mb: float
    error: str = ""


def discover(folder: Path = ROOT / "notebooks", only: Iterable[str] = ()) -> list[Path]:
    """The numbered notebooks ``NN_name.ipynb`` of ``folder``, optionally those whose name
    starts with one of ``only`` (e.g. ``["01", "03_latent"]``)."""
    only = tuple(only)
    notebooks = sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))
    return [p for p in notebooks if not only or p.name.startswith(only)]


def _hash_tree(digest: hashlib._Hash, path: Path) -> None:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if "__pycache__" in file.parts or file.suffix == ".pyc":
            continue
        digest.update(str(file.relative_to(path.parent)).encode())
        digest.update(file.read_bytes())


def cache_key(notebook: Path, parameters: dict) -> str:
    """Hash of the notebook, the package sources, the shipped data and the parameters."""
    digest = hashlib.sha256()
    _hash_tree(digest, notebook)
    for name in CACHE_INPUTS:
        if (ROOT / name).exists():
            _hash_tree(digest, ROOT / name)
    digest.update(json.dumps(parameters, sort_keys=True).encode())
    return digest.hexdigest()[:KEY_LENGTH]  # the project's one key policy (geomlib.runtime.cache)


class PeakMemory:
    """Samples the resident memory of this process's children (the kernel) in a thread."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval, self.peak_bytes = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for child in me.children(recursive=True):
                with contextlib.suppress(psutil.Error):  # the child ended between listing and reading
                    total += child.memory_info().rss
            self.peak_bytes = max(self.peak_bytes, total)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def describe_failure(error: Exception) -> str:
    """One line naming the failing cell, from papermill's execution error."""
    cell = getattr(error, "exec_count", None)
    ename, evalue = getattr(error, "ename", type(error).__name__), getattr(error, "evalue", str(error))
    where = f"cell In[{cell}]" if cell is not None else "before any cell ran"
    return f"{where}: {ename}: {str(evalue).strip().splitlines()[-1] if str(evalue).strip() else ''}"


def declared_parameters(notebook: Path) -> set[str]:
    """The names assigned in ``notebook``'s cell tagged ``parameters`` (what papermill may set)."""
    import ast

    cells = json.loads(notebook.read_text())["cells"]
    names: set[str] = set()
    for cell in cells:
        if cell["cell_type"] == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            tree = ast.parse("".join(cell["source"]))
            for node in tree.body:
                targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
                names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def run_notebook(
    notebook: Path, out_dir: Path, parameters: dict, *, cell_timeout: int = 1800, force: bool = False
) -> NotebookRun:
    """Execute ``notebook`` into ``out_dir`` with papermill unless a valid cached copy exists."""
    import papermill

    out_dir.mkdir(parents=True, exist_ok=True)
    executed, key_file = out_dir / notebook.name, out_dir / f"{notebook.stem}.key"
    key = cache_key(notebook, parameters)
    if not force and executed.exists() and key_file.exists() and key_file.read_text() == key:
        return NotebookRun(notebook.stem, "cached", 0.0, 0.0)
    key_file.unlink(missing_ok=True)
    start = time.perf_counter()
    with PeakMemory() as memory:
        try:
            papermill.execute_notebook(
                str(notebook),
                str(executed),
                parameters=parameters,
                kernel_name="python3",
                language="python",
                cwd=str(notebook.parent),
                execution_timeout=cell_timeout,
                progress_bar=True,
            )
            status, error = "ok", ""
        except Exception as exc:  # noqa: BLE001 -- any failure is recorded and reported at the end
            status, error = "failed", describe_failure(exc)
    seconds = time.perf_counter() - start
    if status == "ok":
        key_file.write_text(key)
    return NotebookRun(notebook.stem, status, seconds, memory.peak_bytes / 2**20, error)


def run_all(
    notebooks: list[Path],
    profile: str,
    *,
    device: str | None = None,
    model: str | None = None,
    extra: dict[str, object] | None = None,
    cell_timeout: int = 1800,
    force: bool = False,
) -> list[NotebookRun]:
    """Run every notebook (failures do not stop the others) and write the summary table.

    ``extra`` parameters (e.g. ``{"imagenet_folder": "/data/imagenet"}``) go to the notebooks that
    declare them in their parameters cell; one that no notebook declares is a ``ValueError`` (a
    misspelt name would otherwise be ignored silently).
    """
    parameters: dict[str, object] = {"profile": profile}
    parameters.update({k: v for k, v in {"device": device, "model": model}.items() if v})
    parameters.update(extra or {})
    declared = {notebook: declared_parameters(notebook) for notebook in notebooks}
    unknown = sorted(set(extra or {}) - set().union(*declared.values()))
    if unknown:
        raise ValueError(
            f"no notebook has the parameter(s) {unknown}: check the names in their parameters cells"
        )
    out_dir = BUILD / "executed" / profile
    runs = []
    for notebook in notebooks:
        print(f"== {notebook.name} (profile={profile})", flush=True)
        own = {k: v for k, v in parameters.items() if k in declared[notebook]}
        runs.append(run_notebook(notebook, out_dir, own, cell_timeout=cell_timeout, force=force))
    table = format_table(runs, profile)
    print(table)
    BUILD.mkdir(exist_ok=True)
    (BUILD / f"notebook-runs-{profile}.md").write_text(table + "\n")
    (BUILD / f"notebook-runs-{profile}.json").write_text(json.dumps([asdict(r) for r in runs], indent=2))
    return runs


def format_table(runs: list[NotebookRun], profile: str) -> str:
    """A markdown table of the runs: status, wall time, peak memory and error per notebook."""
    lines = [
        f"Notebook runs, profile {profile}",
        "",
        "| notebook | status | wall time (s) | peak memory (MB) | error |",
        "|---|---|---:|---:|---|",
    ]
    for run in runs:
        lines.append(
            f"| {run.name} | {run.status} | {run.seconds:.1f} | {run.peak_memory_mb:.0f} | {run.error} |"
        )
    return "\n".join(lines)


def stage_book(executed_dir: Path, staging: Path = BUILD / "book-src") -> Path:
    """Copy the book's sources into ``staging`` with the executed notebooks in ``notebooks/``."""
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    for name in ("_config.yml", "_toc.yml"):  # the book's root: paths in them are relative to it
        shutil.copy2(ROOT / "book" / name, staging / name)
    shutil.copytree(ROOT / "book", staging / "book", ignore=shutil.ignore_patterns("_config.yml", "_toc.yml"))
    (staging / "notebooks").mkdir()
    for executed in sorted(executed_dir.glob("*.ipynb")):
        shutil.copy2(executed, staging / "notebooks" / executed.name)
    return staging


def build_book(executed_dir: Path, output: Path = ROOT) -> Path:
    """Build the HTML book from the executed notebooks; warnings are errors. Returns the HTML dir."""
    staging = stage_book(executed_dir)
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    command = [
        str(jupyter_book if jupyter_book.exists() else "jupyter-book"),
        "build",
        str(staging),
        "--path-output",
        str(output),
        "--warningiserror",
        "--keep-going",
    ]
    result = subprocess.run(command, cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if result.returncode != 0:
        raise RuntimeError(f"jupyter-book build failed (exit {result.returncode}); see the log above")
    return output / "_build" / "html"


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status (1 when any notebook failed)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", default="book", choices=["smoke", "book", "paper"])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: CUDA when present)")
    parser.add_argument("--model", default=None, help="pipeline for the latent-diffusion chapters")
    parser.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra notebook parameter, e.g. -p imagenet_folder=/data/imagenet (repeatable)",
    )
    parser.add_argument("--only", nargs="*", default=[], help="notebook name prefixes, e.g. 01 03")
    parser.add_argument("--cell-timeout", type=int, default=1800, help="seconds per cell")
    parser.add_argument("--force", action="store_true", help="re-execute even when cached")
    parser.add_argument("--no-build", action="store_true", help="execute only, do not build HTML")
    args = parser.parse_args(argv)
    malformed = [item for item in args.param if "=" not in item]
    if malformed:
        parser.error(f"--param takes NAME=VALUE, got {malformed}")
    extra: dict[str, object] = dict(item.split("=", 1) for item in args.param)
    notebooks = discover(only=args.only)
    if not notebooks and args.only:
        parser.error(f"no notebook matches {args.only}")
    try:
        runs = run_all(
            notebooks,
            args.profile,
            device=args.device,
            model=args.model,
            extra=extra,
            cell_timeout=args.cell_timeout,
            force=args.force,
        )
    except ValueError as error:
        parser.error(str(error))
    failed = [run for run in runs if run.status == "failed"]
    for run in failed:
        print(f"FAILED {run.name}: {run.error}", file=sys.stderr)
    if failed:
        return 1
    if not args.no_build and not args.only:  # a partial run leaves the book's other chapters stale
        html = build_book(BUILD / "executed" / args.profile)
        print(f"book: {html / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
