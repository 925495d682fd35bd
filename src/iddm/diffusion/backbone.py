"""One small interface over the diffusion models iddm personalizes.

The personalization loop, IDDM's data steps, sampling and generation are written once against
:class:`Backbone`. A backbone owns everything that differs between models:

* its spaces: ``to_diffusion_space`` / ``to_image_space`` map images ``(N, 3, H, W)`` in ``[0, 1]`` to
  what the UNet diffuses (rescaled pixels, or VAE latents) and back; ``encode`` gives the distribution
  ``to_diffusion_space`` draws from, which personalization caches while its photos do not change;
* its conditioning: ``encode_prompts`` returns a :class:`Conditioning` (cross-attention states, plus
  SDXL's pooled embeddings and time ids), and ``predict`` calls the UNet with it;
* its policies: default crop, learning-rate schedule, recommended options, which methods it supports,
  how adapters are added (``prepare_for_training``) and how the result is written (``save``).

The diffusion math itself (training target, one-step x̂0) is shared, in :mod:`iddm.diffusion.objectives`.
A new model family is one new subclass naming the diffusers pipeline classes it loads
(``pipeline_classes``); :func:`iddm.diffusion.loading.load_backbone` finds it from ``model_index.json``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from torch import nn

from iddm.diffusion.objectives import (
    latent_keep_mask,
    masked_mse,
    predicted_x0,
    training_target,
    uniform_timesteps,
)

INSTANCE_PROMPT = "a photo of sks person"
"""The default prompt that names the person (diffusers' DreamBooth convention)."""


@dataclass
class LatentDistribution:
    """What :meth:`Backbone.encode` makes of images: diffusion-space ``mean`` ``(N, C, h, w)``, scaled as the UNet
    sees it, and ``std`` of the same shape (``None`` for a point: rescaled pixels)."""

    mean: torch.Tensor
    std: torch.Tensor | None = None

    def __getitem__(self, index: torch.Tensor) -> LatentDistribution:
        return LatentDistribution(self.mean[index], None if self.std is None else self.std[index])

    @staticmethod
    def cat(parts: list[LatentDistribution]) -> LatentDistribution:
        """The samples of ``parts`` one after another (all with a ``std`` or none)."""
        stds = [part.std for part in parts if part.std is not None]
        return LatentDistribution(torch.cat([part.mean for part in parts]), torch.cat(stds) if stds else None)

    def where(self, condition: torch.Tensor, other: LatentDistribution) -> LatentDistribution:
        """Per sample (``condition``: ``(N, 1, 1, 1)`` bool), this distribution where true, else ``other``."""
        std = None if self.std is None or other.std is None else torch.where(condition, self.std, other.std)
        return LatentDistribution(torch.where(condition, self.mean, other.mean), std)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """A draw ``(N, C, h, w)`` (the mean without a ``generator``); the noise comes from the CPU ``generator``."""
        if self.std is None or generator is None:
            return self.mean
        noise = torch.randn(self.mean.shape, generator=generator)
        return self.mean + self.std * noise.to(self.mean.device, self.mean.dtype)


@dataclass
class Conditioning:
    """The UNet's conditioning for a batch of ``N`` prompts.

    Attributes:
        hidden_states: ``(N, L, D)`` cross-attention states.
        added: extra UNet inputs (``added_cond_kwargs``), e.g. SDXL's ``text_embeds`` ``(N, 1280)`` and
            ``time_ids`` ``(N, 6)``; empty for SD 1.x/2.x and the micro backbone.
    """

    hidden_states: torch.Tensor
    added: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.hidden_states.shape[0]

    def cat(self, other: Conditioning) -> Conditioning:
        """This batch followed by ``other`` (classifier-free guidance runs both in one UNet call)."""
        added = {k: torch.cat([v, other.added[k]]) for k, v in self.added.items()}
        return Conditioning(torch.cat([self.hidden_states, other.hidden_states]), added)

    def detach(self) -> Conditioning:
        return Conditioning(self.hidden_states.detach(), {k: v.detach() for k, v in self.added.items()})


@dataclass(frozen=True)
class MethodSettings:
    """How to personalize: which method and, for LoRA, the adapters' shape."""

    method: str
    lora_rank: int = 4
    lora_alpha: float | None = None
    lora_dropout: float = 0.0
    lora_target_modules: tuple[str, ...] = ("to_k", "to_q", "to_v", "to_out.0")
    text_encoder_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj")
    train_text_encoder: bool = False
    gradient_checkpointing: bool = False

    @property
    def alpha(self) -> float:
        return float(self.lora_alpha if self.lora_alpha is not None else self.lora_rank)


class Backbone(ABC):
    """A text-to-image diffusion model seen as the personalization and IDDM loops need it."""

    kind: ClassVar[str]
    """Short name recorded in manifests (``pixel``, ``sd``, ``sdxl``)."""
    pipeline_classes: ClassVar[tuple[str, ...]] = ()
    """``model_index.json`` ``_class_name`` values this backbone loads."""
    methods: ClassVar[tuple[str, ...]] = ("lora", "dreambooth")
    default_crop: ClassVar[str] = "portrait"
    text_conditioned: ClassVar[bool] = True
    supports_prior_preservation: ClassVar[bool] = True
    registry: ClassVar[dict[str, type[Backbone]]] = {}

    unet: UNet2DConditionModel
    noise_scheduler: DDPMScheduler
    resolution: int

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in (*cls.pipeline_classes, getattr(cls, "kind", None)):
            if name:
                Backbone.registry[name] = cls

    # -- policies -------------------------------------------------------------------------------
    def recommended(self, method: str) -> dict[str, Any]:
        """Option defaults that suit this model and ``method`` (the user's explicit options win)."""
        learning_rate = 5e-6 if method == "dreambooth" else 1e-4
        return {
            "learning_rate": learning_rate,
            "lr_scheduler": "constant",
            "max_train_steps": 800,
            "crop": self.default_crop,
            "guidance_scale": 7.5,
            "lora_rank": 4,
            "lora_target_modules": ["to_k", "to_q", "to_v", "to_out.0"],
            # IDDM's K: at SD scale a data step costs about 2 personalization steps (H200, benchmarks/), so rounds
            # of 50 keep the data steps near a fifth of the time. Models where FR dominates a data step want more.
            "round_steps": 50,
            # The realism term of IDDM's data step (iddm.decouple.objective); measured only on the 128-px prior.
            "lambda_natural": 0.0,
            "delta_grid": 0,
        }

    def check_method(self, method: str) -> str:
        """The method this backbone runs for the requested ``method``; ``ValueError`` if unsupported."""
        if method not in self.methods:
            raise ValueError(f"Method {method!r} is not available for the {self.kind} backbone; use {self.methods}.")
        return method

    # -- spaces and conditioning ------------------------------------------------------------------
    @abstractmethod
    def encode(self, images: torch.Tensor) -> LatentDistribution:
        """Images ``(N, 3, H, W)`` in ``[0, 1]`` -> their diffusion-space distribution (differentiable)."""

    def to_diffusion_space(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images ``(N, 3, H, W)`` in ``[0, 1]`` -> a diffusion-space draw (differentiable; the mean without a
        ``generator``)."""
        return self.encode(images).sample(generator)

    @abstractmethod
    def to_image_space(self, latents: torch.Tensor) -> torch.Tensor:
        """Diffusion-space tensors -> images ``(N, 3, H, W)``, clamped to ``[0, 1]`` (differentiable)."""

    @abstractmethod
    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        """The UNet's conditioning for ``prompts``."""

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, conditioning: Conditioning) -> torch.Tensor:
        """The UNet's output (noise, velocity or sample, per ``prediction_type``) for ``noisy`` latents."""
        extra = {"added_cond_kwargs": conditioning.added} if conditioning.added else {}
        unet = getattr(self, "distributed_unet", None) or self.unet
        return unet(noisy, timesteps, conditioning.hidden_states, **extra).sample

    def wrap_for_distributed(self, accelerator) -> None:
        """Data parallelism over processes: accelerate wraps the UNet for the forward pass (DDP); ``self.unet``
        stays the plain module, so its config, saving and checkpoints are unchanged."""
        self.distributed_unet = accelerator.prepare(self.unet)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(C, h, w)`` of one diffusion-space sample at this backbone's resolution."""
        size = self.unet.config.sample_size
        side = (size, size) if isinstance(size, int) else tuple(size)
        return (self.unet.config.in_channels, *side)

    # -- training -----------------------------------------------------------------------------------
    @abstractmethod
    def prepare_for_training(self, settings: MethodSettings) -> str:
        """Freeze, add adapters and mark the trainable modules; returns the method actually run."""

    @abstractmethod
    def trainable_modules(self) -> dict[str, nn.Module]:
        """Modules whose ``requires_grad`` parameters are being personalized, by name."""

    @abstractmethod
    def save(self, output_dir: Path, method: str) -> None:
        """Write the personalized weights in the format users load (see subclasses)."""

    @abstractmethod
    def to(self, device: torch.device | str, weight_dtype: torch.dtype = torch.float32) -> Backbone:
        """Move to ``device``; parts that never train run in ``weight_dtype``, trained parameters stay fp32."""

    def load_lora(self, folder: Path) -> None:
        """Load LoRA weights written by :meth:`save` (for generation)."""
        raise ValueError(f"--lora applies to Stable Diffusion models; the {self.kind} backbone saves full weights.")

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.trainable_modules().values() for p in m.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> None:
        for module in self.trainable_modules().values():
            module.train(mode)

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type

    def _alpha_bar(self, timesteps: torch.Tensor) -> torch.Tensor:
        return self.noise_scheduler.alphas_cumprod[timesteps.cpu()]

    def training_loss(
        self,
        images: torch.Tensor | LatentDistribution,
        conditioning: Conditioning,
        generator: torch.Generator,
        noise_offset: float = 0.0,
        snr_gamma: float | None = None,
        coverage: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-sample denoising loss ``(N,)`` for images ``(N, 3, H, W)`` in ``[0, 1]`` (or their :meth:`encode`).

        Noise and timesteps are drawn on the CPU ``generator`` so runs reproduce across devices.
        ``noise_offset`` adds per-channel offset noise (Guttenberg 2023); ``snr_gamma`` applies
        min-SNR-γ loss weighting (Hang et al. 2023), as diffusers' training scripts do. ``coverage``
        ``(N, 1, H, W)`` in ``{0, 1}`` leaves out the latent cells that touch a crop's mirrored border
        (:func:`~iddm.diffusion.objectives.latent_keep_mask`).
        """
        distribution = images if isinstance(images, LatentDistribution) else self.encode(images)
        latents = distribution.sample(generator)
        noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
        if noise_offset > 0:
            offset = torch.randn((*latents.shape[:2], 1, 1), generator=generator)
            noise = noise + noise_offset * offset.to(latents.device, latents.dtype)
        steps = self.noise_scheduler.config.num_train_timesteps
        timesteps = uniform_timesteps(latents.shape[0], steps, generator).to(latents.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        prediction = self.predict(noisy, timesteps, conditioning)
        target = training_target(self.prediction_type, latents, noise, self._alpha_bar(timesteps))
        keep = None if coverage is None else latent_keep_mask(coverage, latents.shape[-2:])
        loss = masked_mse(prediction, target, keep)
        if snr_gamma is not None:
            from diffusers.training_utils import compute_snr

            snr = compute_snr(self.noise_scheduler, timesteps.cpu()).to(loss.device)
            weight = torch.clamp(snr, max=snr_gamma) / snr
            if self.prediction_type == "v_prediction":
                weight = torch.clamp(snr, max=snr_gamma) / (snr + 1)
            loss = loss * weight
        return loss

    def denoised_estimate(
        self,
        images: torch.Tensor | LatentDistribution,
        conditioning: Conditioning,
        generator: torch.Generator,
        max_timestep: int | None = None,
    ) -> torch.Tensor:
        """One-step estimate x̂0 ``(N, 3, H, W)`` in ``[0, 1]`` of noised ``images`` ``(N, 3, H, W)`` in ``[0, 1]``
        (or their :meth:`encode`), differentiable w.r.t. them.

        Timesteps are drawn uniformly in ``[0, max_timestep)`` (default: every training timestep).
        """
        distribution = images if isinstance(images, LatentDistribution) else self.encode(images)
        latents = distribution.sample(generator)
        noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
        steps = self.noise_scheduler.config.num_train_timesteps
        high = min(max_timestep, steps) if max_timestep is not None else steps
        timesteps = uniform_timesteps(latents.shape[0], high, generator).to(latents.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        prediction = self.predict(noisy, timesteps, conditioning)
        x0 = predicted_x0(self.prediction_type, noisy, prediction, self._alpha_bar(timesteps))
        return self.to_image_space(x0.to(latents.dtype))
