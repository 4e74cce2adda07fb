"""The formulas of diffusion models that several chapters use: schedules, forward noising, the
clean-sample prediction and the deterministic DDIM step.

Notation (Ho et al. 2020): ``abar_t = prod_{s <= t} (1 - beta_s)`` is the signal fraction at step
``t``; the forward marginal is ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``.

``alpha_bar`` arguments are a Python float or a tensor, and the arithmetic happens in what is given
(``math.sqrt`` for floats, ``Tensor.sqrt`` in the tensor's dtype): a caller that needs float64 passes
float64, so moving a formula here never changes a chapter's numbers.
"""

from __future__ import annotations

import math

import torch

AlphaBar = float | torch.Tensor


def _sqrt(value: AlphaBar) -> AlphaBar:
    return value.sqrt() if isinstance(value, torch.Tensor) else math.sqrt(value)


def linear_alpha_bar(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """``abar_t`` of the linear-beta schedule ``beta_t = linspace(beta_start, beta_end, T)``,
    ``(T,)`` float64 (DDPM's defaults; the indexing of diffusers' ``alphas_cumprod``)."""
    if num_steps < 2 or not 0 < beta_start <= beta_end < 1:
        raise ValueError(
            "need num_steps >= 2 and 0 < beta_start <= beta_end < 1,"
            f" got {num_steps}, {beta_start}, {beta_end}"
        )
    betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def timestep_at(fraction: float, num_steps: int) -> int:
    """The integer timestep ``round(fraction * (T - 1))`` for a fraction of the schedule in ``[0, 1]``."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction of the schedule must be in [0, 1], got {fraction}")
    return int(round(fraction * (num_steps - 1)))


def forward_noise(x0: torch.Tensor, alpha_bar: AlphaBar, noise: torch.Tensor) -> torch.Tensor:
    """``x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps`` for ``x0, noise: (B, *shape)``.

    ``alpha_bar``: a float, a 0-d tensor, or ``(B,)`` (one value per sample, broadcast over the
    sample's axes).
    """
    if isinstance(alpha_bar, torch.Tensor) and alpha_bar.ndim == 1:
        alpha_bar = alpha_bar.reshape(-1, *([1] * (x0.ndim - 1)))
    return _sqrt(alpha_bar) * x0 + _sqrt(1 - alpha_bar) * noise


def predicted_x0(
    x_t: torch.Tensor, model_output: torch.Tensor, alpha_bar: AlphaBar, prediction_type: str
) -> torch.Tensor:
    """The clean sample implied by a denoiser's output at ``x_t``.

    ``prediction_type``: ``"epsilon"`` (``x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)``),
    ``"v_prediction"`` (``x0 = sqrt(abar) x_t - sqrt(1 - abar) v``) or ``"sample"`` (the output
    itself), as diffusers' schedulers name them.
    """
    if prediction_type == "epsilon":
        return (x_t - _sqrt(1 - alpha_bar) * model_output) / _sqrt(alpha_bar)
    if prediction_type == "v_prediction":
        return _sqrt(alpha_bar) * x_t - _sqrt(1 - alpha_bar) * model_output
    if prediction_type == "sample":
        return model_output
    raise ValueError(
        f"prediction_type must be 'epsilon', 'v_prediction' or 'sample', got {prediction_type!r}"
    )


def ddim_step(
    x_t: torch.Tensor, x0_hat: torch.Tensor, alpha_bar: AlphaBar, alpha_bar_next: AlphaBar
) -> torch.Tensor:
    """One deterministic DDIM step (eta = 0) from ``x_t`` at ``abar`` to ``abar_next``, given the
    predicted clean sample: the implied noise ``eps = (x_t - sqrt(abar) x0_hat) / sqrt(1 - abar)``
    is kept and the sample moves to ``sqrt(abar_next) x0_hat + sqrt(1 - abar_next) eps``."""
    eps = (x_t - _sqrt(alpha_bar) * x0_hat) / _sqrt(1 - alpha_bar)
    return _sqrt(alpha_bar_next) * x0_hat + _sqrt(1 - alpha_bar_next) * eps
