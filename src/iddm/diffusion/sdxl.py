"""Stable Diffusion XL (``StableDiffusionXLPipeline`` components) as an iddm backbone.

Everything but the conditioning is Stable Diffusion's (:class:`StableDiffusionBackbone`): VAE latents,
peft LoRA on the UNet (and optionally both text encoders) written with
``StableDiffusionXLPipeline.save_lora_weights`` and its adapter metadata, DreamBooth as a complete
pipeline folder. What SDXL adds, as diffusers' SDXL pipeline and ``train_dreambooth_lora_sdxl.py`` do it:

* two text encoders, whose penultimate hidden states are concatenated for cross-attention, and
  the pooled, projected embedding of the second (``text_embeds``);
* size and crop micro-conditioning (``time_ids``: original size, crop top-left, target size);
* a VAE that overflows in fp16: kept in fp32 when its config says ``force_upcast``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import torch
from diffusers import StableDiffusionXLPipeline

from iddm.diffusion.backbone import Conditioning
from iddm.diffusion.stable_diffusion import StableDiffusionBackbone

SDXL_RECOMMENDED = {"max_train_steps": 500, "guidance_scale": 5.0}
"""Where SDXL's defaults differ from SD 1.x's: diffusers' SDXL DreamBooth-LoRA example trains 500 steps and the
SDXL pipeline guides with 5.0 (learning rates stay 1e-4 for LoRA, 5e-6 for DreamBooth)."""


def check_noise_schedule(scheduler_class: str) -> None:
    """``ValueError`` for SDXL-architecture models trained on another noise parametrization than DDPM's."""
    if scheduler_class.startswith("EDM"):
        raise ValueError(
            f"This SDXL model samples with {scheduler_class}: it is an EDM model (e.g. Playground v2.5), and iddm "
            "trains models with SDXL's DDPM noise schedule."
        )


class StableDiffusionXLBackbone(StableDiffusionBackbone):
    """Stable Diffusion XL: VAE latents, two CLIP text encoders, pooled-text and size conditioning."""

    kind = "sdxl"
    pipeline_classes = ("StableDiffusionXLPipeline",)
    pipeline_class: ClassVar[type] = StableDiffusionXLPipeline
    text_encoder_names: ClassVar[tuple[str, ...]] = ("text_encoder", "text_encoder_2")

    def __init__(self, pipeline, resolution: int | None = None, model_defaults: dict[str, Any] | None = None):
        check_noise_schedule(type(pipeline.scheduler).__name__)
        super().__init__(pipeline, resolution=resolution, model_defaults=model_defaults)

    @classmethod
    def from_folder(cls, path: str | Path, *args: Any, **kwargs: Any) -> StableDiffusionXLBackbone:
        scheduler_config = Path(path) / "scheduler" / "scheduler_config.json"
        if scheduler_config.is_file():  # refuse before gigabytes of weights are read
            check_noise_schedule(json.loads(scheduler_config.read_text()).get("_class_name", ""))
        return super().from_folder(path, *args, **kwargs)

    def recommended(self, method: str) -> dict[str, Any]:
        values = super().recommended(method)
        values.update({k: v for k, v in SDXL_RECOMMENDED.items() if k not in self.model_defaults})
        return values

    def to(self, device, weight_dtype=torch.float32):
        super().to(device, weight_dtype)
        if self.vae.config.force_upcast:
            # SDXL's VAE overflows to NaN in fp16; diffusers' SDXL training script keeps it in fp32 too.
            self.vae.to(dtype=torch.float32)
        return self

    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        """SDXL's conditioning for ``N`` prompts, as ``StableDiffusionXLPipeline.encode_prompt`` computes it.

        Returns ``hidden_states`` ``(N, 77, D1 + D2)`` (both encoders' penultimate layers), and in ``added``
        ``text_embeds`` ``(N, P)`` (text encoder 2's pooled projection) and ``time_ids`` ``(N, 6)`` =
        ``(R, R, 0, 0, R, R)`` for resolution ``R`` (original size, crop top-left, target size, the
        pipeline's defaults). An empty prompt means "no prompt": where the model's config says
        ``force_zeros_for_empty_prompt`` (SDXL's does) it is all zeros, which is what the pipeline's
        unconditional branch uses when no negative prompt is given.
        """
        tokenizers = (self.pipeline.tokenizer, self.pipeline.tokenizer_2)
        states = []
        for tokenizer, encoder in zip(tokenizers, self.text_encoders()):
            output = encoder(self._tokens(tokenizer, prompts, encoder.device), output_hidden_states=True)
            states.append(output.hidden_states[-2])
        hidden_states = torch.cat(states, dim=-1).to(self.unet.dtype)
        text_embeds = output.text_embeds.to(self.unet.dtype)  # the last encoder's (CLIPTextModelWithProjection)
        if getattr(self.pipeline.config, "force_zeros_for_empty_prompt", False):
            keep = torch.tensor([prompt != "" for prompt in prompts], device=hidden_states.device)
            hidden_states = hidden_states * keep.view(-1, 1, 1)
            text_embeds = text_embeds * keep.view(-1, 1)
        size = [self.resolution, self.resolution]
        time_ids = torch.tensor([size + [0, 0] + size], dtype=self.unet.dtype, device=hidden_states.device)
        return Conditioning(hidden_states, {"text_embeds": text_embeds, "time_ids": time_ids.repeat(len(prompts), 1)})
