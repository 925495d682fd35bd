"""How unusual a face's shape is, on dlib's 68 points, differentiable in the points.

A caricature (an enlarged nose, pulled lips, eyes out of proportion) is a face shape that real faces do not have.
:func:`shape_distance` measures it against a statistical shape model of real faces (``face_shape.json`` in
``iddm/weights/attributes/``, fitted on UTKFace by ``benchmarks/fit_face_shape.py``): each ``(68, 2)`` shape is
aligned by the least-squares similarity transform (pose, scale and framing removed) onto the model's mean shape, and
its offset is measured in units of real faces' standard deviation along the main modes of real shape variation, and
across the rest of shape space, where real faces barely vary (:func:`mahalanobis`); the distance is the larger of
the two, each over its mean on real faces. 1.0: as unusual as a typical real face. The benchmark measures avatars
with it (:mod:`iddm.evaluate.geometry`), and IDDM's warp keeps the training photos within a limit of it
(:mod:`iddm.decouple.shape_limit`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence

import numpy as np
import torch

from iddm.faces.align import similarity_transform
from iddm.faces.dlib_backend import DLIB_TEMPLATE_200, DlibLandmarks68
from iddm.weights import attributes_path

SHAPE_FILE = "face_shape.json"


@functools.cache
def real_face_shape() -> dict:
    """The shipped statistical shape model of real faces (``mean_shape``, ``modes``, ``variances``,
    ``real_distance_mean``, ...; see :func:`iddm.evaluate.geometry.fit_shape_model`)."""
    return json.loads((attributes_path() / SHAPE_FILE).read_text())


def _aligned(points: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``(N, K, 2)`` shapes mapped onto ``reference`` ``(K, 2)`` by each one's least-squares similarity transform
    (Umeyama's closed form without reflection, written in complex numbers: ``z ↦ a z + t``)."""
    z = torch.complex(points[..., 0], points[..., 1])
    r = torch.complex(reference[:, 0], reference[:, 1])
    z_centered, r_centered = z - z.mean(-1, keepdim=True), r - r.mean()
    scale = (z_centered.conj() * r_centered).sum(-1, keepdim=True) / (z_centered.abs() ** 2).sum(-1, keepdim=True)
    mapped = scale * z_centered + r.mean()
    return torch.stack([mapped.real, mapped.imag], dim=-1)


def residual_dimensions(model: dict) -> int:
    """Dimensions of aligned shape offsets that the model's modes leave out: ``2 K − 4 − modes`` (an alignment by a
    similarity transform removes four: translation, rotation, scale)."""
    return 2 * int(model["points"]) - 4 - len(model["variances"])


def mahalanobis(shapes: torch.Tensor | Sequence[np.ndarray], model: dict) -> torch.Tensor:
    """``(N, 2)`` the aligned shapes' offsets from the mean in units of real faces' standard deviation (float64): the
    RMS of their coordinates along the model's modes (each in its own), and the RMS of what the modes leave out (in
    its mean, ``residual_variance``: a probabilistic PCA). About 1 and 1 for a real face. The second matters: a warp
    that moves eye corners or lip points against each other leaves the main modes alone.

    Args:
        shapes: ``(N, K, 2)`` points ``(x, y)`` in any pixel frame (a tensor keeps its gradient), or a sequence of
            ``(K, 2)`` arrays.
    """
    points = torch.as_tensor(np.asarray(shapes) if not isinstance(shapes, torch.Tensor) else shapes)
    points = points.to(torch.float64)
    if points.numel() == 0:
        return points.new_zeros(0, 2)
    mean = torch.tensor(model["mean_shape"], dtype=torch.float64, device=points.device)
    modes = torch.tensor(model["modes"], dtype=torch.float64, device=points.device)
    variances = torch.tensor(model["variances"], dtype=torch.float64, device=points.device)
    offsets = (_aligned(points, mean) - mean).flatten(1)
    coordinates = offsets @ modes.T
    residual = offsets - coordinates @ modes
    along = (coordinates**2 / variances).mean(1).sqrt()
    across = ((residual**2).sum(1) / (residual_dimensions(model) * model["residual_variance"])).sqrt()
    return torch.stack([along, across], dim=1)


def shape_distance(shapes: torch.Tensor | Sequence[np.ndarray], model: dict | None = None) -> torch.Tensor:
    """``(N,)`` face-shape distance of ``(N, 68, 2)`` shapes, differentiable: the larger of :func:`mahalanobis`'s two
    parts, each over its real faces' mean, over real faces' mean of that (1.0 = as unusual as a typical real face)."""
    model = model or real_face_shape()
    parts = mahalanobis(shapes, model) / torch.tensor(model["real_part_means"], dtype=torch.float64)
    return parts.amax(1) / model["real_distance_mean"]


@functools.cache
def _landmarks68() -> DlibLandmarks68:
    return DlibLandmarks68()


def face_shape_points(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """dlib's 68 points ``(68, 2)`` ``(x, y)`` in the pixels of ``image`` (``uint8`` RGB ``(H, W, 3)``), for the
    face whose YuNet landmarks ``(5, 2)`` are given."""
    in_crop = _landmarks68()(image, landmarks)
    matrix = np.vstack([similarity_transform(landmarks, DLIB_TEMPLATE_200), [0.0, 0.0, 1.0]])
    back = np.linalg.inv(matrix)  # the crop was cut with ``matrix``: image -> crop
    return in_crop @ back[:2, :2].T + back[:2, 2]
