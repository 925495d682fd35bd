"""The data objectives of IDDM and of the baselines, as pure functions of the perturbation δ.

See ``docs/design.md`` §2 for the method. With ``X`` the clean training photos, ``X̃ = Π(X + δ)``,
``T`` a robustness transform drawn per step (EOT), ``x̂0(θ, X̃)`` the current model's one-step
denoised estimate of a noised ``X̃`` and ``L_id`` the identity loss over the surrogates
(:class:`iddm.decouple.identity.IdentityLoss`), one data step minimizes:

* **iddm**   ``λ_gen · L_id(T(x̂0(θ, X̃))) + λ_data · L_id(T(X̃)) + λ_fid · MSE₂₅₅(X̃, X) + λ_nat · L_pers(θ; X̃)``
  (the last term keeps the photos where the model finds faces likely: a realism budget learned from data)
* **cloak**  ``λ_data · L_id(T(X̃)) + λ_fid · MSE₂₅₅(X̃, X)``: the photos alone, once, before training
  (Fawkes / LowKey-style FR cloaking)
* **aspl**   ``−L_pers(θ; X̃)``: make the photos hard to learn (Anti-DreamBooth's ASPL, Van Le et al. 2023)
* **noise**  no objective: ``δ ~ U[−ε, ε]``, frozen (the control)

and the step is ``δ ← Π(δ − α · sign(∇δ))`` with ``Π`` the projection onto ``‖δ‖∞ ≤ ε`` and
``X + δ ∈ [0, 1]`` (projected signed gradient, Madry et al. 2018).

With a warp budget ``w`` the photos are also reshaped: ``X̃ = Π(W_φ(X) + δ)`` with ``W_φ`` a smooth
displacement field ``φ`` (:func:`warp`), stepped the same way (``φ ← clip(φ − (w/8) · sign(∇φ), −w, w)``).
Every objective below sees the warped photos ``W_φ(X)`` as its ``base`` (the clean photos without a warp).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from iddm.decouple.identity import IdentityLoss
from iddm.decouple.privacy import PrivacySettings
from iddm.decouple.transforms import sample_transform
from iddm.diffusion import Backbone, Conditioning

WARP_GRID = 8
"""Default control points per side of the warp's displacement field: coarse, so the warp moves facial features as
wholes (proportions, outline) instead of adding texture that a blur or the autoencoder removes."""


def warp(images: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """``images`` ``(N, C, H, W)`` resampled along a smooth displacement field (differentiable in both).

    Args:
        images: ``(N, C, H, W)``.
        flow: ``(N, 2, g, g)`` displacements ``(x, y)`` in pixels of ``images`` at ``g × g`` control points,
            upsampled bicubically to ``H × W`` (``(1, 2, g, g)``: the same field for every image); a zero flow
            returns ``images`` unchanged.
    """
    n, _, height, width = images.shape
    field = F.interpolate(flow.to(images), size=(height, width), mode="bicubic", align_corners=True)
    field = field.expand(n, -1, -1, -1)  # a shared flow moves every image alike
    ys = torch.linspace(-1, 1, height, device=images.device, dtype=images.dtype)
    xs = torch.linspace(-1, 1, width, device=images.device, dtype=images.dtype)
    identity = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).expand(n, height, width, 2)
    pixel = torch.tensor([2 / max(width - 1, 1), 2 / max(height - 1, 1)], device=images.device, dtype=images.dtype)
    grid = identity + field.permute(0, 2, 3, 1) * pixel
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=True)


def expand(delta: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """δ at image resolution ``size``: ``delta`` itself when it is per pixel, else a coarse ``(N, 3, g, g)`` grid
    upsampled bicubically (differentiable). Bicubic overshoots its control values by a few percent; clamping to
    their largest magnitude keeps ``‖δ‖∞`` within the budget the grid was projected on."""
    if tuple(delta.shape[-2:]) == tuple(size):
        return delta
    bound = delta.detach().abs().amax()
    return F.interpolate(delta, size=size, mode="bicubic", align_corners=True).clamp(-bound, bound)


def apply(clean: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``X̃ = clamp(X + δ, 0, 1)``, images ``(N, 3, R, R)``."""
    return (clean + delta).clamp(0, 1)


def project(delta: torch.Tensor, clean: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``Π(δ)``: clip to the L∞ ball of radius ``epsilon``, then keep ``X + δ`` in ``[0, 1]``."""
    return apply(clean, delta.clamp(-epsilon, epsilon)) - clean


def limit_chroma(delta: torch.Tensor, bound: float) -> torch.Tensor:
    """``delta`` ``(N, 3, ...)`` with its colour part (each channel's difference from the three channels' mean, the
    grey part) scaled down per pixel to at most ``±bound``: the grey part is kept, so 0 leaves a grey δ that
    changes shading but never hue. Scaling (not clipping) keeps the colour part's mean at 0 and a δ inside an L∞
    ball inside it."""
    grey = delta.mean(dim=1, keepdim=True)
    colour = delta - grey
    largest = colour.abs().amax(dim=1, keepdim=True)
    return grey + colour * (bound / largest.clamp_min(1e-12)).clamp(max=1.0)


def signed_gradient_step(
    delta: torch.Tensor,
    gradient: torch.Tensor,
    step_size: float,
    clean: torch.Tensor,
    epsilon: float,
    chroma: float = 1.0,
) -> torch.Tensor:
    """One projected signed-gradient descent step on ``delta`` (per pixel, or a coarse grid: see :func:`expand`,
    whose grid is kept in the L∞ ball only, the image range being enforced when it is applied). With ``chroma`` < 1
    the colour part of δ is held within ``chroma · epsilon`` (:func:`limit_chroma`)."""
    stepped = (delta - step_size * gradient.sign()).clamp(-epsilon, epsilon)
    if chroma < 1:
        stepped = limit_chroma(stepped, chroma * epsilon)
    return stepped if delta.shape != clean.shape else project(stepped, clean, epsilon)


def low_frequency(gradient: torch.Tensor, factor: int) -> torch.Tensor:
    """``gradient`` ``(N, C, H, W)`` averaged over ``factor × factor`` blocks and bilinearly upsampled back: steps
    on it change only the low spatial frequencies, which other FR models and an autoencoder keep (1: unchanged)."""
    if factor <= 1:
        return gradient
    pooled = F.avg_pool2d(gradient, factor, ceil_mode=True)
    return F.interpolate(pooled, size=gradient.shape[-2:], mode="bilinear", align_corners=False)


def uniform_noise(clean: torch.Tensor, epsilon: float, generator: torch.Generator) -> torch.Tensor:
    """The noise control's ``δ ~ U[−ε, ε]`` (projected), drawn on ``generator`` (CPU)."""
    uniform = torch.rand(clean.shape, generator=generator).to(clean)
    return project((uniform * 2 - 1) * epsilon, clean, epsilon)


def sample_surrogates(count: int, per_step: int | None, generator: torch.Generator) -> list[int] | None:
    """Positions of ``per_step`` of ``count`` surrogates drawn without replacement (``None``: all of them)."""
    if per_step is None or per_step >= count:
        return None
    return sorted(torch.randperm(count, generator=generator)[:per_step].tolist())


def fidelity_penalty(images: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Mean squared difference in 8-bit levels², so ``λ_fid`` does not depend on the image scale."""
    return F.mse_loss(images, clean) * 255**2


@dataclass
class ObjectiveInputs:
    """What a data objective sees besides δ: the photos, the current model and the identity loss.

    Attributes:
        clean: ``(N, 3, R, R)`` clean training images in ``[0, 1]``.
        backbone: the model being personalized (θ, frozen during the data step).
        conditioning: the instance prompt's conditioning for ``N`` images.
        identity: the identity loss over the surrogates, anchored on ``clean``.
        settings: the resolved privacy values.
        generator: CPU generator for timesteps, noise and EOT draws.
    """

    clean: torch.Tensor
    backbone: Backbone
    conditioning: Conditioning
    identity: IdentityLoss
    settings: PrivacySettings
    generator: torch.Generator

    @property
    def indices(self) -> torch.Tensor:
        return torch.arange(len(self.clean), device=self.clean.device)

    def identity_of(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """``L_id(T(images))`` with a freshly drawn transform ``T`` (and surrogate subset), and the
        per-surrogate mean cosines."""
        transform = sample_transform(self.settings.eot, self.generator, self.settings.jitter)
        only = sample_surrogates(len(self.identity.recognizers), self.settings.surrogates_per_step, self.generator)
        return self.identity(transform(images.float()), self.indices, only)


Objective = Callable[[ObjectiveInputs, torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict]]
"""``(inputs, base, δ) -> (loss, logged)``, ``base`` the (warped) clean photos."""


def iddm_objective(inputs: ObjectiveInputs, base: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """IDDM: identity loss on the current model's reconstruction x̂0 and on the photos, plus fidelity."""
    s = inputs.settings
    images = apply(base, delta)
    loss, logged = images.new_zeros(()), {}
    # Both terms start from the same encoding: the encoder (on the 128-px prior a fifth of a data step) runs
    # forward and backward once per step instead of twice; every random draw stays in its place.
    encoded = inputs.backbone.encode(images) if s.lambda_gen > 0 or s.lambda_natural > 0 else None
    if s.lambda_gen > 0:
        x0 = inputs.backbone.denoised_estimate(encoded, inputs.conditioning, inputs.generator, s.max_denoise_timestep)
        id_loss, logged["x0"] = inputs.identity_of(x0)
        loss = loss + s.lambda_gen * id_loss
    if s.lambda_natural > 0:
        natural = inputs.backbone.training_loss(encoded, inputs.conditioning, inputs.generator).mean()
        logged["natural"] = float(natural.detach())
        loss = loss + s.lambda_natural * natural
    return _data_terms(inputs, images, base, loss, logged)


def cloak_objective(inputs: ObjectiveInputs, base: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Cloak-then-train: the identity loss on the photos alone (no generation proxy), plus fidelity."""
    images = apply(base, delta)
    return _data_terms(inputs, images, base, images.new_zeros(()), {})


def _data_terms(inputs: ObjectiveInputs, images: torch.Tensor, base: torch.Tensor, loss: torch.Tensor, logged: dict):
    s = inputs.settings
    if s.lambda_data > 0:
        id_loss, logged["data"] = inputs.identity_of(images)
        loss = loss + s.lambda_data * id_loss
    if s.lambda_fid > 0:  # on δ's part only: the warp has its own bound
        loss = loss + s.lambda_fid * fidelity_penalty(images, base)
    return loss, logged


def aspl_objective(inputs: ObjectiveInputs, base: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """ASPL: maximize the current model's personalization loss on the photos (anti-personalization)."""
    images = apply(base, delta)
    loss = -inputs.backbone.training_loss(images, inputs.conditioning, inputs.generator).mean()
    with torch.no_grad():
        _, cosines = inputs.identity(images, inputs.indices)
    return loss, {"data": cosines}


OBJECTIVES: dict[str, Objective] = {"iddm": iddm_objective, "cloak": cloak_objective, "aspl": aspl_objective}
"""Defense name -> its data objective (``noise`` has none: its δ is drawn once)."""
