"""From a folder of user photos to training tensors, with face landmarks kept for IDDM's alignment."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch

from iddm.faces import ARCFACE_TEMPLATE_112, align_crop, detect_single_face, load_recognizer, similarity_transform
from iddm.images import PhotoError, list_photos, load_photo

logger = logging.getLogger(__name__)

CropMode = Literal["aligned", "portrait"]


@dataclass
class TrainingPhotos:
    """The user's photos prepared for personalization.

    Attributes:
        images: ``(N, 3, R, R)`` float32 RGB in ``[0, 1]``.
        landmarks: ``(N, 5, 2)`` float32 face landmarks in the pixel coordinates of ``images``
            (detected once on the clean photos; IDDM's differentiable alignment uses them).
        paths: the source photo of each image.
        coverage: ``(N, 1, R, R)`` float32, 1 where a pixel comes from inside the photo and 0 on the crop's
            mirrored border (:func:`crop_coverage`); ``None`` when unknown (all pixels count).
    """

    images: torch.Tensor
    landmarks: torch.Tensor
    paths: list[Path]
    coverage: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def as_uint8(self) -> list[np.ndarray]:
        return [to_uint8(image) for image in self.images]


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` float in ``[0, 1]`` -> ``(H, W, 3)`` uint8."""
    return (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(3, H, W)`` float32 in ``[0, 1]``."""
    return torch.from_numpy(image).permute(2, 0, 1).float() / 255.0


def aligned_template(size: int, margin: float) -> np.ndarray:
    """The ArcFace 5-point template placed in a ``size`` crop, zoomed out by ``margin`` around its center.

    ``margin = 0`` is the usual tight 112-px recognition crop scaled to ``size``; 0.25 leaves room for
    the whole head outline, which helps detectors find faces in generated crops.
    """
    return ((ARCFACE_TEMPLATE_112 - 56.0) / (1.0 + margin) + 56.0) * (size / 112.0)


def portrait_matrix(box: np.ndarray, size: int, zoom: float) -> np.ndarray:
    """Image->crop matrix of a square crop ``zoom`` times the face box, centered on it, resized to ``size``."""
    x, y, w, h = box
    side = zoom * max(w, h)
    scale = size / side
    cx, cy = x + w / 2, y + h / 2
    return np.array([[scale, 0, size / 2 - scale * cx], [0, scale, size / 2 - scale * cy]], dtype=np.float64)


def warp_crop(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """``cv2.warpAffine`` with area pre-downscaling so strong downscales do not alias."""
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if scale < 0.5:
        shrink = scale * 2  # keep the final warp's scale near 0.5, where bilinear sampling is still fine
        small = cv2.resize(image, None, fx=shrink, fy=shrink, interpolation=cv2.INTER_AREA)
        matrix = matrix.copy()
        matrix[:, :2] /= shrink
        image = small
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def crop_coverage(image_shape: tuple[int, ...], matrix: np.ndarray, size: int) -> np.ndarray:
    """``(size, size)`` bool: the pixels of ``warp_crop(image, matrix, size)`` whose centre maps inside the image;
    the others are ``warp_crop``'s mirrored border, which repeats the face's features (eyes, a second chin)."""
    rows, cols = np.mgrid[0:size, 0:size]
    centres = np.stack([cols.ravel(), rows.ravel()], axis=1).astype(np.float64)
    source = transform_points(cv2.invertAffineTransform(matrix), centres)
    height, width = image_shape[:2]
    inside = (source >= 0).all(axis=1) & (source[:, 0] <= width - 1) & (source[:, 1] <= height - 1)
    return inside.reshape(size, size)


def crop_matrix(face, resolution: int, crop: CropMode, margin: float = 0.25, portrait_zoom: float = 2.2) -> np.ndarray:
    """The image->crop matrix of a detected ``face`` (see :func:`prepare_photos` for ``crop`` and its options)."""
    if crop == "aligned":
        return similarity_transform(face.landmarks, aligned_template(resolution, margin))
    return portrait_matrix(face.box, resolution, portrait_zoom)


def prepare_photos(
    folder: str | Path,
    resolution: int,
    crop: CropMode | None = "aligned",
    margin: float = 0.25,
    portrait_zoom: float = 2.2,
    min_photos: int = 2,
    skip_bad_photos: bool = False,
) -> TrainingPhotos:
    """Validate, detect, crop and resize every photo of ``folder``; the files are only read.

    Args:
        crop: ``"aligned"``: 5-point similarity alignment to a face template (the micro backbone);
            ``"portrait"``: a square crop ``portrait_zoom`` times the face box (Stable Diffusion).
        min_photos: fewer usable photos raise ``PhotoError``.
        skip_bad_photos: skip unusable photos with a warning instead of stopping.

    Raises:
        PhotoError: listing every unusable photo (no face, corrupt, ...) at once, or too few photos.
    """
    crop = crop or "aligned"
    paths = list_photos(folder, min_photos=min_photos)
    images, landmarks, coverage, used, problems = [], [], [], [], []
    for path in paths:
        try:
            photo = load_photo(path)
            face = detect_single_face(photo, source=str(path))
        except (PhotoError, ValueError) as err:
            problems.append(str(err))
            continue
        matrix = crop_matrix(face, resolution, crop, margin, portrait_zoom)
        images.append(to_tensor(warp_crop(photo, matrix, resolution)))
        coverage.append(torch.from_numpy(crop_coverage(photo.shape, matrix, resolution)).float().unsqueeze(0))
        landmarks.append(torch.from_numpy(transform_points(matrix, face.landmarks)).float())
        used.append(path)
    if problems and not skip_bad_photos:
        raise PhotoError(
            "Some photos cannot be used (remove them, or pass --skip_bad_photos):\n  " + "\n  ".join(problems)
        )
    for problem in problems:
        logger.warning("Skipping photo: %s", problem)
    if len(used) < min_photos:
        raise PhotoError(f"{folder}: {len(used)} usable photo(s) with a face; at least {min_photos} are needed.")
    return TrainingPhotos(
        images=torch.stack(images), landmarks=torch.stack(landmarks), paths=used, coverage=torch.stack(coverage)
    )


IDENTITY_CHECK_MODELS = ("sface", "facenet")
"""FR models that must all agree before a photo is called someone else's (one model alone errs on hard pairs)."""


def _majority_outliers(embeddings: torch.Tensor, threshold: float) -> set[int]:
    """Indices outside the largest group of embeddings ``(N, D)`` matching one of them (cosine >= ``threshold``);
    all of them when no group holds more than half."""
    matches = (embeddings @ embeddings.T) >= threshold
    group = matches[int(matches.sum(1).argmax())]
    if int(group.sum()) * 2 <= len(embeddings):
        return set(range(len(embeddings)))
    return {i for i, inside in enumerate(group.tolist()) if not inside}


def identity_outliers(photos: TrainingPhotos, recognizer_names: tuple[str, ...] = IDENTITY_CHECK_MODELS) -> list[Path]:
    """Photos whose face does not match the majority identity of ``photos`` under every FR model of
    ``recognizer_names``.

    Each original photo is re-read and aligned at its own resolution by the recognizer's template: the training
    crops (64 px, say) lose detail a recognizer needs, and one model on low-resolution crops called a single
    person's photos someone else's. A photo counts as an outlier only when every model puts it outside the
    majority (see :func:`_majority_outliers`), so a true second person is still caught.
    """
    if len(photos) < 2:
        return []
    faces = []
    for path in photos.paths:
        image = load_photo(path)
        faces.append((image, detect_single_face(image, source=str(path)).landmarks))
    flagged: set[int] | None = None
    for name in recognizer_names:
        recognizer = load_recognizer(name)
        crops = [align_crop(image, points, recognizer.template, recognizer.input_size) for image, points in faces]
        with torch.no_grad():
            embeddings = recognizer.embed(torch.stack([to_tensor(c) for c in crops]))
        outliers = _majority_outliers(embeddings, recognizer.threshold)
        flagged = outliers if flagged is None else flagged & outliers
    return [path for i, path in enumerate(photos.paths) if i in flagged]


def check_single_identity(photos: TrainingPhotos, allow: bool = False) -> None:
    """Stop (or, with ``allow``, warn) when the photos show more than one person.

    Raises:
        PhotoError: naming the photos that disagree with the majority identity.
    """
    outliers = identity_outliers(photos)
    if not outliers:
        return
    names = ", ".join(p.name for p in outliers)
    message = f"face recognition says these photos show someone else than the others: {names}"
    if not allow:
        raise PhotoError(f"{message}. Remove them (or pass --allow_mixed_identities to train on all of them).")
    logger.warning("%s (going on: --allow_mixed_identities).", message)
