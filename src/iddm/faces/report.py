"""``iddm faces PHOTOS...``: detect faces and compare photos pairwise under several face recognizers.

Unusable photos (unreadable, corrupt, no face, face too small) do not stop the report: their row and
column of every similarity matrix are ``null`` and their error is kept in ``detections``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from iddm.faces.base import DetectedFace
from iddm.faces.detect import FaceNotFoundError, detect_faces, select_single_face
from iddm.faces.registry import embed_photos, load_recognizer
from iddm.images import PhotoError, load_photo

logger = logging.getLogger(__name__)


def faces_report(paths: Sequence[str | Path], backends: Sequence[str], min_face_size: int = 20) -> dict:
    """Detect the face of each photo and compare all pairs under each recognizer.

    Args:
        paths: photo files.
        backends: recognizer names for :func:`iddm.faces.registry.load_recognizer` (e.g. ``["sface", "dlib"]``).
        min_face_size: smallest usable face in pixels (see :func:`iddm.faces.detect.detect_single_face`).

    Returns:
        A JSON-serializable dict::

            {"photos": [path, ...],
             "detections": [{"face_found": bool, "num_faces": int, "face_size_px": float | None,
                             "score": float | None, "box": [x, y, w, h] | None, "error": str | None}, ...],
             "backends": {name: {"differentiable": bool, "threshold": float,
                                 "similarity": [[float | None, ...], ...]}}}

        ``similarity[i][j]`` is the cosine similarity of photos i and j (higher = more alike; the pair is
        called the same person when it is ``>= threshold``), ``None`` when either photo has no usable face.
    """
    photos = [str(p) for p in paths]
    images: list[np.ndarray | None] = []
    faces: list[DetectedFace | None] = []
    detections = []
    for path in photos:
        entry = {"face_found": False, "num_faces": 0, "face_size_px": None, "score": None, "box": None, "error": None}
        image, face = None, None
        try:
            image = load_photo(path)
            found = detect_faces(image)
            entry["num_faces"] = len(found)
            face = select_single_face(found, source=path, min_face_size=min_face_size)
        except (PhotoError, FaceNotFoundError) as err:
            entry["error"] = str(err)
            face = None
        if face is not None:
            entry.update(
                face_found=True,
                face_size_px=round(face.size, 1),
                score=round(face.score, 3),
                box=[round(float(v), 1) for v in face.box],
            )
        images.append(image)
        faces.append(face)
        detections.append(entry)

    report_backends = {}
    for name in backends:
        recognizer = load_recognizer(name)
        usable = [i for i, face in enumerate(faces) if face is not None]
        embeddings = embed_photos(recognizer, [images[i] for i in usable], [faces[i] for i in usable])
        similarity: list[list[float | None]] = [[None] * len(photos) for _ in photos]
        for a, i in enumerate(usable):
            for b, j in enumerate(usable):
                similarity[i][j] = round(float(embeddings[a] @ embeddings[b]), 4)
        report_backends[name] = {
            "differentiable": bool(recognizer.differentiable),
            "threshold": float(recognizer.threshold),
            "similarity": similarity,
        }
    return {"photos": photos, "detections": detections, "backends": report_backends}


def format_faces_report(report: dict) -> str:
    """A readable text version of :func:`faces_report`'s result: detections, then one matrix per backend.

    In the matrices ``*`` marks pairs at or above the backend's threshold (called the same person) and
    ``-`` pairs with a photo without a usable face.
    """
    photos = report["photos"]
    names = [Path(p).name for p in photos]
    width = max([len(n) for n in names] + [5])
    lines = ["Faces", f"  {'#':>2}  {'photo':<{width}}  faces  size px  result"]
    for k, (name, det) in enumerate(zip(names, report["detections"]), start=1):
        size = f"{det['face_size_px']:.0f}" if det["face_size_px"] is not None else "-"
        result = "ok" if det["face_found"] else det["error"] or "no face"
        lines.append(f"  {k:>2}  {name:<{width}}  {det['num_faces']:>5}  {size:>7}  {result}")
    for backend, info in report["backends"].items():
        kind = "differentiable" if info["differentiable"] else "black-box only"
        lines += ["", f"{backend} ({kind}; cosine similarity, * = same person at >= {info['threshold']:.3f})"]
        lines.append("  " + " " * 4 + "".join(f"{k:>9}" for k in range(1, len(photos) + 1)))
        for k, row in enumerate(info["similarity"], start=1):
            cells = []
            for value in row:
                if value is None:
                    cells.append(f"{'-':>9}")
                else:
                    mark = "*" if value >= info["threshold"] else " "
                    cells.append(f"{value:>8.3f}{mark}")
            lines.append(f"  {k:>4}" + "".join(cells))
    return "\n".join(lines)
