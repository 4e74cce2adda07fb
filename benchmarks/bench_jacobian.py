"""Every spectrum method on the same latents in one run: products, seconds, error, share of the limit.

For each model and method the table gives the JVPs + VJPs spent per latent, the seconds, the error
against the exact spectrum of a float64 copy of the model, and how close the run came to the
machine's limit, measured in the same run two ways:

* ``of forward``: products x (one latent's share of the model's batched forward pass) / seconds.
  A product through a network costs at least a forward pass, so 100 % is out of reach (a JVP is
  about 2-3 forward passes);
* ``of matmul``: products x (the forward pass's FLOPs) / (a 2048^2 float32 matmul's FLOP rate) /
  seconds: the same bound against the best the cores do at all.

The baselines are a naive loop (per latent, one ``torch.autograd.grad`` call per row of ``W``, what
research code usually does) and SciPy's ARPACK (``scipy.sparse.linalg.svds`` on a
``LinearOperator`` of the same JVP and VJP, one product per call). Errors: ``top`` is the largest
relative error of the top 20 singular values (for ``projected``, a different quantity, shown as
is); ``ψ`` is relative to ``sum |log s_i|`` of the exact spectrum, ``ν`` relative to ν. ``slq``
estimates ψ and ν over the whole spectrum; the top-k methods' ψ and ν use their k values only.

    python benchmarks/bench_jacobian.py            # CPU: an MLP, a diffusers decoder, the mini decoder
    python benchmarks/bench_jacobian.py --quick    # one latent, one repeat

With CUDA present it also times the Stable-Diffusion-1.4-size decoder (random weights) at 512x512:
projected k = 120 in float32 and bfloat16, lanczos k = 20 and slq. Results are written as JSON to
``benchmarks/results/jacobian.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.sparse.linalg as sla
import torch
from timing import timed  # benchmarks/timing.py, shared by the benchmark scripts
from torch import nn
from torch.func import jvp, vjp
from torch.utils.flop_counter import FlopCounterMode

import geomlib
from geomlib import jacobian_singular_values, lanczos_svd, local_rank, local_scaling, orthonormal_rows
from geomlib.core.jacobian import autodiff_attention
from geomlib.core.slq import spectral_sums
from geomlib.runtime.seeding import seeded_global_rng

RESULTS = Path(__file__).parent / "results" / "jacobian.json"
TOP = 20


def naive_projected_singular_values(f: Callable, z: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """Baseline: per sample, one forward and k ``autograd.grad`` calls, one per row of W."""
    rows_per_sample = []
    for sample in z:
        x = sample.unsqueeze(0).clone().requires_grad_(True)
        out = f(x)
        w = orthonormal_rows(k, out.numel(), seed=seed, dtype=out.dtype, device=out.device)
        rows = [
            torch.autograd.grad(out, x, w[i].view_as(out), retain_graph=i < k - 1)[0].flatten()
            for i in range(k)
        ]
        rows_per_sample.append(torch.stack(rows))
    return torch.linalg.svdvals(torch.stack(rows_per_sample).float()).to(z.dtype)


def arpack_top(f: Callable, z: torch.Tensor, k: int) -> tuple[torch.Tensor, int]:
    """Baseline: SciPy's ``svds`` (ARPACK, default tolerance) on one latent's JVP/VJP operator."""
    shape = z.shape
    point = z.reshape(-1)
    single = lambda x: f(x.reshape(shape)).reshape(-1)  # noqa: E731
    out, pullback = vjp(single, point)
    calls = [0]

    def forward(v: np.ndarray) -> np.ndarray:
        calls[0] += 1
        tangent = torch.from_numpy(np.asarray(v, dtype=np.float64).ravel()).to(z)
        with autodiff_attention():
            return jvp(single, (point,), (tangent,))[1].detach().double().numpy()

    def backward(u: np.ndarray) -> np.ndarray:
        calls[0] += 1
        return (
            pullback(torch.from_numpy(np.asarray(u, dtype=np.float64).ravel()).to(out))[0]
            .detach()
            .double()
            .numpy()
        )

    operator = sla.LinearOperator(
        (out.numel(), point.numel()), matvec=forward, rmatvec=backward, dtype=np.float64
    )
    values = sla.svds(operator, k=k, return_singular_vectors=False, random_state=0)
    return torch.from_numpy(np.sort(values)[::-1].copy())[None], calls[0]


def mlp_generator(latent: int = 32, output: int = 3072) -> nn.Module:
    """A ReLU MLP ``latent -> output`` with seeded random weights."""
    with seeded_global_rng(0):
        return nn.Sequential(
            nn.Linear(latent, 256), nn.ReLU(), nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, output)
        ).eval()


def small_decoder() -> nn.Module:
    """A diffusers AutoencoderKL decoder: latent (4, 8, 8) -> image (3, 64, 64), random weights."""
    from geomlib.chapters.jacobian_sketches import random_vae_decoder

    decoder, _ = random_vae_decoder(8, [32, 32, 64, 64], seed=0)
    return decoder


def mini_decoder() -> nn.Module:
    """The offline mini model's trained decoder: latent (4, 8, 8) -> image (3, 32, 32)."""
    from geomlib.sd.decoder import latent_decoder
    from geomlib.sd.pipelines import load_pipeline

    return latent_decoder(load_pipeline()).eval()


def sd14_decoder(dtype: torch.dtype, device: torch.device) -> nn.Module:
    """The decoder of SD 1.4's architecture (random weights), latents scaled as the pipeline's."""
    from geomlib.sd.decoder import latent_decoder
    from geomlib.sd.pipelines import random_sd14_pipeline

    return latent_decoder(random_sd14_pipeline(device, dtype)).eval()


def matmul_rate(device: torch.device, dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of a 2048^2 matmul: what the cores reach at best."""
    a = torch.randn(2048, 2048, device=device, dtype=dtype)
    seconds, _ = timed(lambda: a @ a, 5, device)
    return 2 * 2048**3 / seconds


def forward_cost(f: nn.Module, z: torch.Tensor, batch: int = 16) -> tuple[float, float]:
    """Seconds per latent of the model's batched forward pass, and its FLOPs per latent."""
    many = z[:1].expand(batch, *z.shape[1:]).contiguous()
    with torch.no_grad():
        seconds, _ = timed(lambda: f(many), 3, z.device)
        counter = FlopCounterMode(display=False)
        with counter:
            f(z[:1])
    return seconds / batch, float(counter.get_total_flops())


def _errors(values: torch.Tensor | None, psi: float, nu: float, exact: torch.Tensor) -> dict:
    exact = exact.double()
    magnitude = float(exact.log().abs().sum())
    top = None
    if values is not None:
        n = min(TOP, values.shape[-1])
        top = float(((values[..., :n].double() - exact[..., :n]).abs() / exact[..., :n]).max())
    exact_psi, exact_nu = float(local_scaling(exact)), float(local_rank(exact))
    return dict(
        top_error=top, psi_error=abs(psi - exact_psi) / magnitude, nu_error=abs(nu - exact_nu) / exact_nu
    )


def measure(name: str, f: nn.Module, z: torch.Tensor, repeats: int, rates: dict) -> list[dict]:
    """Every method on one latent ``z: (1, *in_shape)`` of ``f``."""
    in_dim, out_dim = z[0].numel(), f(z).numel()
    exact = jacobian_singular_values(copy.deepcopy(f).double(), z.double(), method="exact")
    per_latent, flops = forward_cost(f, z)
    rows = []

    def add(method: str, products: int, seconds: float, values: torch.Tensor | None, psi: float, nu: float):
        entry = dict(model=name, method=method, products=products, seconds=seconds)
        entry.update(_errors(values, psi, nu, exact))
        entry["of_forward"] = products * per_latent / seconds
        entry["of_matmul"] = products * flops / rates["matmul"] / seconds
        rows.append(entry)

    def spectrum_row(method: str, products: int, run: Callable[[], torch.Tensor]) -> None:
        seconds, values = timed(run, repeats, z.device)
        add(method, products, seconds, values, float(local_scaling(values)), float(local_rank(values)))

    k_sketch = min(120, out_dim)
    spectrum_row(
        f"naive loop: projected k={k_sketch}",
        k_sketch,
        lambda: naive_projected_singular_values(f, z, k_sketch),
    )
    spectrum_row(
        f"projected k={k_sketch}",
        k_sketch,
        lambda: jacobian_singular_values(f, z, method="projected", k=k_sketch),
    )
    spectrum_row("exact", in_dim, lambda: jacobian_singular_values(f, z, method="exact"))
    top = min(TOP, in_dim // 2)
    width = min(top + 10, in_dim)
    spectrum_row(
        f"randomized k={top}, q=2",
        6 * width,
        lambda: jacobian_singular_values(f, z, method="randomized", k=top, power_iters=2),
    )
    start = time.perf_counter()
    values, calls = arpack_top(f, z, top)
    add(
        f"ARPACK svds k={top}",
        calls,
        time.perf_counter() - start,
        values,
        float(local_scaling(values)),
        float(local_rank(values)),
    )
    seconds, result = timed(lambda: lanczos_svd(f, z, top), repeats, z.device)
    add(
        f"lanczos k={top}",
        result.products,
        seconds,
        result.S,
        float(local_scaling(result.S)),
        float(local_rank(result.S)),
    )
    if in_dim >= 128:  # at smaller E the exact spectrum is cheaper than any estimate
        seconds, sums = timed(lambda: spectral_sums(f, z, accuracy=2e-2), 1, z.device)
        add(
            "slq (accuracy 2e-2)",
            sums.products,
            seconds,
            None,
            float(sums.local_scaling),
            float(sums.local_rank),
        )
    for entry in rows:
        entry.update(
            in_dim=in_dim, out_dim=out_dim, forward_seconds_per_latent=per_latent, forward_flops=flops
        )
    return rows


def gpu_rows(repeats: int) -> list[dict]:
    """The SD-1.4-size decoder at 512x512 on one GPU: seconds and memory per latent."""
    device = torch.device("cuda")
    rows = []
    z32 = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(0)).to(device)
    for dtype in (torch.float32, torch.bfloat16):
        f = sd14_decoder(dtype, device)
        z = z32.to(dtype)
        runs: dict[str, Callable] = {
            "projected k=120: psi+nu": lambda f=f, z=z: jacobian_singular_values(
                f, z, method="projected", k=120, chunk_size=40
            )
        }
        if dtype == torch.float32:
            runs["lanczos k=20"] = lambda f=f, z=z: lanczos_svd(f, z, 20, block_size=8, chunk_size=8).S
            runs["slq psi+nu (accuracy 2e-2)"] = lambda f=f, z=z: spectral_sums(
                f, z, accuracy=2e-2, chunk_size=8
            )
        for method, run in runs.items():
            torch.cuda.reset_peak_memory_stats()
            seconds, _ = timed(run, repeats if method.startswith("projected") else 1, device)
            rows.append(
                dict(
                    model=f"SD-1.4 VAE decoder 512x512, {str(dtype).split('.')[-1]}",
                    method=method,
                    seconds=seconds,
                    peak_gib=torch.cuda.max_memory_allocated() / 2**30,
                )
            )
    return rows


def print_table(rows: list[dict]) -> None:
    def number(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    columns = ["products", "seconds", "top", "ψ", "ν", "of forward", "of matmul"]
    header = f"{'model':<34} {'method':<32} " + " ".join(f"{c:>{max(8, len(c))}}" for c in columns)
    print(header)
    for e in rows:
        print(
            f"{e['model']:<34} {e['method']:<32} {e.get('products', '-'):>8} {e['seconds']:>8.2f}"
            f" {number(e.get('top_error'), '.1e'):>8} {number(e.get('psi_error'), '.1e'):>8}"
            f" {number(e.get('nu_error'), '.1e'):>8} {number(e.get('of_forward'), '.1%'):>10}"
            f" {number(e.get('of_matmul'), '.1%'):>9}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="the MLP and the mini decoder, one repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    device = torch.device("cpu")
    rates = {"matmul": matmul_rate(device)}
    generator = torch.Generator().manual_seed(0)
    models: list[tuple[str, Callable[[], nn.Module], tuple[int, ...]]] = [
        ("MLP 32 -> 3072 (ReLU)", mlp_generator, (32,)),
        ("mini decoder 4x8x8 -> 3x32x32", mini_decoder, (4, 8, 8)),
    ]
    if not args.quick:
        models.insert(1, ("AutoencoderKL 4x8x8 -> 3x64x64", small_decoder, (4, 8, 8)))
    rows = []
    for name, build, shape in models:
        z = torch.randn(1, *shape, generator=generator)
        rows += measure(name, build(), z, repeats, rates)
    if torch.cuda.is_available():
        rows += gpu_rows(repeats)
    print(f"2048^2 float32 matmul: {rates['matmul'] / 1e9:.0f} GFLOP/s on {torch.get_num_threads()} threads")
    for name in dict.fromkeys(r["model"] for r in rows if "forward_flops" in r):
        entry = next(r for r in rows if r["model"] == name)
        rate = entry["forward_flops"] / entry["forward_seconds_per_latent"]
        print(
            f"{name}: batched forward {rate / 1e9:.0f} GFLOP/s"
            f" ({entry['forward_flops'] / 1e9:.3f} GFLOP per latent)"
        )
    print_table(rows)
    meta = dict(
        torch=torch.__version__,
        geomlib=geomlib.__version__,
        machine=platform.machine(),
        threads=torch.get_num_threads(),
        cuda=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        matmul_flops=rates["matmul"],
        repeats=repeats,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
