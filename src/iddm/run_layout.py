"""The run folder of ``iddm personalize``: one place for its file names, and its typed manifest.

The layout separates what a user may publish from what would give their face away::

    OUTPUT/
      model/                   publishable: the only folder to upload, share or export
        pytorch_lora_weights.safetensors | a diffusers pipeline | the micro backbone
        README.md              model card (settings, surrogates, measured privacy: no paths, no photos)
        iddm_model.json        ModelManifest
      private/                 never publish: from these the training photos can be rebuilt
        training_photos/       clean and decoupled crop grids
        decoupled_photos/      X + δ as PNG
        decoupled_delta.safetensors
        iddm_log.json, iddm_log.png   identity cosines, losses and PSNR per round
        class_images/          prior-preservation images of the base model (cache)
      validation/              generations of the model during training
      checkpoint-N/            resumable state (holds δ: private too)
      iddm_run.json            RunManifest: status, settings, where the photos came from (private)

Both manifests are written by the trainer and read by the evaluator through this module only.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from iddm.images import atomic_write_json

MODEL_DIR = "model"
PRIVATE_DIR = "private"
VALIDATION_DIR = "validation"
RUN_FILE = "iddm_run.json"
MODEL_FILE = "iddm_model.json"
MODEL_CARD = "README.md"
LOG_FILE = "iddm_log.json"
LOG_PLOT = "iddm_log.png"
DELTA_FILE = "decoupled_delta.safetensors"
DECOUPLED_DIR = "decoupled_photos"
TRAINING_PHOTOS_DIR = "training_photos"
CLASS_IMAGES_DIR = "class_images"
EVALUATION_FILE = "iddm_privacy.json"
"""Measured linkability of the model's generations (``iddm evaluate --run_dir``), in ``model/``."""

Defense = Literal["none", "iddm", "noise", "cloak", "aspl"]


@dataclass
class ModelManifest:
    """What a published model says about itself (``model/iddm_model.json``): nothing that leaks the user.

    Attributes:
        backbone: backbone kind (``pixel``, ``sd``, ``sdxl``).
        base_model: the base model's hub id or name; never a local path (``None`` when it had no public name).
        method: ``lora``, ``dreambooth`` or ``full``.
        resolution: training resolution in px.
        instance_prompt: the prompt that names the person.
        defense: ``none`` (privacy off) or the defense that made the training photos.
        privacy: the resolved privacy settings (level, epsilon, ... see ``iddm.decouple.PrivacySettings``).
        surrogates: FR models the optimizer saw (white-box for an attacker); empty for vanilla, noise, ASPL.
    """

    backbone: str
    base_model: str | None
    method: str
    resolution: int
    instance_prompt: str
    defense: Defense
    privacy: dict[str, Any]
    surrogates: list[str]

    def save(self, folder: str | Path) -> None:
        atomic_write_json(Path(folder) / MODEL_FILE, dataclasses.asdict(self))


@dataclass
class RunManifest:
    """The run's own record (``iddm_run.json``, private: it names the photo folder).

    Attributes:
        status: ``finished`` once every output is written.
        steps: personalization steps run.
        model: the publishable manifest.
        photos: the folder the photos were read from.
        crop: how faces were cropped (``aligned`` or ``portrait``).
        config: every option of the run (flat).
    """

    status: Literal["finished"]
    steps: int
    model: ModelManifest
    photos: str
    crop: str
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def white_box(self) -> list[str]:
        return list(self.model.surrogates)

    def save(self, run_dir: str | Path) -> None:
        """Write ``iddm_run.json``: the last file of a run, which marks it finished."""
        atomic_write_json(Path(run_dir) / RUN_FILE, dataclasses.asdict(self))

    @classmethod
    def load(cls, run_dir: str | Path) -> RunManifest:
        """The manifest of a finished run.

        Raises:
            FileNotFoundError: ``run_dir`` holds no finished run.
            ValueError: the manifest is unreadable (corrupt or from an incompatible version).
        """
        path = Path(run_dir) / RUN_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{run_dir}: no {RUN_FILE}; pass the output folder of a finished `iddm personalize`."
            )
        try:
            data = json.loads(path.read_text())
            return cls(**{**data, "model": ModelManifest(**data["model"])})
        except (json.JSONDecodeError, TypeError, KeyError) as err:
            raise ValueError(f"{path} is not a readable iddm run manifest ({err}).") from None


def model_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / MODEL_DIR


def private_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / PRIVATE_DIR


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is the top folder of an ``iddm personalize`` run (holding ``model/``)."""
    return (Path(path) / RUN_FILE).is_file() and (Path(path) / MODEL_DIR).is_dir()


def resolve_model_dir(path: str | Path) -> Path:
    """A run folder -> its ``model/``; any other folder (a model folder, a diffusers pipeline) -> itself."""
    return model_dir(path) if is_run_dir(path) else Path(path)
