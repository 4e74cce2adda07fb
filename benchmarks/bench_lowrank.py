"""Seconds to find k edit directions for one latent: the top-k right singular vectors of the
posterior-mean predictor's Jacobian ``d x0_hat / d x_t`` by ``geomlib.randomized_svd`` (JVPs and
VJPs, power iterations, never the matrix), next to LOCO Edit's published 79 s per image on an
NVIDIA A40 (Stable Diffusion). The hardware and the model differ: read the ratio as an order of
magnitude, not a like-for-like speed-up.

    python benchmarks/bench_lowrank.py            # k = 5 and 10, best of 3
    python benchmarks/bench_lowrank.py --quick    # one repeat
    python benchmarks/bench_lowrank.py --sd14-latent 16   # also an SD-1.4-size UNet (random weights)

The model is the offline mini text-to-image model (``data/mini-sd``, conditional PMP at
``t = 0.7 T``); without it, an MLP denoiser trained on a mixture of low-rank Gaussians. The top-k
singular values are checked against the exact spectrum where the latent is small enough. With CUDA
present it also times an SD-1.4-size UNet (random weights, 4 x 64 x 64 latents, float16), the scale
of LOCO Edit's figure. Results are written as JSON to ``benchmarks/results/lowrank.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Callable
from pathlib import Path

import torch
from timing import timed  # benchmarks/timing.py, shared by the benchmark scripts

import geomlib
from geomlib.chapters import low_rank as lr
from geomlib.core.diffusion import linear_alpha_bar, timestep_at
from geomlib.sd import pipelines, sampling

RESULTS = Path(__file__).parent / "results" / "lowrank.json"
LOCO_EDIT_SECONDS = 79.0  # per image on an NVIDIA A40, Stable Diffusion (LOCO Edit, Chen et al. 2024)
EDIT_FRACTION = 0.7


def mini_model_pmp(device: torch.device) -> tuple[str, Callable, torch.Tensor]:
    """The mini model's conditional PMP at t = 0.7 T and a latent reached by DDIM from noise."""
    pipe = pipelines.load_pipeline(pipelines.MINI_MODEL, device=device)
    cond, _ = lr.prompt_embeddings(pipe, "a large red star on the left on a striped blue background")
    alpha_bar = pipe.scheduler.alphas_cumprod.double()
    posterior_mean = lr.unet_posterior_mean(
        pipe.unet, alpha_bar, cond, prediction_type=pipe.scheduler.config.prediction_type
    )
    before, after = lr.split_timesteps(
        lr.ddim_timesteps(len(alpha_bar) - 1, 20), timestep_at(EDIT_FRACTION, len(alpha_bar))
    )
    x_T = sampling.initial_latents(pipe, 1, 0).to(device)
    x_t = lr.ddim_sample(posterior_mean, alpha_bar, x_T, before, denoise_last=False)
    return "mini text-to-image UNet, latent 4x8x8", lr.denoiser_pmp(posterior_mean, after[0]), x_t


def molrg_pmp(device: torch.device, quick: bool) -> tuple[str, Callable, torch.Tensor]:
    """Fallback: an MLP denoiser trained on a MoLRG in R^32, at t = 0.7 T."""
    generator = torch.Generator().manual_seed(0)
    mixture = lr.make_molrg(32, (3, 3), generator=generator)
    alpha_bar = linear_alpha_bar()
    train, _ = mixture.sample(1024, generator)
    denoiser = lr.train_denoiser(train, alpha_bar, steps=300 if quick else 2000, progress=False).to(device)
    t = timestep_at(EDIT_FRACTION, len(alpha_bar))
    x_t = lr.add_noise(mixture.sample(1, generator)[0], float(alpha_bar[t]), generator).to(device)
    return "MLP denoiser on a MoLRG (mini model absent), d = 32", lr.denoiser_pmp(denoiser, t), x_t


def sd14_unet_pmp(
    device: torch.device, latent_size: int, dtype: torch.dtype
) -> tuple[str, Callable, torch.Tensor]:
    """An SD-1.4-size UNet (published config, random weights) with a random prompt embedding."""
    from diffusers import UNet2DConditionModel

    from geomlib.sd.mini.build import SD_BETAS, UNET_CONFIGS

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            sample_size=latent_size,
            in_channels=4,
            out_channels=4,
            act_fn="silu",
            norm_num_groups=32,
            **UNET_CONFIGS["sd14"],
        )
    unet = unet.eval().requires_grad_(False).to(device, dtype)
    betas = (
        torch.linspace(SD_BETAS["beta_start"] ** 0.5, SD_BETAS["beta_end"] ** 0.5, 1000, dtype=torch.float64)
        ** 2
    )
    alpha_bar = torch.cumprod(1 - betas, 0)
    generator = torch.Generator().manual_seed(0)
    embeds = torch.randn(1, 77, 768, generator=generator).to(device, dtype)
    x_t = torch.randn(1, 4, latent_size, latent_size, generator=generator).to(device, dtype)
    posterior_mean = lr.unet_posterior_mean(unet, alpha_bar, embeds)
    precision = str(dtype).split(".")[-1]
    label = f"SD-1.4-size UNet (random weights), latent 4x{latent_size}x{latent_size}, {precision}"
    return label, lr.denoiser_pmp(posterior_mean, timestep_at(EDIT_FRACTION, 1000)), x_t


def bench_model(
    label: str, pmp: Callable, x_t: torch.Tensor, ks: list[int], repeats: int, check_exact: bool
) -> list[dict]:
    """Time ``edit_directions`` for each k; compare its singular values with the exact spectrum."""
    device = x_t.device
    exact = geomlib.jacobian_singular_values(pmp, x_t)[0].double().cpu() if check_exact else None
    rows = []
    for k in ks:
        seconds, edit = timed(lambda k=k: lr.edit_directions(pmp, x_t, k, power_iters=2), repeats, device)
        diff = None
        if exact is not None:
            diff = float(((edit.singular_values.double().cpu() - exact[:k]).abs() / exact[:k]).max())
        rows.append(
            dict(
                model=label,
                k=k,
                seconds=seconds,
                loco_edit_seconds=LOCO_EDIT_SECONDS,
                ratio_to_loco_edit=LOCO_EDIT_SECONDS / seconds,
                max_rel_diff_vs_exact=diff,
                device=str(device),
                threads=torch.get_num_threads(),
            )
        )
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'model':<66} {'k':>3} {'seconds':>9} {'LOCO Edit (A40)':>16} {'rel diff vs exact':>18}")
    for row in rows:
        diff = "-" if row["max_rel_diff_vs_exact"] is None else f"{row['max_rel_diff_vs_exact']:.1e}"
        print(
            f"{row['model']:<66} {row['k']:>3} {row['seconds']:>9.3f}"
            f" {row['loco_edit_seconds']:>14.0f} s {diff:>18}"
        )
    print(
        "LOCO Edit's figure is per image on an NVIDIA A40 with Stable Diffusion; hardware and models differ."
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="one repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: PyTorch's)")
    parser.add_argument(
        "--sd14-latent",
        type=int,
        default=None,
        help="also time an SD-1.4-size UNet at this latent size (default: 64 with CUDA, none on CPU)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else args.repeats
    device = geomlib.default_device()
    from geomlib.sd.pipelines import MINI_MODEL

    if (MINI_MODEL / "model_index.json").exists():
        label, pmp, x_t = mini_model_pmp(device)
    else:
        label, pmp, x_t = molrg_pmp(device, args.quick)
    ks = [k for k in (5, 10) if k < x_t[0].numel()]
    rows = bench_model(label, pmp, x_t, ks, repeats, check_exact=x_t[0].numel() <= 1024)
    sd14_size = args.sd14_latent or (64 if device.type == "cuda" else None)
    if sd14_size:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        rows += bench_model(*sd14_unet_pmp(device, sd14_size, dtype), ks, repeats, check_exact=False)
    print_table(rows)
    meta = dict(
        torch=torch.__version__,
        geomlib=geomlib.__version__,
        machine=platform.machine(),
        threads=torch.get_num_threads(),
        cuda=torch.cuda.get_device_name() if device.type == "cuda" else None,
        repeats=repeats,
        power_iters=2,
        oversample=5,
        edit_t_fraction=EDIT_FRACTION,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
