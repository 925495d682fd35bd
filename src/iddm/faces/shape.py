"""A statistical shape model of real faces on dlib's 68 points, in numpy (to measure) and torch (to constrain).

A face's *shape distance* says how unusual its shape is: the shape is aligned by a similarity transform (pose and
framing removed) onto the mean real shape, projected on the main modes of real faces' shape variation, and the RMS
of its coordinates there, in units of each mode's real standard deviation, is its Mahalanobis distance; divided by
real faces' mean distance, 1.0 reads "as unusual as a typical real face". A caricature (an enlarged nose, pulled
lips, eyes out of proportion) reads well above it. The shipped model was fitted on UTKFace's faces
(``iddm/weights/attributes/face_shape.json``, ``benchmarks/fit_face_shape.py``).

:func:`mahalanobis` measures shapes (``iddm.evaluate.geometry``); :func:`shape_distance_torch` is the same
distance, differentiable in the points, which IDDM's shape budget holds its warp to (``iddm.decouple``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from iddm.faces.align import similarity_transform

SHAPE_FILE = "face_shape.json"


def aligned_shape(points: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``(K, 2)`` points mapped onto ``reference`` ``(K, 2)`` by the least-squares similarity transform."""
    matrix = similarity_transform(np.asarray(points, np.float64), reference)
    return points @ matrix[:, :2].T + matrix[:, 2]


def procrustes_mean(shapes: Sequence[np.ndarray], iterations: int = 5) -> np.ndarray:
    """Generalized Procrustes mean ``(K, 2)`` of ``shapes`` (each ``(K, 2)``), at the first mean's scale."""
    start = np.mean(np.asarray(shapes, np.float64), axis=0)
    mean = start
    for _ in range(iterations):
        mean = aligned_shape(np.mean([aligned_shape(p, mean) for p in shapes], axis=0), start)
    return mean


def mahalanobis(shapes: Sequence[np.ndarray], model: dict) -> np.ndarray:
    """``(N,)`` RMS over the model's modes of each aligned shape's coordinate in units of that mode's standard
    deviation (1 for a face whose every mode is one real standard deviation from the mean)."""
    if len(shapes) == 0:
        return np.zeros(0)
    mean = np.asarray(model["mean_shape"], np.float64)
    modes, variances = np.asarray(model["modes"]), np.asarray(model["variances"])
    offsets = np.stack([(aligned_shape(p, mean) - mean).ravel() for p in shapes])
    return np.sqrt(np.mean((offsets @ modes.T) ** 2 / variances, axis=1))


def fit_shape_model(shapes: Sequence[np.ndarray], modes: int) -> dict:
    """A statistical shape model of real faces' ``(K, 2)`` shapes: their Procrustes mean, the first ``modes``
    principal modes of the aligned shapes with their variances, and the real faces' mean and standard deviation of
    :func:`mahalanobis` (the content of ``face_shape.json``; normalize by the mean)."""
    mean = procrustes_mean(shapes)
    offsets = np.stack([(aligned_shape(p, mean) - mean).ravel() for p in shapes])
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
    distances = mahalanobis(shapes, model)
    return {**model, "real_distance_mean": float(distances.mean()), "real_distance_std": float(distances.std())}


@functools.cache
def real_face_shape() -> dict:
    """The shipped ``face_shape.json`` (real faces' statistical shape model), checked against its manifest."""
    from iddm.weights import verify_manifest

    folder = Path(__file__).resolve().parents[1] / "weights" / "attributes"
    verify_manifest(folder)
    return json.loads((folder / SHAPE_FILE).read_text())


def shape_distance_torch(points: torch.Tensor, model: dict) -> torch.Tensor:
    """:func:`mahalanobis` divided by real faces' mean distance, differentiable in ``points``.

    Args:
        points: ``(N, K, 2)`` ``(x, y)`` shapes in any frame (the similarity alignment removes it).
        model: a shape model (:func:`real_face_shape`).

    Returns:
        ``(N,)`` shape distances (1.0: as unusual as a typical real face).
    """
    mean = torch.tensor(model["mean_shape"], dtype=points.dtype, device=points.device)
    modes = torch.tensor(model["modes"], dtype=points.dtype, device=points.device)
    variances = torch.tensor(model["variances"], dtype=points.dtype, device=points.device)
    # Least-squares similarity onto the mean in complex form: z = Σ conj(p) q / Σ |p|², aligned = z p.
    p = points - points.mean(dim=1, keepdim=True)
    q = mean - mean.mean(dim=0)
    norm = p.square().sum(dim=(1, 2)).clamp_min(1e-12)
    a = (p * q).sum(dim=(1, 2)) / norm
    b = (p[..., 0] * q[:, 1] - p[..., 1] * q[:, 0]).sum(dim=1) / norm
    x = a[:, None] * p[..., 0] - b[:, None] * p[..., 1]
    y = b[:, None] * p[..., 0] + a[:, None] * p[..., 1]
    offsets = (torch.stack([x, y], dim=-1) + mean.mean(dim=0) - mean).flatten(1)
    distance = ((offsets @ modes.T).square() / variances).mean(dim=1).clamp_min(1e-12).sqrt()
    return distance / model["real_distance_mean"]
