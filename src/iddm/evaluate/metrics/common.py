"""Input handling shared by every attack: embeddings, labels, identity centroids, chance and standard errors."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np


def _embeddings(x: Any, name: str) -> np.ndarray:
    """``x`` as a row-normalized ``(N, D)`` float64 array; an empty input gives shape ``(0, D)`` or ``(0, 0)``."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().double().numpy()
    array = np.asarray(x, dtype=np.float64)
    if array.size == 0:
        return array.reshape(0, array.shape[-1] if array.ndim == 2 else 0)
    if array.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D (N, D) array of embeddings, got shape {array.shape}; "
            "for a single embedding pass x[None]."
        )
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains nan or inf values; check the face recognizer's output.")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    if (norms == 0).any():
        rows = np.flatnonzero(norms[:, 0] == 0)[:5].tolist()
        raise ValueError(f"{name} has all-zero embedding rows (e.g. rows {rows}); a cosine is undefined for them.")
    return array / norms


def _check_dims(*pairs: tuple[np.ndarray, str]) -> None:
    """Raise when the non-empty embedding arrays of ``pairs`` differ in dimension ``D``."""
    dims = {name: a.shape[1] for a, name in pairs if a.shape[0] > 0}
    if len(set(dims.values())) > 1:
        detail = ", ".join(f"{name}: D={d}" for name, d in dims.items())
        raise ValueError(f"Embedding dimensions differ ({detail}); compare embeddings of the same FR model only.")


def _labels(labels: Sequence[Hashable] | np.ndarray, n: int, name: str) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 1 or len(array) != n:
        raise ValueError(f"{name} must hold one label per embedding: got shape {array.shape} for {n} embeddings.")
    return array


def _normalize(v: np.ndarray) -> np.ndarray:
    """L2-normalize the last axis; a zero vector (embeddings that cancel exactly) is an error."""
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    if (norm == 0).any():
        raise ValueError("The embeddings of one identity average to the zero vector; its template is undefined.")
    return v / norm


def identity_centroids(emb: Any, labels: Sequence[Hashable] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One template per identity: ``normalize(mean of the normalized embeddings)``.

    Args:
        emb: ``(N, D)`` embeddings.
        labels: ``(N,)`` identity labels (any hashable, e.g. str or int).

    Returns:
        ``(identities (I,), centroids (I, D))``; identities sorted as ``np.unique`` sorts them.
    """
    emb = _embeddings(emb, "emb")
    labels = _labels(labels, len(emb), "labels")
    identities, inverse = np.unique(labels, return_inverse=True)
    sums = np.zeros((len(identities), emb.shape[1]))
    np.add.at(sums, inverse, emb)
    return identities, _normalize(sums)


def chance_level(gallery_labels: Sequence[Hashable] | np.ndarray) -> float:
    """Rank-1 untargeted hit rate of a random guess: ``1 / #identities`` in the gallery."""
    labels = np.asarray(gallery_labels)
    if labels.size == 0:
        raise ValueError("gallery_labels is empty.")
    return 1.0 / len(np.unique(labels))


def binomial_standard_error(chance: float, n: int) -> float:
    """Standard error of a hit rate over ``n`` independent trials when each hits with probability ``chance``.

    ``sqrt(chance * (1 - chance) / n)``: the sampling error of a rate under the no-linkability hypothesis;
    ``nan`` for ``n == 0``.
    """
    if not 0 <= chance <= 1:
        raise ValueError(f"chance must lie in [0, 1], got {chance}.")
    return math.sqrt(chance * (1 - chance) / n) if n > 0 else math.nan


def standard_error_of_mean(values: Sequence[float] | np.ndarray) -> float:
    """``std(values, ddof=1) / sqrt(n)`` over the finite values; ``nan`` for fewer than two."""
    array = np.asarray(values, dtype=np.float64)
    array = array[np.isfinite(array)]
    return float(array.std(ddof=1) / math.sqrt(len(array))) if len(array) >= 2 else math.nan
