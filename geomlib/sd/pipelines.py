"""Loading Stable-Diffusion pipelines: SD 1.4 from the hub or its cache, any local pipeline folder,
the project's offline model ``data/mini-sd``, and random-weight builds for tests and timings.

Latents are always in the diffusion model's space, i.e. the VAE posterior scaled by
``vae.config.scaling_factor``, shape ``(B, 4, h, w)``.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from geomlib.runtime.profiles import default_device
from geomlib.sd.hub import SDPipeline, StableDiffusionPipeline, quiet_hub_libraries
from geomlib.sd.mini.build import build_pipeline
from geomlib.sd.mini.world import World, load_world

PROJECT_ROOT = Path(__file__).resolve().parents[2]
#: The project's offline text-to-image model, trained by ``python -m geomlib.sd.mini.train``.
MINI_MODEL = PROJECT_ROOT / "data" / "mini-sd"
SD14 = "CompVis/stable-diffusion-v1-4"
TINY_RANDOM = "tiny-random"
SD14_RANDOM = "sd14-random"


class WeightsNotFoundError(FileNotFoundError):
    """The pipeline's weights are neither on disk nor downloadable from here."""


class UnsafeWeightsError(ValueError):
    """The pipeline's weights exist only as pickle files, which can execute code when loaded."""


PICKLE_SUFFIXES: tuple[str, ...] = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


#: The dtypes a pipeline may be loaded in, by name.
PIPELINE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


def _torch_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """``dtype`` as a floating ``torch.dtype`` (names such as ``"float16"`` are accepted)."""
    if isinstance(dtype, str):
        if dtype.removeprefix("torch.") not in PIPELINE_DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {tuple(PIPELINE_DTYPES)}")
        return PIPELINE_DTYPES[dtype.removeprefix("torch.")]
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype or its name, got {dtype!r}")
    return dtype


def pickle_only_components(folder: Path) -> list[str]:
    """The component folders of a saved pipeline whose weights are pickle files only."""
    components = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = [p.suffix.lower() for p in sub.iterdir() if p.is_file()]
        if any(s in PICKLE_SUFFIXES for s in files) and ".safetensors" not in files:
            components.append(sub.name)
    return components


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """A TCP connection to the hub within ``timeout_s``: so a machine without internet fails at
    once instead of waiting for HTTP retries."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def _missing_weights_message(name: str, reason: str) -> str:
    return (
        f"Cannot load the pipeline {name!r}: {reason}.\n"
        f"  * On a machine with internet: `hf download {name}` (or `huggingface-cli download {name}`),"
        " then load it again, here or with HF_HUB_OFFLINE=1.\n"
        "  * Or give the path of a local diffusers pipeline directory (one with model_index.json).\n"
        f"  * The project's offline model needs no download: load_pipeline({str(MINI_MODEL)!r})."
    )


def resolve_local(name_or_path: str | os.PathLike) -> Path | None:
    """The local pipeline directory meant by ``name_or_path``, or ``None`` for a hub id.

    Relative paths are tried against the working directory, then the project root (so
    ``"data/mini-sd"`` works from ``notebooks/`` too); ``"mini-sd"`` names the offline model.
    """
    if str(name_or_path) in ("mini", "mini-sd"):
        return MINI_MODEL
    path = Path(name_or_path).expanduser()
    for candidate in (path, PROJECT_ROOT / path):
        if candidate.exists():
            return candidate
    parent_is_local = any((base / path.parts[0]).is_dir() for base in (Path.cwd(), PROJECT_ROOT))
    looks_like_hub_id = not path.is_absolute() and len(path.parts) == 2 and not parent_is_local
    if looks_like_hub_id:
        return None
    raise WeightsNotFoundError(_missing_weights_message(str(name_or_path), "no such local directory"))


def load_pipeline(
    name_or_path: str | os.PathLike = MINI_MODEL,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    *,
    allow_pickle: bool = False,
) -> SDPipeline:
    """Load a Stable-Diffusion pipeline: a hub id (``CompVis/stable-diffusion-v1-4``), a local
    directory, or the project's offline model (the default).

    Hub ids are looked up in the local cache first; when they are not there and
    ``HF_HUB_OFFLINE`` is set or the hub cannot be reached within 3 s, this raises
    :class:`WeightsNotFoundError` at once, saying what to download or which path to give.
    The safety checker is not loaded. Returns the pipeline on ``device`` (default:
    :func:`geomlib.default_device`) in ``dtype`` (default: as saved), in eval mode.

    Only safetensors weights are read: pickle files (``.bin``, ``.pt``, ``.ckpt``) can run code when
    loaded. A local folder whose components have only those raises :class:`UnsafeWeightsError`;
    ``allow_pickle=True`` reads them (diffusers then prefers safetensors where both exist): only
    for weights from a source you trust.
    """
    kwargs: dict[str, Any] = dict(
        safety_checker=None, requires_safety_checker=False, use_safetensors=None if allow_pickle else True
    )
    if dtype is not None:
        kwargs["dtype"] = _torch_dtype(dtype)
    with quiet_hub_libraries():
        pipe = _from_pretrained(name_or_path, kwargs)
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.vae, pipe.unet, pipe.text_encoder):
        module.eval().requires_grad_(False)
    return pipe.to(default_device(None if device is None else str(device)))


def _from_pretrained(name_or_path: str | os.PathLike, kwargs: dict) -> SDPipeline:
    """A local directory, or a hub id from the cache; fails fast when neither is there."""
    local = resolve_local(name_or_path)
    if local is not None:
        if not (local / "model_index.json").exists():
            raise WeightsNotFoundError(_missing_weights_message(str(local), "it has no model_index.json"))
        pickled = pickle_only_components(local)
        if pickled and kwargs["use_safetensors"]:
            raise UnsafeWeightsError(
                f"{local}: the weights of {', '.join(pickled)} are pickle files only, which can run code "
                "when loaded. Convert them to safetensors (diffusers: pipe.save_pretrained(folder)), or "
                "pass allow_pickle=True if you trust where they come from."
            )
        pipe = StableDiffusionPipeline.from_pretrained(str(local), local_files_only=True, **kwargs)
    else:
        name = str(name_or_path)
        try:
            pipe = StableDiffusionPipeline.from_pretrained(name, local_files_only=True, **kwargs)
        except (OSError, ValueError) as cached_error:  # not in the cache (diffusers raises OSError)
            if _offline():
                raise WeightsNotFoundError(
                    _missing_weights_message(name, "not in the cache, HF_HUB_OFFLINE is set")
                ) from cached_error
            if not _hub_reachable():
                raise WeightsNotFoundError(
                    _missing_weights_message(name, "not in the cache, hub unreachable")
                ) from cached_error
            pipe = StableDiffusionPipeline.from_pretrained(name, **kwargs)
    return pipe


def tiny_random_pipeline(folder: str | os.PathLike | None = None, *, seed: int = 0) -> SDPipeline:
    """A tiny SD-architecture pipeline with random weights (untrained), saved to ``folder`` (a
    temporary directory by default) and loaded back through :func:`load_pipeline`: the hub's code
    path, for tests and for chapters run before the offline model exists."""
    folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="geomlib-tiny-sd-"))
    with quiet_hub_libraries():
        build_pipeline(World(seed=0, n_memorised=4).vocabulary, "tiny", seed=seed).save_pretrained(folder)
    return load_pipeline(folder, device="cpu")


def random_sd14_pipeline(device=None, dtype: torch.dtype | None = None, *, seed: int = 0) -> SDPipeline:
    """SD 1.4's architecture (published UNet, VAE and CLIP ViT-L/14 configs) with random weights.

    Only for measuring the time and memory of the paper-scale path on a GPU without the real
    weights: its images and descriptors mean nothing.
    """
    pipe = build_pipeline(World(seed=0, n_memorised=0).vocabulary, "sd14", seed=seed)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(default_device(None if device is None else str(device)), dtype)


def open_model(model: str, device=None) -> tuple[SDPipeline, str]:
    """A chapter's model and a label for its figures: ``"tiny-random"`` builds the untrained tiny
    pipeline, ``"sd14-random"`` SD 1.4's architecture with random weights (both labelled so, never
    for results); anything else goes to :func:`load_pipeline`."""
    if model == SD14_RANDOM:
        return random_sd14_pipeline(device), "RANDOM-WEIGHT SD 1.4 architecture: time and memory check only"
    if model == TINY_RANDOM:
        return tiny_random_pipeline().to(
            default_device(device)
        ), "UNTRAINED tiny random pipeline (placeholder)"
    is_mini = Path(model).resolve() == MINI_MODEL.resolve()
    return load_pipeline(model, device=device), "mini-sd (data/mini-sd)" if is_mini else str(model)


def world_for_model(model: str, image_size: int | None = None) -> World | None:
    """The procedural :class:`~geomlib.sd.mini.world.World` a model was trained on, or ``None``.

    The offline model (or any folder with a ``world.json``) gives its own world; the untrained
    tiny pipeline (``"tiny-random"``) the world its vocabulary came from, at ``image_size``;
    anything else (Stable Diffusion) has none.
    """
    if model == TINY_RANDOM:
        return World(seed=0, n_memorised=4, image_size=image_size or 16)
    try:
        folder = resolve_local(model)
    except FileNotFoundError:
        return None
    return load_world(folder) if folder is not None and (folder / "world.json").exists() else None


def pipeline_resolution(pipe) -> int:
    """Side in pixels of the images the pipeline's VAE works at."""
    return int(pipe.unet.config.sample_size * pipe.vae_scale_factor)


def default_model(profile: str) -> str:
    """SD 1.4 for ``paper``; otherwise the offline model, or the tiny random pipeline if absent."""
    if profile == "paper":
        return SD14
    return str(MINI_MODEL) if (MINI_MODEL / "model_index.json").exists() else TINY_RANDOM
