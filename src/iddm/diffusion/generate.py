"""Generation from a base or personalized model: EXIF-free PNGs and a grid."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from iddm.config import field
from iddm.diffusion.backbone import Backbone, PixelBackbone, StableDiffusionBackbone, load_backbone
from iddm.diffusion.data import to_uint8
from iddm.diffusion.methods import LORA_WEIGHT_NAME
from iddm.images import ensure_writable_dir, make_grid, save_png

logger = logging.getLogger(__name__)


@dataclass
class GenerateConfig:
    pretrained_model_name_or_path: str = field(
        None, help="A personalized output folder (micro or DreamBooth), a diffusers SD folder, or a hub id."
    )
    lora: Path | None = field(None, help="Folder holding pytorch_lora_weights.safetensors to load onto the model.")
    output_dir: Path = field(None, help="Where the PNGs and grid.png are written.")
    prompt: list[str] = field(["a photo of sks person"], help="Prompt(s); images cycle through them.")
    negative_prompt: str = field("", help="Negative prompt (SD with guidance).")
    num_images: int = field(8, help="Images to generate.")
    seed: int = field(0, help="Seed: image i uses seed + i, so any image can be regenerated alone.")
    num_inference_steps: int = field(25, help="DDIM steps.")
    guidance_scale: float = field(1.0, help="Classifier-free guidance (7.5 is usual for SD; ignored on micro).")
    resolution: int | None = field(None, help="Output resolution in px (SD; default: the model's).")
    batch_size: int = field(8, help="Images per sampling batch.")
    device: str | None = field(None, help="torch device (default: cuda if available, else cpu).")


def load_for_generation(model: str | Path, lora: Path | None = None, resolution: int | None = None) -> Backbone:
    """Load a backbone for sampling, with LoRA weights loaded the diffusers way when given."""
    backbone = load_backbone(model, resolution=resolution)
    if lora is not None:
        if isinstance(backbone, PixelBackbone):
            raise ValueError("--lora applies to Stable Diffusion models; the micro backbone saves full weights.")
        lora = Path(lora)
        if not (lora / LORA_WEIGHT_NAME).is_file():
            raise FileNotFoundError(f"{lora} has no {LORA_WEIGHT_NAME}; pass the output folder of a LoRA run.")
        assert isinstance(backbone, StableDiffusionBackbone)
        backbone.pipeline.load_lora_weights(lora, weight_name=LORA_WEIGHT_NAME)
    return backbone


def generate_images(backbone: Backbone, config: GenerateConfig) -> list[np.ndarray]:
    """``num_images`` uint8 ``(H, W, 3)`` images; image ``i`` is reproducible from ``seed + i`` alone."""
    prompts = [config.prompt[i % len(config.prompt)] for i in range(config.num_images)]
    images = []
    for start in range(0, config.num_images, config.batch_size):
        batch = prompts[start : start + config.batch_size]
        # One generator per image keeps image i independent of batch size.
        latents = []
        for i in range(len(batch)):
            generator = torch.Generator().manual_seed(config.seed + start + i)
            latents.append(
                backbone.sample(
                    [batch[i]], generator, config.num_inference_steps, config.guidance_scale, config.negative_prompt
                )
            )
        images.extend(to_uint8(x[0]) for x in latents)
    return images


def run_generate(config: GenerateConfig) -> list[Path]:
    if config.pretrained_model_name_or_path is None:
        raise ValueError("--pretrained_model_name_or_path is required (e.g. the output_dir of `iddm personalize`).")
    if config.output_dir is None:
        raise ValueError("--output_dir is required.")
    output_dir = ensure_writable_dir(config.output_dir)
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    backbone = load_for_generation(config.pretrained_model_name_or_path, config.lora, config.resolution)
    backbone.to(device)
    if isinstance(backbone, PixelBackbone) and config.prompt != ["a photo of sks person"]:
        logger.warning("The micro backbone is not text-conditioned: prompts are ignored, it draws the person's face.")
    images = generate_images(backbone, config)
    paths = []
    for i, image in enumerate(images):
        path = output_dir / f"image_{i:04d}.png"
        save_png(path, image)
        paths.append(path)
    save_png(output_dir / "grid.png", make_grid(images, columns=min(8, len(images))))
    return paths
