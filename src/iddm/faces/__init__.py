"""Face detection (YuNet), 5-point alignment (numpy and differentiable torch) and face recognizers.

Recognizers by name: :func:`load_recognizer` (``sface``, ``facenet``, ``dlib``, ``arcface``).
"""

from iddm.faces.align import (
    ARCFACE_TEMPLATE_112,
    FaceAligner,
    align_crop,
    resize_matrices,
    scaled_template,
    similarity_transform,
    warp_faces,
)
from iddm.faces.base import DetectedFace, FaceRecognizer
from iddm.faces.detect import FaceNotFoundError, detect_faces, detect_single_face, select_single_face
from iddm.faces.registry import BUILTIN_DECOYS, RECOGNIZERS, embed_photos, load_recognizer
from iddm.faces.statistics import impostor_statistics

__all__ = [
    "ARCFACE_TEMPLATE_112",
    "BUILTIN_DECOYS",
    "RECOGNIZERS",
    "DetectedFace",
    "FaceAligner",
    "FaceNotFoundError",
    "FaceRecognizer",
    "align_crop",
    "detect_faces",
    "detect_single_face",
    "embed_photos",
    "impostor_statistics",
    "load_recognizer",
    "resize_matrices",
    "scaled_template",
    "select_single_face",
    "similarity_transform",
    "warp_faces",
]
