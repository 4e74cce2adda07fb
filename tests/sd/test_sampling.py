"""geomlib.sd.sampling: generation against the pipeline's own output, deterministic seeds, the
guidance-rescale defaults, and recorded trajectories against DDIM's update formula."""

import numpy as np
import pytest
import torch

from geomlib.sd import sampling
from geomlib.sd.mini.build import scheduler

PROMPTS = [
    "a red circle on a blue background",
    "a large green star on the left on a white background",
    "a cat",
]


def test_generate_reproduces_the_pipeline_and_is_deterministic(pipe):
    first = sampling.generate(pipe, PROMPTS, seed=5, guidance_scale=3.0, num_inference_steps=4)
    second = sampling.generate(pipe, PROMPTS, seed=5, guidance_scale=3.0, num_inference_steps=4)
    other = sampling.generate(pipe, PROMPTS[:1], seed=6, guidance_scale=3.0, num_inference_steps=4)
    assert first.images.shape == (3, 16, 16, 3) and first.latents.shape == (3, 4, 8, 8)
    assert first.trajectory.shape == (5, 3, 4, 8, 8) and first.predicted_x0.shape == (4, 3, 4, 8, 8)
    np.testing.assert_array_equal(first.images, second.images)
    assert not torch.allclose(first.latents[:1], other.latents)
    # diffusers' own pipeline from the same noise gives the same image
    noise = sampling.initial_latents(pipe, 3, seed=5)
    reference = pipe(
        PROMPTS, latents=noise, guidance_scale=3.0, num_inference_steps=4, output_type="np"
    ).images
    np.testing.assert_allclose(first.images, reference, atol=1e-5)
    # sample i depends on seed + i only, not on the batch it is in
    alone = sampling.generate(pipe, PROMPTS[1:2], seed=6, guidance_scale=3.0, num_inference_steps=4)
    torch.testing.assert_close(alone.trajectory[0, 0], first.trajectory[0, 1])


def test_guidance_rescale_defaults_to_lin_et_al_on_zero_snr_schedules_only(pipe):
    """SD's schedule: plain guidance (rescale 0); a zero-terminal-SNR schedule: rescale 0.7, the
    same sample as asking for it, and not the plain-guidance one. Out-of-range values are refused."""
    kwargs = dict(seed=2, guidance_scale=7.5, num_inference_steps=3)
    plain = sampling.generate(pipe, PROMPTS[:2], guidance_rescale=0.0, **kwargs)
    assert sampling.default_guidance_rescale(pipe) == 0.0
    torch.testing.assert_close(sampling.generate(pipe, PROMPTS[:2], **kwargs).latents, plain.latents)
    original = pipe.scheduler
    pipe.scheduler = scheduler(zero_terminal_snr=True)
    try:
        assert sampling.default_guidance_rescale(pipe) == 0.7
        default = sampling.generate(pipe, PROMPTS[:2], **kwargs)
        asked = sampling.generate(pipe, PROMPTS[:2], guidance_rescale=0.7, **kwargs)
        unrescaled = sampling.generate(pipe, PROMPTS[:2], guidance_rescale=0.0, **kwargs)
        with pytest.raises(ValueError, match="guidance_rescale"):
            sampling.generate(pipe, PROMPTS[:2], guidance_rescale=1.5, **kwargs)
    finally:
        pipe.scheduler = original
    torch.testing.assert_close(default.latents, asked.latents)
    assert (default.latents - unrescaled.latents).abs().max() > 1e-4


@pytest.mark.parametrize("zero_terminal_snr", [False, True], ids=["sd-epsilon", "zero-snr-v"])
def test_trajectory_follows_the_ddim_update(pipe, zero_terminal_snr):
    """x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps with eps implied by x_t and x0 (DDIM, eta = 0),
    for SD's schedule (epsilon) and the mini model's (zero terminal SNR, v prediction)."""
    original = pipe.scheduler
    pipe.scheduler = scheduler(zero_terminal_snr)
    try:
        out = sampling.generate(pipe, PROMPTS[:2], seed=0, guidance_scale=2.0, num_inference_steps=5)
        alphas = pipe.scheduler.alphas_cumprod.double()
    finally:
        pipe.scheduler = original
    torch.testing.assert_close(out.trajectory[-1], out.latents)
    steps = out.timesteps.tolist()
    assert steps[0] == (999 if zero_terminal_snr else 801)
    for i, t in enumerate(steps):
        x_t, x0 = out.trajectory[i].double(), out.predicted_x0[i].double()
        a_t = alphas[t]
        a_prev = alphas[steps[i + 1]] if i + 1 < len(steps) else alphas[0]  # set_alpha_to_one=False
        eps = (x_t - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        expected = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        torch.testing.assert_close(out.trajectory[i + 1].double(), expected, rtol=1e-4, atol=1e-4)


def test_generate_refuses_nan_noise_and_an_empty_batch_size(pipe):
    noise = sampling.initial_latents(pipe, 2, seed=0)
    noise[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"latents contains NaN or inf values \(samples \[1\]\)"):
        sampling.generate(pipe, PROMPTS[:2], latents=noise, num_inference_steps=2)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        sampling.generate(pipe, PROMPTS[:2], num_inference_steps=2, batch_size=0)
    with pytest.raises(ValueError, match=r"\[prompt\]"):
        sampling.generate(pipe, "a cat", num_inference_steps=2)
