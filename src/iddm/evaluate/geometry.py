"""Face geometry: how far decoupling reshaped the training photos, and how plausible the avatars' face shapes are.

* :func:`landmark_displacement`: mean distance between YuNet's five landmarks (eyes, nose tip, mouth corners;
  :func:`iddm.faces.detect_faces`) of a clean training crop and of its decoupled copy, in pixels per 64 px of crop
  side (a warp that moves a mouth corner by 2 px of a 64-px face reads 2.0 at any resolution).
* :func:`shape_distances`: how unusual each face's shape is, on dlib's 68 points (jaw, brows, nose, eyes, lips:
  :class:`iddm.faces.dlib_backend.DlibLandmarks68`), which see what five points cannot (an enlarged nose, pulled
  lips, eyes out of proportion: a caricature): :func:`iddm.faces.shape.shape_distance` (1.0: as unusual as a typical
  real face; a mode real faces barely use, nose width against face width, counts as much as one they use a lot,
  mouth open). :func:`fit_shape_model` fits its statistical shape model of real faces on UTKFace's faces
  (``iddm/weights/attributes/face_shape.json``, ``benchmarks/fit_face_shape.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from iddm.faces import DetectedFace, similarity_transform
from iddm.faces.shape import face_shape_points, mahalanobis, residual_dimensions, shape_distance


def _aligned(points: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``(K, 2)`` points mapped onto ``reference`` ``(K, 2)`` by the least-squares similarity transform."""
    matrix = similarity_transform(np.asarray(points, np.float64), reference)
    return points @ matrix[:, :2].T + matrix[:, 2]


def procrustes_mean(shapes: Sequence[np.ndarray], iterations: int = 5) -> np.ndarray:
    """Generalized Procrustes mean ``(K, 2)`` of ``shapes`` (each ``(K, 2)``), at the first mean's scale."""
    start = np.mean(np.asarray(shapes, np.float64), axis=0)
    mean = start
    for _ in range(iterations):
        mean = _aligned(np.mean([_aligned(p, mean) for p in shapes], axis=0), start)
    return mean


def fit_shape_model(shapes: Sequence[np.ndarray], modes: int) -> dict:
    """A statistical shape model of real faces' ``(K, 2)`` shapes: their Procrustes mean, the first ``modes``
    principal modes of the aligned shapes with their variances, the mean variance of the dimensions they leave out,
    the real faces' means of :func:`mahalanobis`'s two parts, and the mean and standard deviation of the larger part
    over its mean (the content of ``face_shape.json``: :func:`iddm.faces.shape.shape_distance`)."""
    mean = procrustes_mean(shapes)
    offsets = np.stack([(_aligned(p, mean) - mean).ravel() for p in shapes])
    _, singular, vectors = np.linalg.svd(offsets - offsets.mean(0), full_matrices=False)
    variances = singular**2 / (len(shapes) - 1)
    model = {
        "points": int(mean.shape[0]),
        "mean_shape": mean.round(4).tolist(),
        "modes": vectors[:modes].round(6).tolist(),
        "variances": variances[:modes].round(6).tolist(),
        "explained": float(variances[:modes].sum() / variances.sum()),
        "num_faces": len(shapes),
    }
    # The mean variance of the dimensions the modes leave out (probabilistic PCA's noise variance).
    model["residual_variance"] = float(variances[modes:].sum() / residual_dimensions(model))
    parts = mahalanobis(shapes, model).numpy()
    model["real_part_means"] = parts.mean(0).round(6).tolist()
    largest = (parts / parts.mean(0)).max(1)
    return {**model, "real_distance_mean": float(largest.mean()), "real_distance_std": float(largest.std())}


def face_shapes(images: Sequence[np.ndarray], faces: Sequence[DetectedFace | None]) -> list[np.ndarray]:
    """dlib's 68 points ``(68, 2)`` of every detected face (``uint8`` RGB images, in order; undetected: skipped)."""
    return [face_shape_points(image, face.landmarks) for image, face in zip(images, faces) if face is not None]


def shape_distances(images: Sequence[np.ndarray], faces: Sequence[DetectedFace | None]) -> np.ndarray:
    """``(n,)`` shape distance (1.0 = a typical real face) of each detected face, in order."""
    return shape_distance(face_shapes(images, faces)).numpy()


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
