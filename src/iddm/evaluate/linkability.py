"""The attacker's view: detect, embed and link generated images to the user, per face recognition system.

Images are detected once (YuNet, largest face) and embedded by every backend. Metrics follow
DESIGN §3 and are computed by the pure functions of :mod:`iddm.evaluate.metrics`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from iddm.evaluate import metrics
from iddm.faces import DetectedFace, FaceRecognizer, detect_faces, embed_photos


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
    images: Sequence[np.ndarray], recognizers: Sequence[FaceRecognizer], labels: Sequence | None = None
) -> FaceSet:
    """Detect the largest face of each ``(H, W, 3)`` uint8 image and embed it with every recognizer."""
    faces = [largest_face(image) for image in images]
    detected = np.array([face is not None for face in faces], dtype=bool)
    embeddings = {}
    for recognizer in recognizers:
        rows = [e.numpy() for e in embed_photos(recognizer, images, faces) if e is not None]
        embeddings[recognizer.name] = np.stack(rows) if rows else np.zeros((0, recognizer.embedding_dim), np.float32)
    return FaceSet(detected, embeddings, None if labels is None else np.asarray(labels))


def linkability(
    probes: FaceSet,
    reference: FaceSet,
    gallery: FaceSet,
    user_label: str,
    recognizer: FaceRecognizer,
    white_box: bool,
    fars: Sequence[float] = (1e-2, 1e-3),
) -> dict:
    """Every linkability metric of one FR system for one set of generated probes.

    Args:
        probes: the generated images.
        reference: the user's real photos held out from training (the attacker's knowledge).
        gallery: real photos of the user and of distractor identities, with labels (R1-U and R1-T).
        user_label: the user's label in ``gallery``.
        recognizer: the FR system (its ``threshold`` gives ``match_rate``).
        white_box: whether this system was a surrogate during optimization.

    Returns:
        ``ism`` (mean cosine to the reference mean), ``mean_cosine_heldout`` (same, kept under the
        reference experiment's name), ``match_rate`` at the system's own threshold, ``rank1`` (R1-U)
        with ``chance_rank1``, ``rank1_targeted`` (R1-T) with its chance level, ``match_at_far``
        (thresholds calibrated on the gallery's impostor pairs), ``fdfr`` and ``num_probes``.
    """
    name = recognizer.name
    probe = probes.embeddings[name]
    result = {
        "white_box": white_box,
        "num_probes": int(len(probes.detected)),
        "num_faces": int(len(probe)),
        "fdfr": metrics.face_detection_failure_rate(probes.detected) if len(probes.detected) else float("nan"),
        "threshold": float(recognizer.threshold),
        "chance_rank1": metrics.chance_level(gallery.detected_labels),
    }
    if len(probe) == 0 or len(reference.embeddings[name]) == 0:
        nan = float("nan")
        return {**result, "ism": nan, "mean_cosine_heldout": nan, "match_rate": nan, "rank1": nan}
    ism = metrics.identity_score_matching(probe, reference.embeddings[name])
    result.update(
        ism=ism,
        mean_cosine_heldout=ism,
        match_rate=metrics.match_rate_at_threshold(probe, reference.embeddings[name], recognizer.threshold),
        rank1=metrics.rank1_untargeted(probe, gallery.embeddings[name], gallery.detected_labels, user_label),
    )
    # R1-T: each real photo of the user queries a pool of the generations mixed with other identities' photos.
    others = gallery.embeddings[name][gallery.detected_labels != user_label]
    if len(others):
        pool = np.concatenate([probe, others])
        is_user = np.concatenate([np.ones(len(probe), bool), np.zeros(len(others), bool)])
        result["rank1_targeted"] = metrics.rank1_targeted(reference.embeddings[name], pool, is_user)
        result["chance_rank1_targeted"] = metrics.targeted_chance_level(is_user)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", metrics.InsufficientImpostorPairsWarning)
        at_far = metrics.match_at_far(
            probe, reference.embeddings[name], gallery.embeddings[name], gallery.detected_labels, fars=fars
        )
    result["match_at_far"] = {
        f"{far:g}": {"threshold": m.threshold, "match_rate": m.match_rate, "reliable": m.reliable}
        for far, m in at_far.items()
    }
    return result
