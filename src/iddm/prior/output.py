"""What ``iddm pretrain`` writes: the diffusers pipeline folder (EMA UNet), ``samples.png``, ``iddm_prior.json``
and the SHA-256 manifest."""

from __future__ import annotations

import platform
import shutil
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import load_file, save_file

from iddm.config import config_to_dict
from iddm.diffusion.tiny import assemble_sd_pipeline
from iddm.images import atomic_write_json, make_grid, save_png
from iddm.prior.config import PretrainConfig
from iddm.prior.defaults import personalization_defaults
from iddm.prior.models import latent_channels, vae_factor
from iddm.weights import MANIFEST_FILE, PRIOR_FILE, taef2_path, write_manifest


def write_prior(
    output_dir: Path,
    config: PretrainConfig,
    vae: AutoencoderKL,
    unet: UNet2DConditionModel,
    ema: dict[str, torch.Tensor],
    text_encoder,
    tokenizer,
    latents: dict[str, torch.Tensor],
    corpus: dict,
    seconds: dict,
    losses: dict,
    device: torch.device,
) -> None:
    """The pipeline (EMA UNet) through a temporary folder, then samples.png, iddm_prior.json and SHA256SUMS."""
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            parameter.copy_(ema[name])
    unet.eval()
    pipeline = assemble_sd_pipeline(unet, vae, text_encoder, tokenizer, config.prediction_type)
    pipeline.set_progress_bar_config(disable=True)
    grid = None
    if config.num_sample_images > 0:
        grid = make_grid(sample_images(pipeline, config.num_sample_images, config), columns=8)
    tmp = output_dir / ".prior.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    pipeline.save_pretrained(tmp, safe_serialization=True)
    if config.weights_dtype == "fp16":
        # Halve the files; diffusers and the (float32) text-encoder config load them back as float32.
        for path in sorted(tmp.glob("*/*.safetensors")):
            save_file(
                {k: v.half() if v.is_floating_point() else v for k, v in load_file(path).items()},
                path,
                metadata={"format": "pt"},
            )
    if config.autoencoder == "taef2":  # TAEF2's MIT notice goes wherever its weights go
        shutil.copy(taef2_path() / "LICENSE", tmp / "vae" / "LICENSE")
    (output_dir / MANIFEST_FILE).unlink(missing_ok=True)  # until the new manifest exists, the folder is unfinished
    for entry in tmp.iterdir():
        target = output_dir / entry.name
        if target.is_dir():
            shutil.rmtree(target)
        entry.replace(target)
    tmp.rmdir()
    if grid is not None:
        save_png(output_dir / "samples.png", grid)
    side = config.resolution // vae_factor(config)
    info = {
        "kind": "iddm face prior: a small latent diffusion model in Stable Diffusion 1.x's shape",
        "autoencoder": (
            "TAEF2 (pretrained by Ollin Boer Bohan, MIT; frozen)" if config.autoencoder == "taef2" else "AutoencoderKL"
        ),
        "personalization": personalization_defaults(config),
        "captions": _caption_info(config),
        **({"probe_prompts": list(config.probe_prompts)} if config.captions == "labels" else {}),
        "latent_shape": [latent_channels(config), side, side],
        "scaling_factor": float(latents["scaling"]),
        "parameters": {
            "unet": sum(p.numel() for p in unet.parameters()),
            "vae": sum(p.numel() for p in vae.parameters()),
            "text_encoder": sum(p.numel() for p in text_encoder.parameters()),
        },
        "corpus": corpus,
        "training": {
            "seconds": {k: round(v, 1) for k, v in seconds.items()},
            "final_smoothed_loss": losses,
            "device": str(device),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "platform": platform.platform(),
        },
        "pretrain_config": config_to_dict(config),
    }
    atomic_write_json(output_dir / PRIOR_FILE, info)
    write_manifest(output_dir)


def _caption_info(config: PretrainConfig) -> dict:
    if config.captions == "labels":
        return {
            "kind": "from the corpora's labels (iddm.prior.captions)",
            "label_dropout": config.label_dropout,
            "dropout": config.caption_dropout,
            "examples": config.sample_prompts,
        }
    return {"color": config.color_caption, "gray": config.gray_caption, "dropout": config.caption_dropout}


def sample_prompts(config: PretrainConfig) -> list[str]:
    """The prompts of the samples grid: ``sample_prompts`` with label captions, else the two captions."""
    return list(config.sample_prompts) if config.captions == "labels" else [config.color_caption, config.gray_caption]


@torch.no_grad()
def sample_images(
    pipeline: StableDiffusionPipeline, count: int, config: PretrainConfig, prompts: list[str] | None = None
) -> list[np.ndarray]:
    """``count`` uint8 ``(R, R, 3)`` samples; sample ``i`` uses seed ``config.seed + i`` and ``prompts[i % len]``."""
    prompts = prompts or sample_prompts(config)
    images = []
    for i in range(count):
        generator = torch.Generator().manual_seed(config.seed + i)
        out = pipeline(
            prompts[i % len(prompts)],
            num_inference_steps=config.sample_steps,
            guidance_scale=config.sample_guidance_scale,
            generator=generator,
            output_type="np",
        ).images[0]
        images.append((np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8))
    return images


__all__ = ["sample_images", "sample_prompts", "write_prior"]
