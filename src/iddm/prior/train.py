"""``iddm pretrain``: train the face prior (autoencoder, then latent UNet) and write it as a diffusers pipeline.

One global step counter runs through both stages: steps ``1..vae_steps`` train the ``AutoencoderKL``
(L1 + MSE reconstruction + KL), steps ``vae_steps + 1..vae_steps + unet_steps`` train the
``UNet2DConditionModel`` (noise prediction on SD 1.x's scaled-linear schedule) on the frozen autoencoder's
latents of every crop and its mirror image. All randomness (batches, posterior samples, caption dropout,
noise, timesteps) comes from one CPU generator saved in every ``checkpoint-N``, so a killed run resumed
with ``--resume_from_checkpoint latest`` ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.optimization import get_scheduler
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from iddm.checkpoints import list_checkpoints, resolve_checkpoint, write_checkpoint
from iddm.config import config_to_dict
from iddm.diffusion.accelerator import fresh_accelerator
from iddm.diffusion.tiny import assemble_sd_pipeline, build_clip_tokenizer
from iddm.images import atomic_write_json, check_writable_location, ensure_writable_dir, make_grid, save_png
from iddm.prior.config import PretrainConfig
from iddm.prior.data import load_corpus
from iddm.prior.defaults import personalization_defaults
from iddm.prior.models import build_models, check_architecture, vae_factor
from iddm.weights import MANIFEST_FILE, PRIOR_FILE, write_manifest

logger = logging.getLogger(__name__)


@dataclass
class PretrainResult:
    """What a finished ``iddm pretrain`` wrote and how long each stage took (seconds, summed over resumes)."""

    output_dir: Path
    steps: int
    vae_seconds: float
    unet_seconds: float
    vae_loss: float
    unet_loss: float
    corpus: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------


def _save_checkpoint(output_dir: Path, step: int, state: dict, total_limit: int | None) -> Path:
    """Write ``checkpoint-{step}``: modules, EMA, generator and optimizer states, and ``state.json``."""

    def write(folder: Path) -> None:
        for name, module in state["modules"].items():
            tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
            save_file(tensors, folder / f"{name}.safetensors")
        save_file({k: v.detach().cpu().contiguous() for k, v in state["ema"].items()}, folder / "ema.safetensors")
        save_file({"generator": state["generator"].get_state()}, folder / "rng.safetensors")
        for name, obj in state["optimizers"].items():
            torch.save(obj.state_dict(), folder / f"{name}.pt")
        (folder / "state.json").write_text(json.dumps({"step": step, **state["info"]}, indent=2) + "\n")

    return write_checkpoint(output_dir, step, write, total_limit)


def _load_checkpoint(path: Path, state: dict) -> dict:
    """Restore modules, EMA, optimizers, schedulers and the generator in place; return ``state.json``."""
    for name, module in state["modules"].items():
        module.load_state_dict(load_file(path / f"{name}.safetensors"))
    for key, value in load_file(path / "ema.safetensors").items():
        state["ema"][key].copy_(value)
    state["generator"].set_state(load_file(path / "rng.safetensors")["generator"])
    for name, obj in state["optimizers"].items():
        obj.load_state_dict(torch.load(path / f"{name}.pt", weights_only=True, map_location="cpu"))
    return json.loads((path / "state.json").read_text())


# ----------------------------------------------------------------------------------------------------
# Training pieces
# ----------------------------------------------------------------------------------------------------


def _check_config(config: PretrainConfig) -> Path:
    if config.output_dir is None:
        raise ValueError("--output_dir is required.")
    if not 0 <= config.caption_dropout < 1:
        raise ValueError(f"--caption_dropout must be in [0, 1), got {config.caption_dropout}.")
    if config.vae_steps < 1 or config.unet_steps < 1:
        raise ValueError("--vae_steps and --unet_steps must be at least 1.")
    if config.mixed_precision == "fp16" and (config.cpu or not torch.cuda.is_available()):
        raise ValueError("--mixed_precision fp16 needs a CUDA GPU; use 'bf16' or 'no' on a CPU.")
    check_architecture(config)
    output_dir = check_writable_location(config.output_dir)  # created once the corpus has loaded
    if (output_dir / MANIFEST_FILE).is_file() and not config.overwrite and config.resume_from_checkpoint is None:
        raise FileExistsError(
            f"{output_dir} already holds a finished prior ({MANIFEST_FILE}). Pass --overwrite to replace it, or "
            "choose another --output_dir."
        )
    return output_dir


@torch.no_grad()
def encode_captions(text_encoder, tokenizer, captions: list[str], device: torch.device) -> torch.Tensor:
    """Frozen text-encoder outputs ``(len(captions), 77, D)`` of the captions."""
    tokens = tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    return text_encoder(tokens.to(device))[0].float()


@torch.no_grad()
def encode_latents(
    vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std ``(M, C, r, r)`` of images ``(M, 3, R, R)`` in ``[0, 1]`` (float32, CPU)."""
    means, stds = [], []
    device = next(vae.parameters()).device
    for start in range(0, len(images), batch_size):
        posterior = vae.encode(images[start : start + batch_size].to(device) * 2 - 1).latent_dist
        means.append(posterior.mean.float().cpu())
        stds.append(posterior.std.float().cpu())
    return torch.cat(means), torch.cat(stds)


def _ema_update(ema: dict[str, torch.Tensor], model: torch.nn.Module, decay: float, step: int) -> None:
    """``ema = d * ema + (1 - d) * weights`` with the warmup ``d = min(decay, (1 + step) / (10 + step))``."""
    d = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            ema[name].mul_(d).add_(parameter.detach(), alpha=1 - d)


def noise_scheduler() -> DDPMScheduler:
    """Stable Diffusion 1.x's training schedule: 1,000 scaled-linear steps, beta 0.00085..0.012, epsilon."""
    return DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False
    )


# ----------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------


def pretrain(config: PretrainConfig) -> PretrainResult:
    """Build the corpus, train both stages (resumable), write the pipeline folder, ``iddm_prior.json`` and manifest."""
    output_dir = _check_config(config)
    checkpoint = resolve_checkpoint(output_dir, config.resume_from_checkpoint)  # a bad one stops before any work
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    accelerator = fresh_accelerator(mixed_precision=config.mixed_precision, cpu=config.cpu)
    device = accelerator.device
    logger.info(
        "Pretraining on %s (mixed precision %s, %d torch threads).",
        device,
        config.mixed_precision,
        torch.get_num_threads(),
    )

    corpus = load_corpus(
        config.data_dir,
        config.exclude,
        config.resolution,
        config.margin,
        config.min_identities,
        config.skip_bad_photos,
    )
    ensure_writable_dir(output_dir)
    summary = corpus.summary()
    logger.info(
        "Corpus: %d photos of %d identities (%d colour, %d grey), face detection rate %.3f; held out: %s.",
        summary["photos_used"],
        summary["identities"],
        summary["color_photos"],
        summary["gray_photos"],
        summary["face_detection_rate"],
        ", ".join(summary["held_out_identities"]) or "none",
    )
    images, gray = corpus.training_tensors(flip=True)

    vae, unet, text_encoder = build_models(config)
    tokenizer = build_clip_tokenizer()
    vae.to(device)
    unet.to(device)
    text_encoder.to(device)
    captions = [config.color_caption, config.gray_caption, ""]
    contexts = encode_captions(text_encoder, tokenizer, captions, device)
    scheduler = noise_scheduler()

    vae_optimizer = torch.optim.AdamW(
        vae.parameters(), lr=config.vae_learning_rate, weight_decay=config.adam_weight_decay
    )
    unet_optimizer = torch.optim.AdamW(
        unet.parameters(), lr=config.unet_learning_rate, weight_decay=config.adam_weight_decay
    )
    vae_lr = get_scheduler(
        "cosine", vae_optimizer, num_warmup_steps=config.lr_warmup_steps, num_training_steps=config.vae_steps
    )
    unet_lr = get_scheduler(
        "cosine", unet_optimizer, num_warmup_steps=config.lr_warmup_steps, num_training_steps=config.unet_steps
    )
    ema = {name: p.detach().clone() for name, p in unet.named_parameters()}
    generator = torch.Generator().manual_seed(config.seed)
    state = {
        "modules": {"vae": vae, "unet": unet},
        "ema": ema,
        "generator": generator,
        "optimizers": {
            "vae_optimizer": vae_optimizer,
            "unet_optimizer": unet_optimizer,
            "vae_lr": vae_lr,
            "unet_lr": unet_lr,
        },
        "info": {},
    }
    total = config.vae_steps + config.unet_steps
    start, seconds, losses = 0, {"vae": 0.0, "unet": 0.0}, {"vae": float("nan"), "unet": float("nan")}
    if checkpoint is not None:
        info = _load_checkpoint(checkpoint, state)
        start, seconds, losses = int(info["step"]), info["seconds"], info["losses"]
        logger.info("Resumed from %s at step %d of %d.", checkpoint, start, total)
    elif config.resume_from_checkpoint is not None:
        logger.info("No checkpoint in %s yet: starting from step 0.", output_dir)

    latents = None
    progress = tqdm(
        range(start, total),
        initial=start,
        total=total,
        desc="pretrain",
        unit="step",
        disable=not accelerator.is_local_main_process,
    )
    tick = time.perf_counter()
    for step in progress:
        stage = "vae" if step < config.vae_steps else "unet"
        if stage == "vae":
            vae.train()
            loss = _vae_step(vae, images, config, generator, accelerator)
            optimizer, lr_scheduler, parameters = vae_optimizer, vae_lr, list(vae.parameters())
        else:
            if latents is None:
                latents = _freeze_and_encode(vae, images)
            unet.train()
            loss = _unet_step(unet, latents, gray, contexts, scheduler, config, generator, accelerator)
            optimizer, lr_scheduler, parameters = unet_optimizer, unet_lr, list(unet.parameters())
        accelerator.backward(loss)
        if config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if stage == "unet":
            _ema_update(ema, unet, config.ema_decay, step - config.vae_steps)
        value = loss.detach().item()
        # A smoothed loss for the bar and the result (one step's loss is noisy).
        losses[stage] = value if np.isnan(losses[stage]) else 0.98 * losses[stage] + 0.02 * value
        now = time.perf_counter()
        seconds[stage] += now - tick
        tick = now
        progress.set_postfix({"stage": stage, "loss": f"{losses[stage]:.4f}"}, refresh=False)
        done = step + 1
        if config.checkpointing_steps > 0 and done % config.checkpointing_steps == 0 and done < total:
            state["info"] = {"seconds": seconds, "losses": losses}
            _save_checkpoint(output_dir, done, state, config.checkpoints_total_limit)
    progress.close()
    if latents is None:  # resumed after the last UNet step's checkpoint, or a run of zero UNet steps left
        latents = _freeze_and_encode(vae, images)

    _write_prior(
        output_dir, config, vae, unet, ema, text_encoder, tokenizer, latents, summary, seconds, losses, device
    )
    if not config.keep_checkpoints:
        for old in list_checkpoints(output_dir):
            shutil.rmtree(old, ignore_errors=True)
    logger.info(
        "Wrote the face prior to %s (autoencoder %.0f s, UNet %.0f s).", output_dir, seconds["vae"], seconds["unet"]
    )
    return PretrainResult(output_dir, total, seconds["vae"], seconds["unet"], losses["vae"], losses["unet"], summary)


def _vae_step(
    vae: AutoencoderKL, images: torch.Tensor, config: PretrainConfig, generator, accelerator
) -> torch.Tensor:
    """L1 + ``vae_mse_weight`` MSE + ``vae_kl_weight`` KL on a random batch of crops in ``[-1, 1]``."""
    indices = torch.randint(0, len(images), (config.vae_batch_size,), generator=generator)
    pixels = images[indices].to(accelerator.device) * 2 - 1
    with accelerator.autocast():
        posterior = vae.encode(pixels).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=generator).to(posterior.mean)
        reconstruction = vae.decode(posterior.mean + posterior.std * noise).sample.float()
        kl = posterior.kl().float().mean()
    error = reconstruction - pixels
    return error.abs().mean() + config.vae_mse_weight * error.pow(2).mean() + config.vae_kl_weight * kl


def _freeze_and_encode(vae: AutoencoderKL, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Freeze the autoencoder; latents of every crop and SD's scaling factor (1 / std of the latents)."""
    vae.eval()
    vae.requires_grad_(False)
    mean, std = encode_latents(vae, images)
    scaling = float(1.0 / mean.std())
    vae.register_to_config(scaling_factor=scaling)
    logger.info("Latents %s, scaling factor %.4f.", tuple(mean.shape[1:]), scaling)
    return {"mean": mean, "std": std, "scaling": torch.tensor(scaling)}


def _unet_step(unet, latents, gray, contexts, scheduler, config: PretrainConfig, generator, accelerator):
    """Noise-prediction MSE on a random batch of latents with colour/grey/empty captions."""
    device = accelerator.device
    indices = torch.randint(0, len(latents["mean"]), (config.unet_batch_size,), generator=generator)
    mean, std = latents["mean"][indices], latents["std"][indices]
    sample = (mean + std * torch.randn(mean.shape, generator=generator)) * latents["scaling"]
    dropped = torch.rand(config.unet_batch_size, generator=generator) < config.caption_dropout
    caption = torch.where(dropped, torch.full_like(indices, 2), gray[indices].long())
    noise = torch.randn(sample.shape, generator=generator)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (config.unet_batch_size,), generator=generator)
    noisy = scheduler.add_noise(sample, noise, timesteps)
    with accelerator.autocast():
        prediction = unet(noisy.to(device), timesteps.to(device), contexts[caption.to(device)]).sample
    return F.mse_loss(prediction.float(), noise.to(device))


def _write_prior(
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
    pipeline = assemble_sd_pipeline(unet, vae, text_encoder, tokenizer)
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
    (output_dir / MANIFEST_FILE).unlink(missing_ok=True)  # until the new manifest exists, the folder is unfinished
    for entry in tmp.iterdir():
        target = output_dir / entry.name
        if target.is_dir():
            shutil.rmtree(target)
        entry.replace(target)
    tmp.rmdir()
    if grid is not None:
        save_png(output_dir / "samples.png", grid)
    factor = vae_factor(config)
    info = {
        "kind": "iddm face prior: a small latent diffusion model in Stable Diffusion 1.x's shape",
        "personalization": personalization_defaults(config),
        "captions": {"color": config.color_caption, "gray": config.gray_caption, "dropout": config.caption_dropout},
        "latent_shape": [config.latent_channels, config.resolution // factor, config.resolution // factor],
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


@torch.no_grad()
def sample_images(
    pipeline: StableDiffusionPipeline, count: int, config: PretrainConfig, prompts: list[str] | None = None
) -> list[np.ndarray]:
    """``count`` uint8 ``(R, R, 3)`` samples; sample ``i`` uses seed ``config.seed + i`` and ``prompts[i % len]``."""
    prompts = prompts or [config.color_caption, config.gray_caption]
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


__all__ = ["PretrainResult", "list_checkpoints", "pretrain", "resolve_checkpoint", "sample_images"]
