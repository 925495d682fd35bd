"""Generation from a base or personalized model: EXIF-free PNGs and a grid."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from iddm.config import field
from iddm.diffusion.backbone import INSTANCE_PROMPT, Backbone
from iddm.diffusion.data import to_uint8
from iddm.diffusion.loading import DEFAULT_MODEL, load_backbone
from iddm.diffusion.sampling import sample
from iddm.diffusion.stable_diffusion import LORA_WEIGHT_NAME
from iddm.images import check_writable_location, ensure_writable_dir, make_grid, save_png
from iddm.progress import progress_bar
from iddm.run_layout import RUN_FILE, is_run_dir, resolve_model_dir

logger = logging.getLogger(__name__)


@dataclass
class GenerateConfig:
    pretrained_model_name_or_path: str = field(
        DEFAULT_MODEL,
        help=f"A run folder of `iddm personalize` (or its model/), a diffusers SD folder, a hub id, or a built-in "
        f"model; the default is personalize's ({DEFAULT_MODEL}).",
    )
    lora: Path | None = field(None, help="Folder holding pytorch_lora_weights.safetensors to load onto the model.")
    output_dir: Path | None = field(None, help="Where the PNGs and grid.png are written.", required=True)
    prompt: list[str] = field([INSTANCE_PROMPT], help="Prompt(s); images cycle through them.")
    negative_prompt: str = field("", help="Negative prompt (SD with guidance).")
    num_images: int = field(8, help="Images to generate.", ge=1, le=100_000)
    seed: int = field(0, help="Seed: image i uses seed + i, so any image can be regenerated alone.", ge=0)
    num_inference_steps: int = field(25, help="DDIM steps.", ge=1, le=1000)
    guidance_scale: float | None = field(
        None, help="Classifier-free guidance (default: the model's, 7.5 for SD; ignored by the micro backbone).", ge=0
    )
    resolution: int | None = field(None, help="Output resolution in px (SD; default: the model's).", ge=32, le=4096)
    device: str | None = field(None, help="torch device (default: cuda if available, else cpu).")


def generation_source(model: str | Path, lora: Path | None = None) -> tuple[str, Path | None]:
    """``(base model, LoRA folder)`` to generate from ``model``: a LoRA run generates from its base model."""
    folder = resolve_model_dir(model)
    if lora is None and (folder / LORA_WEIGHT_NAME).is_file():
        run_dir = folder.parent if is_run_dir(folder.parent) else None
        if run_dir is None:
            raise ValueError(
                f"{folder} holds LoRA weights: pass the base model with --pretrained_model_name_or_path and the "
                "LoRA folder with --lora."
            )
        config = json.loads((run_dir / RUN_FILE).read_text()).get("config", {})
        base = config.get("pretrained_model_name_or_path")
        return (str(base) if base else None), folder
    return str(model), lora


def load_for_generation(model: str | Path, lora: Path | None = None, resolution: int | None = None) -> Backbone:
    """Load a backbone for sampling, with LoRA weights loaded the diffusers way when given (or implied by a run)."""
    base, lora = generation_source(model, lora)
    if lora is not None and not (resolve_model_dir(lora) / LORA_WEIGHT_NAME).is_file():
        raise FileNotFoundError(
            f"--lora {lora} holds no {LORA_WEIGHT_NAME}; pass the output folder (or model/) of a LoRA run."
        )
    backbone = load_backbone(base, resolution=resolution)
    if lora is not None:
        backbone.load_lora(resolve_model_dir(lora))
    return backbone


def generate_images(
    backbone: Backbone,
    prompts: list[str],
    num_images: int,
    seed: int = 0,
    num_inference_steps: int = 25,
    guidance_scale: float = 1.0,
    negative_prompt: str = "",
    progress: bool = True,
) -> list[np.ndarray]:
    """``num_images`` uint8 ``(H, W, 3)`` images cycling through ``prompts``; image ``i`` uses seed ``seed + i``."""
    images = []
    for i in progress_bar(range(num_images), desc="generate", unit="image", disable=not progress):
        generator = torch.Generator().manual_seed(seed + i)
        batch = sample(
            backbone, [prompts[i % len(prompts)]], generator, num_inference_steps, guidance_scale, negative_prompt
        )
        images.append(to_uint8(batch[0]))
    return images


def run_generate(config: GenerateConfig) -> list[Path]:
    """The ``iddm generate`` command: load, sample, write ``image_NNNN.png`` and ``grid.png``."""
    check_writable_location(config.output_dir)  # before any work; the folder is created with the first image
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    backbone = load_for_generation(config.pretrained_model_name_or_path, config.lora, config.resolution)
    backbone.to(device)
    if not backbone.text_conditioned and config.prompt != [INSTANCE_PROMPT]:
        logger.warning("The micro backbone is not text-conditioned: prompts are ignored, it draws the person's face.")
    guidance = config.guidance_scale
    if guidance is None:
        guidance = backbone.recommended("lora")["guidance_scale"]
    images = generate_images(
        backbone, config.prompt, config.num_images, config.seed, config.num_inference_steps, guidance,
        config.negative_prompt,
    )  # fmt: skip
    output_dir = ensure_writable_dir(config.output_dir)
    paths = []
    for i, image in enumerate(images):
        path = output_dir / f"image_{i:04d}.png"
        save_png(path, image)
        paths.append(path)
    save_png(output_dir / "grid.png", make_grid(images, columns=min(8, len(images))))
    return paths
