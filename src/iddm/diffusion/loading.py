"""Finding the backbone for a model name, folder or hub id."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from iddm.diffusion.backbone import Backbone
from iddm.diffusion.pixel import PIXEL_BACKBONE_FILE, PixelBackbone
from iddm.run_layout import resolve_model_dir
from iddm.weights import FACE_PRIOR, FACE_PRIOR_64, FACE_PRIOR_128, PRIOR_ALIASES, PRIOR_NAMES, prior_name, prior_path

MICRO = "iddm:micro"
"""The from-scratch pixel-space micro backbone."""
DEFAULT_MODEL = FACE_PRIOR
"""The base model when none is given: the shipped offline face prior (a latent model in SD 1.x's shape)."""
BUILTIN_MODELS = (*PRIOR_NAMES, MICRO)
ONE_PROMPT_MODELS = (MICRO, FACE_PRIOR_64, *(alias for alias, name in PRIOR_ALIASES.items() if name == FACE_PRIOR_64))
"""Built-in models that know no prompt but the instance prompt (the 128-px prior is text-conditioned)."""
_BUILTIN_DESCRIPTIONS = {
    MICRO: "a pixel-space model of 64x64 images trained from scratch in the run",
    FACE_PRIOR_64: "iddm's small offline prior of 64x64 faces (44 people, many grey)",
    FACE_PRIOR_128: "iddm's small offline prior of 128x128 colour faces (non-commercial research data)",
}


def describe_builtin(model: str) -> str:
    """What a built-in model (``BUILTIN_MODELS``, aliases included) is, in one clause for a user's log."""
    return _BUILTIN_DESCRIPTIONS[model if model == MICRO else prior_name(model)]


def _looks_like_hub_id(model: str) -> bool:
    return model.count("/") == 1 and not model.startswith((".", "/", "~")) and not Path(model).suffix


def _backbone_class(class_name: str, where: str) -> type[Backbone]:
    cls = Backbone.registry.get(class_name)
    if cls is None:
        supported = sorted(n for n, c in Backbone.registry.items() if n in c.pipeline_classes)
        raise ValueError(f"{where} is a {class_name}; iddm personalizes {', '.join(supported)}.")
    return cls


def load_backbone(
    model: str | Path | None,
    resolution: int | None = None,
    seed: int = 0,
    revision: str | None = None,
    variant: str | None = None,
) -> Backbone:
    """The backbone for ``--pretrained_model_name_or_path``.

    * ``None`` or ``"iddm:face-prior"``: the default shipped face prior; a shipped prior's own name
      (``"iddm:face-prior-64"``, ``"iddm:face-prior-128"``): that one (:func:`iddm.weights.prior_path`).
    * ``"iddm:micro"``: a fresh micro pixel backbone (random init from ``seed``).
    * a folder with ``iddm_backbone.json`` (or a run folder holding one in ``model/``): that backbone.
    * a diffusers pipeline folder: the backbone registered for its ``model_index.json`` class.
    * ``org/name``: a hub id, read when online.

    Raises:
        FileNotFoundError: a path-like value that does not exist.
        ValueError: a folder that is no supported model, or a hub id that cannot be reached.
    """
    if str(model) == MICRO:
        return PixelBackbone.from_scratch(resolution or 64, seed=seed)
    if model is None or str(model) in PRIOR_NAMES:
        path = prior_path(str(model or FACE_PRIOR))
    else:
        path = resolve_model_dir(model)
    if path.is_dir():
        if (path / PIXEL_BACKBONE_FILE).is_file():
            kind = json.loads((path / PIXEL_BACKBONE_FILE).read_text()).get("kind", "pixel")
            return _backbone_class(kind, str(path)).from_folder(path)
        index = path / "model_index.json"
        if not index.is_file():
            raise ValueError(
                f"{path} is not a diffusers pipeline folder (no model_index.json) nor an iddm model (no "
                f"{PIXEL_BACKBONE_FILE}). Pass a folder written by `save_pretrained`, e.g. by `iddm tiny-sd`."
            )
        class_name = json.loads(index.read_text()).get("_class_name", "?")
        cls = _backbone_class(class_name, str(path))
        return cls.from_folder(path, resolution=resolution, revision=revision, variant=variant)
    if not _looks_like_hub_id(str(model)):
        raise FileNotFoundError(f"Model path {model} does not exist (and is not a hub id like 'org/name').")
    from diffusers import DiffusionPipeline
    from huggingface_hub.constants import is_offline_mode

    try:
        with warnings.catch_warnings():  # diffusers passes huggingface_hub a deprecated argument
            warnings.simplefilter("ignore", UserWarning)
            index = DiffusionPipeline.load_config(str(model), revision=revision)
    except (OSError, ValueError) as err:
        if is_offline_mode():
            raise ValueError(
                f"Cannot load {model!r} from the Hugging Face hub: it is switched off (HF_HUB_OFFLINE=1) and the "
                "model is not in the local hub cache. Pass a local diffusers folder, or go online."
            ) from None
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"Cannot load {model!r} from the Hugging Face hub ({first}). Offline? Pass a local diffusers folder."
        ) from None
    cls = _backbone_class(index.get("_class_name", "?"), model)
    return cls.from_folder(model, resolution=resolution, revision=revision, variant=variant, local_files_only=False)
