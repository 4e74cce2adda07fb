"""The one builder of untrained Stable-Diffusion-architecture pipelines, at three sizes.

``tiny``  a few hundred thousand parameters: what the tests build, save and load back.
``mini``  the project's offline text-to-image model (trained by :mod:`geomlib.sd.mini.train`):
          32x32 RGB images, a factor-4 VAE (3 blocks) with 4x8x8 latents.
``sd14``  the published Stable Diffusion 1.x configs (UNet 860 M, VAE 84 M, CLIP ViT-L/14 text
          encoder 123 M parameters) with random weights: only for checking the time and memory of
          the paper-scale path; never for results.

All three use the same classes as SD 1.4: ``AutoencoderKL``, ``UNet2DConditionModel``,
``CLIPTextModel``, a ``CLIPTokenizer`` (here built from a word list by byte-pair merges, so every
word is one token) and a DDIM scheduler with SD's scaled-linear betas.
"""

from __future__ import annotations

import itertools
import json
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from geomlib.runtime.seeding import seeded_global_rng
from geomlib.sd.hub import SDPipeline, StableDiffusionPipeline

#: ``sd14-small``: SD 1.4's layout (a factor-8 VAE of four blocks, a UNet of three cross-attention
#: levels and one plain level, 77 tokens) with small widths: what a dry run of the paper path loads.
SIZES: tuple[str, ...] = ("tiny", "mini", "sd14", "sd14-small")
BOS, EOS = "<|startoftext|>", "<|endoftext|>"

VAE_CONFIGS: dict[str, dict] = {
    "tiny": dict(block_out_channels=(32, 32), layers_per_block=1, sample_size=16),
    "mini": dict(block_out_channels=(32, 32, 64), layers_per_block=1, sample_size=32),
    "sd14": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512),
    "sd14-small": dict(block_out_channels=(32, 32, 32, 32), layers_per_block=1, sample_size=64),
}
UNET_CONFIGS: dict[str, dict] = {
    "tiny": dict(
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        attention_head_dim=8,
        cross_attention_dim=32,
    ),
    "mini": dict(
        block_out_channels=(64, 128),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        attention_head_dim=16,
        cross_attention_dim=128,
    ),
    "sd14": dict(
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        layers_per_block=2,
        attention_head_dim=8,
        cross_attention_dim=768,
    ),
    "sd14-small": dict(
        block_out_channels=(32, 32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        layers_per_block=1,
        attention_head_dim=8,
        cross_attention_dim=32,
    ),
}
TEXT_CONFIGS: dict[str, dict] = {
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
    "mini": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4),
    "sd14": dict(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        vocab_size=49408,
        hidden_act="quick_gelu",
    ),
    "sd14-small": dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        hidden_act="quick_gelu",
    ),
}
MAX_TOKENS: dict[str, int] = {"tiny": 24, "mini": 24, "sd14": 77, "sd14-small": 77}
ZERO_TERMINAL_SNR: dict[str, bool] = {"tiny": False, "mini": True, "sd14": False, "sd14-small": False}
SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def bpe_merges(words: Sequence[str]) -> list[tuple[str, str]]:
    """Byte-pair merges learnt on ``words`` (each counted once) until every word is one symbol.

    Applying these merges in order (what ``CLIPTokenizer`` does) turns each word of the list into a
    single token ``word</w>``; ties are broken alphabetically, so the result is deterministic.
    """
    if not words or any(not w or not w.isalpha() or not w.islower() for w in words):
        raise ValueError("words must be a non-empty list of lowercase alphabetic words")
    corpus = {w: [*w[:-1], w[-1] + "</w>"] for w in dict.fromkeys(words)}
    merges: list[tuple[str, str]] = []
    while True:
        pairs = Counter(pair for symbols in corpus.values() for pair in itertools.pairwise(symbols))
        if not pairs:
            return merges
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        for word, symbols in corpus.items():
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            corpus[word] = merged


def build_tokenizer(words: Sequence[str], max_length: int = 24) -> CLIPTokenizer:
    """A ``CLIPTokenizer`` whose vocabulary is ``words`` (one token each) plus every letter.

    Letters (``x`` and ``x</w>``) are in the vocabulary, so an unknown word is spelt out in
    sub-word pieces rather than silently mapped to ``<|endoftext|>``.
    """
    merges = bpe_merges(words)
    letters = sorted({c for w in words for c in w} | set("abcdefghijklmnopqrstuvwxyz"))
    symbols = [BOS, EOS, *letters, *(c + "</w>" for c in letters), *("".join(m) for m in merges)]
    vocab = {symbol: index for index, symbol in enumerate(dict.fromkeys(symbols))}
    with tempfile.TemporaryDirectory() as folder:
        vocab_file, merges_file = Path(folder, "vocab.json"), Path(folder, "merges.txt")
        vocab_file.write_text(json.dumps(vocab))
        merges_file.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
        tokenizer = CLIPTokenizer(vocab=str(vocab_file), merges=str(merges_file), model_max_length=max_length)
    return tokenizer


def _text_encoder(size: str, tokenizer: CLIPTokenizer) -> CLIPTextModel:
    config: dict[str, Any] = dict(
        vocab_size=len(tokenizer),
        max_position_embeddings=MAX_TOKENS[size],
        hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attention_dropout=0.0,
        dropout=0.0,
    )
    config.update(TEXT_CONFIGS[size])
    return CLIPTextModel(CLIPTextConfig(**config))


def _vae(size: str) -> AutoencoderKL:
    config = dict(VAE_CONFIGS[size])
    blocks = len(config["block_out_channels"])
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        act_fn="silu",
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        norm_num_groups=32,
        **config,
    )


def _unet(size: str, latent_size: int) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=4,
        out_channels=4,
        act_fn="silu",
        norm_num_groups=32,
        **UNET_CONFIGS[size],
    )


def scheduler(zero_terminal_snr: bool = False) -> DDIMScheduler:
    """DDIM with SD 1.4's betas (``clip_sample=False, set_alpha_to_one=False``).

    ``zero_terminal_snr``: rescale the betas so that the last timestep is pure noise, predict ``v``
    and start sampling at ``t = 999`` (Lin et al. 2024, "Common diffusion noise schedules and sample
    steps are flawed"). With SD's schedule a small latent keeps a visible trace of the image at
    ``t = 999`` (signal 0.068), so a model learns to read the layout from the noise instead of the
    prompt; the mini model therefore uses the zero-SNR variant, SD 1.4 and the tests' tiny pipeline
    the original (epsilon prediction, ``steps_offset=1``).
    """
    if zero_terminal_snr:
        return DDIMScheduler(
            **SD_BETAS,
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,  # ignored by "trailing" spacing; set so diffusers does not warn
            rescale_betas_zero_snr=True,
            prediction_type="v_prediction",
            timestep_spacing="trailing",
        )
    return DDIMScheduler(**SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def build_pipeline(words: Sequence[str], size: str = "mini", *, seed: int = 0) -> SDPipeline:
    """An untrained SD-architecture pipeline (random weights, deterministic under ``seed``).

    Parameters
    ----------
    words
        the caption vocabulary; the tokenizer gives each word one token.
    size
        ``"tiny"`` (tests), ``"mini"`` (the shipped model) or ``"sd14"`` (SD 1.x shapes).
    seed
        seed of the weight initialisation (the caller's global RNG is left as it was).

    Returns
    -------
    A float32 ``StableDiffusionPipeline`` on the CPU, without safety checker; the VAE's
    ``scaling_factor`` is 1 until :mod:`geomlib.sd.mini.train` measures it.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    tokenizer = build_tokenizer(words, MAX_TOKENS[size])
    with seeded_global_rng(seed):
        vae: Any = _vae(size)
        factor = 2 ** (len(VAE_CONFIGS[size]["block_out_channels"]) - 1)
        unet = _unet(size, VAE_CONFIGS[size]["sample_size"] // factor)
        text_encoder = _text_encoder(size, tokenizer)
    vae.register_to_config(scaling_factor=1.0)
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler(ZERO_TERMINAL_SNR[size]),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def parameter_counts(pipe: SDPipeline) -> dict[str, int]:
    """Number of parameters of the VAE, UNet and text encoder."""
    return {
        name: sum(p.numel() for p in getattr(pipe, name).parameters())
        for name in ("vae", "unet", "text_encoder")
    }
