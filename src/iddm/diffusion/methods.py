"""Personalization methods: which weights train, and how the result is written.

* ``lora``: peft LoRA adapters on the UNet attention projections (and optionally the text encoder);
  written as ``pytorch_lora_weights.safetensors``, which ``StableDiffusionPipeline.load_lora_weights``
  loads.
* ``dreambooth``: the full UNet (and optionally the text encoder) trains; written as a complete
  ``save_pretrained`` pipeline folder.
* ``full``: the micro pixel backbone, which has no pretrained base, trains all its weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from diffusers import StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig, inject_adapter_in_model
from peft.utils import get_peft_model_state_dict

from iddm.diffusion.backbone import Backbone, PixelBackbone, StableDiffusionBackbone

logger = logging.getLogger(__name__)

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


@dataclass(frozen=True)
class MethodSettings:
    method: str
    lora_rank: int = 4
    lora_alpha: float | None = None
    lora_dropout: float = 0.0
    lora_target_modules: tuple[str, ...] = ("to_k", "to_q", "to_v", "to_out.0")
    text_encoder_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj")
    train_text_encoder: bool = False
    gradient_checkpointing: bool = False


def effective_method(backbone: Backbone, method: str) -> str:
    if isinstance(backbone, PixelBackbone):
        return "full"
    if method not in ("lora", "dreambooth"):
        raise ValueError(f"Unknown method {method!r} for Stable Diffusion; use 'lora' or 'dreambooth'.")
    return method


def _lora_config(settings: MethodSettings, target_modules: tuple[str, ...]) -> LoraConfig:
    return LoraConfig(
        r=settings.lora_rank,
        lora_alpha=settings.lora_alpha if settings.lora_alpha is not None else settings.lora_rank,
        lora_dropout=settings.lora_dropout,
        init_lora_weights="gaussian",
        target_modules=list(target_modules),
    )


def prepare_for_training(backbone: Backbone, settings: MethodSettings) -> str:
    """Freeze, add adapters and mark trainable modules; returns the effective method name."""
    method = effective_method(backbone, settings.method)
    if isinstance(backbone, PixelBackbone):
        if settings.method != "full":
            logger.info("The micro backbone has no pretrained base: all its weights train (method 'full').")
        backbone.unet.requires_grad_(True)
        backbone.context.requires_grad_(True)
        if settings.gradient_checkpointing:
            backbone.unet.enable_gradient_checkpointing()
        return method
    assert isinstance(backbone, StableDiffusionBackbone)
    backbone.vae.requires_grad_(False)
    backbone.unet.requires_grad_(method == "dreambooth")
    backbone.text_encoder.requires_grad_(method == "dreambooth" and settings.train_text_encoder)
    trainable = {"unet": backbone.unet}
    if method == "lora":
        backbone.unet.add_adapter(_lora_config(settings, settings.lora_target_modules))
        if settings.train_text_encoder:
            # peft directly: transformers' own `add_adapter` demands a newer peft than is released.
            inject_adapter_in_model(
                _lora_config(settings, settings.text_encoder_target_modules), backbone.text_encoder
            )
    if settings.train_text_encoder:
        trainable["text_encoder"] = backbone.text_encoder
    if settings.gradient_checkpointing:
        backbone.unet.enable_gradient_checkpointing()
        if settings.train_text_encoder:
            backbone.text_encoder.gradient_checkpointing_enable()
    backbone.set_trainable(trainable)
    return method


def save_personalized(backbone: Backbone, method: str, output_dir: Path) -> None:
    """Write the deliverable weights into ``output_dir`` (see the module docstring for formats)."""
    output_dir = Path(output_dir)
    if isinstance(backbone, PixelBackbone):
        backbone.save(output_dir)
        return
    assert isinstance(backbone, StableDiffusionBackbone)
    if method == "lora":
        unet_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(backbone.unet))
        text_layers = None
        if "text_encoder" in backbone.trainable_modules():
            text_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(backbone.text_encoder))
        StableDiffusionPipeline.save_lora_weights(
            output_dir,
            unet_lora_layers=unet_layers,
            text_encoder_lora_layers=text_layers,
            weight_name=LORA_WEIGHT_NAME,
        )
    else:
        pipeline = StableDiffusionPipeline(
            vae=backbone.vae,
            text_encoder=backbone.text_encoder,
            tokenizer=backbone.tokenizer,
            unet=backbone.unet,
            scheduler=backbone.pipeline.scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipeline.save_pretrained(output_dir, safe_serialization=True)
