"""A procedural, captioned image world: coloured shapes on textured backgrounds, from a seed.

Every image is a *scene*: six captioned attributes (shape, colour, background colour, size,
position, background texture) plus uncaptioned nuisances (exact centre, radius, a small rotation,
texture period and phase, slight colour jitter). Captions come from a small grammar::

    "a large red star on the left on a striped blue background"

Two controlled subsets make this a ground truth for the memorisation and generalisation chapters:

* **novel** attribute combinations: a seeded ``holdout_fraction`` of all combinations is never
  rendered for training, so their full captions are never seen verbatim;
* **memorised** scenes: ``n_memorised`` specific images, each captioned with its full caption plus
  a unique made-up name (``"... named zorvu"``), repeated many times during training.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 45, 45),
    "orange": (245, 140, 30),
    "yellow": (240, 215, 40),
    "green": (45, 165, 70),
    "blue": (40, 85, 215),
    "purple": (140, 60, 190),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: dict[str, tuple[float, float]] = {  # offsets from the centre, in units of image size
    "in the center": (0.0, 0.0),
    "at the top": (0.0, -0.25),
    "at the bottom": (0.0, 0.25),
    "on the left": (-0.25, 0.0),
    "on the right": (0.25, 0.0),
}
TEXTURES: tuple[str, ...] = ("plain", "striped", "checkered", "dotted")
#: Captioned attributes, in the order of :class:`Attributes`' fields and of the classifier heads.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "colour": tuple(COLOURS),
    "background": tuple(COLOURS),
    "size": SIZES,
    "position": tuple(POSITIONS),
    "texture": TEXTURES,
}
OPTIONAL_WORDS: tuple[str, ...] = ("size", "position", "texture")
SUPERSAMPLE = 4  # shapes are drawn at 4x and box-filtered down: anti-aliased edges


@dataclass(frozen=True)
class Attributes:
    """The captioned content of a scene (indices into :data:`ATTRIBUTES`' value lists)."""

    shape: str
    colour: str
    background: str
    size: str
    position: str
    texture: str

    def labels(self) -> tuple[int, ...]:
        """Class index of each attribute, in :data:`ATTRIBUTES` order."""
        return tuple(values.index(getattr(self, name)) for name, values in ATTRIBUTES.items())


@dataclass(frozen=True)
class Scene:
    """A scene: attributes plus the nuisances that make each image unique.

    ``centre`` and ``radius`` are in units of the image size; ``jitter`` is an RGB offset added to
    the foreground and background colours.
    """

    attributes: Attributes
    centre: tuple[float, float]
    radius: float
    angle: float
    period: float
    phase: float
    jitter: tuple[int, int, int]


def caption(attributes: Attributes, drop: frozenset[str] | set[str] = frozenset()) -> str:
    """The grammar's caption, leaving out the optional attributes named in ``drop``."""
    words = ["a"]
    if "size" not in drop:
        words.append(attributes.size)
    words += [attributes.colour, attributes.shape]
    if "position" not in drop:
        words.append(attributes.position)
    words += ["on", "a"]
    if "texture" not in drop and attributes.texture != "plain":
        words.append(attributes.texture)
    words += [attributes.background, "background"]
    return " ".join(words)


def all_attributes() -> list[Attributes]:
    """Every combination of attributes with a foreground colour distinct from the background."""
    combos = itertools.product(*ATTRIBUTES.values())
    return [Attributes(*combo) for combo in combos if combo[1] != combo[2]]


def made_up_names(count: int, seed: int) -> list[str]:
    """``count`` distinct pronounceable nonsense words (consonant-vowel syllables), seeded."""
    rng = np.random.default_rng([seed, 7])
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    names: list[str] = []
    while len(names) < count:
        syllables = rng.integers(2, 4)
        name = "".join(rng.choice(list(consonants)) + rng.choice(list(vowels)) for _ in range(syllables))
        if name not in names:
            names.append(name)
    return names


class World:
    """The seeded world: which combinations are novel, which scenes are memorised, and rendering.

    Parameters
    ----------
    seed
        fixes the novel split, the memorised scenes and their names.
    image_size
        side of the square RGB images in pixels.
    n_memorised
        number of memorised scenes, each with its own unique caption.
    holdout_fraction
        fraction of attribute combinations never used for training (the novel prompts).
    max_rotation
        shapes (and stripes) are turned by a uniform angle within +-``max_rotation`` degrees of
        their reference pose (triangle, square and star with a corner pointing right, the cross a
        plus sign, stripes vertical); 180 means any angle. Small by default: fewer poses to learn
        for a model trained on a laptop budget.
    """

    def __init__(
        self,
        seed: int = 0,
        image_size: int = 32,
        n_memorised: int = 40,
        holdout_fraction: float = 0.1,
        max_rotation: float = 15.0,
    ):
        if image_size < 16:
            raise ValueError(f"image_size must be at least 16 pixels, got {image_size}")
        if not 0 < holdout_fraction < 1:
            raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
        if n_memorised < 0:
            raise ValueError(f"n_memorised must be >= 0, got {n_memorised}")
        if not 0 <= max_rotation <= 180:
            raise ValueError(f"max_rotation must be in [0, 180] degrees, got {max_rotation}")
        self.seed, self.image_size, self.holdout_fraction = seed, image_size, holdout_fraction
        self.max_rotation = float(max_rotation)
        combos = all_attributes()
        order = np.random.default_rng([seed, 1]).permutation(len(combos))
        n_novel = int(round(holdout_fraction * len(combos)))
        self.novel_attributes: list[Attributes] = [combos[i] for i in sorted(order[:n_novel])]
        self.training_attributes: list[Attributes] = [combos[i] for i in sorted(order[n_novel:])]
        self._novel = set(self.novel_attributes)
        self.memorised_names = made_up_names(n_memorised, seed)
        self.memorised = self.sample_scenes(n_memorised, np.random.default_rng([seed, 2]))
        self.memorised_captions = [
            f"{caption(scene.attributes)} named {name}"
            for scene, name in zip(self.memorised, self.memorised_names, strict=True)
        ]

    @property
    def vocabulary(self) -> list[str]:
        """Every word a caption of this world can contain (grammar words and memorised names)."""
        words = {"a", "on", "background", "named", *SHAPES, *COLOURS, *SIZES, *TEXTURES}
        words |= {word for position in POSITIONS for word in position.split()}
        return sorted(words) + self.memorised_names

    def description(self) -> dict:
        """The arguments that rebuild this world, plus its memorised captions (for readers)."""
        return {
            "seed": self.seed,
            "image_size": self.image_size,
            "n_memorised": len(self.memorised),
            "holdout_fraction": self.holdout_fraction,
            "max_rotation": self.max_rotation,
            "memorised_captions": self.memorised_captions,
            "vocabulary": self.vocabulary,
        }

    def is_novel(self, attributes: Attributes) -> bool:
        """Whether ``attributes`` is a held-out combination (never in the training data)."""
        return attributes in self._novel

    def sample_scenes(self, n: int, rng: np.random.Generator, novel: bool = False) -> list[Scene]:
        """``n`` random scenes from the training combinations (or the novel ones)."""
        pool = self.novel_attributes if novel else self.training_attributes
        picks = rng.integers(0, len(pool), size=n)
        return [self.random_scene(pool[i], rng) for i in picks]

    def random_scene(self, attributes: Attributes, rng: np.random.Generator) -> Scene:
        """A scene with the given attributes and random nuisances."""
        dx, dy = POSITIONS[attributes.position]
        centre = (0.5 + dx + rng.uniform(-0.06, 0.06), 0.5 + dy + rng.uniform(-0.06, 0.06))
        radius = rng.uniform(0.15, 0.2) if attributes.size == "small" else rng.uniform(0.27, 0.34)
        red, green, blue = (int(v) for v in rng.integers(-15, 16, size=3))
        return Scene(
            attributes=attributes,
            centre=centre,
            radius=float(radius),
            angle=self._rotation(rng),
            period=float(rng.uniform(0.18, 0.28)),
            phase=float(rng.uniform(0, 1)),
            jitter=(red, green, blue),
        )

    def _rotation(self, rng: np.random.Generator) -> float:
        """A shape's angle in radians, one draw from ``rng``."""
        if self.max_rotation >= 180:  # any angle, drawn as worlds did before the limit existed
            return float(rng.uniform(0, 2 * np.pi))
        return float(np.deg2rad(rng.uniform(-self.max_rotation, self.max_rotation)))

    def render(self, scenes: list[Scene]) -> np.ndarray:
        """Images of ``scenes``, ``(N, H, W, 3)`` uint8."""
        return np.stack([render_scene(scene, self.image_size) for scene in scenes])

    def dataset_scenes(self, n: int, seed: int, novel: bool = False) -> list[Scene]:
        """The scenes of :meth:`dataset`, not rendered (its first ``m`` are a uniform sample of its
        ``n``: render those for a subset of the training images at a fraction of the cost)."""
        return self.sample_scenes(n, np.random.default_rng([self.seed, 3, seed]), novel=novel)

    def dataset(self, n: int, seed: int, novel: bool = False) -> tuple[np.ndarray, list[Scene]]:
        """``n`` rendered scenes drawn with ``seed``: ``((N, H, W, 3) uint8, scenes)``."""
        scenes = self.dataset_scenes(n, seed, novel)
        return self.render(scenes), scenes

    def training_caption(self, scene: Scene, rng: np.random.Generator, p_drop: float = 0.2) -> str:
        """The caption used in training: each optional attribute left out with probability ``p_drop``."""
        drop = {name for name in OPTIONAL_WORDS if rng.random() < p_drop}
        return caption(scene.attributes, drop)


def _shape_outline(scene: Scene, size: int) -> list[tuple[float, float]] | None:
    """Polygon vertices in supersampled pixels, or ``None`` for a circle."""
    shape = scene.attributes.shape
    cx, cy = (c * size for c in scene.centre)
    radius = scene.radius * size
    if shape == "circle":
        return None
    if shape == "cross":  # a plus sign: 12 vertices, arm half-width 0.35 r
        w = 0.35
        unit = [
            (w, 1),
            (w, w),
            (1, w),
            (1, -w),
            (w, -w),
            (w, -1),
            (-w, -1),
            (-w, -w),
            (-1, -w),
            (-1, w),
            (-w, w),
            (-w, 1),
        ]
        polar = [(np.hypot(x, y), np.arctan2(y, x)) for x, y in unit]
    elif shape == "star":
        polar = [((1.0 if i % 2 == 0 else 0.45), i * np.pi / 5) for i in range(10)]
    else:
        corners = {"square": 4, "triangle": 3}[shape]
        scale = {"square": 0.9 * np.sqrt(2), "triangle": 1.15}[shape]  # similar areas across shapes
        polar = [(scale, i * 2 * np.pi / corners) for i in range(corners)]
    return [
        (cx + radius * r * np.cos(t + scene.angle), cy + radius * r * np.sin(t + scene.angle))
        for r, t in polar
    ]


def _texture_mask(scene: Scene, size: int) -> np.ndarray:
    """Boolean ``(S, S)`` mask of the background's second tone (supersampled)."""
    texture = scene.attributes.texture
    ys, xs = np.mgrid[0:size, 0:size] / size
    period = scene.period
    if texture == "plain":
        return np.zeros((size, size), dtype=bool)
    if texture == "striped":  # stripes turned with the shape (vertical at angle 0)
        direction = xs * np.cos(scene.angle) + ys * np.sin(scene.angle)
        return ((direction / period + scene.phase) % 1.0) < 0.5
    if texture == "checkered":
        return (np.floor(xs / period + scene.phase) + np.floor(ys / period + scene.phase)) % 2 == 1
    centre_x = (xs / period + scene.phase) % 1.0 - 0.5  # dotted: a lattice of discs
    centre_y = (ys / period + scene.phase) % 1.0 - 0.5
    return centre_x**2 + centre_y**2 < 0.28**2


def _second_tone(rgb: np.ndarray) -> np.ndarray:
    """The texture's second tone: darker for light colours, lighter for dark ones."""
    return rgb * 0.6 if rgb.mean() > 110 else rgb + (255 - rgb) * 0.35


def render_scene(scene: Scene, image_size: int = 32) -> np.ndarray:
    """One scene as an ``(H, W, 3)`` uint8 image (drawn at 4x, box-filtered down)."""
    size = image_size * SUPERSAMPLE
    jitter = np.array(scene.jitter, dtype=np.float64)
    background = np.clip(np.array(COLOURS[scene.attributes.background], dtype=np.float64) + jitter, 0, 255)
    foreground = np.clip(np.array(COLOURS[scene.attributes.colour], dtype=np.float64) + jitter, 0, 255)
    canvas = np.where(_texture_mask(scene, size)[..., None], _second_tone(background), background)
    mask_image = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask_image)
    outline = _shape_outline(scene, size)
    if outline is None:
        cx, cy, r = scene.centre[0] * size, scene.centre[1] * size, scene.radius * size
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        draw.polygon(outline, fill=255)
    mask = np.asarray(mask_image, dtype=np.float64)[..., None] / 255.0
    canvas = canvas * (1 - mask) + foreground * mask
    small = canvas.reshape(image_size, SUPERSAMPLE, image_size, SUPERSAMPLE, 3).mean(axis=(1, 3))
    return np.clip(np.round(small), 0, 255).astype(np.uint8)


def load_world(folder: str | Path) -> World:
    """The world a model was trained on, from the ``world.json`` beside its weights."""
    path = Path(folder) / "world.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {folder} a model trained by geomlib.sd.mini.train?")
    description = json.loads(path.read_text())
    keys = ("seed", "image_size", "n_memorised", "holdout_fraction")
    # Worlds written before the rotation limit existed turned shapes by any angle.
    world = World(
        **{key: description[key] for key in keys}, max_rotation=description.get("max_rotation", 180)
    )
    if world.memorised_captions != description["memorised_captions"]:
        raise ValueError(
            f"{path} does not match this version of geomlib.sd.mini.world (memorised captions differ)"
        )
    return world


def with_attributes(scene: Scene, **changes: str) -> Scene:
    """``scene`` with some attributes replaced (nuisances kept), e.g. ``colour="blue"``."""
    return replace(scene, attributes=replace(scene.attributes, **changes))
