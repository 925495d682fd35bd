"""What a finished run writes, in the layout of :mod:`iddm.run_layout`.

``model/`` holds only what may be published (weights, model card, :class:`~iddm.run_layout.ModelManifest`)
and is built in a temporary folder and renamed into place; ``private/`` holds everything from which
the training photos could be rebuilt (clean crops, δ, decoupled photos, identity logs). The run
manifest ``iddm_run.json`` is written last: its presence means the run finished.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from iddm.config import config_to_dict
from iddm.diffusion import Backbone, sample
from iddm.diffusion.data import to_tensor, to_uint8
from iddm.images import (
    atomic_folder,
    atomic_write_bytes,
    atomic_write_json,
    list_photos,
    load_photo,
    make_grid,
    save_png,
)
from iddm.progress import progress_bar
from iddm.run_layout import (
    CLASS_IMAGES_DIR,
    DECOUPLED_DIR,
    DELTA_FILE,
    LOG_FILE,
    LOG_PLOT,
    MODEL_DIR,
    PRIVATE_DIR,
    TRAINING_PHOTOS_DIR,
    ModelManifest,
    RunManifest,
)
from iddm.schedule.config import PersonalizeConfig
from iddm.schedule.context import RunContext
from iddm.schedule.hooks import write_validation
from iddm.schedule.model_card import public_model_name, write_model_card

logger = logging.getLogger(__name__)


def class_images(backbone: Backbone, config: PersonalizeConfig, output_dir: Path) -> torch.Tensor:
    """Class images for prior preservation ``(M, 3, R, R)``: generated once by the base model, cached as PNG."""
    folder = Path(config.class_data_dir or output_dir / PRIVATE_DIR / CLASS_IMAGES_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    existing = list_photos(folder, min_photos=0)
    missing = config.num_class_images - len(existing)
    if missing > 0:
        generator = torch.Generator().manual_seed(config.seed + 1)
        logger.info("Generating %d class images with the base model into %s", missing, folder)
        for start in progress_bar(range(0, missing, 4), desc="class images"):
            count = min(4, missing - start)
            images = sample(
                backbone, [config.class_prompt] * count, generator, config.num_inference_steps, config.guidance_scale
            )
            for offset, image in enumerate(images):
                save_png(folder / f"class_{len(existing) + start + offset:05d}.png", to_uint8(image))
    resolution = backbone.resolution
    tensors = []
    for path in list_photos(folder, min_photos=config.num_class_images)[: config.num_class_images]:
        array = load_photo(path)
        if array.shape[:2] != (resolution, resolution):
            array = np.asarray(Image.fromarray(array).resize((resolution, resolution), Image.Resampling.BICUBIC))
        tensors.append(to_tensor(array))
    return torch.stack(tensors)


def finalize(trainer: RunContext, wall_seconds: float) -> None:
    """Write ``model/``, ``private/``, the final validation grid and the run manifest."""
    config, output_dir, privacy = trainer.config, trainer.output_dir, trainer.privacy
    manifest = ModelManifest(
        backbone=trainer.backbone.kind,
        base_model=public_model_name(config.pretrained_model_name_or_path),
        method=trainer.method,
        resolution=trainer.backbone.resolution,
        instance_prompt=config.instance_prompt,
        defense=privacy.defense_name,
        # The decoy's file path stays private (the run's log has it); the model says only that one was used.
        privacy={**privacy.as_dict(), "decoy": privacy.decoy is not None},
        surrogates=privacy.white_box,
    )
    with atomic_folder(output_dir / MODEL_DIR) as model_dir:
        trainer.backbone.save(model_dir, trainer.method)
        if config.output_kohya_format and trainer.method == "lora":
            from iddm.diffusion.export import export_kohya

            export_kohya(model_dir)
        manifest.save(model_dir)
        write_model_card(model_dir, manifest, config, trainer.plan, len(trainer.photos))
        drop_local_model_paths(model_dir)
    write_validation(trainer, "final", trainer.state.step)
    _write_private(trainer, wall_seconds)
    RunManifest(
        status="finished",
        steps=config.max_train_steps,
        model=manifest,
        photos=str(config.photos),
        crop=config.crop,
        config=config_to_dict(config),
    ).save(output_dir)


def drop_local_model_paths(folder: Path) -> None:
    """Remove ``_name_or_path`` from every ``*.json`` under ``folder``.

    diffusers and transformers record where a component was loaded from (``_name_or_path``) and save it
    with the weights: for a base model read from disk that is a local folder (or the user's hub cache),
    which must not reach the publishable ``model/``. Loading never needs it.
    """
    for path in sorted(folder.rglob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and "_name_or_path" in data:
            del data["_name_or_path"]
            atomic_write_json(path, data)


def _write_private(trainer: RunContext, wall_seconds: float) -> None:
    private = trainer.output_dir / PRIVATE_DIR
    history = trainer.state.history
    save_png(private / TRAINING_PHOTOS_DIR / "clean_grid.png", make_grid(trainer.photos.as_uint8(), columns=4))
    if trainer.data_optimizer is not None:
        perturbation = trainer.data_optimizer.perturbation
        perturbed = perturbation.perturbed(trainer.clean)
        for path, image in zip(trainer.photos.paths, perturbed):
            save_png(private / DECOUPLED_DIR / f"{path.stem}.png", to_uint8(image))
        grid = make_grid([to_uint8(image) for image in perturbed], 4)
        save_png(private / TRAINING_PHOTOS_DIR / "decoupled_grid.png", grid)
        perturbation.save(private / DELTA_FILE)
        history["final"] = perturbation.summary(trainer.clean)
    log = {
        "privacy": trainer.privacy.as_dict(),
        "plan": trainer.plan.__dict__,
        "wall_seconds": wall_seconds,
        "photos": [str(p) for p in trainer.photos.paths],
        **history,
    }
    atomic_write_json(private / LOG_FILE, json.loads(json.dumps(log, default=float)))
    if history["rounds"]:
        plot_log(log, private / LOG_PLOT)


def plot_log(log: dict, path: Path) -> None:
    """Identity cosines (x̂0 and data, per surrogate), personalization loss and PSNR per round, as PNG."""
    from matplotlib.figure import Figure

    rounds = log["rounds"]
    steps = [r["step"] for r in rounds]
    figure = Figure(figsize=(13, 3.6))
    axes = figure.subplots(1, 3)
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
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    atomic_write_bytes(path, buffer.getvalue())
