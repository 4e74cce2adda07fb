"""The ``paper`` path, run before anyone has a GPU: every notebook with ``profile="paper"`` and
``dry_run=True`` (the paper's settings, tiny counts) on stand-ins for what the paper needs.

    python -m geomlib.book.paper_dry              # or: make paper-dry
    python -m geomlib.book.paper_dry --only 04    # one chapter

The stand-ins are built under ``_build/paper-dry/`` (once; they are kept):

* ``sd14-small/``: a pipeline folder with Stable Diffusion 1.4's component classes and config keys
  (AutoencoderKL with a factor-8 VAE, UNet2DConditionModel with three cross-attention levels,
  CLIPTextModel of 77 tokens, CLIPTokenizer, PNDMScheduler with SD's betas, SD's latent scaling
  factor) and small random weights, saved as safetensors and loaded by ``load_pipeline`` like SD
  1.4. It has no procedural world, so every "is this Stable Diffusion" branch takes its SD side;
* ``imagenet/``: an ImageNet-style folder of class sub-folders with JPEG, PNG and TIFF images of
  at least 512 px;
* prompt files of each kind the chapters read (``.txt``, ``.json``, ``.csv``, ``.tsv``,
  ``.parquet``): chapter 05 takes its memorised prompts from the JSON file and its normal prompts
  from the parquet file (and chapter 08 the same two files, with the ImageNet-style folder as its
  training images).

Its numbers mean nothing (random weights, two images); what it shows is that every line of the
paper path runs. The runner's table of wall time and peak memory per chapter is written to
``_build/notebook-runs-paper.md``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from geomlib.book import runner

ROOT = runner.BUILD / "paper-dry"
#: What the dry run's prompt files hold: a few Stable-Diffusion-style captions.
MEMORISED_PROMPTS = (
    "the starry night by vincent van gogh",
    "mona lisa by leonardo da vinci",
    "the great wave",
)
NORMAL_PROMPTS = ("a photo of a cat on a sofa", "a red car in the rain", "a bowl of fruit on a table")
#: Side of the stand-in ImageNet images (the paper's resolution; the chapters resize them).
IMAGE_SIDE = 512


def _words(texts: list[str]) -> list[str]:
    return sorted({w for text in texts for w in re.findall(r"[a-z]+", text.lower())})


def build_pipeline_folder(folder: Path, *, seed: int = 0) -> Path:
    """Save the SD-1.4-shaped small pipeline to ``folder`` (kept if it is there already)."""
    if (folder / "model_index.json").exists():
        return folder
    from diffusers import PNDMScheduler

    from geomlib.chapters.reward_guidance import DREAMBOOTH_LIVE_SUBJECTS, DREAMBOOTH_LIVE_TEMPLATES
    from geomlib.sd.mini.build import SD_BETAS, build_pipeline

    texts = [*MEMORISED_PROMPTS, *NORMAL_PROMPTS, *DREAMBOOTH_LIVE_TEMPLATES, *DREAMBOOTH_LIVE_SUBJECTS]
    texts += ["a cat", "a dog", "a fox"]  # chapter 03's prompts for Stable Diffusion
    pipe = build_pipeline(_words(texts), "sd14-small", seed=seed)
    pipe.scheduler = PNDMScheduler(**SD_BETAS, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    pipe.vae.register_to_config(scaling_factor=0.18215)  # SD 1.4's
    pipe.save_pretrained(folder)
    return folder


def build_image_folder(folder: Path, *, classes: int = 4, per_class: int = 4, seed: int = 0) -> Path:
    """An ImageNet-style folder: ``classes`` sub-folders of smooth random images, at least
    ``IMAGE_SIDE`` px, as JPEG, PNG and TIFF in turn (kept if it is there already)."""
    if folder.exists() and any(folder.iterdir()):
        return folder
    rng = np.random.default_rng(seed)
    suffixes = (".JPEG", ".png", ".tif")
    for c in range(classes):
        (folder / f"n{c:08d}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            coarse = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
            image = Image.fromarray(coarse).resize(
                (IMAGE_SIDE + 8 * i, IMAGE_SIDE + 16 * c), Image.Resampling.BICUBIC
            )
            image.save(folder / f"n{c:08d}" / f"img{i}{suffixes[(c + i) % len(suffixes)]}")
    return folder


def write_prompt_files(folder: Path) -> dict[str, Path]:
    """The prompts in every format :func:`geomlib.sd.images.read_prompts` reads."""
    folder.mkdir(parents=True, exist_ok=True)
    memorised, normal = list(MEMORISED_PROMPTS), list(NORMAL_PROMPTS)
    files = {
        "txt": folder / "memorised.txt",
        "json": folder / "memorised.json",
        "csv": folder / "normal.csv",
        "tsv": folder / "normal.tsv",
        "parquet": folder / "normal.parquet",
    }
    files["txt"].write_text("\n".join(memorised) + "\n")
    files["json"].write_text(json.dumps([{"prompt": p} for p in memorised]))
    pd.DataFrame({"caption": normal}).to_csv(files["csv"], index=False)
    pd.DataFrame({"prompt": normal}).to_csv(files["tsv"], sep="\t", index=False)
    pd.DataFrame({"prompt": normal}).to_parquet(files["parquet"])
    from geomlib.sd.images import read_prompts

    for kind, path in files.items():  # the one reader gives the same prompts from every format
        expected = memorised if path.stem == "memorised" else normal
        if read_prompts(path) != expected:
            raise RuntimeError(f"the {kind} prompt file {path} reads as {read_prompts(path)}")
    return files


def fixtures(root: Path = ROOT) -> dict[str, object]:
    """Build the stand-ins under ``root``; returns the notebook parameters that point at them."""
    prompts = write_prompt_files(root / "prompts")
    return {
        "dry_run": True,
        "model": str(build_pipeline_folder(root / "sd14-small")),
        "imagenet_folder": str(build_image_folder(root / "imagenet")),
        # chapter 08's nearest-image baseline searches a folder of training images: the same one
        "training_images": str(build_image_folder(root / "imagenet")),
        "memorised_prompts": str(prompts["json"]),
        "normal_prompts": str(prompts["parquet"]),
        "cache_dir": str(root / "cache"),
    }


def declared_fixtures(notebooks: list[Path], parameters: dict[str, object]) -> dict[str, object]:
    """The fixture ``parameters`` that at least one of ``notebooks`` declares: what ``--only`` passes
    (the whole run passes them all, so that a fixture no chapter reads is an error)."""
    declared = set().union(*(runner.declared_parameters(notebook) for notebook in notebooks))
    return {name: value for name, value in parameters.items() if name in declared}


def main(argv: list[str] | None = None) -> int:
    """Build the stand-ins and run every notebook's paper path; 1 when any notebook fails."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: CUDA when present)")
    parser.add_argument("--only", nargs="*", default=[], help="notebook name prefixes, e.g. 03 04")
    parser.add_argument("--force", action="store_true", help="re-execute even when cached")
    args = parser.parse_args(argv)
    parameters = fixtures()
    model = str(parameters.pop("model"))
    notebooks = runner.discover(only=args.only)
    runs = runner.run_all(
        notebooks,
        "paper",
        device=args.device,
        model=model,
        extra=declared_fixtures(notebooks, parameters) if args.only else parameters,
        force=args.force,
    )
    failed = [run for run in runs if run.status == "failed"]
    for run in failed:
        print(f"FAILED {run.name}: {run.error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
