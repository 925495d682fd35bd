"""The profiler: rank-1 identification of generations in a gallery of real identities, and the over-decoupling
signals (the user ranked last, the user's rank and z-score)."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any, Literal

import numpy as np

from iddm.evaluate.metrics.common import (
    _check_dims,
    _embeddings,
    _labels,
    identity_centroids,
)


def rank1_untargeted_hits(
    probe_emb: Any,
    gallery_emb: Any,
    gallery_labels: Sequence[Hashable] | np.ndarray,
    user_label: Hashable,
    mode: Literal["centroid", "nearest"] = "centroid",
) -> np.ndarray:
    """Per-probe rank-1 hits of the profiler (R1-U): is the nearest gallery identity the user?

    Args:
        probe_emb: ``(P, D)`` embeddings of the user's generated faces.
        gallery_emb: ``(G, D)`` embeddings of real photos: the user's (held out from training) and
            distractor identities'.
        gallery_labels: ``(G,)`` identity labels of the gallery photos.
        user_label: the user's label in ``gallery_labels``.
        mode: ``"centroid"`` (default): identities are ranked by the cosine of the probe to their
            template, so an identity with many gallery photos gets no extra chances;
            ``"nearest"``: the identity of the single most similar gallery photo.

    Returns:
        ``(P,)`` bool; a tie between the user and another identity counts as a hit.
    """
    probe = _embeddings(probe_emb, "probe_emb")
    gallery = _embeddings(gallery_emb, "gallery_emb")
    labels = _labels(gallery_labels, len(gallery), "gallery_labels")
    _check_dims((probe, "probe_emb"), (gallery, "gallery_emb"))
    identities = np.unique(labels)
    if len(identities) < 2:
        raise ValueError(
            f"The gallery holds {len(identities)} identity; rank-1 identification needs the user plus at least one "
            "distractor identity (every probe would trivially hit)."
        )
    if not (labels == user_label).any():
        raise ValueError(f"user_label {user_label!r} is not among the gallery labels {identities.tolist()[:10]}.")
    if mode not in ("centroid", "nearest"):
        raise ValueError(f"mode must be 'centroid' or 'nearest', got {mode!r}.")
    if len(probe) == 0:
        return np.zeros(0, dtype=bool)
    if mode == "centroid":
        identities, centroids = identity_centroids(gallery, labels)
        is_user = identities == user_label
        scores = probe @ centroids.T
    else:
        is_user = labels == user_label
        scores = probe @ gallery.T
    return scores[:, is_user].max(axis=1) >= scores[:, ~is_user].max(axis=1)


def rank1_untargeted(
    probe_emb: Any,
    gallery_emb: Any,
    gallery_labels: Sequence[Hashable] | np.ndarray,
    user_label: Hashable,
    mode: Literal["centroid", "nearest"] = "centroid",
) -> float:
    """R1-U: fraction of probes whose nearest gallery identity is the user (lower = more private).

    See :func:`rank1_untargeted_hits` for the arguments. Compare with :func:`chance_level`.

    Returns:
        Hit rate in ``[0, 1]``; ``nan`` when there are no probes.
    """
    hits = rank1_untargeted_hits(probe_emb, gallery_emb, gallery_labels, user_label, mode=mode)
    return float(hits.mean()) if len(hits) else math.nan


def _identity_scores(
    probe_emb: Any, gallery_emb: Any, gallery_labels: Sequence[Hashable] | np.ndarray, user_label: Hashable
) -> tuple[np.ndarray, np.ndarray]:
    """``(scores (P, I), is_user (I,))``: cosine of each probe to each gallery identity's template."""
    probe = _embeddings(probe_emb, "probe_emb")
    gallery = _embeddings(gallery_emb, "gallery_emb")
    labels = _labels(gallery_labels, len(gallery), "gallery_labels")
    _check_dims((probe, "probe_emb"), (gallery, "gallery_emb"))
    if not (labels == user_label).any():
        known = np.unique(labels).tolist()[:10]
        raise ValueError(f"user_label {user_label!r} is not among the gallery labels {known}.")
    identities, centroids = identity_centroids(gallery, labels)
    if len(identities) < 2:
        raise ValueError("Ranking the user needs the user plus at least one distractor identity in the gallery.")
    if len(probe) == 0:
        return np.zeros((0, len(identities))), identities == user_label
    return probe @ centroids.T, identities == user_label


def user_ranks(
    probe_emb: Any, gallery_emb: Any, gallery_labels: Sequence[Hashable] | np.ndarray, user_label: Hashable
) -> np.ndarray:
    """Rank of the user among the gallery identities for each probe (1 = most similar template).

    The rank is ``1 + #(other identities strictly more similar than the user)``: ties favour the
    attacker, as everywhere here. A random ranking gives a mean rank of ``(I + 1) / 2`` for ``I``
    identities.

    Returns:
        ``(P,)`` int ranks in ``1..I``.
    """
    scores, is_user = _identity_scores(probe_emb, gallery_emb, gallery_labels, user_label)
    user = scores[:, is_user][:, 0]
    return 1 + (scores[:, ~is_user] > user[:, None]).sum(axis=1)


def rank_last_hits(
    probe_emb: Any, gallery_emb: Any, gallery_labels: Sequence[Hashable] | np.ndarray, user_label: Hashable
) -> np.ndarray:
    """Per-probe rank-last hits: is the user's template the *least* similar of all gallery identities?

    A generation that is further from its own person than from every stranger is linkable too: an
    attacker who knows the defense over-decouples can pick the user as the least similar identity.
    Chance is ``1 / #identities``, as for rank-1; a tie for the least similar counts as a hit.

    Returns:
        ``(P,)`` bool.
    """
    scores, is_user = _identity_scores(probe_emb, gallery_emb, gallery_labels, user_label)
    return scores[:, is_user][:, 0] <= scores[:, ~is_user].min(axis=1, initial=np.inf)


def user_zscores(
    probe_emb: Any, gallery_emb: Any, gallery_labels: Sequence[Hashable] | np.ndarray, user_label: Hashable
) -> np.ndarray:
    """Per-probe z-score of the user's cosine against the probe's cosines to every other identity.

    ``z = (cos(probe, user) - mean_j cos(probe, other_j)) / std_j cos(probe, other_j)`` over the
    templates of the ``I - 1`` other identities (population std). ``z`` near 0: the user looks like a
    stranger; ``z >> 0``: linkable; ``z << 0``: over-decoupled (further than a random stranger).

    Returns:
        ``(P,)`` float64; ``nan`` where fewer than two other identities exist or their cosines are all equal.
    """
    scores, is_user = _identity_scores(probe_emb, gallery_emb, gallery_labels, user_label)
    others = scores[:, ~is_user]
    if others.shape[1] < 2:
        return np.full(len(scores), math.nan)
    spread = others.std(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (scores[:, is_user][:, 0] - others.mean(axis=1)) / spread
    return np.where(spread > 0, z, math.nan)
