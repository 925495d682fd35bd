"""One small interface over the diffusion models iddm personalizes.

The personalization loop and the IDDM loop are written once against :class:`Backbone`:

* ``to_diffusion_space`` / ``to_image_space``: images ``(N, 3, H, W)`` in ``[0, 1]`` to the space the
  UNet diffuses in and back (the identity map, rescaled to ``[-1, 1]``, for pixel space; the VAE for
  latent models);
* ``training_loss``: the standard noise-prediction (DDPM) loss, per sample;
* ``denoised_estimate``: the one-step estimate x̂0 of a noised image, differentiable w.r.t. the image;
* ``sample``: DDIM sampling with classifier-free guidance.

Two backbones implement it: :class:`PixelBackbone` (the offline micro model, trained from scratch on
64x64 face crops) and :class:`StableDiffusionBackbone` (SD 1.x/2.x through diffusers; SDXL would
subclass it and override ``encode_prompts`` and the added conditioning).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from torch import nn

from iddm.diffusion.tiny import micro_unet_config

PIXEL_BACKBONE_FILE = "iddm_backbone.json"


class Backbone(ABC):
    """A text-to-image diffusion model seen as the personalization and IDDM loops need it."""

    kind: str
    unet: UNet2DConditionModel
    noise_scheduler: DDPMScheduler
    resolution: int

    # -- spaces ---------------------------------------------------------------------------------
    @abstractmethod
    def to_diffusion_space(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images ``(N, 3, H, W)`` in ``[0, 1]`` -> diffusion-space tensors (differentiable)."""

    @abstractmethod
    def to_image_space(self, latents: torch.Tensor) -> torch.Tensor:
        """Diffusion-space tensors -> images ``(N, 3, H, W)``, clamped to ``[0, 1]`` (differentiable)."""

    @abstractmethod
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Conditioning ``(N, L, D)`` for the UNet's cross-attention."""

    @abstractmethod
    def trainable_modules(self) -> dict[str, nn.Module]:
        """Modules whose ``requires_grad`` parameters are being personalized, by name."""

    @abstractmethod
    def save(self, output_dir: Path) -> None:
        """Write the personalized weights in the format users load (see subclasses)."""

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @abstractmethod
    def to(self, device: torch.device | str, frozen_dtype: torch.dtype = torch.float32, train_text_encoder=False):
        """Move to ``device``; always-frozen parts (VAE, a frozen text encoder) run in ``frozen_dtype``."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.trainable_modules().values() for p in m.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> None:
        for module in self.trainable_modules().values():
            module.train(mode)

    # -- diffusion ------------------------------------------------------------------------------
    def _noise_and_timesteps(
        self, latents: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise and timesteps drawn on the CPU generator, so runs reproduce across devices."""
        noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
        steps = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (latents.shape[0],), generator=generator).to(latents.device)
        return noise, timesteps

    def training_loss(
        self, images: torch.Tensor, prompts: list[str], generator: torch.Generator, encoder_hidden_states=None
    ) -> torch.Tensor:
        """Per-sample noise-prediction MSE ``(N,)`` for images ``(N, 3, H, W)`` in ``[0, 1]``."""
        latents = self.to_diffusion_space(images, generator=generator)
        noise, timesteps = self._noise_and_timesteps(latents, generator)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if encoder_hidden_states is None:
            encoder_hidden_states = self.encode_prompts(prompts)
        prediction = self.unet(noisy, timesteps, encoder_hidden_states).sample
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        return F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))

    def denoised_estimate(
        self,
        images: torch.Tensor,
        prompts: list[str],
        generator: torch.Generator,
        max_timestep: int | None = None,
    ) -> torch.Tensor:
        """One-step estimate x̂0 ``(N, 3, H, W)`` in ``[0, 1]`` of noised ``images``, differentiable w.r.t. them.

        Timesteps are drawn uniformly in ``[0, max_timestep)`` (default: all training timesteps).
        """
        latents = self.to_diffusion_space(images, generator=generator)
        noise, timesteps = self._noise_and_timesteps(latents, generator)
        if max_timestep is not None:
            timesteps = timesteps % max(1, max_timestep)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        prediction = self.unet(noisy, timesteps, self.encode_prompts(prompts)).sample
        alpha_bar = self.noise_scheduler.alphas_cumprod.to(latents.device)[timesteps].view(-1, 1, 1, 1)
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            x0 = alpha_bar.sqrt() * noisy - (1 - alpha_bar).sqrt() * prediction
        else:
            x0 = (noisy - (1 - alpha_bar).sqrt() * prediction) / alpha_bar.sqrt()
        return self.to_image_space(x0)

    @torch.no_grad()
    def sample(
        self,
        prompts: list[str],
        generator: torch.Generator,
        num_inference_steps: int = 25,
        guidance_scale: float = 1.0,
        negative_prompt: str = "",
    ) -> torch.Tensor:
        """DDIM samples ``(N, 3, H, W)`` in ``[0, 1]``, one per prompt; noise drawn on ``generator`` (CPU)."""
        was_training = self.unet.training
        self.train(False)
        scheduler = DDIMScheduler.from_config(self.noise_scheduler.config)
        scheduler.set_timesteps(num_inference_steps)
        shape = (len(prompts), self.unet.config.in_channels, *self.latent_size)
        latents = torch.randn(shape, generator=generator).to(self.device, self.unet.dtype)
        latents = latents * scheduler.init_noise_sigma
        context = self.encode_prompts(prompts)
        if guidance_scale != 1.0:
            context = torch.cat([self.encode_prompts([negative_prompt] * len(prompts)), context])
        for t in scheduler.timesteps:
            model_input = torch.cat([latents] * 2) if guidance_scale != 1.0 else latents
            model_input = scheduler.scale_model_input(model_input, t)
            prediction = self.unet(model_input, t, context).sample
            if guidance_scale != 1.0:
                uncond, cond = prediction.chunk(2)
                prediction = uncond + guidance_scale * (cond - uncond)
            latents = scheduler.step(prediction, t, latents).prev_sample
        images = self.to_image_space(latents).float()
        self.train(was_training)
        return images

    @property
    def latent_size(self) -> tuple[int, int]:
        size = self.unet.config.sample_size
        return (size, size) if isinstance(size, int) else tuple(size)


class PixelBackbone(Backbone):
    """The offline micro backbone: a pixel-space ``UNet2DConditionModel`` trained from scratch.

    It has no text encoder: a learned context of shape ``(1, context_tokens, cross_attention_dim)``
    conditions every sample, so prompts are ignored. It exists to try iddm and to measure privacy end
    to end on a CPU with real face recognition; its avatars are 64x64 faces, not Stable Diffusion art.
    """

    kind = "pixel"

    def __init__(self, unet: UNet2DConditionModel, noise_scheduler: DDPMScheduler, context: torch.Tensor):
        self.unet = unet
        self.noise_scheduler = noise_scheduler
        self.context = nn.Parameter(context)
        self.resolution = int(unet.config.sample_size)

    @classmethod
    def from_scratch(cls, resolution: int = 64, seed: int = 0, context_tokens: int = 4) -> PixelBackbone:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            config = micro_unet_config(resolution)
            unet = UNet2DConditionModel(**config)
            context = torch.randn(1, context_tokens, config["cross_attention_dim"]) * 0.1
        scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True)
        return cls(unet, scheduler, context)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> PixelBackbone:
        path = Path(path)
        unet = UNet2DConditionModel.from_pretrained(path / "unet", local_files_only=True)
        scheduler = DDPMScheduler.from_pretrained(path / "scheduler", local_files_only=True)
        context = load_file(path / "context.safetensors")["context"]
        return cls(unet, scheduler, context)

    def to(self, device, frozen_dtype=torch.float32, train_text_encoder=False):
        self.unet.to(device)
        self.context.data = self.context.data.to(device)
        return self

    def to_diffusion_space(self, images, generator=None):
        return images.to(self.unet.dtype) * 2 - 1

    def to_image_space(self, latents):
        return ((latents + 1) / 2).clamp(0, 1)

    def encode_prompts(self, prompts):
        return self.context.to(self.unet.dtype).expand(len(prompts), -1, -1)

    def trainable_modules(self):
        return {"unet": self.unet, "context": _ParameterHolder(self.context)}

    def save(self, output_dir: Path) -> None:
        output_dir = Path(output_dir)
        self.unet.save_pretrained(output_dir / "unet", safe_serialization=True)
        self.noise_scheduler.save_pretrained(output_dir / "scheduler")
        save_file({"context": self.context.detach().cpu().contiguous()}, output_dir / "context.safetensors")
        info = {"kind": self.kind, "resolution": self.resolution, "note": "iddm micro pixel-space backbone"}
        (output_dir / PIXEL_BACKBONE_FILE).write_text(json.dumps(info, indent=2) + "\n")


class _ParameterHolder(nn.Module):
    """Wraps a bare parameter so it is checkpointed and optimized like a module."""

    def __init__(self, parameter: nn.Parameter):
        super().__init__()
        self.parameter = parameter


class StableDiffusionBackbone(Backbone):
    """Stable Diffusion 1.x/2.x (``StableDiffusionPipeline`` components) in latent space."""

    kind = "sd"

    def __init__(self, pipeline: StableDiffusionPipeline, resolution: int | None = None):
        self.pipeline = pipeline
        self.unet = pipeline.unet
        self.vae = pipeline.vae
        self.text_encoder = pipeline.text_encoder
        self.tokenizer = pipeline.tokenizer
        self.noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.resolution = resolution or int(self.unet.config.sample_size) * self.vae_scale
        self._trainable: dict[str, nn.Module] = {}

    @property
    def latent_size(self) -> tuple[int, int]:
        side = self.resolution // self.vae_scale
        return side, side

    def to(self, device, frozen_dtype=torch.float32, train_text_encoder=False):
        def cast(dtype):
            return {"dtype": dtype} if dtype != torch.float32 else {}

        self.unet.to(device)
        self.vae.to(device, **cast(frozen_dtype))
        self.text_encoder.to(device, **cast(torch.float32 if train_text_encoder else frozen_dtype))
        return self

    def set_trainable(self, modules: dict[str, nn.Module]) -> None:
        self._trainable = modules

    def to_diffusion_space(self, images, generator=None):
        pixels = images.to(self.vae.dtype) * 2 - 1
        distribution = self.vae.encode(pixels).latent_dist
        noise = torch.randn(distribution.mean.shape, generator=generator) if generator is not None else None
        latents = distribution.mean if noise is None else distribution.mean + distribution.std * noise.to(pixels)
        return (latents * self.vae.config.scaling_factor).to(self.unet.dtype)

    def to_image_space(self, latents):
        decoded = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        return ((decoded + 1) / 2).clamp(0, 1)

    def encode_prompts(self, prompts):
        tokens = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.text_encoder.device)
        return self.text_encoder(tokens)[0].to(self.unet.dtype)

    def trainable_modules(self):
        return self._trainable

    def save(self, output_dir: Path) -> None:
        raise NotImplementedError("Saving depends on the method; see iddm.diffusion.methods.")


def load_backbone(model: str | Path | None, resolution: int | None = None, seed: int = 0, **load_kwargs) -> Backbone:
    """The backbone for ``--pretrained_model_name_or_path``.

    * ``None``: a fresh micro pixel backbone (random init from ``seed``).
    * a folder with ``iddm_backbone.json``: a personalized micro backbone written by iddm.
    * a diffusers Stable Diffusion folder (``model_index.json``), or a hub id when online.

    Raises:
        FileNotFoundError: a path-like value that does not exist.
        ValueError: a folder that is neither a diffusers pipeline nor an iddm micro backbone.
    """
    if model is None:
        return PixelBackbone.from_scratch(resolution or 64, seed=seed)
    path = Path(model)
    if path.is_dir():
        if (path / PIXEL_BACKBONE_FILE).is_file():
            return PixelBackbone.from_pretrained(path)
        if not (path / "model_index.json").is_file():
            raise ValueError(
                f"{path} is not a diffusers pipeline folder (no model_index.json) nor an iddm micro backbone "
                f"(no {PIXEL_BACKBONE_FILE}). Pass the folder written by `save_pretrained`, e.g. one from "
                "`iddm tiny-sd`."
            )
        pipeline = StableDiffusionPipeline.from_pretrained(path, local_files_only=True, **load_kwargs)
    elif str(model).startswith((".", "/", "~")) or str(model).count("/") != 1 or path.suffix:
        raise FileNotFoundError(f"Model path {model} does not exist (and is not a hub id like 'org/name').")
    else:
        pipeline = StableDiffusionPipeline.from_pretrained(str(model), **load_kwargs)
    pipeline.set_progress_bar_config(disable=True)
    return StableDiffusionBackbone(pipeline, resolution=resolution)
