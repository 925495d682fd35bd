"""Face geometry: how far decoupling reshaped the training photos, and how plausible the avatars' face shapes are.

* :func:`landmark_displacement`: mean distance between YuNet's five landmarks (eyes, nose tip, mouth corners;
  :func:`iddm.faces.detect_faces`) of a clean training crop and of its decoupled copy, in pixels per 64 px of crop
  side (a warp that moves a mouth corner by 2 px of a 64-px face reads 2.0 at any resolution).
* :func:`shape_distances`: how unusual each face's shape is, on dlib's 68 points (jaw, brows, nose, eyes, lips:
  :class:`iddm.faces.dlib_backend.DlibLandmarks68`), which see what five points cannot (an enlarged nose, pulled
  lips, eyes out of proportion: a caricature). Each shape is aligned by a similarity transform (pose and framing
  removed) onto the mean real shape, projected on the main modes of real faces' shape variation, and its
  Mahalanobis distance there (the RMS of its coordinates in units of each mode's real standard deviation) is
  divided by real faces' mean distance (:mod:`iddm.faces.shape`). 1.0: as unusual as a typical real face; a mode
  real faces barely use (nose width against face width) counts as much as one they use a lot (mouth open).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from iddm.faces import DetectedFace
from iddm.faces.dlib_backend import DlibLandmarks68
from iddm.faces.shape import mahalanobis, real_face_shape


@functools.cache
def _landmarks68() -> DlibLandmarks68:
    return DlibLandmarks68()


def face_shapes(images: Sequence[np.ndarray], faces: Sequence[DetectedFace | None]) -> list[np.ndarray]:
    """dlib's 68 points ``(68, 2)`` of every detected face (``uint8`` RGB images, in order; undetected: skipped)."""
    return [_landmarks68()(image, face.landmarks) for image, face in zip(images, faces) if face is not None]


def shape_distances(images: Sequence[np.ndarray], faces: Sequence[DetectedFace | None]) -> np.ndarray:
    """``(n,)`` shape distance (1.0 = a typical real face) of each detected face, in order."""
    model = real_face_shape()
    return mahalanobis(face_shapes(images, faces), model) / model["real_distance_mean"]


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
