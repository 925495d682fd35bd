"""The diffusion math every backbone shares, as small pure functions (DDPM, Ho et al. 2020).

Notation: ``x0`` the clean latents, ``ε`` the noise, ``ᾱ_t`` the cumulative product of the noise
schedule at timestep ``t``, ``x_t = √ᾱ_t · x0 + √(1 − ᾱ_t) · ε``. A UNet predicts one of three
targets (diffusers' ``prediction_type``): ``epsilon`` (ε), ``v_prediction`` (v = √ᾱ_t · ε − √(1 − ᾱ_t) · x0,
Salimans & Ho 2022) or ``sample`` (x0 itself).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def _check(prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"Unsupported prediction_type {prediction_type!r}; iddm supports {PREDICTION_TYPES}.")


def _broadcast(alpha_bar: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return alpha_bar.to(like.device, torch.float32).view(-1, *([1] * (like.ndim - 1)))


def training_target(
    prediction_type: str, x0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor
) -> torch.Tensor:
    """What the UNet should output for ``x_t`` of ``x0`` ``(N, C, H, W)`` and ``noise``; ``alpha_bar``: ``(N,)``."""
    _check(prediction_type)
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return x0
    a = _broadcast(alpha_bar, x0)
    return (a.sqrt() * noise - (1 - a).sqrt() * x0).to(x0.dtype)


def predicted_x0(
    prediction_type: str, noisy: torch.Tensor, model_output: torch.Tensor, alpha_bar: torch.Tensor
) -> torch.Tensor:
    """The one-step estimate x̂0 of ``noisy`` ``(N, C, H, W)`` from the UNet's ``model_output``; differentiable."""
    _check(prediction_type)
    if prediction_type == "sample":
        return model_output
    a = _broadcast(alpha_bar, noisy)
    if prediction_type == "v_prediction":
        return a.sqrt() * noisy - (1 - a).sqrt() * model_output
    return (noisy - (1 - a).sqrt() * model_output) / a.sqrt()


def uniform_timesteps(count: int, high: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` timesteps drawn uniformly from ``[0, high)`` on the (CPU) ``generator``, int64 ``(count,)``."""
    if high < 1:
        raise ValueError(f"Cannot draw timesteps below {high}; it must be >= 1.")
    return torch.randint(0, high, (count,), generator=generator)


def latent_keep_mask(coverage: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Which latent cells to train on: ``(N, 1, h, w)`` float, 1 where the cell's whole pixel block is covered.

    ``coverage``: ``(N, 1, H, W)`` in ``{0, 1}``, 1 for pixels that come from inside the photo (not a crop's
    mirrored border); ``grid`` ``(h, w)`` must divide ``(H, W)``. A cell that touches the border is left out: the
    border repeats the face's own features (a second row of eyes) that a model would otherwise learn to draw.
    """
    height, width = coverage.shape[-2:]
    if height % grid[0] or width % grid[1]:
        raise ValueError(f"A latent grid of {tuple(grid)} does not divide {height}x{width}-px crops.")
    block = (height // grid[0], width // grid[1])
    return -F.max_pool2d(-coverage.float(), kernel_size=block, stride=block)


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample mean squared error ``(B,)`` of ``(B, C, h, w)`` tensors over the cells where ``keep``
    ``(B, 1, h, w)`` is 1 (every cell when ``None``); a sample with no kept cell has loss 0."""
    error = F.mse_loss(prediction.float(), target.float(), reduction="none")
    if keep is None:
        return error.mean(dim=(1, 2, 3))
    keep = keep.to(error.device, error.dtype)
    kept = keep.sum(dim=(1, 2, 3)) * error.shape[1]
    return (error * keep).sum(dim=(1, 2, 3)) / kept.clamp(min=1)
