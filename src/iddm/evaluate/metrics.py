"""Linkability metrics of the evaluation protocol (DESIGN.md §3), as small pure functions.

Every function takes face embeddings as ``(N, D)`` arrays (numpy or torch; torch tensors are
detached and copied to the CPU) and computes in numpy ``float64``, so results do not depend on the
device or dtype the embeddings came from. Rows are L2-normalized inside, so a "cosine" here is the
exact cosine similarity in ``[-1, 1]`` even for embeddings that are not quite unit length (fp16, int8
models); an all-zero or non-finite row is an error.

Conventions shared by all functions:

* The caller drops probes whose face was not detected (they count in :func:`face_detection_failure_rate`
  instead). A rate over zero probes is ``nan``, meaning "undefined: no generated image had a detected
  face" -- report it next to an FDFR of 1.0, never as 0.
* Ties are resolved in the attacker's favour (a tie between the user and another identity is a hit),
  so the linkability reported is an upper bound on the exact-arithmetic value: conservative for
  privacy claims.
* Identity centroids ("templates") are ``normalize(mean_i normalize(e_i))``, as the identity anchor
  ``e_k`` of DESIGN.md §2.

Sources: ISM and FDFR as in Anti-DreamBooth (Van Le et al., ICCV 2023); rank-1 identification and
verification at a false accept rate as in the FR literature (e.g. Grother et al., NIST FRVT; IJB-C,
Maze et al., 2018).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = [
    "InsufficientImpostorPairsWarning",
    "MatchAtFar",
    "calibrate_threshold",
    "chance_level",
    "cosine_to_reference",
    "face_detection_failure_rate",
    "genuine_scores",
    "identity_centroids",
    "identity_score_matching",
    "impostor_scores",
    "match_at_far",
    "match_rate_at_threshold",
    "min_impostor_pairs",
    "rank1_targeted",
    "rank1_targeted_hits",
    "rank1_untargeted",
    "rank1_untargeted_hits",
    "rank_last_hits",
    "standard_error_of_mean",
    "binomial_standard_error",
    "targeted_chance_level",
    "user_ranks",
    "user_zscores",
]

ReferenceMode = Literal["mean", "max"]
ImpostorMode = Literal["pair", "mean", "max"]


class InsufficientImpostorPairsWarning(UserWarning):
    """Too few impostor scores to resolve the requested false accept rate; the threshold is too strict."""


# ----------------------------------------------------------------------------------------------------
# Input handling
# ----------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------
# ISM, FDFR
# ----------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------
# Rank-1 identification
# ----------------------------------------------------------------------------------------------------


def chance_level(gallery_labels: Sequence[Hashable] | np.ndarray) -> float:
    """Rank-1 untargeted hit rate of a random guess: ``1 / #identities`` in the gallery."""
    labels = np.asarray(gallery_labels)
    if labels.size == 0:
        raise ValueError("gallery_labels is empty.")
    return 1.0 / len(np.unique(labels))


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


def _pool_flags(pool_is_user: Sequence[bool] | np.ndarray, k: int) -> np.ndarray:
    flags = np.asarray(pool_is_user)
    if flags.ndim != 1 or len(flags) != k:
        raise ValueError(f"pool_is_user must hold one flag per pool embedding: got shape {flags.shape} for {k}.")
    if flags.dtype != bool:
        raise ValueError(f"pool_is_user must be a boolean array, got dtype {flags.dtype}.")
    if flags.all() or not flags.any():
        raise ValueError(
            f"The pool holds {int(flags.sum())} of the user's generations among {k} images; targeted search needs "
            "both the user's generations and other identities' images."
        )
    return flags


def targeted_chance_level(pool_is_user: Sequence[bool] | np.ndarray) -> float:
    """Rank-1 targeted hit rate of a random ranking: the fraction of the pool that is the user's generations."""
    flags = np.asarray(pool_is_user, dtype=bool)
    if flags.size == 0:
        raise ValueError("pool_is_user is empty.")
    return float(flags.mean())


def rank1_targeted_hits(query_emb: Any, pool_emb: Any, pool_is_user: Sequence[bool] | np.ndarray) -> np.ndarray:
    """Per-query rank-1 hits of the stalker (R1-T): is the top-ranked pool image one of the user's generations?

    Args:
        query_emb: ``(Q, D)`` embeddings of real photos of the user (the attacker's queries).
        pool_emb: ``(K, D)`` embeddings of public images: the user's generations mixed with other
            identities' images.
        pool_is_user: ``(K,)`` bool, ``True`` for the user's generations.

    Returns:
        ``(Q,)`` bool; a tie between a user item and another item counts as a hit.
    """
    query = _embeddings(query_emb, "query_emb")
    pool = _embeddings(pool_emb, "pool_emb")
    flags = _pool_flags(pool_is_user, len(pool))
    _check_dims((query, "query_emb"), (pool, "pool_emb"))
    if len(query) == 0:
        return np.zeros(0, dtype=bool)
    scores = query @ pool.T
    return scores[:, flags].max(axis=1) >= scores[:, ~flags].max(axis=1)


def rank1_targeted(query_emb: Any, pool_emb: Any, pool_is_user: Sequence[bool] | np.ndarray) -> float:
    """R1-T: fraction of queries whose rank-1 pool result is the user's generation (lower = more private).

    See :func:`rank1_targeted_hits` for the arguments. Compare with :func:`targeted_chance_level`.

    Returns:
        Hit rate in ``[0, 1]``; ``nan`` when there are no queries.
    """
    hits = rank1_targeted_hits(query_emb, pool_emb, pool_is_user)
    return float(hits.mean()) if len(hits) else math.nan


# ----------------------------------------------------------------------------------------------------
# Verification at a false accept rate
# ----------------------------------------------------------------------------------------------------


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
