"""The average-similarity view: ISM (cosine to the user's reference photos) and the face detection failure rate."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from iddm.evaluate.metrics.common import (
    _check_dims,
    _embeddings,
    _normalize,
)

ReferenceMode = Literal["mean", "max"]


def cosine_to_reference(probe_emb: Any, reference_emb: Any, mode: ReferenceMode = "mean") -> np.ndarray:
    """Per-probe similarity to the user's reference photos.

    Args:
        probe_emb: ``(P, D)`` embeddings of generated faces.
        reference_emb: ``(R, D)`` embeddings of the user's clean photos, ``R >= 1``.
        mode: ``"mean"``: cosine to the user's template ``normalize(mean_r ref_r)`` (as ISM and the
            identity anchor); ``"max"``: highest cosine over the individual reference photos.

    Returns:
        ``(P,)`` float64 cosines in ``[-1, 1]``.
    """
    probe = _embeddings(probe_emb, "probe_emb")
    reference = _embeddings(reference_emb, "reference_emb")
    if len(reference) == 0:
        raise ValueError("reference_emb is empty: at least one embedding of the user's real photos is needed.")
    _check_dims((probe, "probe_emb"), (reference, "reference_emb"))
    if len(probe) == 0:
        return np.zeros(0)
    if mode == "mean":
        return probe @ _normalize(reference.mean(axis=0))
    if mode == "max":
        return (probe @ reference.T).max(axis=1)
    raise ValueError(f"mode must be 'mean' or 'max', got {mode!r}.")


def identity_score_matching(probe_emb: Any, reference_emb: Any) -> float:
    """ISM: mean cosine between each probe and the user's template (higher = more linkable).

    Args:
        probe_emb: ``(P, D)`` embeddings of the generated faces that were detected.
        reference_emb: ``(R, D)`` embeddings of the user's clean photos.

    Returns:
        Mean cosine in ``[-1, 1]``; ``nan`` when ``P == 0`` (no face detected in any generation).
    """
    scores = cosine_to_reference(probe_emb, reference_emb, mode="mean")
    return float(scores.mean()) if len(scores) else math.nan


def face_detection_failure_rate(detected: Sequence[bool] | np.ndarray) -> float:
    """FDFR: fraction of generated images in which no face was detected, in ``[0, 1]``.

    Args:
        detected: one flag per generated image, ``True`` when a face was detected (bools or 0/1).

    Returns:
        The failure fraction; ``nan`` for zero images.
    """
    flags = np.asarray(detected)
    if flags.size == 0:
        return math.nan
    if flags.ndim != 1:
        raise ValueError(f"detected must be a flat sequence of booleans, got shape {flags.shape}.")
    if flags.dtype != bool:
        if not np.issubdtype(flags.dtype, np.number) or not np.isin(flags, (0, 1)).all():
            raise ValueError("detected must hold booleans (True = a face was detected), or 0/1.")
        flags = flags.astype(bool)
    return float(1.0 - flags.mean())
