"""ImageNet-C corruptions, reproducibly: a thin layer over the ``imagecorruptions`` package
(Hendrycks & Dietterich 2019), which does the corrupting; nothing is re-implemented here.

* every image is corrupted from its own seed (``seed``, corruption, severity, image index), so a
  result does not depend on the batch it was computed in, and numpy's global random state is left
  as it was;
* ``imagecorruptions`` refuses images under 32 px, so smaller ones go through an
  upsample-corrupt-downsample round trip (clean images too, so severity 0 is treated alike).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
from imagecorruptions import corrupt, get_corruption_names
from PIL import Image

from geomlib.runtime.seeding import seed_from

#: The 15 corruptions of the ImageNet-C benchmark, in the package's order.
BENCHMARK_CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)  # fmt: skip
#: The chapter's 16: the benchmark's 15 plus ``speckle_noise``, the first of ImageNet-C's four
#: held-out ("validation") corruptions and a fourth high-frequency noise.
EXTRA_CORRUPTION = "speckle_noise"
PAPER_CORRUPTIONS: tuple[str, ...] = (*BENCHMARK_CORRUPTIONS, EXTRA_CORRUPTION)
SEVERITIES: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
#: The paper's reading: high-frequency noise raises ψ, band-limiting (blur) and colour-range
#: reductions lower it. Corruptions in neither group are reported as ``other``.
CORRUPTION_GROUPS: dict[str, tuple[str, ...]] = {
    "noise-like": ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"),
    "blur/contrast-like": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "contrast", "fog"),
}
#: Sign of the change of ψ from severity 0 to 5 that the paper reports for each group.
EXPECTED_SIGN: dict[str, int] = {"noise-like": +1, "blur/contrast-like": -1}
MIN_SIDE = 32  # imagecorruptions raises below this
#: The name of the uncorrupted images (severity 0).
CLEAN = "clean"
#: Corruptions whose randomness is a ``seed`` argument instead of numpy's global generator.
_SEEDED_ARGUMENT = ("glass_blur", "impulse_noise")


def corruption_group(name: str) -> str:
    """``"noise-like"``, ``"blur/contrast-like"`` or ``"other"``."""
    return next((group for group, names in CORRUPTION_GROUPS.items() if name in names), "other")


def check_corruptions(names: Sequence[str]) -> tuple[str, ...]:
    """Return ``names`` as a tuple if ``imagecorruptions`` has them all, else raise ``ValueError``."""
    if isinstance(names, str):
        raise ValueError("corruptions must be a list of names, not one string")
    known = get_corruption_names("all")
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise ValueError(f"unknown corruptions {unknown or '(empty list)'}; choose from {known}")
    return tuple(names)


@contextlib.contextmanager
def _numpy_global_seed(seed: int) -> Iterator[None]:
    """Seed numpy's global generator (what ``imagecorruptions`` draws from) and restore it after."""
    state = np.random.get_state()  # noqa: NPY002 -- the package draws from the global generator
    np.random.seed(seed)  # noqa: NPY002
    try:
        yield
    finally:
        np.random.set_state(state)  # noqa: NPY002


def image_seed(seed: int, name: str, severity: int, index: int) -> int:
    """The seed of one corrupted image: a hash of all four through numpy's ``SeedSequence``."""
    name_code = int.from_bytes(name.encode(), "little") % (2**63)
    return seed_from(seed, name_code, severity, index)


def _resize(image: np.ndarray, size: int, resample: Image.Resampling) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((size, size), resample))


def corrupt_image(
    image: np.ndarray, name: str, severity: int, *, seed: int, work_size: int | None = None
) -> np.ndarray:
    """One image through one ``imagecorruptions`` corruption.

    Parameters
    ----------
    image
        ``(H, W, 3)`` uint8, square.
    name, severity
        the corruption and its severity, 0 (clean: ``name`` is not used) to 5.
    seed
        seeds the corruption's randomness (numpy's global state is restored afterwards).
    work_size
        side at which to corrupt: the image is resized to it (bicubic), corrupted and resized back
        (area average). Default: the image's own size, or 32 px for smaller images (the package's
        minimum). Severity 0 takes the same round trip, so it differs from the corrupted images
        only by the corruption.

    Returns
    -------
    ``(H, W, 3)`` uint8.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or image.shape[0] != image.shape[1]:
        raise ValueError(f"image must be square (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity}")
    if name == CLEAN and severity > 0:
        raise ValueError(f"{CLEAN!r} images have severity 0, got {severity}")
    size = image.shape[0]
    work = work_size or max(size, MIN_SIDE)
    if work < MIN_SIDE:
        raise ValueError(f"work_size must be at least {MIN_SIDE} px (imagecorruptions' minimum), got {work}")
    working = image if work == size else _resize(image, work, Image.Resampling.BICUBIC)
    if severity > 0:
        kwargs = {"seed": seed % 2**32} if name in _SEEDED_ARGUMENT else {}
        with _numpy_global_seed(seed % 2**32):
            working = corrupt(working, severity=severity, corruption_name=name, **kwargs)
    return working if work == size else _resize(np.ascontiguousarray(working), size, Image.Resampling.BOX)


def corrupt_images(
    images: np.ndarray,
    name: str,
    severity: int,
    *,
    seed: int = 0,
    first_index: int = 0,
    work_size: int | None = None,
) -> np.ndarray:
    """A batch through :func:`corrupt_image`, ``(N, H, W, 3)`` uint8 to the same.

    Image ``i`` of the batch is corrupted from :func:`image_seed` ``(seed, name, severity,
    first_index + i)``, so the result for an image is the same in any batch.
    """
    if name != CLEAN:
        check_corruptions([name])
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must have shape (N, H, W, 3), got {images.shape}")
    return np.stack(
        [
            corrupt_image(
                image,
                name,
                severity,
                seed=image_seed(seed, name, severity, first_index + i),
                work_size=work_size,
            )
            for i, image in enumerate(images)
        ]
    )


def corruption_examples(
    image: np.ndarray,
    corruptions: Sequence[str],
    severities: Sequence[int],
    *,
    seed: int = 0,
    work_size: int | None = None,
) -> np.ndarray:
    """``(len(corruptions), len(severities), H, W, 3)`` uint8: one image under every corruption."""
    return np.stack(
        [
            np.stack(
                [corrupt_images(image[None], name, s, seed=seed, work_size=work_size)[0] for s in severities]
            )
            for name in corruptions
        ]
    )
