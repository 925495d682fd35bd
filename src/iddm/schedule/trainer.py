"""The one personalization loop: vanilla personalization is IDDM with privacy off.

``personalize(config)`` prepares the photos, loads the backbone, and runs ``max_train_steps``
personalization steps. When a privacy level is set, Stage 1 interleaves rounds of identity-decoupled
data steps on the photo perturbation δ (``iddm.decouple``); Stage 2 trains on the frozen decoupled
photos. All randomness is drawn from two CPU generators (personalization, data steps) saved in every
checkpoint, so a resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from diffusers.optimization import get_scheduler
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from iddm.config import config_to_dict
from iddm.decouple import DataOptimizer, PrivacySettings, build_data_optimizer, resolve_privacy
from iddm.diffusion import (
    Backbone,
    MethodSettings,
    PixelBackbone,
    TrainingPhotos,
    load_backbone,
    prepare_for_training,
    prepare_photos,
    save_personalized,
)
from iddm.diffusion.data import to_tensor, to_uint8
from iddm.images import (
    atomic_write_bytes,
    atomic_write_json,
    ensure_writable_dir,
    list_photos,
    load_photo,
    make_grid,
    save_png,
)
from iddm.schedule.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from iddm.schedule.config import PersonalizeConfig
from iddm.schedule.model_card import write_model_card
from iddm.schedule.plan import StagePlan

logger = logging.getLogger(__name__)

RUN_FILE = "iddm_run.json"
DELTA_FILE = "decoupled_delta.safetensors"
LOG_FILE = "iddm_log.json"


@dataclass
class RunResult:
    output_dir: Path
    steps: int
    wall_seconds: float
    final_loss: float
    privacy: PrivacySettings
    log: dict = field(default_factory=dict)


def _check_output_dir(config: PersonalizeConfig) -> Path:
    if config.output_dir is None:
        raise ValueError("--output_dir is required.")
    output_dir = ensure_writable_dir(config.output_dir)
    run_file = output_dir / RUN_FILE
    if run_file.is_file() and not config.overwrite and config.resume_from_checkpoint is None:
        raise FileExistsError(
            f"{output_dir} already holds a finished iddm run ({RUN_FILE}). Pass --overwrite to replace it, "
            "or choose another --output_dir."
        )
    return output_dir


def _make_optimizer(parameters: list[torch.nn.Parameter], config: PersonalizeConfig) -> torch.optim.Optimizer:
    if config.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ImportError("--use_8bit_adam needs bitsandbytes: pip install bitsandbytes") from None
        optimizer_class = bnb.optim.AdamW8bit
    else:
        optimizer_class = torch.optim.AdamW
    return optimizer_class(parameters, lr=config.learning_rate, weight_decay=config.adam_weight_decay)


def _class_images(backbone: Backbone, config: PersonalizeConfig, output_dir: Path, resolution: int) -> torch.Tensor:
    """Class images for prior preservation: generated once by the base model and cached as PNG."""
    folder = Path(config.class_data_dir or output_dir / "class_images")
    folder.mkdir(parents=True, exist_ok=True)
    existing = list_photos(folder, min_photos=0) if folder.is_dir() else []
    missing = config.num_class_images - len(existing)
    if missing > 0:
        generator = torch.Generator().manual_seed(config.seed + 1)
        logger.info("Generating %d class images with the base model into %s", missing, folder)
        for start in tqdm(range(0, missing, 4), desc="class images"):
            count = min(4, missing - start)
            images = backbone.sample(
                [config.class_prompt] * count, generator, config.num_inference_steps, config.guidance_scale
            )
            for offset, image in enumerate(images):
                save_png(folder / f"class_{len(existing) + start + offset:05d}.png", to_uint8(image))
    paths = list_photos(folder, min_photos=config.num_class_images)[: config.num_class_images]
    tensors = []
    for path in paths:
        array = load_photo(path)
        if array.shape[:2] != (resolution, resolution):
            array = np.asarray(Image.fromarray(array).resize((resolution, resolution), Image.Resampling.BICUBIC))
        tensors.append(to_tensor(array))
    return torch.stack(tensors)


def _validation_grid(backbone: Backbone, config: PersonalizeConfig, path: Path) -> None:
    generator = torch.Generator().manual_seed(config.seed)
    prompt = config.validation_prompt or config.instance_prompt
    images = backbone.sample(
        [prompt] * config.num_validation_images, generator, config.num_inference_steps, config.guidance_scale
    )
    save_png(path, make_grid([to_uint8(image) for image in images], columns=4))


def _load_training_photos(config: PersonalizeConfig, backbone: Backbone, resolution: int) -> TrainingPhotos:
    crop = config.crop or ("aligned" if isinstance(backbone, PixelBackbone) else "portrait")
    return prepare_photos(
        config.photos,
        resolution=resolution,
        crop=crop,
        min_photos=config.min_photos,
        skip_bad_photos=config.skip_bad_photos,
    )


def personalize(config: PersonalizeConfig) -> RunResult:
    """Run personalization (vanilla or IDDM) as configured; returns where and what it wrote."""
    if config.photos is None:
        raise ValueError("--photos is required: a folder of photos of one person.")
    if config.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ValueError("--mixed_precision fp16 needs a CUDA GPU; use 'bf16' or 'no' on a CPU.")
    output_dir = _check_output_dir(config)
    privacy = resolve_privacy(config)
    accelerator = Accelerator(mixed_precision=config.mixed_precision)
    device = accelerator.device

    backbone = load_backbone(config.pretrained_model_name_or_path, resolution=config.resolution, seed=config.seed)
    if isinstance(backbone, PixelBackbone) and config.with_prior_preservation:
        raise ValueError("Prior preservation needs a pretrained text-to-image model; the micro backbone has none.")
    resolution = backbone.resolution
    photos = _load_training_photos(config, backbone, resolution)
    logger.info("Training on %d photos at %d px (%s backbone).", len(photos), resolution, backbone.kind)

    settings = MethodSettings(
        method=config.method,
        lora_rank=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        lora_target_modules=tuple(config.lora_target_modules),
        train_text_encoder=config.train_text_encoder,
        gradient_checkpointing=config.gradient_checkpointing,
    )
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    backbone.to(device, frozen_dtype=weight_dtype, train_text_encoder=config.train_text_encoder)
    class_images = None
    if config.with_prior_preservation:
        class_images = _class_images(backbone, config, output_dir, resolution)
    method = prepare_for_training(backbone, settings)
    parameters = backbone.trainable_parameters()
    optimizer = _make_optimizer(parameters, config)
    lr_scheduler = get_scheduler(
        config.lr_scheduler or ("cosine" if isinstance(backbone, PixelBackbone) else "constant"),
        optimizer=optimizer,
        num_warmup_steps=config.lr_warmup_steps,
        num_training_steps=config.max_train_steps,
    )
    optimizer, lr_scheduler = accelerator.prepare(optimizer, lr_scheduler)

    plan = StagePlan.from_fraction(
        config.max_train_steps,
        privacy.stage1_fraction,
        privacy.round_steps,
        privacy.data_steps if privacy.alternates and config.perturbation_from is None else 0,
    )
    clean = photos.images.to(device)
    data_optimizer: DataOptimizer | None = None
    if privacy.enabled or config.perturbation_from is not None:
        data_optimizer = build_data_optimizer(privacy, photos, device)
    generator = torch.Generator().manual_seed(config.seed)
    data_generator = torch.Generator().manual_seed(config.seed + 7919)
    history: dict = {"loss": [], "rounds": [], "initial": None}

    start_step = 0
    checkpoint = resolve_checkpoint(output_dir, config.resume_from_checkpoint)
    if checkpoint is not None:
        start_step, tensors, info = load_checkpoint(checkpoint, backbone.trainable_modules(), optimizer, lr_scheduler)
        generator.set_state(tensors["generator"])
        data_generator.set_state(tensors["data_generator"])
        if data_optimizer is not None:
            data_optimizer.delta.copy_(tensors["delta"].to(device))
        history = info.get("history", history)
        logger.info("Resumed from %s at step %d.", checkpoint, start_step)
    else:
        if config.resume_from_checkpoint is not None:
            logger.info("No checkpoint in %s yet: starting from step 0.", output_dir)
        if data_optimizer is not None and config.perturbation_from is not None:
            data_optimizer.delta.copy_(_load_delta(Path(config.perturbation_from), clean.shape).to(device))
            history["initial"] = data_optimizer.summary(clean)
        elif data_optimizer is not None:
            history["initial"] = data_optimizer.initialize(backbone, clean, config.instance_prompt, data_generator)

    prompts = [config.instance_prompt] * config.train_batch_size
    class_prompts = [config.class_prompt] * config.train_batch_size
    instance_context = class_context = None
    if "text_encoder" not in backbone.trainable_modules():
        with torch.no_grad():  # the frozen text encoder's output is the same every step
            instance_context = backbone.encode_prompts(prompts)
            class_context = backbone.encode_prompts(class_prompts) if class_images is not None else None

    started = time.perf_counter()
    backbone.train(True)
    progress = tqdm(
        range(start_step, config.max_train_steps),
        initial=start_step,
        total=config.max_train_steps,
        desc=f"personalize ({privacy.label})",
        disable=not accelerator.is_local_main_process,
    )
    loss_value = float("nan")
    for step in progress:
        training_images = clean if data_optimizer is None else data_optimizer.perturbed(clean)
        indices = torch.randint(0, len(photos), (config.train_batch_size,), generator=generator).to(device)
        with accelerator.autocast():
            loss = backbone.training_loss(
                training_images[indices], prompts, generator, encoder_hidden_states=instance_context
            ).mean()
            if class_images is not None:
                class_indices = torch.randint(0, len(class_images), (config.train_batch_size,), generator=generator)
                class_batch = class_images[class_indices].to(device)
                prior = backbone.training_loss(class_batch, class_prompts, generator, class_context).mean()
                loss = loss + config.prior_loss_weight * prior
            if data_optimizer is not None and plan.stage(step) == 2 and privacy.lambda_model > 0:
                loss = loss + privacy.lambda_model * data_optimizer.model_side_loss(
                    backbone, training_images[indices], indices, prompts, generator
                )
        accelerator.backward(loss)
        if accelerator.sync_gradients and config.max_grad_norm > 0:
            accelerator.clip_grad_norm_(parameters, config.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = loss.detach().item()
        if step % 10 == 0:
            history["loss"].append([step, loss_value])

        if data_optimizer is not None and plan.data_round_after(step):
            with accelerator.autocast():
                record = data_optimizer.run_round(
                    backbone, clean, config.instance_prompt, plan.data_steps, data_generator
                )
            record.update(step=step + 1, round=(step + 1) // plan.round_steps, personalization_loss=loss_value)
            history["rounds"].append(record)
            backbone.train(True)
        postfix = {"loss": f"{loss_value:.4f}", "stage": plan.stage(step) if privacy.enabled else "-"}
        if data_optimizer is not None and history["rounds"]:
            postfix["id_cos"] = f"{history['rounds'][-1]['surrogate_cos_x0_mean']:.3f}"
        progress.set_postfix(postfix, refresh=False)

        done = step + 1
        if config.checkpointing_steps > 0 and done % config.checkpointing_steps == 0 and done < config.max_train_steps:
            if accelerator.is_main_process:
                tensors = {"generator": generator.get_state(), "data_generator": data_generator.get_state()}
                if data_optimizer is not None:
                    tensors["delta"] = data_optimizer.delta
                save_checkpoint(
                    output_dir,
                    done,
                    backbone.trainable_modules(),
                    optimizer,
                    lr_scheduler,
                    tensors,
                    {"history": history},
                    config.checkpoints_total_limit,
                )
        if config.validation_steps > 0 and done % config.validation_steps == 0 and accelerator.is_main_process:
            _validation_grid(backbone, config, output_dir / "validation" / f"step-{done:06d}.png")
            backbone.train(True)
    progress.close()
    wall = time.perf_counter() - started

    accelerator.wait_for_everyone()
    backbone.train(False)
    if accelerator.is_main_process:
        save_personalized(backbone, method, output_dir)
        _validation_grid(backbone, config, output_dir / "validation" / "final.png")
        photos_used = {"clean": [str(p) for p in photos.paths]}
        save_png(output_dir / "training_photos" / "clean_grid.png", make_grid(photos.as_uint8(), columns=4))
        if data_optimizer is not None:
            _write_decoupled(output_dir, photos, data_optimizer.perturbed(clean))
            save_file({"delta": data_optimizer.delta.detach().cpu().contiguous()}, output_dir / DELTA_FILE)
            history["final"] = data_optimizer.summary(clean)
        log = {"privacy": privacy.as_dict(), "plan": plan.__dict__, "wall_seconds": wall, **history}
        atomic_write_json(output_dir / LOG_FILE, log)
        if history["rounds"]:
            _plot_log(log, output_dir / "iddm_log.png")
        write_model_card(output_dir, config, backbone, method, privacy, plan, photos_used)
        run = {
            "status": "finished",
            "steps": config.max_train_steps,
            "backbone": backbone.kind,
            "method": method,
            "privacy": privacy.as_dict(),
            "defense": privacy.defense if privacy.enabled else "none",
            "surrogates": white_box_surrogates(privacy),
            "config": config_to_dict(config),
        }
        atomic_write_json(output_dir / RUN_FILE, run)
    return RunResult(output_dir, config.max_train_steps, wall, loss_value, privacy, history)


def white_box_surrogates(privacy: PrivacySettings) -> list[str]:
    """FR models the optimizer saw (white-box for evaluation): none for vanilla, noise and ASPL."""
    return list(privacy.surrogates) if privacy.enabled and privacy.defense in ("iddm", "cloak") else []


def _load_delta(run_dir: Path, shape: torch.Size) -> torch.Tensor:
    path = run_dir / DELTA_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"--perturbation_from {run_dir}: no {DELTA_FILE}; pass the output_dir of a private run."
        )
    delta = load_file(path)["delta"]
    if delta.shape != shape:
        raise ValueError(
            f"--perturbation_from {run_dir}: its perturbation has shape {tuple(delta.shape)}, this run's photos "
            f"{tuple(shape)}. Use the same photos and resolution."
        )
    return delta


def _write_decoupled(output_dir: Path, photos: TrainingPhotos, perturbed: torch.Tensor) -> None:
    folder = output_dir / "decoupled_photos"
    for path, image in zip(photos.paths, perturbed):
        save_png(folder / f"{path.stem}.png", to_uint8(image))
    save_png(output_dir / "training_photos" / "decoupled_grid.png", make_grid([to_uint8(i) for i in perturbed], 4))


def _plot_log(log: dict, path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = log["rounds"]
    steps = [r["step"] for r in rounds]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for name in rounds[0]["surrogate_cos_x0"]:
        axes[0].plot(steps, [r["surrogate_cos_x0"][name] for r in rounds], label=f"{name} on x̂0")
        axes[0].plot(steps, [r["surrogate_cos_data"][name] for r in rounds], "--", label=f"{name} on data")
    axes[0].set(title="identity cosine to the user", xlabel="step")
    axes[0].legend(fontsize=7)
    loss = np.array(log["loss"])
    axes[1].plot(loss[:, 0], loss[:, 1])
    axes[1].set(title="personalization loss", xlabel="step", yscale="log")
    axes[2].plot(steps, [r["psnr_db"] for r in rounds], label="PSNR (dB)")
    axes[2].set(title="decoupled photos vs clean", xlabel="step")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
