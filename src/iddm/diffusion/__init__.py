"""Diffusion backbones (micro pixel-space, Stable Diffusion, SDXL), their shared math, sampling and training data."""

from iddm.diffusion.backbone import INSTANCE_PROMPT, Backbone, Conditioning, LatentDistribution, MethodSettings
from iddm.diffusion.data import TrainingPhotos, prepare_photos
from iddm.diffusion.loading import BUILTIN_MODELS, DEFAULT_MODEL, MICRO, load_backbone
from iddm.diffusion.pixel import PixelBackbone
from iddm.diffusion.sampling import sample
from iddm.diffusion.sdxl import StableDiffusionXLBackbone
from iddm.diffusion.stable_diffusion import LORA_WEIGHT_NAME, StableDiffusionBackbone
from iddm.diffusion.taef2 import TinyFluxAutoencoder  # diffusers loads the 128-px prior's vae/ from this module
from iddm.diffusion.tiny import build_clip_tokenizer, build_tiny_sd_pipeline, save_tiny_sd_pipeline

__all__ = [
    "INSTANCE_PROMPT",
    "LORA_WEIGHT_NAME",
    "BUILTIN_MODELS",
    "DEFAULT_MODEL",
    "MICRO",
    "Backbone",
    "Conditioning",
    "LatentDistribution",
    "MethodSettings",
    "PixelBackbone",
    "StableDiffusionBackbone",
    "StableDiffusionXLBackbone",
    "TinyFluxAutoencoder",
    "TrainingPhotos",
    "build_clip_tokenizer",
    "build_tiny_sd_pipeline",
    "load_backbone",
    "prepare_photos",
    "sample",
    "save_tiny_sd_pipeline",
]
