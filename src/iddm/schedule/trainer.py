"""The one personalization loop: vanilla personalization is IDDM with privacy off.

:func:`personalize` validates and prepares everything (photos, base model, options resolved against
the model's recommendations) before it creates the run folder, then runs ``max_train_steps``
optimizer steps. After each step, hooks (:mod:`iddm.schedule.hooks`) run IDDM's data rounds in Stage 1,
write checkpoints and validation grids, and log to trackers; :mod:`iddm.schedule.artifacts` writes the
publishable ``model/`` and the ``private/`` audit material at the end (layout: :mod:`iddm.run_layout`).

All randomness is drawn from two CPU generators (personalization, data steps) saved in every
checkpoint, so a resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.utils import is_tensorboard_available, is_wandb_available, set_seed
from diffusers.optimization import get_scheduler

from iddm.config import ConfigError
from iddm.decouple import DataOptimizer, PrivacySettings, build_data_optimizer, resolve_privacy
from iddm.diffusion import (
    Backbone,
    Conditioning,
    LatentDistribution,
    MethodSettings,
    TrainingPhotos,
    load_backbone,
    prepare_photos,
)
from iddm.diffusion.accelerator import fresh_accelerator
from iddm.diffusion.data import check_single_identity
from iddm.images import check_writable_location, ensure_writable_dir
from iddm.progress import progress_bar
from iddm.run_layout import DELTA_FILE, PRIVATE_DIR, RUN_FILE, is_run_dir
from iddm.schedule.artifacts import class_images, finalize
from iddm.schedule.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint
from iddm.schedule.config import PersonalizeConfig
from iddm.schedule.context import TrainingState
from iddm.schedule.hooks import default_hooks
from iddm.schedule.plan import StagePlan

logger = logging.getLogger(__name__)

RECOMMENDED_OPTIONS = ("learning_rate", "lr_scheduler", "max_train_steps", "crop", "guidance_scale", "lora_rank")


@dataclass
class RunResult:
    output_dir: Path
    steps: int
    wall_seconds: float
    final_loss: float
    privacy: PrivacySettings
    log: dict = field(default_factory=dict)


RECOMMENDED_PRIVACY = ("round_steps", "lambda_natural", "delta_grid")
"""IDDM options whose default depends on the base model (:meth:`iddm.diffusion.Backbone.recommended`)."""


def resolve_options(config: PersonalizeConfig, backbone: Backbone) -> PersonalizeConfig:
    """``config`` with every empty option that the model recommends filled in (explicit options win)."""
    method = backbone.check_method(config.method)
    recommended = backbone.recommended(method)
    values = {name: recommended[name] for name in RECOMMENDED_OPTIONS if getattr(config, name) is None}
    if config.lora_target_modules is None:
        values["lora_target_modules"] = list(recommended["lora_target_modules"])
    privacy = {name: recommended[name] for name in RECOMMENDED_PRIVACY if getattr(config.privacy_config, name) is None}
    if privacy:
        values["privacy_config"] = dataclasses.replace(config.privacy_config, **privacy)
    resolved = dataclasses.replace(config, method=method, **values)
    if config.with_prior_preservation and not backbone.supports_prior_preservation:
        raise ConfigError(
            "--with_prior_preservation needs a pretrained text-to-image model; the micro backbone has none"
        )
    return resolved


class Trainer:
    """Holds the run's parts; :meth:`step` is one optimizer step, :meth:`run` the loop."""

    def __init__(self, config: PersonalizeConfig):
        if config.mixed_precision == "fp16" and not torch.cuda.is_available():
            raise ConfigError("--mixed_precision fp16 needs a CUDA GPU; use 'bf16' or 'no' on a CPU")
        self.privacy = resolve_privacy(config.privacy_config)
        self.output_dir = Path(config.output_dir)
        self._check_output_dir(config)
        self._check_inputs(config)
        # Resolved now, before the output folder is created: a missing or corrupt checkpoint is bad input.
        self.checkpoint = resolve_checkpoint(self.output_dir, config.resume_from_checkpoint)
        if config.allow_tf32 and torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True
        self.backbone = load_backbone(
            config.pretrained_model_name_or_path, config.resolution, config.seed, config.revision, config.variant
        )
        self.config = config = resolve_options(config, self.backbone)
        self.privacy = resolve_privacy(config.privacy_config)  # again, with the model's round length
        self.photos = _load_photos(config, self.backbone)
        check_single_identity(self.photos, allow=config.allow_mixed_identities)
        self.accelerator = fresh_accelerator(
            mixed_precision=config.mixed_precision,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            log_with=None if config.report_to == "none" else config.report_to,
            project_dir=str(self.output_dir / PRIVATE_DIR / "logs"),
        )
        # As diffusers' training scripts do: peft draws the LoRA init (and dropout) from the global RNGs, so without
        # this a run's result depended on what ran before it in the process (e.g. earlier benchmark cells).
        set_seed(config.seed)
        self.method = self.backbone.prepare_for_training(_method_settings(config))
        weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(config.mixed_precision, torch.float32)
        self.backbone.to(self.accelerator.device, weight_dtype)
        self.parameters = self.backbone.trainable_parameters()
        self.optimizer, self.lr_scheduler = self.accelerator.prepare(*_optimizer_and_schedule(self.parameters, config))
        self.plan = StagePlan.from_fraction(
            config.max_train_steps,
            self.privacy.stage1_fraction,
            self.privacy.round_steps,
            self.privacy.data_steps if self.privacy.alternates and config.perturbation_from is None else 0,
        )
        self.clean = self.photos.images.to(self.accelerator.device)
        coverage = self.photos.coverage if config.mask_padding else None
        self.coverage = None if coverage is None else coverage.to(self.accelerator.device)
        self._latents: tuple[torch.Tensor, LatentDistribution, LatentDistribution | None] | None = None
        self.data_optimizer: DataOptimizer | None = None
        if self.privacy.enabled or config.perturbation_from is not None:
            self.data_optimizer = build_data_optimizer(self.privacy, self.photos, self.accelerator.device)
            if config.perturbation_from is not None:  # its shape must match these photos
                self.data_optimizer.perturbation.load(_private_file(config.perturbation_from, DELTA_FILE))
        ensure_writable_dir(self.output_dir)  # everything is checked: the run may start
        self.class_images = None
        if config.with_prior_preservation:
            self.class_images = class_images(self.backbone, config, self.output_dir).to(self.accelerator.device)
        self.state = self._initial_state()
        self.prompts = [config.instance_prompt] * config.train_batch_size
        self.class_prompts = [config.class_prompt] * config.train_batch_size
        self.text_trains = any(name.startswith("text_encoder") for name in self.backbone.trainable_modules())
        self.frozen_context = None
        if not self.text_trains:
            with torch.no_grad():  # the frozen text encoder's output is the same every step
                self.frozen_context = (self.backbone.encode_prompts(self.prompts).detach(),)
                if self.class_images is not None:
                    self.frozen_context += (self.backbone.encode_prompts(self.class_prompts).detach(),)
        if self.accelerator.num_processes > 1:
            if self.text_trains:
                raise ConfigError("--train_text_encoder is not supported with several processes; train the UNet only")
            self.backbone.wrap_for_distributed(self.accelerator)
        self.hooks = default_hooks(self)

    # -- set-up ---------------------------------------------------------------------------------------
    def _check_output_dir(self, config: PersonalizeConfig) -> None:
        check_writable_location(self.output_dir)
        if is_run_dir(self.output_dir) and not config.overwrite and config.resume_from_checkpoint is None:
            raise FileExistsError(
                f"{self.output_dir} already holds a finished iddm run ({RUN_FILE}). Pass --overwrite to replace it, "
                "or choose another --output_dir."
            )

    def _check_inputs(self, config: PersonalizeConfig) -> None:
        """Input files and packages that options name, checked before any model is loaded."""
        if config.perturbation_from is not None:
            _private_file(config.perturbation_from, DELTA_FILE)
        if config.report_to == "wandb" and not is_wandb_available():
            raise ImportError("--report_to wandb needs the wandb package: pip install wandb (or --report_to none)")
        if config.report_to == "tensorboard" and not is_tensorboard_available():
            raise ImportError("--report_to tensorboard needs the tensorboard package: pip install tensorboard")

    def _initial_state(self) -> TrainingState:
        state = TrainingState.fresh(self.config.seed)
        checkpoint = self.checkpoint
        if checkpoint is not None:
            state.step, tensors, info = load_checkpoint(
                checkpoint, self.backbone.trainable_modules(), self.optimizer, self.lr_scheduler
            )
            state.generator.set_state(tensors["generator"])
            state.data_generator.set_state(tensors["data_generator"])
            if self.data_optimizer is not None:
                if "delta" not in tensors:
                    raise CheckpointError(f"{checkpoint} holds no perturbation: it is from a run without privacy")
                self.data_optimizer.perturbation.load_state(tensors, checkpoint)
            state.history = info.get("history", state.history)
            logger.info("Resumed from %s at step %d.", checkpoint, state.step)
            return state
        if self.config.resume_from_checkpoint is not None:
            logger.info("No checkpoint in %s yet: starting from step 0.", self.output_dir)
        if self.data_optimizer is not None and self.config.perturbation_from is not None:
            state.history["initial"] = self.data_optimizer.perturbation.summary(self.clean)
        elif self.data_optimizer is not None:
            state.history["initial"] = self.data_optimizer.initialize(
                self.backbone, self.clean, self.config.instance_prompt, state.data_generator
            )
        return state

    # -- the loop -------------------------------------------------------------------------------------
    def training_images(self) -> torch.Tensor:
        """The images personalization sees now: ``X`` or the decoupled ``X̃``, ``(N, 3, R, R)`` in ``[0, 1]``."""
        return self.clean if self.data_optimizer is None else self.data_optimizer.perturbation.perturbed(self.clean)

    def _conditioning(self, which: int, prompts: list[str]) -> Conditioning:
        return self.frozen_context[which] if self.frozen_context else self.backbone.encode_prompts(prompts)

    def _training_latents(self, images: torch.Tensor) -> tuple[LatentDistribution, LatentDistribution | None]:
        """:meth:`Backbone.encode` of ``images`` and, with ``--random_flip``, of their mirror images; encoded again
        only when ``images`` is another tensor (IDDM's data rounds replace it). The VAE never trains, so every
        step would encode the same photos again: on the 128-px prior that was about 60% of a step's time."""
        if self._latents is None or self._latents[0] is not images:
            size = self.config.train_batch_size
            with torch.no_grad():
                encoded = [
                    LatentDistribution.cat([self.backbone.encode(chunk) for chunk in batch.split(size)])
                    for batch in ([images, images.flip(-1)] if self.config.random_flip else [images])
                ]
            self._latents = (images, encoded[0], encoded[1] if len(encoded) > 1 else None)
        return self._latents[1], self._latents[2]

    def _micro_batch_loss(self, step: int) -> torch.Tensor:
        config, state, backbone = self.config, self.state, self.backbone
        images = self.training_images()
        # Every process draws the global batch from the shared generator and takes its own slice, so data
        # parallelism sees different photos per process and a resumed run continues every stream exactly.
        size, rank = config.train_batch_size, self.accelerator.process_index
        indices = torch.randint(0, len(images), (size * self.accelerator.num_processes,), generator=state.generator)
        indices = indices[rank * size : (rank + 1) * size].to(images.device)
        plain, mirrored = self._training_latents(images)
        latents = plain[indices]
        coverage = None if self.coverage is None else self.coverage[indices]
        flip = None
        if config.random_flip:
            flip = (torch.rand(len(indices), generator=state.generator) < 0.5).view(-1, 1, 1, 1).to(images.device)
            latents = mirrored[indices].where(flip, latents)
            coverage = None if coverage is None else torch.where(flip, coverage.flip(-1), coverage)
        conditioning = self._conditioning(0, self.prompts)
        loss = backbone.training_loss(
            latents, conditioning, state.generator, config.noise_offset, config.snr_gamma, coverage
        )
        loss = loss.mean()
        if self.class_images is not None:
            picks = torch.randint(0, len(self.class_images), (config.train_batch_size,), generator=state.generator)
            prior = backbone.training_loss(
                self.class_images[picks.to(self.class_images.device)], self._conditioning(1, self.class_prompts),
                state.generator, config.noise_offset, config.snr_gamma,
            )  # fmt: skip
            loss = loss + config.prior_loss_weight * prior.mean()
        if self.data_optimizer is not None and self.plan.stage(step) == 2 and self.privacy.lambda_model > 0:
            batch = images[indices]  # only this term needs the pixels; the denoising loss uses cached latents
            batch = batch if flip is None else torch.where(flip, batch.flip(-1), batch)
            loss = loss + self.privacy.lambda_model * self.data_optimizer.model_side_loss(
                backbone, batch, indices, conditioning, state.generator
            )
        return loss

    def step(self, step: int) -> float:
        """One optimizer step (``gradient_accumulation_steps`` micro-batches); returns its mean loss."""
        losses = []
        for _ in range(self.config.gradient_accumulation_steps):
            with self.accelerator.accumulate(*self.backbone.trainable_modules().values()):
                with self.accelerator.autocast():
                    loss = self._micro_batch_loss(step)
                self.accelerator.backward(loss)
                if self.accelerator.sync_gradients and self.config.max_grad_norm > 0:
                    self.accelerator.clip_grad_norm_(self.parameters, self.config.max_grad_norm)
                self.optimizer.step()
                self.lr_scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach().item())
        return sum(losses) / len(losses)

    def run(self) -> RunResult:
        started = time.perf_counter()
        self.backbone.train(True)
        progress = progress_bar(
            range(self.state.step, self.config.max_train_steps),
            initial=self.state.step,
            total=self.config.max_train_steps,
            desc=f"personalize ({self.privacy.label})",
            disable=not self.accelerator.is_local_main_process,
        )
        for step in progress:
            self.state.loss = self.step(step)
            self.state.step = step + 1
            for hook in self.hooks:
                hook.after_step(self, step)
            progress.set_postfix(self.progress_fields(), refresh=False)
        progress.close()
        wall = time.perf_counter() - started
        self.accelerator.wait_for_everyone()
        self.backbone.train(False)
        if self.accelerator.is_main_process:
            finalize(self, wall)
        self.accelerator.end_training()
        return RunResult(self.output_dir, self.config.max_train_steps, wall, self.state.loss, self.privacy,
                         self.state.history)  # fmt: skip

    def progress_fields(self) -> dict[str, str]:
        fields = {"loss": f"{self.state.loss:.4f}"}
        if self.privacy.enabled:
            fields["stage"] = str(self.plan.stage(self.state.step - 1))
        if self.state.history["rounds"]:
            fields["id_cos"] = f"{self.state.history['rounds'][-1]['surrogate_cos_x0_mean']:.3f}"
        return fields


def personalize(config: PersonalizeConfig) -> RunResult:
    """Run personalization (vanilla or IDDM) as configured; returns where and what it wrote."""
    return Trainer(config).run()


def _method_settings(config: PersonalizeConfig) -> MethodSettings:
    return MethodSettings(
        method=config.method,
        lora_rank=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        lora_target_modules=tuple(config.lora_target_modules),
        train_text_encoder=config.train_text_encoder,
        gradient_checkpointing=config.gradient_checkpointing,
    )


def _optimizer_and_schedule(parameters: list[torch.nn.Parameter], config: PersonalizeConfig):
    if config.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ImportError("--use_8bit_adam needs bitsandbytes: pip install 'iddm[bnb]'") from None
        optimizer_class = bnb.optim.AdamW8bit
    else:
        optimizer_class = torch.optim.AdamW
    optimizer = optimizer_class(parameters, lr=config.learning_rate, weight_decay=config.adam_weight_decay)
    scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=config.lr_warmup_steps,
        num_training_steps=config.max_train_steps,
    )
    return optimizer, scheduler


def _load_photos(config: PersonalizeConfig, backbone: Backbone) -> TrainingPhotos:
    photos = prepare_photos(
        config.photos,
        resolution=backbone.resolution,
        crop=config.crop,
        min_photos=config.min_photos,
        skip_bad_photos=config.skip_bad_photos,
    )
    logger.info("Training on %d photos at %d px (%s backbone).", len(photos), backbone.resolution, backbone.kind)
    return photos


def _private_file(run_dir: Path, name: str) -> Path:
    path = Path(run_dir) / PRIVATE_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"--perturbation_from {run_dir}: no {PRIVATE_DIR}/{name}; pass the folder of a run.")
    return path
