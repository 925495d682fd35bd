"""Verification: genuine and impostor scores, thresholds at a false accept rate, match rates."""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from iddm.evaluate.metrics.common import (
    _embeddings,
    _labels,
    identity_centroids,
)
from iddm.evaluate.metrics.similarity import ReferenceMode, cosine_to_reference

ImpostorMode = Literal["pair", "mean", "max"]


class InsufficientImpostorPairsWarning(UserWarning):
    """Too few impostor scores to resolve the requested false accept rate; the threshold is too strict."""


def _pair_scores(emb: Any, labels: Sequence[Hashable] | np.ndarray, same: bool) -> tuple[np.ndarray, np.ndarray]:
    emb = _embeddings(emb, "emb")
    labels = _labels(labels, len(emb), "labels")
    rows, cols = np.triu_indices(len(emb), k=1)
    keep = (labels[rows] == labels[cols]) == same
    rows, cols = rows[keep], cols[keep]
    return np.einsum("nd,nd->n", emb[rows], emb[cols]), labels


def genuine_scores(emb: Any, labels: Sequence[Hashable] | np.ndarray) -> np.ndarray:
    """Cosines of all same-identity pairs ``i < j`` (row-major order): ``(n_pairs,)`` float64."""
    return _pair_scores(emb, labels, same=True)[0]


def impostor_scores(emb: Any, labels: Sequence[Hashable] | np.ndarray, mode: ImpostorMode = "pair") -> np.ndarray:
    """Impostor (different-identity) comparison scores, for calibrating verification thresholds.

    Args:
        emb: ``(N, D)`` embeddings of real photos of at least two identities (a calibration set,
            ideally disjoint from the probes).
        labels: ``(N,)`` identity labels.
        mode: the comparison the threshold will be applied to.
            ``"pair"``: every cross-identity image pair ``i < j`` (row-major), ``O(N^2)`` memory;
            ``"mean"``: every image against every *other* identity's template (as
            :func:`match_rate_at_threshold` with ``mode="mean"``);
            ``"max"``: every image against every other identity, max over that identity's images.

    Returns:
        ``(n,)`` float64 cosines in ``[-1, 1]``.
    """
    if mode == "pair":
        scores, labels = _pair_scores(emb, labels, same=False)
    elif mode in ("mean", "max"):
        emb = _embeddings(emb, "emb")
        labels = _labels(labels, len(emb), "labels")
        identities, inverse = np.unique(labels, return_inverse=True)
        if mode == "mean":
            scores_by_identity = emb @ identity_centroids(emb, labels)[1].T  # (N, I)
        else:
            all_scores = emb @ emb.T
            scores_by_identity = np.stack([all_scores[:, inverse == i].max(axis=1) for i in range(len(identities))], 1)
        scores = scores_by_identity[inverse[:, None] != np.arange(len(identities))[None, :]]
    else:
        raise ValueError(f"mode must be 'pair', 'mean' or 'max', got {mode!r}.")
    if len(np.unique(labels)) < 2:
        raise ValueError("Impostor scores need embeddings of at least two identities.")
    return scores


def min_impostor_pairs(far: float) -> int:
    """Fewest impostor scores for which an empirical FAR of ``far`` is resolvable: ``ceil(1 / far)``.

    With fewer, no threshold can accept even one impostor, so the threshold is pinned above the
    highest impostor score and is stricter than the true FAR-``far`` threshold. A stable estimate
    needs several times more (about ``10 / far``).
    """
    if not 0 < far < 1:
        raise ValueError(f"far must lie in (0, 1), got {far}.")
    return math.ceil(1.0 / far - 1e-9)


def calibrate_threshold(impostor_scores: Sequence[float] | np.ndarray, far: float, strict: bool = False) -> float:
    """The least strict threshold whose empirical false accept rate is at most ``far``.

    A comparison is accepted when ``score >= threshold``. With ``n`` impostor scores, at most
    ``k = floor(far * n)`` of them may be accepted; the threshold is the smallest float above the
    ``(k + 1)``-th highest impostor score (``np.nextafter``). Ties: every impostor score equal to that
    ``(k + 1)``-th score is rejected, so with ties the achieved FAR can fall below ``far``. Being the
    least strict valid threshold, it favours the attacker (conservative for privacy claims).

    Args:
        impostor_scores: ``(n,)`` different-identity cosines, e.g. from :func:`impostor_scores`.
        far: target false accept rate in ``(0, 1)``, e.g. ``1e-3``.
        strict: raise instead of warning when ``n < min_impostor_pairs(far)``.

    Returns:
        The threshold. When ``n < ceil(1 / far)`` it is ``nextafter(max impostor score)``: a bound
        that is stricter than the true threshold (a :class:`InsufficientImpostorPairsWarning` is
        issued, or ``ValueError`` raised when ``strict``).
    """
    scores = np.asarray(impostor_scores, dtype=np.float64).ravel()
    needed = min_impostor_pairs(far)
    if scores.size == 0:
        raise ValueError("impostor_scores is empty: calibrate on embeddings of at least two identities.")
    if not np.isfinite(scores).all():
        raise ValueError("impostor_scores contains nan or inf values.")
    if scores.size < needed:
        message = (
            f"{scores.size} impostor scores cannot resolve FAR {far:g} (need >= {needed}); the threshold is pinned "
            "above the highest impostor score and understates matches. Add distractor photos or identities."
        )
        if strict:
            raise ValueError(message)
        warnings.warn(message, InsufficientImpostorPairsWarning, stacklevel=2)
    k = math.floor(far * scores.size + 1e-9)
    kth = np.partition(scores, scores.size - 1 - k)[scores.size - 1 - k]  # the (k + 1)-th highest score
    return float(np.nextafter(kth, np.inf))


def match_rate_at_threshold(
    probe_emb: Any, reference_emb: Any, threshold: float, mode: ReferenceMode = "mean"
) -> float:
    """Fraction of probes verified as the user: ``cosine_to_reference(probe, reference, mode) >= threshold``.

    Args:
        probe_emb: ``(P, D)`` embeddings of generated faces.
        reference_emb: ``(R, D)`` embeddings of the user's clean photos.
        threshold: cosine threshold, e.g. from :func:`calibrate_threshold`.
        mode: ``"mean"`` (default; the user's template, as ISM) or ``"max"`` (best reference photo).

    Returns:
        Match rate in ``[0, 1]`` (lower = more private); ``nan`` when there are no probes.
    """
    scores = cosine_to_reference(probe_emb, reference_emb, mode=mode)
    return float((scores >= threshold).mean()) if len(scores) else math.nan


@dataclass(frozen=True)
class MatchAtFar:
    """Verification result at one false accept rate (``dataclasses.asdict`` gives a JSON-ready dict).

    Attributes:
        far: target false accept rate.
        threshold: calibrated cosine threshold.
        match_rate: fraction of probes verified as the user (``nan`` without probes).
        n_impostor: number of impostor scores the threshold rests on.
        reliable: ``n_impostor >= min_impostor_pairs(far)``; when ``False`` the threshold is too strict
            and ``match_rate`` understates linkability.
    """

    far: float
    threshold: float
    match_rate: float
    n_impostor: int
    reliable: bool


def match_at_far(
    probe_emb: Any,
    reference_emb: Any,
    impostor_emb: Any,
    impostor_labels: Sequence[Hashable] | np.ndarray,
    fars: Sequence[float] = (1e-2, 1e-3),
    mode: ReferenceMode = "mean",
    impostor_mode: ImpostorMode | None = None,
) -> dict[float, MatchAtFar]:
    """Match@FAR: calibrate a threshold per FAR on impostor comparisons, then verify the probes.

    Args:
        probe_emb: ``(P, D)`` embeddings of the user's generated faces.
        reference_emb: ``(R, D)`` embeddings of the user's clean photos.
        impostor_emb: ``(N, D)`` embeddings of real photos of several identities (calibration set).
        impostor_labels: ``(N,)`` identity labels of ``impostor_emb``.
        fars: target false accept rates.
        mode: how a probe is compared to the references (see :func:`match_rate_at_threshold`).
        impostor_mode: which impostor comparisons calibrate the threshold; ``None`` (default) uses
            ``mode``, so the threshold is calibrated on the same kind of comparison it is applied to
            (template-vs-image for ``"mean"``). ``"pair"`` gives the classic image-pair calibration.

    Returns:
        ``{far: MatchAtFar}``. Warns (:class:`InsufficientImpostorPairsWarning`) for unreliable FARs.
    """
    scores = impostor_scores(impostor_emb, impostor_labels, mode=impostor_mode or mode)
    results = {}
    for far in fars:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InsufficientImpostorPairsWarning)
            threshold = calibrate_threshold(scores, far)
        reliable = scores.size >= min_impostor_pairs(far)
        if not reliable:
            warnings.warn(
                f"Match@FAR {far:g}: {scores.size} impostor scores (need >= {min_impostor_pairs(far)}); "
                "the threshold is too strict and the match rate understates linkability.",
                InsufficientImpostorPairsWarning,
                stacklevel=2,
            )
        rate = match_rate_at_threshold(probe_emb, reference_emb, threshold, mode=mode)
        results[far] = MatchAtFar(
            far=far, threshold=threshold, match_rate=rate, n_impostor=int(scores.size), reliable=reliable
        )
    return results
