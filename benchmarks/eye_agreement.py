"""Which avatar measure agrees with the eyes: per-image measures against eye labels of the same images.

    python benchmarks/eye_agreement.py --benchmark runs/bench_cfp128_sl20 --dataset runs/eval_cfp \
        --labels docs/results/eye_labels/cfp128_shapelim20.json [--out docs/results/eye_agreement.md]

The labels (``{"labels": {identity: {cell: [16 ints]}}}``, one per ``image_NNNN.png``) say 0 for a plausible face,
1 for a distorted one, 2 for no face to judge. For every image with a face and a label 0 or 1 this computes:

* ``yunet_score``: YuNet's detection confidence;
* ``serfiq``: SER-FIQ (:func:`iddm.evaluate.face_quality.serfiq_scores`);
* ``shape_distance``: the 68-point face-shape distance the benchmark reports (:mod:`iddm.evaluate.geometry`);
* ``landmark_disagreement``: how far YuNet's five points and the same five read from dlib's 68 (eye centres, nose
  tip, mouth corners) disagree, over the eye distance: two detectors that agree on a real face may not on a
  distorted one;
* ``realism``: the realism score of Kynkäänniemi et al. (NeurIPS 2019) on TAEF2 features against the dataset's
  ``set_C`` faces: the largest ratio, over real faces, of a real face's distance to its k-th nearest real neighbour
  to the image's distance from it (above 1: inside the real faces' manifold).

and prints, per measure, the ROC AUC of telling distorted from plausible faces (1.0 perfect, 0.5 chance, the
measure's sign chosen so that higher reads "distorted"), over all labelled images and within the defense's cells
only (which a measure that only tells cells apart cannot do), with the mean per cell kind.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from iddm.evaluate.face_quality import realism_features, serfiq_scores
from iddm.evaluate.face_utility import largest_face, photos_of, real_face_features
from iddm.evaluate.geometry import face_shapes
from iddm.faces.shape import shape_distance
from iddm.images import atomic_write_text, list_photos, load_photo

REALISM_K = 3
"""Neighbours defining a real face's radius (Kynkäänniemi et al. use k = 3)."""

DLIB_FIVE = {"eyes": (range(36, 42), range(42, 48)), "nose": 30, "mouth": (48, 54)}


def five_of_68(points: np.ndarray) -> np.ndarray:
    """YuNet's five points ``(5, 2)`` (image-left eye first) read from dlib's 68 ``(68, 2)``."""
    left, right = (points[list(r)].mean(0) for r in DLIB_FIVE["eyes"])
    return np.stack([left, right, points[DLIB_FIVE["nose"]], *(points[i] for i in DLIB_FIVE["mouth"])])


def knn_radii(real: np.ndarray, k: int = REALISM_K) -> np.ndarray:
    """``(M,)`` distance of each of ``real`` ``(M, D)`` to its k-th nearest other one."""
    within = np.linalg.norm(real[:, None] - real[None], axis=-1)
    return np.sort(within, axis=1)[:, k]  # column 0 is the face itself


def realism_scores(features: np.ndarray, real: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """``(N,)`` realism score of ``features`` ``(N, D)`` against ``real`` ``(M, D)`` with its :func:`knn_radii`
    (Kynkäänniemi et al. 2019)."""
    to_real = np.linalg.norm(features[:, None] - real[None], axis=-1)
    return (radius[None] / np.maximum(to_real, 1e-12)).max(1)


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a positive scores above a negative (ties count half)."""
    pos, neg = scores[positive], scores[~positive]
    greater = (pos[:, None] > neg[None]).mean()
    return float(greater + 0.5 * (pos[:, None] == neg[None]).mean())


def image_measures(images: list[np.ndarray], real: np.ndarray, radius: np.ndarray) -> dict[str, list[float | None]]:
    """Every candidate measure of each image (``None`` without a face); higher reads more distorted."""
    faces = [largest_face(image) for image in images]
    points = face_shapes(images, faces)  # dlib's 68 once per face, for the shape distance and the five points
    shapes = iter(zip(points, shape_distance(points).numpy()))
    serfiq = serfiq_scores(images, faces)
    realism = realism_scores(realism_features(images), real, radius)
    rows: dict[str, list[float | None]] = {k: [] for k in ("yunet_score", "serfiq", "shape_distance")}
    rows.update(landmark_disagreement=[], realism=[])
    for face, quality, real_score in zip(faces, serfiq, realism):
        if face is None:
            for values in rows.values():
                values.append(None)
            continue
        face_points, distance = next(shapes)
        five = five_of_68(face_points)
        eye_distance = float(np.linalg.norm(face.landmarks[0] - face.landmarks[1]))
        rows["yunet_score"].append(-face.score)
        rows["serfiq"].append(-quality)
        rows["shape_distance"].append(float(distance))
        disagreement = np.linalg.norm(five - face.landmarks, axis=1).mean() / eye_distance
        rows["landmark_disagreement"].append(float(disagreement))
        rows["realism"].append(-float(real_score))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmark", type=Path, required=True, help="A benchmark folder holding the cells' images.")
    parser.add_argument("--dataset", type=Path, required=True, help="The benchmark's dataset (its set_C photos).")
    parser.add_argument("--labels", type=Path, required=True, help="Eye labels (see the module docstring).")
    parser.add_argument("--resolution", type=int, default=128, help="Crop size of the real faces (the prior's).")
    parser.add_argument("--out", type=Path, help="Also write the table here (markdown).")
    args = parser.parse_args()

    labels = json.loads(args.labels.read_text())["labels"]
    real_paths = [p for folder in sorted(args.dataset.glob("*/set_C")) for p in list_photos(folder, min_photos=0)]
    real = real_face_features(photos_of(real_paths), args.resolution, "aligned")
    radius = knn_radii(real)
    measured, truth, defense = {}, [], []
    for identity, cells in labels.items():
        for cell, marks in cells.items():
            folder = args.benchmark / "cells" / identity / cell / "images"
            images = [load_photo(folder / f"image_{i:04d}.png") for i in range(len(marks))]
            for name, values in image_measures(images, real, radius).items():
                measured.setdefault(name, []).extend(values)
            truth.extend(marks)
            defense.extend([not cell.startswith("vanilla")] * len(marks))
    truth, defense = np.array(truth), np.array(defense)
    lines = [
        f"{len(real)} real faces; {int((truth == 1).sum())} distorted and {int((truth == 0).sum())} plausible faces "
        f"by eye, {int((truth == 2).sum())} without a face to judge",
        "",
        "| measure (higher = more distorted) | AUC, all labelled | AUC, defense cells only | mean vanilla | "
        "mean defense | faces measured |",
        "|---|---|---|---|---|---|",
    ]
    for name, values in measured.items():
        scores = np.array([np.nan if v is None else v for v in values])
        keep = np.isfinite(scores) & (truth < 2)
        inside = keep & defense
        lines.append(
            f"| {name} | {roc_auc(scores[keep], truth[keep] == 1):.2f} | "
            f"{roc_auc(scores[inside], truth[inside] == 1):.2f} | {np.nanmean(scores[~defense]):.3f} | "
            f"{np.nanmean(scores[defense]):.3f} | {int(keep.sum())} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        atomic_write_text(args.out, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
