"""What happens between optimizer steps: IDDM's data rounds, checkpoints, validation grids, tracking.

Each hook's ``after_step(trainer, step)`` runs after optimizer step ``step`` (0-based), in the order of
:func:`default_hooks`: the data round first (so a checkpoint taken at the same step holds the new δ).
"""

from __future__ import annotations

from pathlib import Path

import torch

from iddm.diffusion import sample
from iddm.diffusion.data import to_uint8
from iddm.images import make_grid, save_png
from iddm.run_layout import VALIDATION_DIR
from iddm.schedule.checkpoint import save_checkpoint
from iddm.schedule.context import RunContext


class DataRoundHook:
    """Stage 1 of IDDM: after every K personalization steps, M data steps on δ against the current model."""

    def after_step(self, trainer: RunContext, step: int) -> None:
        if trainer.data_optimizer is None or not trainer.plan.data_round_after(step):
            return
        state = trainer.state
        with trainer.accelerator.autocast():
            record = trainer.data_optimizer.run_round(
                trainer.backbone, trainer.clean, trainer.config.instance_prompt, trainer.plan.data_steps,
                state.data_generator,
            )  # fmt: skip
        record.update(step=step + 1, round=(step + 1) // trainer.plan.round_steps, personalization_loss=state.loss)
        state.history["rounds"].append(record)
        trainer.backbone.train(True)
        trainer.accelerator.log(
            {f"identity_cos_x0/{k}": v for k, v in record["surrogate_cos_x0"].items()}
            | {f"identity_cos_data/{k}": v for k, v in record["surrogate_cos_data"].items()}
            | {"psnr_db": record["psnr_db"]},
            step=step + 1,
        )


class CheckpointHook:
    """``checkpoint-N`` every ``checkpointing_steps`` (resumable; LoRA runs also get loadable LoRA weights)."""

    def after_step(self, trainer: RunContext, step: int) -> None:
        config, done = trainer.config, step + 1
        if config.checkpointing_steps == 0 or done % config.checkpointing_steps or done >= config.max_train_steps:
            return
        if not trainer.accelerator.is_main_process:
            return
        state = trainer.state
        tensors = {"generator": state.generator.get_state(), "data_generator": state.data_generator.get_state()}
        if trainer.data_optimizer is not None:
            tensors |= trainer.data_optimizer.perturbation.state()

        def loadable_weights(folder: Path) -> None:
            if trainer.method == "lora":
                trainer.backbone.save(folder, "lora")

        save_checkpoint(
            trainer.output_dir, done, trainer.backbone.trainable_modules(), trainer.optimizer, trainer.lr_scheduler,
            tensors, {"history": state.history}, config.checkpoints_total_limit, extra=loadable_weights,
        )  # fmt: skip


def validation_images(trainer: RunContext) -> list:
    """``num_validation_images`` samples of the current model, uint8 ``(H, W, 3)``, from a fixed seed."""
    config = trainer.config
    generator = torch.Generator().manual_seed(config.seed)
    prompt = config.validation_prompt or config.instance_prompt
    images = sample(
        trainer.backbone, [prompt] * config.num_validation_images, generator, config.num_inference_steps,
        config.guidance_scale,
    )  # fmt: skip
    return [to_uint8(image) for image in images]


def write_validation(trainer: RunContext, name: str, step: int) -> None:
    images = validation_images(trainer)
    grid = make_grid(images, columns=4)
    save_png(trainer.output_dir / VALIDATION_DIR / f"{name}.png", grid)
    tracker_log_images(trainer, grid, step)


def tracker_log_images(trainer: RunContext, grid, step: int) -> None:
    """Send a validation grid to the configured trackers (tensorboard or wandb)."""
    for tracker in trainer.accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image("validation", grid, step, dataformats="HWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({"validation": [wandb.Image(grid)]}, step=step)


class ValidationHook:
    """A grid of samples every ``validation_steps`` into ``validation/step-N.png``."""

    def after_step(self, trainer: RunContext, step: int) -> None:
        done, every = step + 1, trainer.config.validation_steps
        if every > 0 and done % every == 0 and trainer.accelerator.is_main_process:
            write_validation(trainer, f"step-{done:06d}", done)
            trainer.backbone.train(True)


class TrackingHook:
    """Loss and learning rate to the trackers and to the run log (every 10 steps)."""

    def after_step(self, trainer: RunContext, step: int) -> None:
        loss = trainer.state.loss
        trainer.accelerator.log({"loss": loss, "lr": trainer.lr_scheduler.get_last_lr()[0]}, step=step + 1)
        if step % 10 == 0:
            trainer.state.history["loss"].append([step, loss])


def default_hooks(trainer: RunContext) -> list:
    if trainer.config.report_to != "none":
        from iddm.config import config_to_dict

        trainer.accelerator.init_trackers("iddm", config=_tracker_config(config_to_dict(trainer.config)))
    return [TrackingHook(), DataRoundHook(), CheckpointHook(), ValidationHook()]


def _tracker_config(values: dict) -> dict:
    """Trackers take scalars and strings only (tensorboard's hparams)."""
    return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in values.items()}
