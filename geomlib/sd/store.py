"""Resumable output of a describe run: parquet part files written atomically, read back as one
table, checked on resume, and merged.

``out`` is a directory of parts ``part-<first index>-rank<r>.parquet``. Each part is written under a
temporary name and renamed (atomic on POSIX), so a killed run loses at most the part in flight and
never leaves a half-written one; every process of a sharded run writes its own parts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from geomlib.sd.images import InputError

Row = dict[str, Any]


def part_files(out: Path) -> list[Path]:
    """The finished part files of ``out`` (temporary files start with a dot and are ignored)."""
    return sorted(out.glob("part-*.parquet")) if out.is_dir() else []


class PartWriter:
    """Writes one rank's batches to ``out/part-<first index>-rank<rank>.parquet``.

    Each part is written to the rank's temporary file ``out/.part-rank<rank>.tmp`` and renamed
    (atomic on POSIX), so a reader, a resumed run or ``merge`` never sees a partial part.
    """

    def __init__(self, out: Path, rank: int, schema: pa.Schema):
        self.out, self.rank, self.schema = out, rank, schema
        self.out.mkdir(parents=True, exist_ok=True)
        self.temporary = out / f".part-rank{rank}.tmp"
        self.rows_written = 0

    def write(self, rows: list[Row], first_index: int) -> Path:
        """Write ``rows`` as one part named after the input index of its first item."""
        table = pa.Table.from_pylist(rows, schema=self.schema)
        final = self.out / f"part-{first_index:08d}-rank{self.rank}.parquet"
        suffix = 1
        while final.exists():  # only after an input list changed between runs; never overwrite
            final = self.out / f"part-{first_index:08d}-rank{self.rank}-{suffix}.parquet"
            suffix += 1
        with open(self.temporary, "wb") as sink:
            pq.write_table(table, sink)
            sink.flush()
            os.fsync(sink.fileno())  # on disk before the rename makes it visible
        os.replace(self.temporary, final)
        self.rows_written += len(rows)
        return final


def read_parts(out: Path, columns: Sequence[str] | None = None) -> pa.Table | None:
    """All finished parts of ``out`` as one table (``None`` when there are none)."""
    tables = []
    for path in part_files(out):
        try:
            tables.append(pq.read_table(path, columns=list(columns) if columns else None))
        except (pa.ArrowException, OSError) as error:
            raise InputError(
                f"part file {path} cannot be read ({error}); it was not written by this "
                "tool's atomic writer: move it away and rerun to recompute its rows"
            ) from error
    if not tables:
        return None
    try:  # "permissive": a part rewritten by pandas has large_string columns, still the same data
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise InputError(f"the parts of {out} have incompatible columns ({error})") from error


def done_ids(out: Path, settings: Mapping[str, Any], schema: pa.Schema, prompts: dict[str, str]) -> set[str]:
    """Ids already in ``out``, after checking that they were computed with the same ``settings``
    and columns (and, for prompts, the same prompt under each id); else :class:`InputError`."""
    files = part_files(out)
    if not files:
        return set()
    try:
        names = set(pq.read_schema(files[0]).names)
    except (pa.ArrowException, OSError) as error:
        raise InputError(
            f"part file {files[0]} cannot be read ({error}); it was not written by this tool's atomic"
            " writer: move it away and rerun to recompute its rows"
        ) from error
    if names != set(schema.names):
        raise InputError(
            f"{out} holds parts with other columns ({sorted(names ^ set(schema.names))} "
            "differ: --singular-values, or --images vs --prompts): use another --out"
        )
    wanted = {name: value for name, value in settings.items() if name in names}
    table = read_parts(out, ["id", *wanted, *(["prompt"] if prompts else [])])
    assert table is not None
    for name, value in wanted.items():
        found = set(table.column(name).unique().to_pylist())
        if found != {value}:
            raise InputError(
                f"{out} was written with {name}={sorted(found, key=str)}, this run has "
                f"{name}={value}: resume with the same options, or use another --out"
            )
    if prompts:
        ids, texts = table.column("id").to_pylist(), table.column("prompt").to_pylist()
        changed = [i for i, p in zip(ids, texts, strict=True) if prompts.get(i, p) != p]
        if changed:
            raise InputError(
                f"the prompt file changed since {out} was written (ids {changed[:5]}): use another --out"
            )
    return set(table.column("id").to_pylist())


def merge_parts(out: Path, into: Path) -> int:
    """Join the parts of ``out`` into the parquet file ``into`` (atomically); returns its rows.

    Rows are sorted by id (prompts: prompt index, noise seed, step). An item present twice with the
    same values is kept once; with different values it is an :class:`InputError`.
    """
    if not out.is_dir():
        raise InputError(f"{out}: not a describe output directory")
    if into.resolve().parent == out.resolve() or into.is_dir():
        raise InputError(f"--into {into}: give a file outside {out}")
    table = read_parts(out)
    if table is None:
        raise InputError(f"{out} holds no part files (part-*.parquet)")
    prompts = "step" in table.column_names
    keys = ["id", "step"] if prompts else ["id"]
    frame = table.drop_columns([c for c in ("singular_values",) if c in table.column_names]).to_pandas()
    distinct = frame.drop_duplicates()
    clashes = distinct[distinct.duplicated(subset=keys, keep=False)]
    if len(clashes):
        raise InputError(
            f"{out}: {clashes['id'].nunique()} item(s) appear with different values, e.g. "
            f"{clashes['id'].unique()[:5].tolist()}; they come from runs with other settings"
        )
    order = ["prompt_index", "noise_seed", "step"] if prompts else ["id"]
    kept = frame.drop_duplicates(subset=keys).sort_values(order, kind="stable")
    merged = table.take(pa.array(kept.index.to_numpy()))
    into.parent.mkdir(parents=True, exist_ok=True)
    temporary = into.with_name(f".{into.name}.tmp")
    pq.write_table(merged, temporary)
    os.replace(temporary, into)
    return merged.num_rows
