"""Face recognizers by name, and embedding whole photos with any of them."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from iddm.faces.align import align_crop
from iddm.faces.base import DetectedFace, FaceRecognizer


def _sface(**kwargs) -> FaceRecognizer:
    from iddm.faces.sface import SFace

    return SFace(**kwargs)


def _dlib(**kwargs) -> FaceRecognizer:
    from iddm.faces.dlib_backend import DlibResNet

    return DlibResNet(**kwargs)


def _facenet(**kwargs) -> FaceRecognizer:
    try:
        from iddm.faces.facenet import FaceNet
    except ImportError as err:
        raise ImportError(f"The 'facenet' recognizer is unavailable: {err}") from err
    return FaceNet(**kwargs)


def _arcface(**kwargs) -> FaceRecognizer:
    try:
        from iddm.faces.iresnet import IResNetRecognizer
    except ImportError as err:
        raise ImportError(f"The 'arcface' recognizer is unavailable: {err}") from err
    required = [
        name
        for name, p in inspect.signature(IResNetRecognizer).parameters.items()
        if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    missing = [name for name in required if name not in kwargs]
    if missing:
        raise ValueError(
            f"The 'arcface' recognizer needs local weights (no package ships them): "
            f"load_recognizer('arcface', {', '.join(f'{m}=...' for m in missing)})."
        )
    return IResNetRecognizer(**kwargs)


def _mobilefacenet(**kwargs) -> FaceRecognizer:
    from iddm.faces.mobilefacenet import MobileFaceNet

    return MobileFaceNet(**kwargs)


RECOGNIZERS: dict[str, Callable[..., FaceRecognizer]] = {
    "sface": _sface,
    "facenet": _facenet,
    "dlib": _dlib,
    "arcface": _arcface,
    "mobilefacenet": _mobilefacenet,
}
"""Recognizer name -> factory taking the backend's keyword arguments (e.g. ``device=``)."""


BUILTIN_DECOYS: dict[str, Path] = {"iddm:composite": Path(__file__).with_name("decoys") / "composite"}
"""Decoy name -> its folder of photos shipped with iddm (credits in ``faces/decoys/CREDITS.md``)."""


def load_recognizer(name: str, **kwargs) -> FaceRecognizer:
    """Build a face recognizer by name (``sface``, ``facenet``, ``dlib``, ``arcface``, ``mobilefacenet``).

    Args:
        name: registry name, case-insensitive.
        **kwargs: passed to the backend's constructor (e.g. ``device="cuda"``; ``arcface`` needs its
            weights file; ``mobilefacenet`` its ``model_path``, default: the file ``use_model_path`` chose).

    Raises:
        ValueError: unknown name (the message lists the known ones) or missing required arguments.
    """
    key = name.strip().lower()
    if key not in RECOGNIZERS:
        raise ValueError(f"Unknown face recognizer {name!r}; known: {', '.join(sorted(RECOGNIZERS))}.")
    return RECOGNIZERS[key](**kwargs)


def embed_photos(
    recognizer: FaceRecognizer,
    images: Sequence[np.ndarray],
    faces: Sequence[DetectedFace | None],
    batch_size: int = 32,
) -> list[torch.Tensor | None]:
    """Align each photo's face with the recognizer's template and embed it.

    Args:
        recognizer: any :class:`FaceRecognizer`.
        images: ``uint8`` RGB ``(H, W, 3)`` photos.
        faces: the detected face of each photo, or ``None`` where there is none.
        batch_size: crops per forward pass.

    Returns:
        One ``(embedding_dim,)`` float32 L2-normalized CPU tensor per photo, ``None`` where ``faces`` is ``None``.
    """
    if len(images) != len(faces):
        raise ValueError(f"Got {len(images)} images but {len(faces)} faces.")
    indices = [i for i, face in enumerate(faces) if face is not None]
    results: list[torch.Tensor | None] = [None] * len(images)
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        crops = np.stack(
            [align_crop(images[i], faces[i].landmarks, recognizer.template, recognizer.input_size) for i in chunk]
        )
        batch = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0
        with torch.no_grad():
            embeddings = recognizer.embed(batch).float().cpu()
        for i, embedding in zip(chunk, embeddings):
            results[i] = embedding
    return results
