"""The offline micro backbone: a pixel-space ``UNet2DConditionModel`` trained from scratch on face crops."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from safetensors.torch import load_file
from torch import nn

from iddm.diffusion.backbone import Backbone, Conditioning, LatentDistribution, MethodSettings
from iddm.diffusion.tiny import micro_unet_config
from iddm.images import atomic_write_json, atomic_write_safetensors

logger = logging.getLogger(__name__)

PIXEL_BACKBONE_FILE = "iddm_backbone.json"
CONTEXT_FILE = "context.safetensors"


class LearnedContext(nn.Module):
    """A learned conditioning ``(1, tokens, dim)`` that stands in for a text encoder's output."""

    def __init__(self, context: torch.Tensor):
        super().__init__()
        self.context = nn.Parameter(context)

    def forward(self, batch_size: int) -> torch.Tensor:
        """``(batch_size, tokens, dim)``."""
        return self.context.expand(batch_size, -1, -1)


class PixelBackbone(Backbone):
    """The micro backbone: it has no text encoder and no pretrained base, so prompts are ignored and every
    weight trains (method ``full``). It exists to try iddm and measure privacy end to end on a CPU with
    real face recognition; its avatars are 64x64 faces, not Stable Diffusion art.
    """

    kind = "pixel"
    methods = ("full",)
    default_crop = "aligned"
    text_conditioned = False
    supports_prior_preservation = False

    def __init__(self, unet: UNet2DConditionModel, noise_scheduler: DDPMScheduler, context: torch.Tensor):
        self.unet = unet
        self.noise_scheduler = noise_scheduler
        self.context = LearnedContext(context)
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
    def from_folder(cls, path: str | Path, **_: Any) -> PixelBackbone:
        path = Path(path)
        unet = UNet2DConditionModel.from_pretrained(path / "unet", local_files_only=True)
        scheduler = DDPMScheduler.from_pretrained(path / "scheduler", local_files_only=True)
        context = load_file(path / CONTEXT_FILE)["context"]
        return cls(unet, scheduler, context)

    def recommended(self, method: str) -> dict[str, Any]:
        # Measured: a decayed rate gives far cleaner samples (SFace match 0.88 vs 0.30 at 1,500 steps).
        return {
            "learning_rate": 1e-3,
            "lr_scheduler": "cosine",
            "max_train_steps": 1500,
            "crop": self.default_crop,
            "guidance_scale": 1.0,
            "lora_rank": 4,
            "lora_target_modules": ["to_k", "to_q", "to_v", "to_out.0"],
            "round_steps": 50,
            "lambda_natural": 0.0,
            "delta_grid": 0,
        }

    def check_method(self, method: str) -> str:
        if method != "full":
            logger.info("The micro backbone has no pretrained base: all its weights train (method 'full').")
        return "full"

    def to(self, device, weight_dtype=torch.float32):
        self.unet.to(device)
        self.context.to(device)
        return self

    def encode(self, images):
        return LatentDistribution(images.to(self.unet.dtype) * 2 - 1)

    def to_image_space(self, latents):
        return ((latents + 1) / 2).clamp(0, 1)

    def encode_prompts(self, prompts):
        return Conditioning(self.context(len(prompts)).to(self.unet.dtype))

    def prepare_for_training(self, settings: MethodSettings) -> str:
        self.unet.requires_grad_(True)
        self.context.requires_grad_(True)
        if settings.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        return self.check_method(settings.method)

    def trainable_modules(self):
        return {"unet": self.unet, "context": self.context}

    def save(self, output_dir: Path, method: str = "full") -> None:
        output_dir = Path(output_dir)
        self.unet.save_pretrained(output_dir / "unet", safe_serialization=True)
        self.noise_scheduler.save_pretrained(output_dir / "scheduler")
        atomic_write_safetensors(output_dir / CONTEXT_FILE, {"context": self.context.context})
        info = {"kind": self.kind, "resolution": self.resolution, "note": "iddm micro pixel-space backbone"}
        atomic_write_json(output_dir / PIXEL_BACKBONE_FILE, info)
