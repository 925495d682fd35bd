"""Face geometry: how far decoupling reshaped the training photos, and how plausible the avatars' face shapes are.

Both read YuNet's five landmarks (eyes, nose tip, mouth corners; :func:`iddm.faces.detect_faces`).

* :func:`landmark_displacement`: mean distance between the landmarks of a clean training crop and of its
  decoupled copy, in pixels per 64 px of crop side (a warp that moves a mouth corner by 2 px of a 64-px face
  reads 2.0 at any resolution).
* :func:`shape_distances`: each face's five points, aligned by a similarity transform (translation, rotation,
  scale: pose and framing removed) onto the mean real face shape, and their RMS distance to it, divided by the
  mean such distance of real faces. 1.0: as far from the mean shape as a typical real face; 1.6: a face whose
  proportions are 1.6x as unusual. The mean shape and the real faces' mean distance come from UTKFace's faces
  (``iddm/weights/attributes/face_shape.json``, written by ``benchmarks/train_attributes.py``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence

import numpy as np

from iddm.faces import DetectedFace, similarity_transform

SHAPE_FILE = "face_shape.json"


def _aligned(landmarks: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``(5, 2)`` landmarks mapped onto ``reference`` by the least-squares similarity transform."""
    matrix = similarity_transform(np.asarray(landmarks, np.float64), reference)
    return landmarks @ matrix[:, :2].T + matrix[:, 2]


def shape_residuals(landmarks: Sequence[np.ndarray], reference: np.ndarray) -> np.ndarray:
    """``(N,)`` RMS distance of each aligned shape to ``reference`` (in ``reference``'s pixels)."""
    return np.array([np.sqrt(np.mean(np.sum((_aligned(p, reference) - reference) ** 2, axis=1))) for p in landmarks])


def fit_mean_shape(landmarks: Sequence[np.ndarray], start: np.ndarray, iterations: int = 5) -> dict:
    """Generalized Procrustes mean of real faces' landmarks (starting from ``start``, kept at its scale) and the
    mean and standard deviation of the real faces' residuals to it: the content of ``face_shape.json``."""
    mean = np.asarray(start, np.float64)
    for _ in range(iterations):
        aligned = np.stack([_aligned(p, mean) for p in landmarks]).mean(0)
        mean = _aligned(aligned, np.asarray(start, np.float64))  # keep the template's scale and position
    residuals = shape_residuals(landmarks, mean)
    return {
        "mean_shape": mean.round(4).tolist(),
        "real_residual_mean": float(residuals.mean()),
        "real_residual_std": float(residuals.std()),
        "num_faces": len(landmarks),
    }


@functools.cache
def real_face_shape() -> dict:
    """The shipped ``face_shape.json`` (mean shape and real faces' residual statistics)."""
    from iddm.evaluate.attributes import weights_dir

    return json.loads((weights_dir() / SHAPE_FILE).read_text())


def shape_distances(faces: Sequence[DetectedFace | None]) -> np.ndarray:
    """``(n,)`` shape distance (1.0 = a typical real face) of each detected face, in order."""
    statistics = real_face_shape()
    landmarks = [face.landmarks for face in faces if face is not None]
    if not landmarks:
        return np.zeros(0)
    mean = np.asarray(statistics["mean_shape"], np.float64)
    return shape_residuals(landmarks, mean) / statistics["real_residual_mean"]


def landmark_displacement(
    clean: Sequence[DetectedFace | None], decoupled: Sequence[DetectedFace | None], sides: Sequence[int]
) -> tuple[float | None, int]:
    """Mean landmark displacement (px per 64 px of crop side) over the pairs where both faces were detected,
    and how many pairs that was (``None`` for none)."""
    moves = [
        float(np.linalg.norm(a.landmarks - b.landmarks, axis=1).mean()) * 64.0 / side
        for a, b, side in zip(clean, decoupled, sides)
        if a is not None and b is not None
    ]
    return (float(np.mean(moves)) if moves else None), len(moves)
