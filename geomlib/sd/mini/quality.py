"""Quality gates of the offline model, measured against the procedural world's ground truth.

* reconstruction: PSNR of the VAE on held-out images;
* prompt following: an attribute classifier trained on the procedural images labels samples
  generated from *novel* captions; accuracy per attribute, per guidance scale (chance = 1/classes);
* memorisation: pixel distance from each generated image to its nearest training image, for the
  memorised captions and for novel ones, and how often a memorised caption's nearest neighbour is
  its own training image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from geomlib.runtime.seeding import seeded_global_rng
from geomlib.sd.decoder import decode_latents, encode_images
from geomlib.sd.hub import SDPipeline
from geomlib.sd.mini.world import ATTRIBUTES, COLOURS, World, caption
from geomlib.sd.sampling import default_guidance_rescale, generate

COLOUR_INDEX = list(ATTRIBUTES).index("colour")


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """``(N, H, W, 3)`` uint8 (or floats in [0, 1]) to ``(N, 3, H, W)`` float32 in [0, 1]."""
    array = np.asarray(images)
    scale = 255.0 if array.dtype == np.uint8 else 1.0
    return torch.from_numpy(array.astype(np.float32) / scale).permute(0, 3, 1, 2).contiguous()


#: Attributes read from the colour image, and those read from the mask of the foreground colour.
COLOUR_ATTRIBUTES: tuple[str, ...] = ("colour", "background", "texture")
MASK_ATTRIBUTES: tuple[str, ...] = ("shape", "size", "position")
PALETTE = (
    torch.tensor(list(COLOURS.values()), dtype=torch.float32) / 255
)  # (8, 3), in ATTRIBUTES["colour"] order


def colour_mask(images: torch.Tensor, colours: torch.Tensor, threshold: float = 0.25) -> torch.Tensor:
    """Soft mask of the pixels close to each image's foreground colour, ``(N, 1, H, W)`` in [0, 1].

    ``colours: (N,)`` palette indices (the caption's colour); RGB distance below ``threshold`` (in
    [0, 1] units, about 64/255) counts as foreground. Texture-free: shape is read off this mask.
    """
    target = PALETTE.to(images.device)[colours][:, :, None, None]
    distance = (images - target).norm(dim=1, keepdim=True)
    return torch.sigmoid((threshold - distance) / 0.05)


def _encoder(channels: int, width: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
    for inputs in (width, 2 * width, 2 * width):  # 32 -> 16 -> 8 -> 4
        layers += [nn.Conv2d(inputs, 2 * width, 3, stride=2, padding=1), nn.ReLU()]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(2 * width * 16, 128), nn.ReLU())


class AttributeClassifier(nn.Module):
    """Two small CNNs with one head per captioned attribute (:data:`~geomlib.sd.mini.world.ATTRIBUTES`).

    Colour, background and texture are read from the image; shape, size and position from the mask
    of the foreground colour (:func:`colour_mask`), so textures cannot be mistaken for shapes. The
    foreground colour is given: the caption's, i.e. the classifier answers "which shape, size and
    position has the red object?". Input ``(N, 3, 32, 32)`` in [0, 1] and ``(N,)`` colour indices.
    """

    def __init__(self, width: int = 32):
        super().__init__()
        self.image_features, self.mask_features = _encoder(3, width), _encoder(1, width)
        self.heads = nn.ModuleDict({name: nn.Linear(128, len(values)) for name, values in ATTRIBUTES.items()})

    def forward(self, images: torch.Tensor, colours: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{attribute: (N, classes) logits}``."""
        from_image = self.image_features(images * 2 - 1)
        from_mask = self.mask_features(colour_mask(images, colours))
        return {
            name: head(from_mask if name in MASK_ATTRIBUTES else from_image)
            for name, head in self.heads.items()
        }

    @torch.no_grad()
    def predict(
        self, images: torch.Tensor, colours: torch.Tensor, batch_size: int = 256
    ) -> dict[str, torch.Tensor]:
        """``{attribute: (N,) class index}``; the ``colour`` prediction ignores ``colours``."""
        parts = [
            {k: v.argmax(1) for k, v in self(images[s : s + batch_size], colours[s : s + batch_size]).items()}
            for s in range(0, len(images), batch_size)
        ]
        return {name: torch.cat([p[name] for p in parts]) for name in ATTRIBUTES}


def load_classifier(folder: str | Path) -> AttributeClassifier:
    """The attribute classifier shipped beside a trained model (``classifier.safetensors``)."""
    classifier = AttributeClassifier()
    classifier.load_state_dict(load_file(str(Path(folder) / "classifier.safetensors")))
    return classifier.eval()


def attribute_labels(scenes) -> torch.Tensor:
    """``(N, 6)`` class indices of the scenes' attributes."""
    return torch.tensor([scene.attributes.labels() for scene in scenes])


def _augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Blur half of the batch a little and add noise: generated images are softer than renders."""
    blurred = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    mix = torch.rand(len(images), 1, 1, 1, generator=generator) * (
        torch.rand(len(images), 1, 1, 1, generator=generator) < 0.5
    )
    noisy = images * (1 - mix) + blurred * mix + 0.03 * torch.randn(images.shape, generator=generator)
    return noisy.clamp(0, 1)


def train_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int = 600,
    batch_size: int = 128,
    seed: int = 0,
    progress: bool = True,
) -> AttributeClassifier:
    """Train :class:`AttributeClassifier` on ``(N, 3, H, W)`` images with ``(N, 6)`` labels."""
    generator = torch.Generator().manual_seed(seed)
    with seeded_global_rng(seed):  # the initialisation; the caller's global RNG is restored after
        model = AttributeClassifier()
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=2e-3, total_steps=max(steps, 1))
    for _ in tqdm(range(steps), desc="classifier", disable=not progress):
        index = torch.randint(0, len(images), (batch_size,), generator=generator)
        logits = model(_augment(images[index], generator), labels[index, COLOUR_INDEX])
        terms = (F.cross_entropy(logits[name], labels[index, i]) for i, name in enumerate(ATTRIBUTES))
        loss = sum(terms, torch.zeros(()))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
    return model.eval()


def accuracy(classifier: AttributeClassifier, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Fraction of ``images`` whose predicted attribute equals ``labels: (N, 6)``, per attribute
    (shape, size and position of the object in the labelled colour)."""
    predicted = classifier.predict(images, labels[:, COLOUR_INDEX])
    return {
        name: float((predicted[name] == labels[:, i]).float().mean()) for i, name in enumerate(ATTRIBUTES)
    }


@torch.no_grad()
def prompt_fidelity(
    classifier: AttributeClassifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256
) -> dict[str, torch.Tensor]:
    """Per image, how well it shows its caption's attributes ``labels: (N, 6)``:
    ``{"accuracy": (N,) fraction of the 6 attributes predicted right, "confidence": (N,) mean
    softmax probability of the captioned class}``, both in ``[0, 1]``."""
    if labels.ndim != 2 or labels.shape != (len(images), len(ATTRIBUTES)):
        raise ValueError(
            f"labels must have shape ({len(images)}, {len(ATTRIBUTES)}), got {tuple(labels.shape)}"
        )
    right, confidence = [], []
    for start in range(0, len(images), batch_size):
        part = labels[start : start + batch_size]
        logits = classifier(images[start : start + batch_size], part[:, COLOUR_INDEX])
        hits = [logits[name].argmax(1) == part[:, i] for i, name in enumerate(ATTRIBUTES)]
        probabilities = [
            logits[name].softmax(1).gather(1, part[:, i : i + 1])[:, 0] for i, name in enumerate(ATTRIBUTES)
        ]
        right.append(torch.stack(hits, 1).double().mean(1))
        confidence.append(torch.stack(probabilities, 1).double().mean(1))
    return {"accuracy": torch.cat(right), "confidence": torch.cat(confidence)}


def psnr(reference: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
    """``(N,)`` peak signal-to-noise ratio in dB of images in [0, 1]."""
    mse = (reference - estimate).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return -10 * torch.log10(mse)


def vae_reconstructions(pipe: SDPipeline, images: torch.Tensor) -> torch.Tensor:
    """The VAE's reconstructions (posterior mean, decoded) of ``(N, 3, H, W)`` images in [0, 1]."""
    return to_tensor(decode_latents(pipe, encode_images(pipe, images)))


def vae_psnr(pipe: SDPipeline, images: torch.Tensor) -> torch.Tensor:
    """``(N,)`` PSNR of the VAE's reconstructions (posterior mean) of ``(N, 3, H, W)`` images."""
    return psnr(images, vae_reconstructions(pipe, images))


def nearest_distances(
    queries: torch.Tensor, references: torch.Tensor, chunk: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """Root-mean-square pixel distance of each query to its nearest reference, and its index.

    ``queries: (Q, 3, H, W)``, ``references: (R, 3, H, W)``, both in [0, 1]; returns ``(Q,)``, ``(Q,)``.
    """
    q = queries.flatten(1).double()
    best = torch.full((len(q),), float("inf"), dtype=torch.float64)
    where = torch.zeros(len(q), dtype=torch.long)
    for start in range(0, len(references), chunk):
        r = references[start : start + chunk].flatten(1).double()
        d2 = (q.pow(2).sum(1, keepdim=True) - 2 * q @ r.T + r.pow(2).sum(1)).clamp_min(0)
        value, index = d2.min(1)
        better = value < best
        best, where = torch.where(better, value, best), torch.where(better, index + start, where)
    return (best / q.shape[1]).sqrt().float(), where


@dataclass
class QualityBudget:
    """Sample counts of an evaluation (the card uses the defaults; tests use a few samples)."""

    n_psnr: int = 512
    n_novel: int = 200
    guidance_scales: tuple[float, ...] = (1.0, 3.0, 7.5)
    steps: int = 25
    batch_size: int = 100


def quantiles(values: torch.Tensor) -> dict[str, float]:
    """Summary of a distribution: min, 10/25/50/75/90th percentiles, max."""
    points = {"min": 0.0, "p10": 0.1, "p25": 0.25, "median": 0.5, "p75": 0.75, "p90": 0.9, "max": 1.0}
    return {name: float(torch.quantile(values.double(), q)) for name, q in points.items()}


def prompt_following(
    pipe: SDPipeline,
    classifier: AttributeClassifier,
    world: World,
    budget: QualityBudget,
    seed: int = 0,
) -> tuple[dict[str, dict[str, float]], torch.Tensor]:
    """Attribute accuracy of samples from novel captions, per guidance scale.

    Returns ``({str(scale): {attribute: accuracy}}, images of the largest scale (N, 3, H, W))``.
    """
    scenes = world.sample_scenes(budget.n_novel, np.random.default_rng([world.seed, 99, seed]), novel=True)
    prompts, labels = [caption(s.attributes) for s in scenes], attribute_labels(scenes)
    if not budget.guidance_scales:
        raise ValueError("the budget names no guidance scale")
    results, images = {}, torch.empty(0)
    for scale in tqdm(budget.guidance_scales, desc="guidance scales"):
        out = generate(
            pipe,
            prompts,
            seed=seed,
            guidance_scale=scale,
            num_inference_steps=budget.steps,
            batch_size=budget.batch_size,
        )
        images = to_tensor(out.images)
        results[str(scale)] = accuracy(classifier, images, labels)
    return results, images


def memorisation(
    pipe: SDPipeline,
    world: World,
    train_images: torch.Tensor,
    novel_images: torch.Tensor,
    budget: QualityBudget,
    seed: int = 0,
) -> dict:
    """Nearest-training-image distances of samples from memorised vs novel captions.

    ``train_images: (R, 3, H, W)`` is the training set without the memorised scenes, which are
    appended here, so a memorised caption's own image has index ``R + i``.
    """
    scale = max(budget.guidance_scales)
    out = generate(
        pipe,
        world.memorised_captions,
        seed=seed,
        guidance_scale=scale,
        num_inference_steps=budget.steps,
        batch_size=budget.batch_size,
    )
    memorised = to_tensor(world.render(world.memorised))
    references = torch.cat([train_images, memorised])
    d_memorised, index = nearest_distances(to_tensor(out.images), references)
    d_novel, _ = nearest_distances(novel_images, references)
    own = index == len(train_images) + torch.arange(len(memorised))
    d_own = (to_tensor(out.images) - memorised).pow(2).flatten(1).mean(1).sqrt()
    return {
        "guidance_scale": scale,
        "nearest_own_image_fraction": float(own.float().mean()),
        "distance_memorised": quantiles(d_memorised),
        "distance_to_own_image": quantiles(d_own),
        "distance_novel": quantiles(d_novel),
        "raw": {"memorised": d_memorised.tolist(), "novel": d_novel.tolist()},
    }


def evaluate(
    pipe: SDPipeline,
    classifier: AttributeClassifier,
    world: World,
    train_images: torch.Tensor,
    budget: QualityBudget | None = None,
    seed: int = 0,
) -> dict:
    """All gates: VAE PSNR, classifier accuracy on renders and on their VAE reconstructions (what a
    generated image can show at best), prompt following, memorisation."""
    budget = budget or QualityBudget()
    renders, scenes = world.dataset(budget.n_psnr, seed=10_000 + seed, novel=True)
    held_out = to_tensor(renders)
    reconstructed = vae_reconstructions(pipe, held_out)
    values = psnr(held_out, reconstructed)
    following, novel_images = prompt_following(pipe, classifier, world, budget, seed)
    labels = attribute_labels(scenes)
    return {
        "vae_psnr_db": {"mean": float(values.mean()), **quantiles(values)},
        "classifier_accuracy_on_renders": accuracy(classifier, held_out, labels),
        "classifier_accuracy_on_reconstructions": accuracy(classifier, reconstructed, labels),
        "chance": {name: 1 / len(values_) for name, values_ in ATTRIBUTES.items()},
        "guidance_rescale": default_guidance_rescale(pipe),
        "prompt_accuracy": following,
        "memorisation": memorisation(pipe, world, train_images, novel_images, budget, seed),
        "budget": budget.__dict__ | {"guidance_scales": list(budget.guidance_scales)},
    }
