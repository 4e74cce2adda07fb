"""``python -m geomlib``: ψ, ν (and δ) for your own model, images and prompts, at scale.

    python -m geomlib describe --model CompVis/stable-diffusion-v1-4 --images photos/ --out d.parquet
    python -m geomlib describe --model data/mini-sd --prompts prompts.txt --steps 25 --out t.parquet
    accelerate launch --multi_gpu --num_processes 8 -m geomlib describe ...   # one shard per process
    python -m geomlib merge d.parquet --into d-merged.parquet

Argument parsing and ``main()`` only: the options become a :class:`geomlib.sd.runs.DescribeRun`,
which :func:`geomlib.sd.runs.run_describe` computes (resumable parquet parts, one shard per
process); ``merge`` is :func:`geomlib.sd.store.merge_parts`. Bad input exits with status 2 and one
line saying what to change.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from geomlib.runtime.profiles import torch_threads
from geomlib.sd.decoder import DescriptorSettings
from geomlib.sd.images import IMAGE_SUFFIXES, PROMPT_SUFFIXES, InputError
from geomlib.sd.runs import DTYPES, TRAJECTORIES, DescribeRun, ImageInput, PromptInput, run_describe
from geomlib.sd.store import merge_parts, part_files

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


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
        help=f"prompt file ({' '.join(PROMPT_SUFFIXES)}; .txt: one prompt per line, blank lines "
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


def describe_run(args: argparse.Namespace) -> DescribeRun:
    """The :class:`~geomlib.sd.runs.DescribeRun` that the parsed ``describe`` options ask for."""
    check_arguments(args)
    try:
        descriptors = DescriptorSettings(
            method=args.method,
            k=None if args.method == "exact" else args.k,
            seed=args.seed,
            radius=args.radius,
            n_dirs=args.n_dirs or 16,
            chunk_size=args.chunk_size,
        )
    except ValueError as error:
        raise InputError(str(error)) from error
    source: ImageInput | PromptInput
    if args.images is not None:
        source = ImageInput(args.images, args.resize, args.height, args.width, args.skip_unreadable)
    else:
        source = PromptInput(
            args.prompts,
            steps=args.steps,
            guidance_scale=args.guidance_scale,
            samples_per_prompt=args.samples_per_prompt,
            noise_seed=args.noise_seed,
            trajectory=args.trajectory,
            height=args.height,
            width=args.width,
        )
    return DescribeRun(
        model=args.model,
        out=args.out,
        source=source,
        descriptors=descriptors,
        dtype=args.dtype,
        batch_size=args.batch_size,
        device=args.device,
        limit=args.limit,
        keep_sigma=args.singular_values,
        progress=not args.no_progress,
    )


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
        if args.command == "merge":
            return run_merge(args)
        run = describe_run(args)
        with torch_threads(args.threads):
            run_describe(run)
        return 0
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted: every finished batch is kept; run the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
