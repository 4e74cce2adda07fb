"""Describe runs: ψ, ν (and δ) of a pipeline's decoder for a folder of images or a file of prompts,
one parquet row per item (per step, for prompts), resumable and sharded across processes.

A run is a :class:`DescribeRun`; :func:`run_describe` computes it and :func:`describe_to_table` also
reads the table back (what a chapter calls). ``python -m geomlib describe`` (:mod:`geomlib.cli`)
parses its arguments into the same :class:`DescribeRun`.

Every item is encoded (or sampled) and described in calls of its own, so its row does not depend on
the batch size, on the number of processes or on where a run was resumed; every row carries the
settings that decided its values, and a run with other settings on the same output is refused.
Under ``accelerate launch`` process ``r`` of ``w`` takes the items ``r, r + w, ...`` of the sorted
input list and writes its own parts (:mod:`geomlib.sd.store`).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import torch
from tqdm import tqdm

import geomlib
from geomlib.core.checks import positive_int
from geomlib.core.descriptors import Descriptors
from geomlib.runtime.profiles import default_device
from geomlib.sd.decoder import DescriptorSettings, encode_images, estimate_memory, latent_shape
from geomlib.sd.hub import SDPipeline
from geomlib.sd.images import InputError, image_size, read_image
from geomlib.sd.items import ImageItem, Item, PromptItem, check_images, find_images, prompt_items
from geomlib.sd.store import PartWriter, Row, done_ids, read_parts

TRAJECTORIES: tuple[str, ...] = ("latents", "x0", "final")
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


@dataclass(frozen=True)
class ImageInput:
    """Images under ``folder`` (recursively); with ``resize``, every image is resized to
    ``height x width`` (default: the model's size); without it, mixed sizes are refused."""

    folder: Path
    resize: bool = False
    height: int | None = None
    width: int | None = None
    skip_unreadable: bool = False


@dataclass(frozen=True)
class PromptInput:
    """Prompts of ``file``, each sampled from ``samples_per_prompt`` noise seeds ``noise_seed, ...``
    with the pipeline's sampler; ``trajectory`` says which latents are described: every step's
    (``latents``, step 0 = the noise), the predicted clean latent of every step (``x0``), or the
    ``final`` one."""

    file: Path
    steps: int = 50
    guidance_scale: float = 7.5
    samples_per_prompt: int = 1
    noise_seed: int = 0
    trajectory: str = "latents"
    height: int | None = None
    width: int | None = None


@dataclass(frozen=True)
class DescribeRun:
    """One describe run: the model, the items, how they are described and where the rows go.

    ``batch_size`` items are written per part file (a checkpoint; rows do not depend on it);
    ``limit`` keeps the first items of the sorted input (a trial run); ``keep_sigma`` also stores
    each item's singular values.
    """

    model: str
    out: Path
    source: ImageInput | PromptInput
    descriptors: DescriptorSettings = field(default_factory=DescriptorSettings)
    dtype: str = "float32"
    batch_size: int = 8
    device: str | None = None
    limit: int | None = None
    keep_sigma: bool = False
    progress: bool = True

    def command_line(self) -> str:
        """The ``python -m geomlib describe`` command of this run (e.g. to rerun it under
        ``accelerate launch`` on many GPUs)."""
        source = self.source
        flags = [f"--model {self.model}"]
        if isinstance(source, ImageInput):
            flags.append(f"--images {source.folder}")
            flags += ["--resize"] * source.resize + ["--skip-unreadable"] * source.skip_unreadable
        else:
            flags.append(f"--prompts {source.file}")
            flags += [f"--steps {source.steps}", f"--guidance-scale {source.guidance_scale}"]
            flags += [
                f"--samples-per-prompt {source.samples_per_prompt}",
                f"--noise-seed {source.noise_seed}",
            ]
            flags.append(f"--trajectory {source.trajectory}")
        flags += [f"--height {source.height}"] * (source.height is not None)
        flags += [f"--width {source.width}"] * (source.width is not None)
        flags.append(f"--out {self.out}")
        d = self.descriptors
        flags += [f"--method {d.method}", f"--seed {d.seed}"] + [f"--k {d.k}"] * (d.k is not None)
        flags += [f"--radius {d.radius} --n-dirs {d.n_dirs}"] * (d.radius is not None)
        flags += [f"--chunk-size {d.chunk_size}"] * (d.chunk_size is not None)
        flags += [f"--dtype {self.dtype}", f"--batch-size {self.batch_size}"]
        flags += [f"--device {self.device}"] * (self.device is not None)
        flags += [f"--limit {self.limit}"] * (self.limit is not None)
        flags += ["--singular-values"] * self.keep_sigma
        return "python -m geomlib describe " + " ".join(flags)

    def __post_init__(self) -> None:
        try:
            positive_int("--batch-size", self.batch_size)
            positive_int("--limit", self.limit, optional=True)
            if self.device is not None:
                default_device(self.device)  # cuda without a GPU, or a name torch does not know
        except (TypeError, ValueError, RuntimeError) as error:
            message = str(error).split(" at start of device string")[0]
            raise InputError(
                f"--device {self.device}: {message}" if "device" in message.lower() else message
            ) from error
        if self.dtype not in DTYPES:
            raise InputError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        if isinstance(self.source, PromptInput) and self.source.trajectory not in TRAJECTORIES:
            raise InputError(f"trajectory must be one of {TRAJECTORIES}, got {self.source.trajectory!r}")
        if Path(self.out).exists() and not Path(self.out).is_dir():
            raise InputError(
                f"--out {self.out} exists and is a file: describe writes a directory of "
                "parquet parts (a merged file is not resumable); give a new path"
            )


def _inputs(run: DescribeRun) -> Sequence[Item]:
    """The full, sorted input list (every process builds the same one), cut to ``run.limit``."""
    items: Sequence[Item]
    source = run.source
    if isinstance(source, ImageInput):
        items = check_images(find_images(source.folder), source.skip_unreadable, source.resize)
    else:
        items = prompt_items(source.file, source.samples_per_prompt, source.noise_seed)
    return items[: run.limit] if run.limit else items


# ------------------------------------------------------------------------------- model and rows


def load_model(name: str, device: torch.device, dtype: torch.dtype) -> SDPipeline:
    """The pipeline ``name`` on ``device`` in ``dtype``, ready for Jacobian products of its decoder.

    Raises :class:`InputError` with the loader's message (what to download or which path to give)
    when the model cannot be loaded.
    """
    from geomlib.sd.pipelines import TINY_RANDOM, WeightsNotFoundError, load_pipeline, open_model

    try:
        if name == TINY_RANDOM:
            pipe = open_model(name, device=str(device))[0]
            for module in (pipe.vae, pipe.unet, pipe.text_encoder):
                module.to(dtype=dtype)
            return pipe
        return load_pipeline(name, device=device, dtype=dtype)
    except WeightsNotFoundError as error:
        raise InputError(str(error)) from error
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(f"cannot load the model {name!r}: {type(error).__name__}: {error}") from error


@dataclass(frozen=True)
class RowSettings:
    """Everything that decides a row's values; stored in every row and checked on resume."""

    model: str
    dtype: str
    height: int
    width: int
    descriptors: DescriptorSettings
    sampler: dict = field(default_factory=dict)  # prompts: trajectory, steps, guidance_scale

    def columns(self) -> Row:
        """The settings as the table's columns (``n_dirs`` is null when δ is off)."""
        descriptors = self.descriptors.key()
        if self.descriptors.radius is None:
            descriptors["n_dirs"] = None
        fixed = {"model": self.model, "dtype": self.dtype, "height": self.height, "width": self.width}
        return {**fixed, **descriptors, **self.sampler}


@dataclass
class Job:
    """What a batch needs besides its items."""

    pipe: SDPipeline
    settings: RowSettings
    keep_sigma: bool
    resize_to: tuple[int, int] | None = None
    skip_unreadable: bool = False
    columns: Row = field(init=False)

    def __post_init__(self) -> None:
        self.columns = {**self.settings.columns(), "geomlib_version": geomlib.__version__}


def _descriptor_columns(d: Descriptors, i: int, keep_sigma: bool) -> Row:
    row: Row = {
        "local_scaling": float(d.local_scaling[i]),
        "local_rank": float(d.local_rank[i]),
        "local_complexity": None if d.local_complexity is None else int(d.local_complexity[i]),
    }
    if keep_sigma:
        row["singular_values"] = d.singular_values[i].tolist()
    return row


def image_rows(batch: list[ImageItem], job: Job) -> list[Row]:
    """Rows of a batch of images: load, encode to the posterior mean latent, describe."""
    pixels, kept = [], []
    for item in batch:
        try:
            pixels.append(read_image(item.path, job.resize_to))
            kept.append(item)
        except InputError as error:
            if not job.skip_unreadable:
                raise
            print(f"skipping: {error}", file=sys.stderr)
    if not kept:
        return []
    latents = encode_images(job.pipe, torch.stack(pixels), batch_size=1)  # one image per call
    d = job.settings.descriptors.describe(job.pipe, latents)
    return [
        {"id": item.id, **_descriptor_columns(d, i, job.keep_sigma), **job.columns}
        for i, item in enumerate(kept)
    ]


def _trajectory(generation, kind: str) -> tuple[torch.Tensor, list[int], list[int]]:
    """``(S, B, 4, h, w)`` latents to describe, their step numbers and diffusion timesteps.

    ``latents``: step 0 is the noise, step ``s`` the latent after ``s`` sampler steps, at the
    timestep of the next step (0 after the last). ``x0``: step ``s`` is the clean latent predicted
    at step ``s``, at its timestep. ``final``: the last latent only.
    """
    timesteps = [int(t) for t in generation.timesteps]
    n_steps = len(generation.trajectory) - 1
    if kind == "latents":
        return generation.trajectory, list(range(n_steps + 1)), [*timesteps, 0][: n_steps + 1]
    if kind == "x0":
        return generation.predicted_x0, list(range(1, len(timesteps) + 1)), timesteps
    return generation.latents.unsqueeze(0), [n_steps], [0]


def prompt_rows(batch: list[PromptItem], job: Job) -> list[Row]:
    """Rows of a batch of (prompt, noise seed) samples: generate with the pipeline's sampler,
    recording the trajectory, then describe the chosen latents of every step."""
    from geomlib.sd.sampling import generate, initial_latents

    sampler, settings = job.settings.sampler, job.settings
    noise = torch.cat(
        [initial_latents(job.pipe, 1, item.noise_seed, settings.height, settings.width) for item in batch]
    )
    generation = generate(
        job.pipe,
        [item.prompt for item in batch],
        latents=noise,
        guidance_scale=sampler["guidance_scale"],
        num_inference_steps=sampler["steps"],
        batch_size=1,  # one prompt per sampler call: a trajectory must not depend on its batch
    )
    stack, steps, timesteps = _trajectory(generation, sampler["trajectory"])
    vae = job.pipe.vae
    flat = stack.reshape(-1, *stack.shape[2:]).to(vae.device, vae.dtype)  # (S * B, 4, h, w), step-major
    d = settings.descriptors.describe(job.pipe, flat)
    rows = []
    for b, item in enumerate(batch):
        for j, (step, timestep) in enumerate(zip(steps, timesteps, strict=True)):
            rows.append(
                {
                    "id": item.id,
                    "prompt_index": item.prompt_index,
                    "prompt": item.prompt,
                    "noise_seed": item.noise_seed,
                    "step": step,
                    "timestep": timestep,
                    **_descriptor_columns(d, j * len(batch) + b, job.keep_sigma),
                    **job.columns,
                }
            )
    return rows


def _schema(prompts: bool, singular_values: bool) -> pa.Schema:
    """The columns of every part of a run (the same in every part, so they read as one table)."""
    fields = [("id", pa.string()), ("height", pa.int32()), ("width", pa.int32())]
    if prompts:
        fields += [
            ("prompt_index", pa.int64()),
            ("prompt", pa.string()),
            ("noise_seed", pa.int64()),
            ("step", pa.int32()),
            ("timestep", pa.int32()),
        ]
    fields += [
        ("local_scaling", pa.float64()),
        ("local_rank", pa.float64()),
        ("local_complexity", pa.int64()),
    ]
    if singular_values:
        fields.append(("singular_values", pa.list_(pa.float32())))
    fields += [
        ("model", pa.string()),
        ("method", pa.string()),
        ("k", pa.int32()),
        ("seed", pa.int64()),
        ("radius", pa.float64()),
        ("n_dirs", pa.int32()),
        ("chunk_size", pa.int32()),
        ("dtype", pa.string()),
    ]
    if prompts:
        fields += [("trajectory", pa.string()), ("steps", pa.int32()), ("guidance_scale", pa.float64())]
    fields.append(("geomlib_version", pa.string()))
    return pa.schema(fields)


# ---------------------------------------------------------------------------------------- the run


def _distributed_state():
    """accelerate's process state: rank, world size and device; a single process without
    ``accelerate launch``. CPU-only machines ask for the CPU so that processes started by
    ``accelerate launch --multi_gpu`` join one gloo group."""
    from accelerate import PartialState

    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not (
        torch.cuda.is_available()
    )
    return PartialState(cpu=use_cpu)


def _model_size(pipe: SDPipeline, height: int | None, width: int | None) -> tuple[int, int]:
    """``(H, W)`` of images for ``pipe`` (``None``: the model's own size), checked against its VAE."""
    try:
        _, h, w = latent_shape(pipe, height, width)
    except ValueError as error:
        raise InputError(f"{error}; pass --resize (with --height/--width) to resize the images") from error
    return h * pipe.vae_scale_factor, w * pipe.vae_scale_factor


def _descriptors_for(descriptors: DescriptorSettings, pipe: SDPipeline, size: tuple[int, int]):
    """The run's descriptor settings for this model and size: a randomized ``k`` above the latent
    dimension is capped to it (with a note); a projected ``k`` above the image dimension refused."""
    latent_dim = 4 * (size[0] // pipe.vae_scale_factor) * (size[1] // pipe.vae_scale_factor)
    k = None if descriptors.method == "exact" else descriptors.k
    if descriptors.method == "randomized" and k is not None and k > latent_dim:
        print(
            f"--k {k} > latent dimension {latent_dim}: randomized SVD gives {latent_dim} values",
            file=sys.stderr,
        )
        k = latent_dim
    if descriptors.method == "projected" and k is not None and k > 3 * size[0] * size[1]:
        raise InputError(f"--k {k} is larger than the image dimension 3x{size[0]}x{size[1]}")
    if descriptors.radius is not None and descriptors.n_dirs > latent_dim:
        raise InputError(f"--n-dirs {descriptors.n_dirs} is more than the latent dimension {latent_dim}")
    return replace(descriptors, k=k)


def _job(run: DescribeRun, items: Sequence[Item], device: torch.device) -> Job:
    """Load the model, fix the image size and the settings every row will carry."""
    pipe = load_model(run.model, device, DTYPES[run.dtype])
    source = run.source
    if isinstance(source, PromptInput):
        size, resize = _model_size(pipe, source.height, source.width), False
        sampler = {
            "trajectory": source.trajectory,
            "steps": source.steps,
            "guidance_scale": source.guidance_scale,
        }
    elif source.resize:
        size, resize, sampler = _model_size(pipe, source.height, source.width), True, {}
    else:
        assert isinstance(items[0], ImageItem)
        first = image_size(items[0].path)
        assert not isinstance(first, str)  # check_images kept readable images only
        size, resize, sampler = _model_size(pipe, *first), False, {}
    settings = RowSettings(
        run.model, run.dtype, size[0], size[1], _descriptors_for(run.descriptors, pipe, size), sampler
    )
    return Job(
        pipe=pipe,
        settings=settings,
        keep_sigma=run.keep_sigma,
        resize_to=size if resize else None,
        skip_unreadable=isinstance(source, ImageInput) and source.skip_unreadable,
    )


def run_describe(run: DescribeRun) -> int:
    """Compute ``run``: every item not yet in ``run.out``, this process's shard of them; returns the
    rows written. Bad input raises :class:`InputError` before anything is computed."""
    state = _distributed_state()
    rank, world = state.process_index, state.num_processes
    device = state.device if world > 1 else default_device(run.device)
    items = _inputs(run)  # before the model: bad inputs fail in seconds
    _check_writable(Path(run.out))
    job = _job(run, items, device)
    check_memory(job.pipe, job.settings.height, job.settings.width, job.settings.descriptors)
    prompts = isinstance(run.source, PromptInput)
    schema = _schema(prompts, run.keep_sigma)
    texts = {item.id: item.prompt for item in items if isinstance(item, PromptItem)}
    done = done_ids(Path(run.out), job.settings.columns(), schema, texts)
    shard = items[rank::world]  # by input position, so shards stay disjoint whatever is done
    todo = [item for item in shard if item.id not in done]
    writer = PartWriter(Path(run.out), rank, schema)
    label = f"rank {rank}/{world}: " if world > 1 else ""
    print(
        f"{label}{len(items)} items, {len(shard) - len(todo)} of this shard already in {run.out}, "
        f"{len(todo)} to describe on {device}",
        file=sys.stderr,
    )
    try:
        _run_batches(todo, prompt_rows if prompts else image_rows, job, writer, run, label)
    finally:
        print(f"{label}{writer.rows_written} rows written to {run.out}", file=sys.stderr)
    state.wait_for_everyone()
    if world > 1 and state.is_main_process:
        print(
            f"all {world} processes done; join the parts: python -m geomlib merge {run.out}", file=sys.stderr
        )
    return writer.rows_written


def free_memory(device: torch.device) -> int:
    """Bytes free for tensors on ``device``: the GPU's free memory, or the machine's available RAM."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    import psutil

    return int(psutil.virtual_memory().available)


def check_memory(pipe: SDPipeline, height: int, width: int, descriptors: DescriptorSettings) -> None:
    """Raise :class:`InputError` when describing one ``height x width`` image would need more memory
    than the device has free (:func:`~geomlib.sd.decoder.estimate_memory`), saying what helps."""
    needed = estimate_memory(pipe, height, width, descriptors)
    free = free_memory(pipe.vae.device)
    if needed.peak <= free:
        return
    gib = 2**30
    fixes = ["--resize with a smaller --height/--width"]
    if needed.vertex_pass >= needed.products and descriptors.radius is not None:
        fixes += [f"a --chunk-size below {2 * descriptors.n_dirs} (vertices per pass)", "fewer --n-dirs"]
    else:
        fixes += ["a smaller --chunk-size (products per pass)"]
    raise InputError(
        f"describing one {height}x{width} image needs about {needed.peak / gib:.1f} GiB, "
        f"{free / gib:.1f} GiB are free on {pipe.vae.device}: pass {', or '.join(fixes)}"
    )


def _check_writable(out: Path) -> None:
    """Raise :class:`InputError` unless parts can be written into ``out`` (made if missing)."""
    probe = out / f".write-check-{os.getpid()}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise InputError(f"--out {out}: cannot write there ({error.strerror or error})") from error


def describe_to_table(run: DescribeRun) -> pd.DataFrame:
    """:func:`run_describe`, then every row in ``run.out`` (``N`` rows), sorted by id (prompts:
    prompt, noise seed, step): what ``python -m geomlib describe`` computes, from Python."""
    run_describe(run)
    table = read_parts(Path(run.out))
    frame = table.to_pandas() if table is not None else pd.DataFrame()
    order = ["prompt_index", "noise_seed", "step"] if "step" in frame else ["id"]
    return frame.sort_values(order, kind="stable").reset_index(drop=True) if len(frame) else frame


def _run_batches(
    todo: list[Item],
    rows_of: Callable[[Any, Job], list[Row]],
    job: Job,
    writer: PartWriter,
    run: DescribeRun,
    label: str,
) -> None:
    """Compute and write ``todo`` batch by batch, with a progress bar showing the rate."""
    unit = "sample" if isinstance(run.source, PromptInput) else "img"
    start = time.perf_counter()
    with tqdm(
        total=len(todo),
        unit=unit,
        desc=f"{label}describe",
        disable=not run.progress,
        file=sys.stderr,
        dynamic_ncols=True,
    ) as bar:
        for first in range(0, len(todo), run.batch_size):
            batch = todo[first : first + run.batch_size]
            rows = rows_of(batch, job)
            if rows:
                writer.write(rows, first_index=batch[0].index)
            bar.update(len(batch))
            bar.set_postfix(rows=writer.rows_written)
    elapsed = time.perf_counter() - start
    if todo:
        print(
            f"{label}{len(todo)} {unit}s, {writer.rows_written} rows in {elapsed:.1f} s "
            f"({writer.rows_written / max(elapsed, 1e-9):.2f} rows/s)",
            file=sys.stderr,
        )
