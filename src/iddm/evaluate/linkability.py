"""The attacker's view: detect, embed and link generated images to the user, per face recognition system.

Images are detected once (YuNet, largest face) and embedded by every backend. Metrics follow
DESIGN §3 and are computed by the pure functions of :mod:`iddm.evaluate.metrics`; the result of one
FR system is a :class:`iddm.evaluate.results.BackendLinkability`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from iddm.evaluate import metrics
from iddm.evaluate.results import SIGNIFICANCE_SE, Attack, BackendLinkability, FarMatch, Role, TargetedPool
from iddm.faces import DetectedFace, FaceRecognizer, detect_faces, embed_photos

EMBED_BATCH = 16
"""Images detected and embedded per step of the progress bar."""


@dataclass
class FaceSet:
    """Images seen by the attacker: which have a face, and each backend's embeddings of those faces.

    Attributes:
        detected: ``(N,)`` bool, a face was found in image ``i``.
        embeddings: backend name -> ``(n_detected, D)`` float32 unit rows, in image order.
        labels: optional ``(N,)`` identity label per image.
    """

    detected: np.ndarray
    embeddings: dict[str, np.ndarray]
    labels: np.ndarray | None = None

    @property
    def detected_labels(self) -> np.ndarray:
        if self.labels is None:
            raise ValueError("This FaceSet has no identity labels.")
        return self.labels[self.detected]

    @property
    def detection_rate(self) -> float:
        return float(self.detected.mean()) if len(self.detected) else float("nan")


def largest_face(image: np.ndarray) -> DetectedFace | None:
    faces = detect_faces(image)
    return faces[0] if faces else None


def embed_images(
    images: Sequence[np.ndarray],
    recognizers: Sequence[FaceRecognizer],
    labels: Sequence | None = None,
    progress: str | None = None,
) -> FaceSet:
    """Detect the largest face of each ``(H, W, 3)`` uint8 image and embed it with every recognizer.

    Args:
        progress: description of a progress bar over the images (in batches of :data:`EMBED_BATCH`); ``None``: no bar.
    """
    from iddm.progress import progress_bar

    faces: list[DetectedFace | None] = []
    rows: dict[str, list[np.ndarray]] = {r.name: [] for r in recognizers}
    with progress_bar(total=len(images), desc=progress, unit="img", disable=progress is None, leave=False) as bar:
        for start in range(0, len(images), EMBED_BATCH):
            chunk = list(images[start : start + EMBED_BATCH])
            found = [largest_face(image) for image in chunk]
            faces += found
            for recognizer in recognizers:
                rows[recognizer.name] += [e.numpy() for e in embed_photos(recognizer, chunk, found) if e is not None]
            bar.update(len(chunk))
    detected = np.array([face is not None for face in faces], dtype=bool)
    embeddings = {
        r.name: np.stack(rows[r.name]) if rows[r.name] else np.zeros((0, r.embedding_dim), np.float32)
        for r in recognizers
    }
    return FaceSet(detected, embeddings, None if labels is None else np.asarray(labels))


def embed_groups(
    groups: Mapping[str, Sequence[np.ndarray]], recognizers: Sequence[FaceRecognizer], progress: str | None = None
) -> dict[str, FaceSet]:
    """:func:`embed_images` of several groups of images (e.g. identities) under one progress bar."""
    names = list(groups)
    everything = embed_images([image for name in names for image in groups[name]], recognizers, progress=progress)
    bounds = np.cumsum([0] + [len(groups[name]) for name in names])
    return {name: subset(everything, range(bounds[i], bounds[i + 1])) for i, name in enumerate(names)}


def _mean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)] if len(values) else values
    return float(finite.mean()) if len(finite) else None


def chance_flags(
    num_faces: int,
    rank1: float | None,
    rank_last: float | None,
    chance: float,
    user_z: float | None,
    user_z_se: float | None,
) -> list[Attack]:
    """The attacks that beat chance by more than :data:`SIGNIFICANCE_SE` standard errors.

    Rank-1 and rank-last are hit rates over ``num_faces`` probes with chance ``1 / #identities``; their
    standard error is the binomial one at chance. The user's z-score is a mean over probes with
    expected value 0; its standard error is the empirical one (undefined below two probes: no flag).
    """
    flags: list[Attack] = []
    se = metrics.binomial_standard_error(chance, num_faces)
    if rank1 is not None and math.isfinite(se) and rank1 - chance > SIGNIFICANCE_SE * se:
        flags.append("rank1")
    if rank_last is not None and math.isfinite(se) and rank_last - chance > SIGNIFICANCE_SE * se:
        flags.append("rank_last")
    if user_z is not None and user_z_se is not None and abs(user_z) > SIGNIFICANCE_SE * user_z_se:
        flags.append("user_z")
    return flags


def targeted_search(
    queries: np.ndarray, generations: np.ndarray, others: np.ndarray
) -> tuple[float | None, float | None]:
    """R1-T and its chance level: each query (a real photo of the user) ranks the user's ``generations``
    mixed with ``others`` (``(K, D)`` images of other identities); ``(None, None)`` when either is empty."""
    if len(queries) == 0 or len(generations) == 0 or len(others) == 0:
        return None, None
    pool = np.concatenate([generations, others])
    is_user = np.concatenate([np.ones(len(generations), bool), np.zeros(len(others), bool)])
    return metrics.rank1_targeted(queries, pool, is_user), metrics.targeted_chance_level(is_user)


def linkability(
    probes: FaceSet,
    reference: FaceSet,
    gallery: FaceSet,
    user_label: str,
    recognizer: FaceRecognizer,
    role: Role = "unknown",
    fars: Sequence[float] = (1e-2, 1e-3),
) -> BackendLinkability:
    """Every linkability metric of one FR system for one set of generated probes.

    Args:
        probes: the generated images.
        reference: the user's real photos held out from training (the attacker's knowledge).
        gallery: real photos of the user and of distractor identities, with labels.
        user_label: the user's label in ``gallery``.
        recognizer: the FR system (its ``threshold`` gives ``match_rate``).
        role: ``white-box`` when the system was a surrogate of the optimizer, ``black-box``, or ``unknown``.

    Returns:
        The metrics; R1-T here pools the generations with the other identities' real gallery photos
        (``rank1_targeted_pool = "real photos"``); the benchmark replaces it with a pool of other
        identities' generations where it has them.
    """
    from iddm.faces.statistics import impostor_statistics

    name = recognizer.name
    probe, user_reference = probes.embeddings[name], reference.embeddings[name]
    gallery_emb, gallery_labels = gallery.embeddings[name], gallery.detected_labels
    num_identities = len(np.unique(gallery_labels))
    try:
        impostor_mean = impostor_statistics(name)["anchor_impostor_mean"]
    except ValueError:
        impostor_mean = None
    result = BackendLinkability(
        recognizer=name,
        role=role,
        white_box=None if role == "unknown" else role == "white-box",
        num_probes=int(len(probes.detected)),
        num_faces=int(len(probe)),
        fdfr=metrics.face_detection_failure_rate(probes.detected) if len(probes.detected) else None,
        threshold=float(recognizer.threshold),
        num_identities=num_identities,
        impostor_mean=impostor_mean,
        chance_rank1=1.0 / num_identities,
        chance_mean_user_rank=(num_identities + 1) / 2,
        rank_standard_error=metrics.binomial_standard_error(1.0 / num_identities, len(probe)),
    )
    if len(probe) == 0 or len(user_reference) == 0:
        return result
    result.ism = metrics.identity_score_matching(probe, user_reference)
    result.match_rate = metrics.match_rate_at_threshold(probe, user_reference, recognizer.threshold)
    result.rank1 = metrics.rank1_untargeted(probe, gallery_emb, gallery_labels, user_label)
    result.rank_last = float(metrics.rank_last_hits(probe, gallery_emb, gallery_labels, user_label).mean())
    result.mean_user_rank = float(metrics.user_ranks(probe, gallery_emb, gallery_labels, user_label).mean())
    z = metrics.user_zscores(probe, gallery_emb, gallery_labels, user_label)
    result.user_z = _mean(z)
    se = metrics.standard_error_of_mean(z)
    result.user_z_standard_error = se if math.isfinite(se) else None
    pool: TargetedPool = "real photos"
    result.rank1_targeted, result.chance_rank1_targeted = targeted_search(
        user_reference, probe, gallery_emb[gallery_labels != user_label]
    )
    result.rank1_targeted_pool = pool if result.rank1_targeted is not None else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", metrics.InsufficientImpostorPairsWarning)
        at_far = metrics.match_at_far(probe, user_reference, gallery_emb, gallery_labels, fars=fars)
    result.match_at_far = {
        f"{far:g}": FarMatch(threshold=m.threshold, match_rate=m.match_rate, reliable=m.reliable)
        for far, m in at_far.items()
    }
    result.flags = chance_flags(
        len(probe), result.rank1, result.rank_last, result.chance_rank1, result.user_z, result.user_z_standard_error
    )
    return result


def concat_facesets(sets: Sequence[FaceSet]) -> FaceSet:
    """One :class:`FaceSet` holding the images of ``sets`` in order (labels kept; all or none labelled)."""
    if not sets:
        raise ValueError("Nothing to concatenate.")
    names = set(sets[0].embeddings)
    if any(set(s.embeddings) != names for s in sets):
        raise ValueError("FaceSets were embedded with different recognizers.")
    labelled = [s.labels is not None for s in sets]
    if any(labelled) and not all(labelled):
        raise ValueError("Either every FaceSet has labels or none has.")
    return FaceSet(
        detected=np.concatenate([s.detected for s in sets]),
        embeddings={n: np.concatenate([s.embeddings[n] for s in sets]) for n in names},
        labels=np.concatenate([s.labels for s in sets]) if all(labelled) else None,
    )


def relabel(faces: FaceSet, label: str) -> FaceSet:
    """``faces`` with every image labelled ``label``."""
    return FaceSet(faces.detected, faces.embeddings, np.full(len(faces.detected), label, dtype=object))


def subset(faces: FaceSet, indices: Sequence[int]) -> FaceSet:
    """The images ``indices`` of ``faces`` (embeddings of the detected ones, in order)."""
    idx = np.asarray(indices, dtype=int)
    row_of = np.cumsum(faces.detected) - 1
    rows = [int(row_of[i]) for i in idx if faces.detected[i]]
    return FaceSet(
        detected=faces.detected[idx],
        embeddings={name: emb[rows] for name, emb in faces.embeddings.items()},
        labels=None if faces.labels is None else faces.labels[idx],
    )
