"""Stochastic Lanczos quadrature of ψ and ν on linear maps with known, decoder-like spectra.

The goals: on maps E = 4 096 -> D = 12 288, ψ within 1 % of ``sum_i |log s_i|`` (2 % for the
spectrum with a tail), ν within 2 %, and ``|error| <= 3`` standard errors in at least 90 % of the
cases. Three spectra, each an orthonormal ``U diag(s) V^T`` with random ``U`` and ``V``:

* ``log-normal``: ``log s ~ N(-1.57, 1.62)`` within +-2.3 sd, the mini decoder's fitted spectrum
  and its observed range (2.9 decades);
* ``power law``: ``s_i = i^-0.8`` (3 decades at E = 4 096);
* ``flat top + tail``: 64 values in [0.8, 1], then a geometric tail down to 1e-3.

Each spectrum is estimated with ``--seeds`` probe seeds at the default accuracy; the table gives
the errors, the coverage of 3 standard errors, the products per estimate and the seconds.

    python benchmarks/bench_slq_spectra.py               # E = 4 096, 10 seeds (hours on 2 cores)
    python benchmarks/bench_slq_spectra.py --quick       # E = 1 024, 3 seeds (minutes)

Results are written as JSON to ``benchmarks/results/slq_spectra.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

import geomlib
from geomlib import local_rank, local_scaling, spectral_sums

RESULTS = Path(__file__).parent / "results" / "slq_spectra.json"
#: Allowed error of ψ relative to sum |log s|, and of ν relative to ν, per spectrum.
GOALS = {"log-normal": (0.01, 0.02), "power law": (0.01, 0.02), "flat top + tail": (0.02, 0.02)}


def spectrum(name: str, dim: int, generator: torch.Generator) -> torch.Tensor:
    """``(dim,)`` singular values, descending, float64."""
    if name == "log-normal":
        draws = torch.randn(4 * dim, generator=generator, dtype=torch.float64)
        values = torch.exp(-1.57 + 1.62 * draws[draws.abs() <= 2.3][:dim])
    elif name == "power law":
        values = torch.arange(1, dim + 1, dtype=torch.float64) ** -0.8
    else:
        top = 1 - 0.2 * torch.rand(64, generator=generator, dtype=torch.float64)
        values = torch.cat([top, torch.logspace(math.log10(0.8), -3, dim - 64, dtype=torch.float64)])
    return values.sort(descending=True).values


def linear_map(sigma: torch.Tensor, out_dim: int, generator: torch.Generator) -> torch.Tensor:
    """A float32 ``out_dim x E`` matrix ``U diag(sigma) V^T`` with random orthonormal ``U``, ``V``;
    ``U`` stacks ``out_dim / E`` random orthogonal blocks, scaled to orthonormal columns."""
    dim = len(sigma)

    def orthogonal() -> torch.Tensor:
        return torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64)).Q

    blocks = out_dim // dim
    left = torch.cat([orthogonal() for _ in range(blocks)]) / math.sqrt(blocks)
    return ((left * sigma) @ orthogonal().T).float()


def measure(name: str, dim: int, seeds: int) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    sigma = spectrum(name, dim, generator)
    matrix = linear_map(sigma, 3 * dim, generator)
    # the truth over the values local_scaling keeps for float32 products (all of these spectra)
    psi, nu = float(local_scaling(sigma[None].float().double())), float(local_rank(sigma[None]))
    magnitude = float(sigma.log().abs().sum())
    rows = []
    for seed in range(seeds):
        start = time.perf_counter()
        sums = spectral_sums(lambda z: z @ matrix.T, torch.zeros(1, dim), seed=seed)
        seconds = time.perf_counter() - start
        psi_error, nu_error = float(sums.local_scaling) - psi, float(sums.local_rank) - nu
        rows.append(
            dict(
                spectrum=name,
                seed=seed,
                psi=psi,
                psi_error_of_magnitude=psi_error / magnitude,
                psi_error_in_stderr=psi_error / float(sums.local_scaling_stderr),
                nu=nu,
                nu_relative_error=nu_error / nu,
                nu_error_in_stderr=nu_error / float(sums.local_rank_stderr),
                probes=sums.probes,
                steps=sums.steps,
                products=sums.products,
                seconds=seconds,
            )
        )
        print(
            f"{name:<16} seed {seed}: ψ {psi_error / magnitude:+.2e} of Σ|log s|"
            f" ({rows[-1]['psi_error_in_stderr']:+.1f} se), ν {nu_error / nu:+.2e}"
            f" ({rows[-1]['nu_error_in_stderr']:+.1f} se); {sums.probes} probes, {sums.steps} steps,"
            f" {sums.products} products, {seconds:.0f} s",
            flush=True,
        )
    return rows


def summary(rows: list[dict], dim: int) -> list[dict]:
    table = []
    for name, (psi_goal, nu_goal) in GOALS.items():
        mine = [r for r in rows if r["spectrum"] == name]
        psi_errors = [abs(r["psi_error_of_magnitude"]) for r in mine]
        nu_errors = [abs(r["nu_relative_error"]) for r in mine]
        within = [abs(r["psi_error_in_stderr"]) <= 3 for r in mine] + [
            abs(r["nu_error_in_stderr"]) <= 3 for r in mine
        ]
        table.append(
            dict(
                spectrum=name,
                runs=len(mine),
                psi_max_error=max(psi_errors),
                psi_goal=psi_goal,
                nu_max_error=max(nu_errors),
                nu_goal=nu_goal,
                within_3_stderr=sum(within) / len(within),
                median_products=sorted(r["products"] for r in mine)[len(mine) // 2],
                exact_products=dim,
                median_seconds=sorted(r["seconds"] for r in mine)[len(mine) // 2],
            )
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="E = 1 024 and 3 seeds")
    parser.add_argument("--dim", type=int, default=None, help="E (default 4 096; --quick 1 024)")
    parser.add_argument("--seeds", type=int, default=None, help="probe seeds per spectrum (default 10)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    dim = args.dim or (1024 if args.quick else 4096)
    seeds = args.seeds or (3 if args.quick else 10)
    rows = [row for name in GOALS for row in measure(name, dim, seeds)]
    table = summary(rows, dim)
    print(f"\nE = {dim}, D = {3 * dim}: largest errors over {seeds} seeds (goal), coverage of 3 se")
    for entry in table:
        print(
            f"{entry['spectrum']:<16} ψ {entry['psi_max_error']:.2%} ({entry['psi_goal']:.0%})"
            f"  ν {entry['nu_max_error']:.2%} ({entry['nu_goal']:.0%})"
            f"  within 3 se {entry['within_3_stderr']:.0%}  products {entry['median_products']}"
            f" (exact: {dim} JVPs)  {entry['median_seconds']:.0f} s"
        )
    coverage = sum(e["within_3_stderr"] * e["runs"] for e in table) / sum(e["runs"] for e in table)
    print(f"all spectra: |error| <= 3 se in {coverage:.0%} of the cases (goal 90 %)")
    meta = dict(
        torch=torch.__version__,
        geomlib=geomlib.__version__,
        machine=platform.machine(),
        threads=torch.get_num_threads(),
        dim=dim,
        seeds=seeds,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(dict(meta=meta, summary=table, runs=rows), indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
