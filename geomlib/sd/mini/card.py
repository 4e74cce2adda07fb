"""The model card of the offline model, written by the training script from what it measured.

``python -m geomlib.sd.mini.card data/mini-sd`` re-renders the card from the ``training.json``,
``quality.json`` and ``world.json`` that training wrote beside the weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from geomlib.sd.mini.build import MAX_TOKENS, TEXT_CONFIGS, UNET_CONFIGS, VAE_CONFIGS
from geomlib.sd.mini.world import ATTRIBUTES, World, load_world


def _accuracy_table(results: dict) -> list[str]:
    names = list(ATTRIBUTES)
    lines = ["| samples | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    chance = results["chance"]
    lines.append("| chance | " + " | ".join(f"{chance[n]:.2f}" for n in names) + " |")
    renders = results["classifier_accuracy_on_renders"]
    lines.append(
        "| held-out renders (classifier ceiling) | " + " | ".join(f"{renders[n]:.2f}" for n in names) + " |"
    )
    if "classifier_accuracy_on_reconstructions" in results:
        rebuilt = results["classifier_accuracy_on_reconstructions"]
        lines.append(
            "| their VAE reconstructions (ceiling for generated images) | "
            + " | ".join(f"{rebuilt[n]:.2f}" for n in names)
            + " |"
        )
    for scale, accuracy in results["prompt_accuracy"].items():
        lines.append(
            f"| generated, guidance {scale} | " + " | ".join(f"{accuracy[n]:.2f}" for n in names) + " |"
        )
    return lines


def _distance_table(memorisation: dict) -> list[str]:
    keys = ("min", "p10", "p25", "median", "p75", "p90", "max")
    rows = [
        ("memorised captions: to nearest training image", memorisation["distance_memorised"]),
        ("memorised captions: to their own training image", memorisation["distance_to_own_image"]),
        ("novel captions: to nearest training image", memorisation["distance_novel"]),
    ]
    lines = [
        "| RMS pixel distance (images in [0, 1]) | " + " | ".join(keys) + " |",
        "|---" * (len(keys) + 1) + "|",
    ]
    lines += [f"| {name} | " + " | ".join(f"{values[k]:.3f}" for k in keys) + " |" for name, values in rows]
    return lines


def _reconstructions_clause(config: dict) -> str:
    count = min(config.get("classifier_reconstructions", 0), config["train_size"])  # older records: none
    return f"\nand the VAE's reconstructions of {count} of them" if count else ""


def _rotation_phrase(world: World) -> str:
    if world.max_rotation >= 180:
        return "random\nrotation"
    return f"a rotation within\n±{world.max_rotation:g}° of a reference pose"


def _data_section(world: World, config: dict) -> str:
    repetitions = int(
        config["unet_steps"]
        * config["unet_batch"]
        * config["memorised_fraction"]
        / max(len(world.memorised), 1)
    )
    nuisances = f"{_rotation_phrase(world)}, jitter, texture period and phase, and colour jitter."
    nuisances += " Captions from a grammar, e.g."
    return f"""## Data
`geomlib.sd.mini.world.World(seed={world.seed})`: {world.image_size}x{world.image_size} RGB images of
{len(ATTRIBUTES["shape"])} shapes in {len(ATTRIBUTES["colour"])} colours on {len(ATTRIBUTES["background"])}
background colours x {len(ATTRIBUTES["texture"])} textures, 2 sizes, 5 positions, with {nuisances}
"a large red star on the left on a striped blue background" (optional words dropped with p = 0.2).
{len(world.training_attributes)} attribute combinations are used for training ({config["train_size"]}
renders); {len(world.novel_attributes)} combinations (10 %) are **novel**: never rendered for training,
their captions never seen verbatim. **{len(world.memorised)} memorised scenes**, each with a unique
caption ending in "named <made-up word>", fill {config["memorised_fraction"]:.0%} of every denoiser batch
(about {repetitions} repetitions each in the UNet phase). Their captions are in `world.json`.
"""


def _architecture_section(info: dict) -> str:
    counts = info["counts"]
    sizes = {name: f"{count / 1e6:.2f} M" for name, count in counts.items()}
    architecture = json.dumps(
        {
            "vae": VAE_CONFIGS["mini"],
            "unet": UNET_CONFIGS["mini"],
            "text_encoder": TEXT_CONFIGS["mini"] | {"max_tokens": MAX_TOKENS["mini"]},
        },
        indent=1,
    )
    return f"""## Architecture ({sum(counts.values()) / 1e6:.2f} M parameters, float32 safetensors)
VAE {sizes["vae"]}, UNet {sizes["unet"]}, text encoder {sizes["text_encoder"]}
(configs in `geomlib/sd/mini/build.py`, the one builder also used for the tests' tiny pipeline):
```json
{architecture}
```
Why 32x32 images and a factor-4 VAE (3 blocks) with 4x8x8 latents: a factor-8 VAE on 32x32 gives
4x4x4 = 64 latent dimensions, too few for the geometry to be interesting; 64x64 images cost 4x the
VAE compute and do not fit an hour on 2 shared CPU cores. 4x8x8 = 256 latent dimensions decoded to
3x32x32 = 3072 pixels keep a 12x compression, a non-trivial decoder Jacobian (256 x 3072), and
latents with spatial structure like SD's. VAE latent `scaling_factor` measured as in SD (1 / std of
posterior samples): {info["scaling_factor"]:.5f}.
"""


def _training_section(info: dict) -> str:
    config, losses = info["config"], info["final_losses"]
    minutes = {name: f"{seconds / 60:.1f} min" for name, seconds in info["timings"].items()}
    vae_row = (
        f"| VAE (MSE + {config['kl_weight']} KL) | {config['vae_steps']} | {config['vae_batch']}"
        f" | {config['vae_lr']} | MSE {losses['vae_mse']:.5f} (images in [-1, 1])"
        f", KL {losses['vae_kl']:.1f} |"
    )
    unet_row = (
        f"| text encoder + UNet ({info['scheduler']['prediction_type']} MSE,"
        f" caption dropout {config['caption_dropout']},"
        f" EMA {config['ema_decay']}) | {config['unet_steps']} | {config['unet_batch']} | {config['unet_lr']}"
        f" | {losses['unet_epsilon_mse']:.4f} |"
    )
    resumed = ""
    if "--resume" in info["command"]:
        resumed = (
            "\nThis invocation continued from the checkpoints of earlier, interrupted invocations (wall times"
            "\nabove are this invocation's). Every random draw of a step is seeded by (seed, phase, step), so"
            "\na resumed run is bit-identical to an uninterrupted one (`tests/test_mini.py`)."
        )
    return f"""## Training
| phase | steps | batch | lr | final loss (mean of last 100 steps) |
|---|---|---|---|---|
{vae_row}
{unet_row}
| attribute classifier (for the gates) | {config["classifier_steps"]} | 128 | 2e-3 | |

AdamW, 50 warm-up steps then cosine decay to 10 %; the shipped UNet and text encoder are the EMA
weights. Device `{info["device"]}`, {info["threads"]} torch thread(s).
{_software_clause(info)}. Wall time: VAE and
latents {minutes["vae_and_latents_s"]}, denoiser {minutes["denoiser_s"]}, everything up to
shipping {minutes["training_total_s"]}, quality gates {minutes["evaluation_s"]}
(on a CPU shared with other jobs). The full log is `train_log.txt`.

Command: `{info["command"]}`
Commit at training time (`git rev-parse HEAD`): `{info["commit"]}`. The training code is the one in
the commit that adds these weights.{resumed}
"""


#: The packages ``training.json`` records, in the order the card names them.
RECORDED_SOFTWARE = ("torch", "diffusers", "transformers", "numpy")


def _software_clause(info: dict) -> str:
    """What the training run recorded of its software (``train.software_record``), and what it did
    not: a card rendered later must not name the versions of the machine that renders it."""
    software = info.get("software", {})
    named = [f"{name} {software[name]}" for name in RECORDED_SOFTWARE if name in software]
    if "python" in software:
        named.append(f"Python {software['python']}")
    if not named:
        return "The training run recorded no software versions"
    clause = "Software recorded by the training run: " + ", ".join(named)
    if "platform" in software:
        clause += f" on {software['platform']}"
    missing = [n for n in (*RECORDED_SOFTWARE, "python", "platform") if n not in software]
    if missing:
        clause += f"\n(not recorded for this model: {', '.join(missing)})"
    return clause


def _quality_section(results: dict, config: dict, world: World) -> str:
    psnr, memo = results["vae_psnr_db"], results["memorisation"]
    trained_on = "the procedural renders" + _reconstructions_clause(config)
    return f"""## Quality gates (by `geomlib.sd.mini.quality.evaluate`, raw numbers in `quality.json`)
Re-measure a shipped model without training:
`python -m geomlib.sd.mini.train --out <folder> --evaluate-only`.

**Reconstruction.** VAE PSNR on {results["budget"]["n_psnr"]} held-out renders (novel combinations):
mean {psnr["mean"]:.2f} dB (median {psnr["median"]:.2f}, 10th percentile {psnr["p10"]:.2f}).

**Prompt following and guidance.** {results["budget"]["n_novel"]} novel captions,
{results["budget"]["steps"]} DDIM steps, one seed each{_rescale_clause(results)}; accuracy of an
attribute classifier trained on {trained_on} (`quality.AttributeClassifier`: colour,
background and texture from the image; shape, size and position from the mask of the caption's
colour):

{chr(10).join(_accuracy_table(results))}

**Memorisation.** Samples at guidance {memo["guidance_scale"]} for each memorised caption vs the novel
captions above, distance to the nearest of the {config["train_size"]} + {len(world.memorised)}
training images.
For {memo["nearest_own_image_fraction"]:.0%} of memorised captions the nearest training image is the
memorised image itself.

{chr(10).join(_distance_table(memo))}

{_gate_summary(results)}
"""


#: What ``tests/test_mini.py`` asks of the shipped model (on fewer samples), checked here on these.
GATE_GUIDANCE = "7.5"
GATE_ATTRIBUTES = ("colour", "background", "shape")


def _rescale_clause(results: dict) -> str:
    """How guidance was rescaled in the evaluation (absent from records older than the rescale)."""
    rescale = results.get("guidance_rescale")
    if not rescale:
        return ""
    return (
        f",\nguidance rescaled with φ = {rescale} (Lin et al. 2024, section 3.4;"
        " `latent.generate`'s default on this schedule)"
    )


def _gate_summary(results: dict) -> str:
    """Each gate of issue 6 with this run's number against its threshold: met or missed."""
    lines = ["**Gates.**", "", "| gate | measured | needed | |", "|---|---|---|---|"]

    def row(name: str, value: float, needed: float, strict: bool = False) -> None:
        met = value > needed if strict else value >= needed
        sign = ">" if strict else ">="
        lines.append(f"| {name} | {value:.2f} | {sign} {needed:.2f} | {'met' if met else 'missed'} |")

    following, chance = results["prompt_accuracy"], results["chance"]
    for name in GATE_ATTRIBUTES if GATE_GUIDANCE in following else ():
        row(
            f"{name} accuracy at guidance {GATE_GUIDANCE} (3x chance)",
            following[GATE_GUIDANCE][name],
            3 * chance[name],
        )
    mean = {g: float(np.mean(list(values.values()))) for g, values in following.items()}
    if "1.0" in mean:
        for scale in sorted((g for g in mean if float(g) > 1), key=float):
            row(
                f"mean accuracy, guidance {scale} minus guidance 1.0",
                mean[scale] - mean["1.0"],
                0.0,
                strict=True,
            )
    memo = results["memorisation"]
    ratio = memo["distance_novel"]["median"] / memo["distance_to_own_image"]["median"]
    row("median distance: novel to nearest / memorised to own image", ratio, 2.0)
    return "\n".join(lines)


def write_model_card(out: Path, info: dict, results: dict, world: World) -> Path:
    """Write ``out/MODEL_CARD.md`` from the training ``info`` and the quality ``results``."""
    sections = [
        """# mini-sd: an offline Stable-Diffusion-architecture text-to-image model

A latent diffusion model with the classes of Stable Diffusion 1.4 (`AutoencoderKL`,
`UNet2DConditionModel`, `CLIPTextModel`, `CLIPTokenizer`, DDIM scheduler with SD's betas), trained
from scratch on a procedural captioned world so that every latent-diffusion chapter runs offline on
a laptop CPU. Load it like SD 1.4: `geomlib.load_pipeline("data/mini-sd")`. One difference
from SD 1.4: the betas are rescaled to zero terminal SNR and the UNet predicts v (Lin et al. 2024;
diffusers' `rescale_betas_zero_snr`, `timestep_spacing="trailing"`), and, as they recommend for such a
schedule, classifier-free guidance is rescaled (φ = 0.7; `geomlib.sd.sampling.generate`'s default here).
With SD's own schedule a 4x8x8 latent keeps enough of the image at t = 999 that the model read the
layout from the noise and ignored position words (a first run measured position accuracy at chance).
**Produced by `geomlib.sd.mini.train`; nothing here was trained or edited by hand.**
""",
        _data_section(world, info["config"]),
        _architecture_section(info),
        _training_section(info),
        _quality_section(results, info["config"], world),
    ]
    path = out / "MODEL_CARD.md"
    path.write_text("\n".join(sections))
    return path


def rerender(folder: str | Path) -> Path:
    """Write ``MODEL_CARD.md`` again from the JSON records in ``folder`` (no training, no sampling)."""
    folder = Path(folder)
    info = json.loads((folder / "training.json").read_text())
    results = json.loads((folder / "quality.json").read_text())
    return write_model_card(folder, info, results, load_world(folder))


if __name__ == "__main__":
    import sys

    print(rerender(sys.argv[1] if len(sys.argv) > 1 else "data/mini-sd"))
