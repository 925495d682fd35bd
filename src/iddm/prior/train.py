"""``iddm pretrain``: train the face prior's latent UNet (after its autoencoder, if one is trained) and write it as a
diffusers pipeline.

With the shipped TAEF2 (``autoencoder="taef2"``, the default) the corpus is encoded once into a shard cache
(:mod:`iddm.prior.latents`) and steps ``1..unet_steps`` train the ``UNet2DConditionModel``. With
``autoencoder="train"`` one global step counter runs through two stages: steps ``1..vae_steps`` train an
``AutoencoderKL`` (L1 + MSE reconstruction + KL), the rest the UNet on its frozen latents. The UNet learns noise
prediction on SD 1.x's scaled-linear schedule, conditioned on each photo's caption (:mod:`iddm.prior.captions`)
through the frozen text encoder. All randomness (batches, posterior samples, caption and label dropout, noise,
timesteps) comes from one CPU generator saved in every ``checkpoint-N``, so a killed run resumed with
``--resume_from_checkpoint latest`` ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, DDPMScheduler
from diffusers.optimization import get_scheduler
from diffusers.training_utils import compute_snr
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from iddm.checkpoints import list_checkpoints, resolve_checkpoint, write_checkpoint
from iddm.diffusion.accelerator import fresh_accelerator
from iddm.diffusion.objectives import masked_mse
from iddm.diffusion.tiny import build_clip_tokenizer
from iddm.images import check_writable_location, ensure_writable_dir
from iddm.prior.captions import CaptionBank, batch_captions
from iddm.prior.config import PretrainConfig
from iddm.prior.data import Corpus, load_corpus, with_gray_copies
from iddm.prior.latents import CACHE_DIR, cache_key, encode_corpus, module_digest
from iddm.prior.models import build_models, check_architecture, vae_factor
from iddm.prior.output import write_prior
from iddm.progress import progress_bar
from iddm.weights import MANIFEST_FILE, prior_path

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
    if config.data_dir is None:
        raise ValueError("--data_dir is required: the folder of face corpora (see data/faces/SOURCES.md).")
    if not 0 <= config.caption_dropout < 1:
        raise ValueError(f"--caption_dropout must be in [0, 1), got {config.caption_dropout}.")
    if not 0 <= config.label_dropout < 1:
        raise ValueError(f"--label_dropout must be in [0, 1), got {config.label_dropout}.")
    if config.snr_gamma is not None and config.snr_gamma <= 0:
        raise ValueError(f"--snr_gamma must be positive (or empty for plain MSE), got {config.snr_gamma}.")
    if config.init_from is not None and config.autoencoder != "taef2":
        raise ValueError("--init_from needs --autoencoder taef2: a retrained autoencoder has other latents.")
    if config.init_from is not None:  # a missing or mismatched prior stops here, before the corpus is read
        _init_files(config.init_from)
        _init_normalization(config)
    if not 0 <= config.gray_copies <= 1:
        raise ValueError(f"--gray_copies must be in [0, 1], got {config.gray_copies}.")
    if config.held_out_cfp < 0:
        raise ValueError(f"--held_out_cfp must be at least 0, got {config.held_out_cfp}.")
    if config.unet_steps < 1 or (config.autoencoder == "train" and config.vae_steps < 1):
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


def cached_latents(vae, corpus: Corpus, config: PretrainConfig, output_dir: Path) -> dict[str, torch.Tensor]:
    """The frozen autoencoder's latents of every crop (and mirror), through the shard cache (raw latents); with
    ``latent_normalization="per_channel"`` centred and scaled per channel (the statistics go into the autoencoder's
    config, so the pipeline encodes and decodes the same way); then its scaling factor set to ``1 / std``."""
    if vae.config.latents_mean is not None:
        raise ValueError("The latent cache holds raw latents: encode with an autoencoder without latents_mean.")
    key = cache_key(corpus.fingerprint, config.resolution, config.margin, config.flip, module_digest(vae))
    mean = encode_corpus(vae, corpus.images, output_dir / CACHE_DIR / key, flip=config.flip)
    # A fine-tuned UNet keeps the latent scale it learned: the statistics of the prior it starts from.
    start = _init_normalization(config) if config.init_from is not None else None
    if config.latent_normalization == "per_channel":
        if start is not None:
            channel_mean, channel_std = torch.tensor(start["latents_mean"]), torch.tensor(start["latents_std"])
        else:
            channel_mean, channel_std = mean.mean(dim=(0, 2, 3)), mean.std(dim=(0, 2, 3))
        mean = (mean - channel_mean.view(1, -1, 1, 1)) / channel_std.view(1, -1, 1, 1)
        vae.register_to_config(latents_mean=channel_mean.tolist(), latents_std=channel_std.tolist())
    scaling = float(start["scaling_factor"]) if start is not None else float(1.0 / mean.std())
    vae.register_to_config(scaling_factor=scaling)
    logger.info("Latents %s of %d crops, scaling factor %.4f.", tuple(mean.shape[1:]), len(mean), scaling)
    return {"mean": mean, "std": None, "scaling": torch.tensor(scaling)}


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


def noise_scheduler(prediction_type: str = "epsilon") -> DDPMScheduler:
    """Stable Diffusion 1.x's training schedule: 1,000 scaled-linear steps, beta 0.00085..0.012."""
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        prediction_type=prediction_type,
    )


# ----------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------


def pretrain(config: PretrainConfig) -> PretrainResult:
    """Build the corpus, train (resumable), write the pipeline folder, ``iddm_prior.json`` and manifest."""
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
    vae, unet, text_encoder = build_models(config)
    if config.init_from is not None:
        _init_from_prior(unet, text_encoder, config.init_from)
    corpus = _load_corpus(config)
    ensure_writable_dir(output_dir)
    tokenizer = build_clip_tokenizer()
    for module in (vae, unet, text_encoder):
        module.to(device)
    run = _Run(config, accelerator, corpus, vae, unet, CaptionBank(text_encoder, tokenizer, device))
    if checkpoint is not None:
        run.resume(checkpoint)
    elif config.resume_from_checkpoint is not None:
        logger.info("No checkpoint in %s yet: starting from step 0.", output_dir)
    if config.autoencoder == "taef2":  # frozen from the start: encode (or read the cache) before any step
        run.latents = cached_latents(vae, corpus, config, output_dir)
    run.train(output_dir)
    if run.latents is None:  # resumed after the last UNet step's checkpoint, or a run of zero UNet steps left
        run.latents = _freeze_and_encode(vae, run.images)

    seconds, losses = run.seconds, run.losses
    summary = corpus.summary()
    write_prior(
        output_dir, config, vae, unet, run.ema, text_encoder, tokenizer, run.latents, summary, seconds, losses, device
    )
    if not config.keep_checkpoints:
        for old in list_checkpoints(output_dir):
            shutil.rmtree(old, ignore_errors=True)
    logger.info(
        "Wrote the face prior to %s (autoencoder %.0f s, UNet %.0f s).", output_dir, seconds["vae"], seconds["unet"]
    )
    return PretrainResult(
        output_dir, run.total, seconds["vae"], seconds["unet"], losses["vae"], losses["unet"], summary
    )


def _prior_folder(source: str) -> Path:
    return prior_path(source) if source.startswith("iddm:") else Path(source)


def _init_files(source: str) -> dict[str, Path]:
    """The UNet and text-encoder weight files of the prior ``source`` (a shipped name or a folder)."""
    folder = _prior_folder(source)
    files = {
        "unet": folder / "unet" / "diffusion_pytorch_model.safetensors",
        "text_encoder": folder / "text_encoder" / "model.safetensors",
    }
    for path in (*files.values(), folder / "vae" / "config.json"):
        if not path.is_file():
            raise FileNotFoundError(f"--init_from {source}: {path} is missing; give a face prior's folder.")
    return files


def _init_normalization(config: PretrainConfig) -> dict:
    """The latent statistics (``latents_mean``, ``latents_std``, ``scaling_factor``) of the ``--init_from`` prior's
    autoencoder config.

    Raises:
        ValueError: that prior normalizes its latents otherwise than ``--latent_normalization``.
    """
    statistics = json.loads((_prior_folder(config.init_from) / "vae" / "config.json").read_text())
    if (statistics.get("latents_mean") is not None) != (config.latent_normalization == "per_channel"):
        raise ValueError(
            f"--init_from {config.init_from} normalizes its latents otherwise than --latent_normalization "
            f"{config.latent_normalization}; its UNet would see latents at another scale."
        )
    return statistics


def _init_from_prior(unet, text_encoder, source: str) -> None:
    """Load the prior ``source``'s UNet and (frozen) text encoder into the freshly built ones, in float32."""
    for module, path in zip((unet, text_encoder), _init_files(source).values()):
        try:
            module.load_state_dict({name: tensor.float() for name, tensor in load_file(path).items()})
        except (RuntimeError, SafetensorError) as err:
            first = str(err).strip().splitlines()[0]
            raise ValueError(f"--init_from {source}: {path} does not fit the architecture ({first}).") from None
    logger.info("UNet and text encoder initialized from %s.", source)


def _load_corpus(config: PretrainConfig) -> Corpus:
    corpus = load_corpus(
        config.data_dir,
        config.exclude,
        config.resolution,
        config.margin,
        config.min_identities,
        config.skip_bad_photos,
        config.held_out_cfp,
    )
    corpus = with_gray_copies(corpus, config.gray_copies, config.seed)
    summary = corpus.summary()
    logger.info(
        "Corpus: %d photos of %d identities (%d colour, %d grey, %d grey copies), face detection rate %.3f; %d "
        "identities held out.",
        summary["photos_used"],
        summary["identities"],
        summary["color_photos"],
        summary["gray_photos"],
        summary["gray_copies"],
        summary["face_detection_rate"],
        len(summary["held_out_identities"]),
    )
    return corpus


class _Run:
    """The trained modules' optimizers, schedules, EMA, generator and counters, and the training loop.

    One global step counter: steps ``0..vae_steps - 1`` train the autoencoder (``autoencoder="train"`` only), the
    rest the UNet. ``latents`` is set before the loop (TAEF2) or when the UNet stage starts (a trained autoencoder).
    """

    def __init__(self, config, accelerator, corpus: Corpus, vae, unet, captions: CaptionBank):
        self.config, self.accelerator, self.corpus = config, accelerator, corpus
        self.vae, self.unet, self.captions = vae, unet, captions
        self.scheduler = noise_scheduler(config.prediction_type)
        trains_vae = config.autoencoder == "train"
        self.vae_steps = config.vae_steps if trains_vae else 0
        self.total = self.vae_steps + config.unet_steps
        self.images = corpus.training_tensors(flip=config.flip)[0] if trains_vae else None
        grid = config.resolution // vae_factor(config)
        self.masks = corpus.latent_masks(grid, config.flip) if config.mask_padding else None
        if self.masks is not None:
            logger.info(
                "Loss masks: %d of %d crops reach past their photo; %.1f%% of latent cells stay in the loss.",
                int((self.masks < 1).flatten(1).any(dim=1).sum()),
                len(self.masks),
                100 * float(self.masks.mean()),
            )
        self.latents: dict[str, torch.Tensor] | None = None
        self.ema = {name: p.detach().clone() for name, p in unet.named_parameters()}
        self.generator = torch.Generator().manual_seed(config.seed)
        self.parts = {"unet": self._optimize(unet, config.unet_learning_rate, config.unet_steps)}
        if trains_vae:
            self.parts["vae"] = self._optimize(vae, config.vae_learning_rate, config.vae_steps)
        self.start = 0
        self.seconds = {"vae": 0.0, "unet": 0.0}
        self.losses = {"vae": float("nan"), "unet": float("nan")}

    def _optimize(self, module, learning_rate: float, steps: int) -> tuple:
        optimizer = torch.optim.AdamW(
            module.parameters(), lr=learning_rate, weight_decay=self.config.adam_weight_decay
        )
        schedule = get_scheduler(
            "cosine", optimizer, num_warmup_steps=self.config.lr_warmup_steps, num_training_steps=steps
        )
        return optimizer, schedule

    def _state(self) -> dict:
        """What a checkpoint holds (the layout of :func:`_save_checkpoint`)."""
        modules = {"unet": self.unet, **({"vae": self.vae} if "vae" in self.parts else {})}
        optimizers = {}
        for name, (optimizer, schedule) in self.parts.items():
            optimizers.update({f"{name}_optimizer": optimizer, f"{name}_lr": schedule})
        info = {"seconds": self.seconds, "losses": self.losses}
        return {
            "modules": modules,
            "ema": self.ema,
            "generator": self.generator,
            "optimizers": optimizers,
            "info": info,
        }

    def resume(self, checkpoint: Path) -> None:
        info = _load_checkpoint(checkpoint, self._state())
        self.start, self.seconds, self.losses = int(info["step"]), info["seconds"], info["losses"]
        logger.info("Resumed from %s at step %d of %d.", checkpoint, self.start, self.total)

    def train(self, output_dir: Path) -> None:
        config = self.config
        progress = progress_bar(
            range(self.start, self.total),
            initial=self.start,
            total=self.total,
            desc="pretrain",
            unit="step",
            disable=not self.accelerator.is_local_main_process,
        )
        tick = time.perf_counter()
        for step in progress:
            stage = "vae" if step < self.vae_steps else "unet"
            value = self._step(stage, step)
            # A smoothed loss for the bar and the result (one step's loss is noisy).
            previous = self.losses[stage]
            self.losses[stage] = value if np.isnan(previous) else 0.98 * previous + 0.02 * value
            now = time.perf_counter()
            self.seconds[stage] += now - tick
            tick = now
            progress.set_postfix({"stage": stage, "loss": f"{self.losses[stage]:.4f}"}, refresh=False)
            done = step + 1
            if config.checkpointing_steps > 0 and done % config.checkpointing_steps == 0 and done < self.total:
                _save_checkpoint(output_dir, done, self._state(), config.checkpoints_total_limit)
        progress.close()

    def _step(self, stage: str, step: int) -> float:
        """One optimizer step of ``stage``; returns its loss."""
        if stage == "vae":
            self.vae.train()
            loss = _vae_step(self.vae, self.images, self.config, self.generator, self.accelerator)
            module = self.vae
        else:
            if self.latents is None:
                self.latents = _freeze_and_encode(self.vae, self.images)
            self.unet.train()
            loss = _unet_step(
                self.unet, self.latents, self.masks, self.corpus, self.captions, self.scheduler, self.config,
                self.generator, self.accelerator,
            )  # fmt: skip
            module = self.unet
        optimizer, schedule = self.parts[stage]
        self.accelerator.backward(loss)
        if self.config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(list(module.parameters()), self.config.max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if stage == "unet":
            _ema_update(self.ema, self.unet, self.config.ema_decay, step - self.vae_steps)
        return loss.detach().item()


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


def _unet_step(unet, latents, masks, corpus, captions, scheduler, config: PretrainConfig, generator, accelerator):
    """Noise- (or v-) prediction MSE on a random batch of latents, each with its caption (or the empty one),
    averaged per sample over the latent cells its mask keeps (``masks``: ``(M, 1, g, g)`` or ``None``)."""
    device = accelerator.device
    indices = torch.randint(0, len(latents["mean"]), (config.unet_batch_size,), generator=generator)
    mean = latents["mean"][indices]
    if latents["std"] is not None:  # a trained AutoencoderKL's posterior sample
        mean = mean + latents["std"][indices] * torch.randn(mean.shape, generator=generator)
    sample = mean * latents["scaling"]
    context = captions(batch_captions(indices, corpus, config, generator))
    noise = torch.randn(sample.shape, generator=generator)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (config.unet_batch_size,), generator=generator)
    noisy = scheduler.add_noise(sample, noise, timesteps)
    with accelerator.autocast():
        prediction = unet(noisy.to(device), timesteps.to(device), context).sample
    target = noise if config.prediction_type == "epsilon" else scheduler.get_velocity(sample, noise, timesteps)
    keep = None if masks is None else masks[indices].to(device)
    loss = masked_mse(prediction.float(), target.to(device), keep)
    return (loss * min_snr_weights(scheduler, timesteps, config).to(device)).mean()


def min_snr_weights(scheduler, timesteps: torch.Tensor, config: PretrainConfig) -> torch.Tensor:
    """Per-sample loss weights of Min-SNR-gamma (Hang et al. 2023), shape ``(batch,)``: ``min(SNR, gamma)`` over
    ``SNR`` (epsilon) or ``SNR + 1`` (v-prediction), so that the easy low-noise steps stop dominating; ones when
    ``snr_gamma`` is unset."""
    if config.snr_gamma is None:
        return torch.ones(len(timesteps))
    snr = compute_snr(scheduler, timesteps)
    clipped = snr.clamp(max=config.snr_gamma)
    return clipped / (snr + 1 if config.prediction_type == "v_prediction" else snr)


__all__ = ["PretrainResult", "list_checkpoints", "min_snr_weights", "pretrain", "resolve_checkpoint"]
