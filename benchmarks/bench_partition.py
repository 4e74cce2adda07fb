"""Benchmark exact_partition against a brute-force grid count of activation patterns.

For random ReLU MLPs 2 -> width^depth -> 3 (torch.manual_seed(0), float64) on the box
(-1, 1, -1, 1), time ``geomlib.core.partition.exact_partition`` and, in the same run, count the
distinct activation patterns on N x N grids. The grid count is a lower bound on the number
of linear regions (small regions fall between grid points); every grid pattern should be
the pattern of one exact region.

Usage::

    python benchmarks/bench_partition.py --quick
    python benchmarks/bench_partition.py --widths 16 32 64 --depths 2 3 --grid 250 500 1000

Results go to ``benchmarks/results/partition.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

BOUNDS = (-1.0, 1.0, -1.0, 1.0)
RESULTS = Path(__file__).resolve().parent / "results" / "partition.json"


def make_mlp(width: int, depth: int, seed: int = 0) -> nn.Sequential:
    """ReLU MLP 2 -> width (x depth) -> 3 with PyTorch's default init under ``seed``, float64."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(2, width), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.ReLU()]
    layers.append(nn.Linear(width, 3))
    return nn.Sequential(*layers).double().eval()


def _exact_worker(width: int, depth: int, queue: mp.Queue) -> None:
    """Child process: run exact_partition and send back (regions, seconds, packed patterns)."""
    from geomlib.core.partition import exact_partition

    torch.set_num_threads(max(1, torch.get_num_threads()))
    net = make_mlp(width, depth)
    start = time.perf_counter()
    part = exact_partition(net, BOUNDS)
    seconds = time.perf_counter() - start
    queue.put((len(part), seconds, np.packbits(part.patterns, axis=1)))


def run_exact(width: int, depth: int, max_seconds: float) -> dict:
    """Time exact_partition in a spawned process, killed after ``max_seconds``."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_exact_worker, args=(width, depth, queue), daemon=True)
    proc.start()
    try:
        # the child's own clock excludes start-up; allow some slack for importing torch
        regions, seconds, packed = queue.get(timeout=max_seconds + 30.0)
    except Exception:  # noqa: BLE001 - queue.Empty (timeout) or a crashed child
        proc.kill()
        proc.join()
        return {"status": "timeout" if proc.exitcode in (None, -9) else "error"}
    proc.join()
    if seconds > max_seconds:
        return {"status": "timeout", "seconds": seconds}
    return {
        "status": "ok",
        "regions": regions,
        "seconds": seconds,
        "patterns": {row.tobytes() for row in packed},
    }


@torch.no_grad()
def grid_patterns(net: nn.Sequential, n: int, chunk: int = 1 << 16) -> set[bytes]:
    """Distinct activation patterns (packed bytes) on an n x n grid covering BOUNDS."""
    xs = torch.linspace(BOUNDS[0], BOUNDS[1], n, dtype=torch.float64)
    ys = torch.linspace(BOUNDS[2], BOUNDS[3], n, dtype=torch.float64)
    linears = [m for m in net if isinstance(m, nn.Linear)][:-1]
    seen: set[bytes] = set()
    for lo in range(0, n * n, chunk):
        flat = torch.arange(lo, min(lo + chunk, n * n))
        h = torch.stack([xs[flat % n], ys[flat // n]], dim=1)
        bits = []
        for lin in linears:
            h = lin(h)
            bits.append(h > 0)
            h = torch.relu(h)
        packed = np.packbits(torch.cat(bits, dim=1).numpy(), axis=1)
        rows = np.unique(np.ascontiguousarray(packed).view(f"V{packed.shape[1]}").ravel())
        seen.update(r.tobytes() for r in rows)
    return seen


def bench_config(width: int, depth: int, grids: list[int], max_seconds: float, skip: bool) -> dict:
    """One (width, depth) row: exact result (or skipped) and grid counts for every N."""
    row: dict = {"width": width, "depth": depth}
    exact = {"status": "skipped"} if skip else run_exact(width, depth, max_seconds)
    row["exact"] = {k: v for k, v in exact.items() if k != "patterns"}
    net = make_mlp(width, depth)
    row["grid"] = {}
    for n in grids:
        start = time.perf_counter()
        pats = grid_patterns(net, n)
        entry = {"regions": len(pats), "seconds": time.perf_counter() - start}
        if exact["status"] == "ok":
            entry["missing_from_exact"] = len(pats - exact["patterns"])
        row["grid"][str(n)] = entry
    return row


def format_row(row: dict, grids: list[int]) -> str:
    ex = row["exact"]
    head = f"{row['width']:>5} {row['depth']:>5} "
    head += (
        f"{ex['regions']:>8} {ex['seconds']:>8.2f} "
        if ex["status"] == "ok"
        else f"{ex['status']:>8} {'-':>8} "
    )
    cells = [f"{row['grid'][str(n)]['regions']:>8} {row['grid'][str(n)]['seconds']:>6.2f}" for n in grids]
    missing = [row["grid"][str(n)].get("missing_from_exact") for n in grids]
    subset = "-" if None in missing else ("yes" if sum(missing) == 0 else f"no({max(missing)})")
    return head + " ".join(cells) + f" {subset:>7}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny run (widths 16 32, depth 2)")
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--depths", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--grid", type=int, nargs="+", default=[250, 500, 1000, 2000])
    parser.add_argument(
        "--max-seconds", type=float, default=120.0, help="per-configuration limit for exact_partition"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.widths, args.depths, args.grid = [16, 32], [2], [250, 500]

    header = (
        f"{'width':>5} {'depth':>5} {'exact':>8} {'sec':>8} "
        + " ".join(f"{'N=' + str(n):>8} {'sec':>6}" for n in args.grid)
        + f" {'subset':>7}"
    )
    print(header, flush=True)
    rows = []
    for depth in args.depths:
        last_seconds = 0.0
        for width in sorted(args.widths):
            # exact cost grows at least ~4x per width doubling: skip what clearly won't fit
            skip = last_seconds is None or last_seconds * 4 > args.max_seconds
            row = bench_config(width, depth, args.grid, args.max_seconds, skip)
            ex = row["exact"]
            last_seconds = ex["seconds"] if ex["status"] == "ok" else None
            rows.append(row)
            print(format_row(row, args.grid), flush=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "bounds": BOUNDS,
        "grids": args.grid,
        "max_seconds": args.max_seconds,
    }
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
