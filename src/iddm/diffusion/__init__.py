"""Diffusion backbones (micro pixel-space, Stable Diffusion), personalization methods and training data."""

from iddm.diffusion.backbone import Backbone, PixelBackbone, StableDiffusionBackbone, load_backbone
from iddm.diffusion.data import TrainingPhotos, prepare_photos
from iddm.diffusion.methods import LORA_WEIGHT_NAME, MethodSettings, prepare_for_training, save_personalized
from iddm.diffusion.tiny import build_clip_tokenizer, build_tiny_sd_pipeline, save_tiny_sd_pipeline

__all__ = [
    "LORA_WEIGHT_NAME",
    "Backbone",
    "MethodSettings",
    "PixelBackbone",
    "StableDiffusionBackbone",
    "TrainingPhotos",
    "build_clip_tokenizer",
    "build_tiny_sd_pipeline",
    "load_backbone",
    "prepare_for_training",
    "prepare_photos",
    "save_personalized",
    "save_tiny_sd_pipeline",
]
