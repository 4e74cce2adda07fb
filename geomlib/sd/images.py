"""Image folders and prompt files: the one reader of each, for the chapters and the command line.

* :func:`image_files`: the images under a folder, one list of suffixes, sorted by relative path;
* :func:`read_image`: one file as ``(3, H, W)`` floats in ``[0, 1]``, optionally resized;
* :class:`ImageFolderImages`: an ImageNet-style folder (one sub-folder per class) sampled uniformly
  over classes, as square uint8 crops;
* :func:`read_prompts`: prompts from ``.txt``, ``.json``, ``.csv``, ``.tsv`` or ``.parquet``.

Bad input raises :class:`InputError` (a ``ValueError``) with a message that names the file and the
fix; the command line prints it in one line and exits with status 2.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

#: Every image reader of the project looks for these (lower-case) suffixes.
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
#: Prompt file types :func:`read_prompts` reads.
PROMPT_SUFFIXES: tuple[str, ...] = (".txt", ".json", ".csv", ".tsv", ".parquet")


class InputError(ValueError):
    """Bad input (paths, images, prompts, model, options), reported in one message."""


def image_files(folder: str | os.PathLike) -> list[Path]:
    """The images under ``folder`` (recursively, :data:`IMAGE_SUFFIXES`), sorted by relative path."""
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise InputError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    return sorted(
        (p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
        key=lambda p: p.relative_to(folder).as_posix(),
    )


def image_size(path: Path) -> tuple[int, int] | str:
    """``(height, width)`` from the file's header, or why it cannot be read."""
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except (UnidentifiedImageError, OSError, ValueError) as error:
        return f"{type(error).__name__}: {error}"


#: Pillow's modes of more than 8 bits per sample, and the largest value each holds: Pillow reads
#: 16-bit grayscale PNG and TIFF as these (16-bit colour arrives already reduced to 8 bits).
HIGH_DEPTH_MODES: dict[str, int] = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 65535}


def _rgb(image: Image.Image) -> Image.Image:
    """The image as 8-bit RGB; a 16-bit image is scaled to 8 bits first (Pillow's own conversion
    clips every value above 255, which turns a 16-bit image white)."""
    if image.mode in HIGH_DEPTH_MODES:
        scaled = np.asarray(image, dtype=np.float64) * (255 / HIGH_DEPTH_MODES[image.mode])
        image = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        raise ValueError("floating-point images (mode F) have no defined range: save them as 8 or 16 bit")
    return image.convert("RGB")


def _resized_float(image: Image.Image, size: tuple[int, int] | None) -> np.ndarray:
    """``(H, W, 3)`` float32 in ``[0, 1]`` at the image's full bit depth, resized (bicubic)."""
    if image.mode not in HIGH_DEPTH_MODES:
        rgb = _rgb(image)
        if size is not None and rgb.size != (size[1], size[0]):
            rgb = rgb.resize((size[1], size[0]), Image.Resampling.BICUBIC)
        return np.asarray(rgb, dtype=np.float32) / 255.0
    gray = Image.fromarray(np.asarray(image, dtype=np.float32) / HIGH_DEPTH_MODES[image.mode], mode="F")
    if size is not None and gray.size != (size[1], size[0]):
        gray = gray.resize((size[1], size[0]), Image.Resampling.BICUBIC)
    return np.repeat(np.clip(np.asarray(gray, dtype=np.float32), 0, 1)[..., None], 3, axis=-1)


def read_image(path: Path, size: tuple[int, int] | None = None) -> torch.Tensor:
    """``(3, H, W)`` floats in ``[0, 1]``, resized (bicubic) to ``size = (H, W)`` when given.

    16-bit grayscale files keep their depth (scaled by 65535, not clipped at 255). Raises
    :class:`InputError` when the file cannot be decoded.
    """
    try:
        with Image.open(path) as image:
            array = _resized_float(image, size)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise InputError(f"cannot read image {path}: {type(error).__name__}: {error}") from error
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def center_square(image: Image.Image, size: int) -> np.ndarray:
    """The central square of ``image``, resized to ``size x size`` (Lanczos), as uint8 RGB."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = _rgb(image).crop((left, top, left + side, top + side))
    return np.asarray(square.resize((size, size), Image.Resampling.LANCZOS))


class ImageFolderImages:
    """Images of a local folder (ImageNet layout: one sub-folder per class), sampled uniformly
    over classes and loaded lazily as ``(n, size, size, 3)`` uint8 centre crops.

    Parameters
    ----------
    folder
        a folder of class sub-folders (``train/n01440764/*.JPEG``); a folder of images without
        sub-folders counts as one class.
    n
        number of images; classes take turns, so their counts differ by at most one.
    size
        side of the returned crops; only images whose shorter side is at least ``min_side``
        (default ``size``) are used, so none is upsampled.
    seed
        seeds which images of each class are drawn.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        n: int,
        *,
        size: int = 512,
        seed: int = 0,
        min_side: int | None = None,
    ):
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise InputError(f"image folder {str(folder)!r} does not exist")
        if n < 1 or size < 1:
            raise InputError(f"need n >= 1 and size >= 1, got n={n}, size={size}")
        self.folder, self.size, self.min_side = folder, size, min_side or size
        classes = sorted(p for p in folder.iterdir() if p.is_dir()) or [folder]
        rng = np.random.default_rng(seed)
        per_class = math.ceil(n / len(classes))
        chosen = [self._draw(c, per_class, rng) for c in tqdm(classes, desc="scanning classes", leave=False)]
        interleaved = [paths[i] for i in range(per_class) for paths in chosen if i < len(paths)]
        if len(interleaved) < n:
            raise InputError(
                f"only {len(interleaved)} images of at least {self.min_side} px in {folder}, need {n}"
            )
        self.paths: list[Path] = interleaved[:n]
        self.labels: list[str] = [p.parent.name for p in self.paths]

    def _draw(self, class_folder: Path, count: int, rng: np.random.Generator) -> list[Path]:
        """Up to ``count`` random images of one class that are large enough (headers only)."""
        files = image_files(class_folder)
        picked = []
        for index in rng.permutation(len(files)):
            with Image.open(files[index]) as image:
                if min(image.size) >= self.min_side:
                    picked.append(files[index])
            if len(picked) == count:
                break
        return picked

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: slice) -> np.ndarray:
        """``(n, size, size, 3)`` uint8 crops of the images in ``index`` (a slice)."""
        crops = []
        for path in self.paths[index]:
            with Image.open(path) as image:
                crops.append(center_square(image, self.size))
        return np.stack(crops)

    def identity(self) -> dict:
        """What makes this sample (for cache keys): folder, size and the chosen files."""
        return {
            "folder": str(self.folder),
            "size": self.size,
            "files": [str(p.relative_to(self.folder)) for p in self.paths],
        }


def read_prompts(path: str | os.PathLike) -> list[str]:
    """Prompts from a file: ``.txt`` (one per line), ``.json`` (a list of strings, or of objects
    with a ``prompt``/``caption`` field), ``.csv``/``.tsv``/``.parquet`` (a ``prompt`` or
    ``caption`` column, else the first column). Blank entries are dropped; the order is kept."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"prompt file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix not in PROMPT_SUFFIXES:
        raise InputError(f"unsupported prompt file type {suffix!r} ({path}): use one of {PROMPT_SUFFIXES}")
    try:
        prompts = _read_prompt_entries(path, suffix)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        if isinstance(error, InputError):
            raise
        raise InputError(f"cannot read prompts from {path}: {type(error).__name__}: {error}") from error
    prompts = [p.strip() for p in prompts if p and p.strip()]
    if not prompts:
        raise InputError(f"no prompts in {path} (the file is empty or blank)")
    return prompts


def _read_prompt_entries(path: Path, suffix: str) -> list[str]:
    if suffix == ".txt":
        return path.read_text(encoding="utf-8").splitlines()
    if suffix == ".json":
        items = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(items, list):
            raise InputError(f"{path}: a JSON prompt file holds a list, got {type(items).__name__}")
        return [item if isinstance(item, str) else _prompt_field(item) for item in items]
    frame = (
        pd.read_parquet(path)
        if suffix == ".parquet"
        else pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    )
    column = next((c for c in frame.columns if str(c).lower() in ("prompt", "caption")), frame.columns[0])
    return frame[column].astype(str).tolist()


def _prompt_field(item: object) -> str:
    if isinstance(item, dict):
        for name in ("prompt", "caption", "Prompt", "Caption"):
            if name in item:
                return str(item[name])
    raise InputError(f"a JSON prompt entry is neither a string nor an object with a 'prompt' field: {item}")
