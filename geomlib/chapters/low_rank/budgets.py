"""The budgets of chapter 07, one :class:`LowRankBudget` per profile."""

from __future__ import annotations

from dataclasses import dataclass, field

from geomlib.runtime.profiles import count


@dataclass(frozen=True)
class LowRankBudget:
    """A profile of chapter 07.

    MoLRG part: ambient ``dim``, subspace ``ranks``, ``n_points`` profiled per timestep at the
    ``t_fractions`` of the schedule; the denoiser's ``train_size``, ``train_steps``, ``hidden``,
    ``depth``, ``batch_size``. Sweep over training-set sizes (sections 2 and 3): a mixture of
    subspace ranks ``sweep_ranks`` in the same ``dim`` (higher than ``ranks``: in a rank-3 subspace
    a thousand training points lie so densely that a new sample is as near one of them as two
    models' samples are to each other, and GL cannot tell copies from new samples); both
    architectures (``ARCHITECTURES``) trained ``sweep_steps`` with batches of ``sweep_batch_size``
    and learning rate ``sweep_lr`` on each of the ``sweep_sizes`` (large batches: a step of these
    small networks with 1 024 samples costs at most 1.7 times one with 256, measured, and the
    agreement the RP score asks for needs the accuracy); each scored on ``n_generated`` DDIM samples
    of ``sampling_steps`` steps, its Jacobian rank at ``sweep_t_fraction``; ``rp_noise`` shared
    initial noises for RP and GL, samples matching within ``rp_radius`` times the data's RMS norm.
    Edit part: ``edit_k`` directions at ``edit_t_fraction`` of the schedule, ``image_steps`` DDIM
    steps, the strengths ``edit_strengths`` (latent units), ``edit_power_iters`` of the randomized
    SVD; the latent rank profile at ``latent_t_fractions`` for ``n_latents`` latents is exact when
    ``latent_spectrum_k`` is None, else the top-k by randomized SVD; ``guidance_scale`` of the
    UNet's PMP; ``bench_k`` the sizes timed; ``chunk_size`` bounds the UNet products per vectorised
    pass; ``cpu_threads``: torch threads on a CPU (the chapter's kernels are small: on a shared
    2-core CPU two intra-op threads that wait on each other made them 3-10x slower than one,
    measured).
    """

    dim: int
    ranks: tuple[int, ...]
    n_points: int = field(metadata=count(4))
    t_fractions: tuple[float, ...] = field(metadata=count((0.05, 0.5, 0.95)))
    train_size: int = field(metadata=count(64))
    train_steps: int = field(metadata=count(20))
    hidden: int
    depth: int
    batch_size: int
    n_generated: int = field(metadata=count(16))
    sampling_steps: int = field(metadata=count(5))
    sweep_t_fraction: float
    sweep_ranks: tuple[int, ...]
    sweep_sizes: tuple[int, ...] = field(metadata=count((4, 256)))
    sweep_steps: int = field(metadata=count(20))
    sweep_batch_size: int
    sweep_lr: float
    rp_noise: int = field(metadata=count(32))
    rp_radius: float
    edit_k: int
    edit_t_fraction: float
    image_steps: int = field(metadata=count(3))
    edit_strengths: tuple[float, ...]
    edit_power_iters: int
    latent_t_fractions: tuple[float, ...] = field(metadata=count((0.3, 0.7)))
    n_latents: int
    latent_spectrum_k: int | None
    guidance_scale: float
    bench_k: tuple[int, ...]
    chunk_size: int | None
    cpu_threads: int | None = 1


LOWRANK_BUDGETS: dict[str, LowRankBudget] = {
    "smoke": LowRankBudget(
        dim=16,
        ranks=(2, 2),
        n_points=8,
        t_fractions=(0.02, 0.3, 0.9),
        train_size=512,
        train_steps=300,
        hidden=64,
        depth=2,
        batch_size=128,
        n_generated=64,
        sampling_steps=10,
        sweep_t_fraction=0.05,
        sweep_ranks=(6, 6),
        sweep_sizes=(4, 256),
        sweep_steps=300,
        sweep_batch_size=256,
        sweep_lr=2e-3,
        rp_noise=128,
        rp_radius=0.25,
        edit_k=2,
        edit_t_fraction=0.7,
        image_steps=4,
        edit_strengths=(-4.0, 0.0, 4.0),
        edit_power_iters=1,
        latent_t_fractions=(0.7,),
        n_latents=1,
        latent_spectrum_k=8,
        guidance_scale=3.0,
        bench_k=(2,),
        chunk_size=None,
    ),
    "book": LowRankBudget(
        dim=32,
        ranks=(3, 3),
        n_points=32,
        t_fractions=(0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.97),
        train_size=4096,
        train_steps=6000,
        hidden=128,
        depth=3,
        batch_size=256,
        n_generated=256,
        sampling_steps=50,
        sweep_t_fraction=0.05,
        sweep_ranks=(8, 8),
        sweep_sizes=(2, 16, 128, 1024, 8192),
        sweep_steps=1200,
        sweep_batch_size=1024,
        sweep_lr=4e-3,
        rp_noise=1000,
        rp_radius=0.25,
        edit_k=5,
        edit_t_fraction=0.7,
        image_steps=25,
        edit_strengths=(-8.0, -6.0, -4.0, -2.0, 0.0, 2.0, 4.0, 6.0, 8.0),
        edit_power_iters=2,
        latent_t_fractions=(0.05, 0.3, 0.5, 0.7, 0.9),
        n_latents=1,
        latent_spectrum_k=None,
        guidance_scale=3.0,
        bench_k=(5, 10),
        chunk_size=None,
    ),
    "paper": LowRankBudget(
        dim=64,
        ranks=(4, 4, 4),
        n_points=64,
        t_fractions=tuple(i / 20 for i in range(1, 20)),
        train_size=16384,
        train_steps=20000,
        hidden=256,
        depth=4,
        batch_size=512,
        n_generated=1024,
        sampling_steps=100,
        sweep_t_fraction=0.05,
        sweep_ranks=(12, 12, 12),
        sweep_sizes=(2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 16384),
        sweep_steps=20000,
        sweep_batch_size=4096,
        sweep_lr=4e-3,
        rp_noise=10000,
        rp_radius=0.25,
        edit_k=10,
        edit_t_fraction=0.7,
        image_steps=50,
        edit_strengths=(-64.0, -32.0, 0.0, 32.0, 64.0),
        edit_power_iters=2,
        latent_t_fractions=(0.05, 0.3, 0.5, 0.7, 0.9),
        n_latents=1,
        latent_spectrum_k=256,
        guidance_scale=7.5,
        bench_k=(5, 10),
        chunk_size=16,
        cpu_threads=None,
    ),
}
