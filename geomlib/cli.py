"""``python -m geomlib``: ψ, ν (and δ) for your own model, images and prompts, at scale.

    python -m geomlib describe --model CompVis/stable-diffusion-v1-4 --images photos/ --out d.parquet
    python -m geomlib describe --model data/mini-sd --prompts prompts.txt --steps 25 --out t.parquet
    accelerate launch --multi_gpu --num_processes 8 -m geomlib describe ...   # one shard per process
    python -m geomlib merge d.parquet --into d-merged.parquet

``--out`` is a directory of parquet part files, one per batch, each written under a temporary name
and renamed, so a killed run loses at most the batch in flight and never leaves a half-written part.
Running the same command again skips every item already in ``--out`` (resume). Under ``accelerate
launch`` every process takes the items ``rank, rank + world, ...`` of the sorted input list and
writes its own parts; ``merge`` joins the parts into one file, sorted and checked for duplicates.
Every row carries its id, the descriptors, the method and its parameters and the package version.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

import geomlib
from geomlib.descriptors import Descriptors
from geomlib.jacobian import Method
from geomlib.profiles import default_device, torch_threads

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
TRAJECTORIES: tuple[str, ...] = ("latents", "x0", "final")
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
Row = dict[str, Any]
#: A diffusers ``StableDiffusionPipeline``; its modules are attributes registered at run time,
#: which type checkers cannot see. (diffusers is imported only when a model is loaded.)
Pipeline = Any


class InputError(Exception):
    """Bad input (paths, images, model, options): reported in one message, exit status 2."""


@dataclass(frozen=True)
class ImageItem:
    """An image file. ``index``: its position in the full sorted input list, which decides its
    shard (``index % world_size``) and names the part file of the batch it starts."""

    index: int
    id: str
    path: Path


@dataclass(frozen=True)
class PromptItem:
    """One generated sample: prompt number ``prompt_index`` from noise seed ``noise_seed``."""

    index: int
    id: str
    prompt_index: int
    prompt: str
    noise_seed: int


Item = ImageItem | PromptItem


@dataclass(frozen=True)
class Settings:
    """Everything that decides a row's values; stored in every row and checked on resume."""

    model: str
    method: Method
    k: int | None
    seed: int
    radius: float | None
    n_dirs: int | None
    dtype: str
    height: int
    width: int


@dataclass(frozen=True)
class PromptSettings(Settings):
    """:class:`Settings` of a run on prompts: the sampler and which latents are described."""

    trajectory: str = "latents"
    steps: int = 50
    guidance_scale: float = 7.5


# ----------------------------------------------------------------------------------- the parser


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m geomlib`` parser with its ``describe`` and ``merge`` commands."""
    parser = argparse.ArgumentParser(
        prog="python -m geomlib",
        description="Local geometry of generative models: local scaling ψ, local rank ν and local "
        "complexity δ of a latent diffusion model's decoder, for your images or prompts.",
        epilog="Run `python -m geomlib describe --help` for the options and examples.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{describe,merge}")
    _add_describe_parser(commands)
    merge = commands.add_parser(
        "merge",
        help="join the part files of a describe run into one parquet file",
        description="Join the part files of OUT (written by one or many processes) into one parquet "
        "file, sorted by id (and step), after checking that no item appears twice with different "
        "values. The parts are left in place; the merged file is written atomically.",
    )
    merge.add_argument("out", type=Path, help="the --out directory of a describe run")
    merge.add_argument(
        "--into", type=Path, default=None,
        help="merged file (default: OUT's name with .merged.parquet, next to it); replaced if it exists",
    )  # fmt: skip
    return parser


DESCRIBE_EPILOG = """\
examples:
  python -m geomlib describe --model CompVis/stable-diffusion-v1-4 --images imgs/ --out d.parquet
  python -m geomlib describe --model data/mini-sd --prompts prompts.txt --steps 25 --out t.parquet \\
      --radius 0.05 --n-dirs 16
  accelerate launch --multi_gpu --num_processes 4 -m geomlib describe --model ... --out d.parquet
  python -m geomlib merge d.parquet --into d-merged.parquet

output: OUT is a directory of parquet parts (part-<first index>-rank<r>.parquet), readable as one
table with pandas.read_parquet(OUT). Columns: id, height, width, local_scaling, local_rank,
local_complexity (null without --radius), model, method, k, seed, radius, n_dirs, dtype,
geomlib_version; for prompts also prompt_index, prompt, noise_seed, step, timestep, trajectory,
steps, guidance_scale (one row per prompt, noise seed and step); singular_values with
--singular-values. Rerunning the same command resumes: items already in OUT are skipped; a run with
different settings on the same OUT is refused. Under accelerate every process takes a disjoint
shard and writes its own parts (on a machine without GPUs, --multi_gpu still starts the processes
and they run on the CPU over gloo; `--cpu --num_processes N` starts only one process unless given
an MPI hostfile).

exit status: 0 done, 2 bad input (nothing of what was written is lost), 130 interrupted.
"""


def _add_describe_parser(commands: argparse._SubParsersAction) -> None:
    describe_parser = commands.add_parser(
        "describe",
        help="compute ψ, ν (and δ) of the decoder at your images' latents or along generations",
        description="Encode images (or generate from prompts) with a Stable-Diffusion-type pipeline "
        "and compute the decoder's local scaling ψ, local rank ν and, with --radius, local "
        "complexity δ at each latent; one row per item in a directory of parquet parts.",
        epilog=DESCRIBE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = describe_parser.add_argument
    add(
        "--model",
        required=True,
        help="hub id (e.g. CompVis/stable-diffusion-v1-4), path of a "
        "diffusers pipeline directory, mini-sd (the project's offline model) or tiny-random",
    )
    source = describe_parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--images",
        type=Path,
        help="folder of images (searched recursively; "
        f"{' '.join(IMAGE_SUFFIXES)}); the id of a row is the path relative to it",
    )
    source.add_argument(
        "--prompts",
        type=Path,
        help="text file, one prompt per line (blank lines "
        "skipped): describes the generated samples along their trajectories",
    )
    add("--out", type=Path, required=True, help="output directory of parquet parts, e.g. d.parquet")
    _add_descriptor_options(describe_parser)
    _add_source_options(describe_parser)
    _add_run_options(describe_parser)


def _add_descriptor_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("descriptors")
    group.add_argument(
        "--method",
        choices=("projected", "randomized", "exact"),
        default="projected",
        help="spectrum of J: the paper's sketch W·J (projected), randomized SVD of the "
        "top k, or the full Jacobian (exact; small models only). Default: projected",
    )
    group.add_argument(
        "--k",
        type=int,
        default=120,
        help="sketch size (projected) or number of "
        "singular values (randomized; capped at the latent dimension). Default: 120",
    )
    group.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of W, of the randomized test vectors and of δ's directions (local generators). Default: 0",
    )
    group.add_argument(
        "--radius",
        type=float,
        default=None,
        help="radius of δ's cross-polytope in latent units; δ is computed only when given (e.g. 0.05)",
    )
    group.add_argument(
        "--n-dirs",
        type=int,
        default=None,
        help="directions of δ's cross-polytope (needs --radius). Default with --radius: 16",
    )
    group.add_argument(
        "--singular-values",
        action="store_true",
        help="also store each item's singular values (a list column)",
    )


def _add_source_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("images and generation")
    group.add_argument(
        "--resize",
        action="store_true",
        help="images: resize every image to "
        "--height x --width (default: the model's size); without it, images of "
        "different sizes are refused",
    )
    group.add_argument(
        "--skip-unreadable",
        action="store_true",
        help="images: skip files that cannot be read (listed on stderr) instead of stopping",
    )
    group.add_argument(
        "--height",
        type=int,
        default=None,
        help="image height: the target of --resize, or of generation (default: the model's size)",
    )
    group.add_argument("--width", type=int, default=None, help="image width (as --height)")
    group.add_argument("--steps", type=int, default=None, help="prompts: sampling steps. Default: 50")
    group.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        help="prompts: classifier-free guidance weight. Default: 7.5",
    )
    group.add_argument(
        "--samples-per-prompt",
        type=int,
        default=None,
        help="prompts: samples per prompt, from noise seeds --noise-seed, --noise-seed + 1, ... Default: 1",
    )
    group.add_argument(
        "--noise-seed",
        type=int,
        default=None,
        help="prompts: first noise seed (the same for every prompt). Default: 0",
    )
    group.add_argument(
        "--trajectory",
        choices=TRAJECTORIES,
        default=None,
        help="prompts: which "
        "latents to describe: every step's latent (latents, step 0 = the noise), the "
        "predicted clean latent of every step (x0), or the final one. Default: latents",
    )


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("run")
    group.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="items per part file; a kill loses at most one part. Rows do not depend on it (each item"
        " is encoded or generated, then described, in calls of its own). Default: 8",
    )
    group.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="at most this many Jacobian products per vectorised pass (bounds memory)",
    )
    group.add_argument(
        "--dtype",
        choices=tuple(DTYPES),
        default="float32",
        help="model precision (products in it, SVDs in float32). Default: float32",
    )
    group.add_argument(
        "--device",
        default=None,
        help="single process only: cpu, cuda, cuda:1 ... "
        "(default: $GEOMLIB_DEVICE, else CUDA when present; under accelerate: its device)",
    )
    group.add_argument(
        "--limit",
        type=int,
        default=None,
        help="describe only the first N items of "
        "the sorted input (a trial run; rerun without it to do the rest)",
    )
    group.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    group.add_argument("--no-progress", action="store_true", help="no progress bar")


_PROMPT_DEFAULTS = dict(
    steps=50, guidance_scale=7.5, samples_per_prompt=1, noise_seed=0, trajectory="latents"
)


def check_arguments(args: argparse.Namespace) -> None:
    """Raise :class:`InputError` for option values that cannot work; fill the prompt defaults."""
    positive = dict(
        k=args.k,
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
        n_dirs=args.n_dirs,
        height=args.height,
        width=args.width,
        limit=args.limit,
        threads=args.threads,
        steps=args.steps,
        samples_per_prompt=args.samples_per_prompt,
    )
    for name, value in positive.items():
        if value is not None and value < 1:
            raise InputError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if args.radius is not None and not (np.isfinite(args.radius) and args.radius > 0):
        raise InputError(f"--radius must be a positive number, got {args.radius}")
    if args.n_dirs is not None and args.radius is None:
        raise InputError("--n-dirs sets δ's directions: give --radius too (δ is off without it)")
    if args.radius is not None and args.n_dirs is None:
        args.n_dirs = 16
    prompt_only = [name for name in _PROMPT_DEFAULTS if getattr(args, name) is not None]
    if args.images is not None:
        if prompt_only:
            flags = ", ".join("--" + n.replace("_", "-") for n in prompt_only)
            raise InputError(f"{flags}: only for --prompts (generation), not --images")
        if (args.height or args.width) and not args.resize:
            raise InputError("with --images, --height/--width are the target of --resize: add --resize")
    else:
        if args.resize or args.skip_unreadable:
            raise InputError("--resize and --skip-unreadable: only for --images")
        for name, default in _PROMPT_DEFAULTS.items():
            if getattr(args, name) is None:
                setattr(args, name, default)
    if args.out.exists() and not args.out.is_dir():
        raise InputError(
            f"--out {args.out} exists and is a file: describe writes a directory of "
            "parquet parts (a merged file is not resumable); give a new path"
        )


# ------------------------------------------------------------------------------------ the inputs


def find_images(folder: Path) -> list[ImageItem]:
    """The images under ``folder`` (recursively), sorted by relative path, which is their id."""
    if not folder.exists():
        raise InputError(f"--images {folder}: no such folder")
    if not folder.is_dir():
        raise InputError(f"--images {folder}: not a folder")
    paths = sorted(
        (p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
        key=lambda p: p.relative_to(folder).as_posix(),
    )
    if not paths:
        raise InputError(
            f"--images {folder}: no images found (looked for {' '.join(IMAGE_SUFFIXES)}, recursively)"
        )
    return [ImageItem(index=i, id=p.relative_to(folder).as_posix(), path=p) for i, p in enumerate(paths)]


def _image_size(path: Path) -> tuple[int, int] | str:
    """``(height, width)`` from the file's header, or why it cannot be read."""
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except (UnidentifiedImageError, OSError, ValueError) as error:
        return f"{type(error).__name__}: {error}"


def check_images(items: list[ImageItem], skip_unreadable: bool, resize: bool) -> list[ImageItem]:
    """Read every header: refuse unreadable files (or drop them) and, unless ``resize``, mixed sizes.

    Returns the readable items; raises :class:`InputError` naming the offending files.
    """
    sizes: dict[str, tuple[int, int]] = {}
    unreadable: list[str] = []
    for item in items:
        size = _image_size(item.path)
        if isinstance(size, str):
            unreadable.append(f"{item.id} ({size})")
        else:
            sizes[item.id] = size
    if unreadable and not skip_unreadable:
        raise InputError(
            f"{len(unreadable)} unreadable image(s): "
            + _listing(unreadable)
            + "\nremove or fix them, or pass --skip-unreadable"
        )
    if unreadable:
        print(f"skipping {len(unreadable)} unreadable image(s): {_listing(unreadable)}", file=sys.stderr)
    counts = Counter(sizes.values())
    if len(counts) > 1 and not resize:
        parts = []
        for (height, width), count in counts.most_common():
            examples = [i for i, s in sizes.items() if s == (height, width)][:3]
            parts.append(f"{height}x{width}: {count} image(s), e.g. {', '.join(examples)}")
        raise InputError(
            "images of different sizes (height x width):\n  "
            + "\n  ".join(parts)
            + "\npass --resize to resize all to the model's size (or --height/--width)"
        )
    return [item for item in items if item.id in sizes]


def _listing(entries: list[str], most: int = 10) -> str:
    more = f" ... and {len(entries) - most} more" if len(entries) > most else ""
    return "; ".join(entries[:most]) + more


def read_prompts(path: Path, samples_per_prompt: int, first_noise_seed: int) -> list[PromptItem]:
    """One item per (prompt, noise seed): prompt ``i`` (its ``i``-th non-blank line) with seeds
    ``first_noise_seed + j``, ``j < samples_per_prompt``; ids ``prompt000012-seed3``."""
    if not path.is_file():
        raise InputError(f"--prompts {path}: no such file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"--prompts {path}: cannot read it as UTF-8 text ({error})") from error
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise InputError(f"--prompts {path}: no prompts (the file is empty or blank)")
    items: list[PromptItem] = []
    for i, prompt in enumerate(prompts):
        for seed in range(first_noise_seed, first_noise_seed + samples_per_prompt):
            items.append(
                PromptItem(
                    index=len(items),
                    id=f"prompt{i:06d}-seed{seed}",
                    prompt_index=i,
                    prompt=prompt,
                    noise_seed=seed,
                )
            )
    return items


def load_pixels(path: Path, size: tuple[int, int] | None) -> torch.Tensor:
    """``(3, H, W)`` floats in ``[0, 1]``, resized (bicubic) to ``size = (H, W)`` when given.

    Raises :class:`InputError` when the file cannot be decoded.
    """
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
            if size is not None and rgb.size != (size[1], size[0]):
                rgb = rgb.resize((size[1], size[0]), Image.Resampling.BICUBIC)
            array = np.asarray(rgb, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise InputError(f"cannot read image {path}: {type(error).__name__}: {error}") from error
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


# ------------------------------------------------------------------------------------ the output


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
        ("dtype", pa.string()),
    ]
    if prompts:
        fields += [("trajectory", pa.string()), ("steps", pa.int32()), ("guidance_scale", pa.float64())]
    fields.append(("geomlib_version", pa.string()))
    return pa.schema(fields)


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


def done_ids(out: Path, settings: Settings, schema: pa.Schema, prompts: dict[str, str]) -> set[str]:
    """Ids already in ``out``, after checking that they were computed with the same ``settings``
    and columns (and, for prompts, the same prompt under each id); else :class:`InputError`."""
    files = part_files(out)
    if not files:
        return set()
    names = set(pq.read_schema(files[0]).names)
    if names != set(schema.names):
        raise InputError(
            f"{out} holds parts with other columns ({sorted(names ^ set(schema.names))} "
            "differ: --singular-values, or --images vs --prompts): use another --out"
        )
    wanted = {name: value for name, value in asdict(settings).items() if name in names}
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


# ------------------------------------------------------------------------------- model and maths


def load_model(name: str, device: torch.device, dtype: torch.dtype) -> Pipeline:
    """The pipeline ``name`` on ``device`` in ``dtype``, ready for Jacobian products of its decoder.

    Raises :class:`InputError` with the loader's message (what to download or which path to give)
    when the model cannot be loaded.
    """
    from geomlib.latent import TINY_RANDOM, WeightsNotFoundError, load_pipeline, open_model

    pipe: Pipeline
    try:
        if name == TINY_RANDOM:
            pipe = open_model(name, device=str(device))[0]
            for module in (pipe.vae, pipe.unet, pipe.text_encoder):
                module.to(dtype=dtype)
        else:
            pipe = load_pipeline(name, device=device, dtype=dtype)
    except WeightsNotFoundError as error:
        raise InputError(str(error)) from error
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(f"cannot load the model {name!r}: {type(error).__name__}: {error}") from error
    return pipe


def describe_latents(job: Job, latents: torch.Tensor, settings: Settings) -> Descriptors:
    """ψ, ν (and δ) of the job's decoder at ``latents: (N, 4, h, w)`` with ``settings``, through
    :func:`geomlib.latent.decoder_descriptors` (one latent per call, so a row does not depend on
    ``--batch-size``, sharding or resuming); ``(N,)`` fields on the CPU."""
    from geomlib.latent import decoder_descriptors

    return decoder_descriptors(
        job.pipe,
        latents,
        method=settings.method,
        k=settings.k,
        seed=settings.seed,
        radius=settings.radius,
        n_dirs=settings.n_dirs,
        chunk_size=job.chunk_size,
        progress=False,
    )


def _descriptor_columns(d: Descriptors, i: int, keep_sigma: bool) -> Row:
    row: Row = {
        "local_scaling": float(d.local_scaling[i]),
        "local_rank": float(d.local_rank[i]),
        "local_complexity": None if d.local_complexity is None else int(d.local_complexity[i]),
    }
    if keep_sigma:
        row["singular_values"] = d.singular_values[i].tolist()
    return row


def _setting_columns(settings: Settings) -> Row:
    return {**asdict(settings), "geomlib_version": geomlib.__version__}


@dataclass
class Job:
    """What a batch needs besides its items."""

    pipe: Pipeline
    settings: Settings
    batch_size: int
    chunk_size: int | None
    keep_sigma: bool
    resize_to: tuple[int, int] | None = None
    skip_unreadable: bool = False


def image_rows(batch: list[ImageItem], job: Job) -> list[Row]:
    """Rows of a batch of images: load, encode to the posterior mean latent, describe."""
    from geomlib.latent import encode_images

    pixels, kept = [], []
    for item in batch:
        try:
            pixels.append(load_pixels(item.path, job.resize_to))
            kept.append(item)
        except InputError as error:
            if not job.skip_unreadable:
                raise
            print(f"skipping: {error}", file=sys.stderr)
    if not kept:
        return []
    latents = encode_images(job.pipe, torch.stack(pixels), batch_size=1)  # one image per call, as above
    d = describe_latents(job, latents, job.settings)
    fixed = _setting_columns(job.settings)
    return [
        {"id": item.id, **_descriptor_columns(d, i, job.keep_sigma), **fixed} for i, item in enumerate(kept)
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
    from geomlib.latent import generate, initial_latents

    s = job.settings
    if not isinstance(s, PromptSettings):
        raise TypeError("prompt_rows needs PromptSettings")
    noise = torch.cat(
        [initial_latents(job.pipe, 1, seed=item.noise_seed, height=s.height, width=s.width) for item in batch]
    )
    generation = generate(
        job.pipe,
        [item.prompt for item in batch],
        latents=noise,
        guidance_scale=s.guidance_scale,
        num_inference_steps=s.steps,
        batch_size=1,  # one prompt per sampler call: a trajectory must not depend on its batch
    )
    stack, steps, timesteps = _trajectory(generation, s.trajectory)
    vae = job.pipe.vae
    flat = stack.reshape(-1, *stack.shape[2:]).to(vae.device, vae.dtype)  # (S * B, 4, h, w), step-major
    d = describe_latents(job, flat, s)
    fixed = _setting_columns(s)
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
                    **fixed,
                }
            )
    return rows


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


def _model_size(pipe: Pipeline, height: int | None, width: int | None) -> tuple[int, int]:
    """``(H, W)`` of images for ``pipe`` (``None``: the model's own size), checked against its VAE."""
    from geomlib.latent import latent_shape

    try:
        _, h, w = latent_shape(pipe, height, width)
    except ValueError as error:
        raise InputError(f"{error}; pass --resize (with --height/--width) to resize the images") from error
    return h * pipe.vae_scale_factor, w * pipe.vae_scale_factor


def _settings(args: argparse.Namespace, pipe: Pipeline, size: tuple[int, int]) -> Settings:
    latent_dim = 4 * (size[0] // pipe.vae_scale_factor) * (size[1] // pipe.vae_scale_factor)
    k = None if args.method == "exact" else args.k
    if args.method == "randomized" and k is not None and k > latent_dim:
        print(
            f"--k {k} > latent dimension {latent_dim}: randomized SVD gives {latent_dim} values",
            file=sys.stderr,
        )
        k = latent_dim
    if args.method == "projected" and k is not None and k > 3 * size[0] * size[1]:
        raise InputError(f"--k {k} is larger than the image dimension 3x{size[0]}x{size[1]}")
    common = Settings(
        model=args.model,
        method=cast(Method, args.method),
        k=k,
        seed=args.seed,
        radius=args.radius,
        n_dirs=args.n_dirs,
        dtype=args.dtype,
        height=size[0],
        width=size[1],
    )
    if args.prompts is None:
        return common
    return PromptSettings(
        **asdict(common), trajectory=args.trajectory, steps=args.steps, guidance_scale=args.guidance_scale
    )


def _inputs(args: argparse.Namespace) -> Sequence[Item]:
    """The full, sorted input list (every process builds the same one), cut to ``--limit``."""
    items: Sequence[Item]
    if args.images is not None:
        items = check_images(find_images(args.images), args.skip_unreadable, args.resize)
    else:
        items = read_prompts(args.prompts, args.samples_per_prompt, args.noise_seed)
    return items[: args.limit] if args.limit else items


def _image_size_of(
    items: Sequence[Item], args: argparse.Namespace, pipe: Pipeline
) -> tuple[tuple[int, int], bool]:
    """The size every image is encoded at, and whether images must be resized to it."""
    if args.resize:
        return _model_size(pipe, args.height, args.width), True
    assert isinstance(items[0], ImageItem)
    first = _image_size(items[0].path)
    assert not isinstance(first, str)  # check_images kept readable images only
    return _model_size(pipe, *first), False


def _job(args: argparse.Namespace, items: Sequence[Item], device: torch.device) -> Job:
    """Load the model, fix the image size and the settings every row will carry."""
    pipe = load_model(args.model, device, DTYPES[args.dtype])
    if args.prompts is not None:
        size, resize = _model_size(pipe, args.height, args.width), False
    else:
        size, resize = _image_size_of(items, args, pipe)
    return Job(
        pipe=pipe,
        settings=_settings(args, pipe, size),
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
        keep_sigma=args.singular_values,
        resize_to=size if resize else None,
        skip_unreadable=args.skip_unreadable,
    )


def run_describe(args: argparse.Namespace) -> int:
    """The ``describe`` command; returns the exit status (bad input raises :class:`InputError`)."""
    check_arguments(args)
    state = _distributed_state()
    rank, world = state.process_index, state.num_processes
    device = state.device if world > 1 else default_device(args.device)
    items = _inputs(args)  # before the model: bad inputs fail in seconds
    job = _job(args, items, device)
    prompts = args.prompts is not None
    schema = _schema(prompts, args.singular_values)
    texts = {item.id: item.prompt for item in items if isinstance(item, PromptItem)}
    done = done_ids(args.out, job.settings, schema, texts)
    shard = items[rank::world]  # by input position, so shards stay disjoint whatever is done
    todo = [item for item in shard if item.id not in done]
    writer = PartWriter(args.out, rank, schema)
    label = f"rank {rank}/{world}: " if world > 1 else ""
    print(
        f"{label}{len(items)} items, {len(shard) - len(todo)} of this shard already in {args.out}, "
        f"{len(todo)} to describe on {device}",
        file=sys.stderr,
    )
    try:
        _run_batches(todo, prompt_rows if prompts else image_rows, job, writer, args, label)
    finally:
        print(f"{label}{writer.rows_written} rows written to {args.out}", file=sys.stderr)
    state.wait_for_everyone()
    if world > 1 and state.is_main_process:
        print(
            f"all {world} processes done; join the parts: python -m geomlib merge {args.out}", file=sys.stderr
        )
    return 0


def describe_to_parquet(
    out: str | os.PathLike,
    *,
    model: str,
    images: str | os.PathLike | None = None,
    prompts: str | os.PathLike | None = None,
    **options: Any,
) -> pd.DataFrame:
    """``python -m geomlib describe`` from Python (e.g. a notebook's data preparation).

    Parameters
    ----------
    out
        the output directory of parquet parts; rows already there are kept (resume).
    model, images, prompts
        as ``--model``, ``--images``, ``--prompts`` (give one of ``images``, ``prompts``).
    **options
        the other options by their long names with ``_`` for ``-``: ``k=120``,
        ``radius=0.05``, ``batch_size=8``, ``resize=True``, ``no_progress=True`` ...

    Returns
    -------
    Every row in ``out`` (``N`` rows), sorted by id (prompts: prompt, noise seed, step).
    Bad input raises :class:`InputError` with the command line's message.
    """
    argv = ["describe", "--model", str(model), "--out", str(out)]
    argv += ["--images", str(images)] if images is not None else ["--prompts", str(prompts)]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is not None and value is not False:
            argv += [flag, str(value)]
    args = build_parser().parse_args(argv)
    with torch_threads(args.threads):
        run_describe(args)
    table = read_parts(Path(out))
    frame = table.to_pandas() if table is not None else pd.DataFrame()
    order = ["prompt_index", "noise_seed", "step"] if "step" in frame else ["id"]
    return frame.sort_values(order, kind="stable").reset_index(drop=True) if len(frame) else frame


def _run_batches(
    todo: list[Item],
    rows_of: Callable[[Any, Job], list[Row]],
    job: Job,
    writer: PartWriter,
    args: argparse.Namespace,
    label: str,
) -> None:
    """Compute and write ``todo`` batch by batch, with a progress bar showing the rate."""
    unit = "sample" if args.prompts is not None else "img"
    start = time.perf_counter()
    with tqdm(
        total=len(todo),
        unit=unit,
        desc=f"{label}describe",
        disable=args.no_progress,
        file=sys.stderr,
        dynamic_ncols=True,
    ) as bar:
        for first in range(0, len(todo), args.batch_size):
            batch = todo[first : first + args.batch_size]
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


# ------------------------------------------------------------------------------------------ merge


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


def run_merge(args: argparse.Namespace) -> int:
    """The ``merge`` command; returns the exit status."""
    out: Path = args.out
    into = args.into or out.with_name(out.name.removesuffix(".parquet") + ".merged.parquet")
    rows = merge_parts(out, into)
    print(f"{rows} rows from {len(part_files(out))} part files written to {into}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m geomlib``; returns the exit status (2 on bad input)."""
    args = build_parser().parse_args(argv)
    try:
        with torch_threads(getattr(args, "threads", None)):
            return run_describe(args) if args.command == "describe" else run_merge(args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted: every finished batch is kept; run the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
