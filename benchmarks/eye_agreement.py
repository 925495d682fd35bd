"""Which avatar measure agrees with the eyes: per-image measures against eye labels of the same images.

    python benchmarks/eye_agreement.py --dataset runs/eval_cfp --labels docs/results/eye_labels/*.json \
        [--prior iddm:face-prior-128] [--out docs/results/eye_agreement.md]

Each labels file (``{"benchmark": FOLDER, "labels": {identity: {cell: [16 ints]}}}``, one int per
``image_NNNN.png``; a cell written ``OTHER_FOLDER:cell`` lies in another benchmark folder) says 0 for a plausible
face, 1 for a distorted one, 2 for no face to judge. An image labelled on several sheets (or copied into several
benchmark folders: the same bytes) counts once, distorted when at least half its labels say so, and is left out
if any sheet found no face in it. For every other image whose file is present this computes:

* ``yunet_score``: YuNet's detection confidence;
* ``serfiq``: SER-FIQ (:func:`iddm.evaluate.face_quality.serfiq_scores`);
* ``shape_distance``: the 68-point face-shape distance the benchmark reports (:mod:`iddm.evaluate.geometry`);
* ``landmark_disagreement``: how far YuNet's five points and the same five read from dlib's 68 (eye centres, nose
  tip, mouth corners) disagree, over the eye distance: two detectors that agree on a real face may not on a
  distorted one;
* ``realism``: the realism score of Kynkäänniemi et al. (NeurIPS 2019) on TAEF2 features against the dataset's
  ``set_C`` faces: the largest ratio, over real faces, of a real face's distance to its k-th nearest real neighbour
  to the image's distance from it (above 1: inside the real faces' manifold);
* ``prior_denoising``: how badly the base prior (``--prior``, the model the avatars were personalized from)
  denoises the image: the mean squared error of its one-step x̂0 in latent space at ``DENOISING_TIMESTEPS``, with
  the same seeded noise for every image and the prompt "a photo of a person". A face the prior finds implausible
  should be harder for it to restore.

and prints, per measure, the ROC AUC of telling distorted from plausible faces (1.0 perfect, 0.5 chance, the
measure's sign chosen so that higher reads "distorted"), over all labelled images and within the defense's cells
only (which a measure that only tells cells apart cannot do), with the mean per cell kind.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from iddm.diffusion.backbone import Conditioning
from iddm.diffusion.loading import load_backbone
from iddm.diffusion.objectives import predicted_x0
from iddm.evaluate.face_quality import realism_features, serfiq_scores
from iddm.evaluate.face_utility import largest_face, photos_of, real_face_features
from iddm.evaluate.geometry import face_shapes
from iddm.faces.shape import shape_distance
from iddm.images import atomic_write_text, list_photos, load_photo

REALISM_K = 3
"""Neighbours defining a real face's radius (Kynkäänniemi et al. use k = 3)."""

DENOISING_TIMESTEPS = (500, 700)
"""Where the prior's one-step error told the labels apart best (t = 50..700 tried: AUC rises with t to 500)."""
DENOISING_DRAWS = 2
DENOISING_PROMPT = "a photo of a person"

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


@torch.no_grad()
def prior_denoising_errors(backbone, images: list[np.ndarray], batch_size: int = 16, seed: int = 0) -> np.ndarray:
    """``(N,)`` mean squared latent error of ``backbone``'s one-step x̂0 for RGB ``uint8`` ``images`` of its
    resolution, averaged over :data:`DENOISING_TIMESTEPS` and :data:`DENOISING_DRAWS` noise draws (the same draws
    for every image, so differences come from the images)."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((DENOISING_DRAWS, len(DENOISING_TIMESTEPS), *backbone.latent_shape), generator=generator)
    alpha_bar = backbone.noise_scheduler.alphas_cumprod
    prompt = backbone.encode_prompts([DENOISING_PROMPT])  # one text encoding, shared by every batch
    errors = np.zeros(len(images))
    for start in range(0, len(images), batch_size):
        pixels = np.stack(images[start : start + batch_size])
        latents = backbone.to_diffusion_space(torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0)
        n = len(latents)
        added = {key: value.expand(n, *value.shape[1:]) for key, value in prompt.added.items()}  # SDXL's extras
        conditioning = Conditioning(prompt.hidden_states.expand(n, -1, -1), added)
        for j, t in enumerate(DENOISING_TIMESTEPS):
            timesteps = torch.full((len(latents),), t, dtype=torch.long)
            for draw in noise[:, j]:
                noisy = backbone.noise_scheduler.add_noise(latents, draw.expand_as(latents), timesteps)
                prediction = backbone.predict(noisy, timesteps, conditioning)
                x0 = predicted_x0(backbone.prediction_type, noisy, prediction, alpha_bar[timesteps])
                errors[start : start + len(latents)] += ((x0 - latents) ** 2).mean((1, 2, 3)).numpy()
    return errors / (len(DENOISING_TIMESTEPS) * DENOISING_DRAWS)


def image_measures(
    images: list[np.ndarray], real: np.ndarray, radius: np.ndarray, backbone
) -> dict[str, list[float | None]]:
    """Every candidate measure of each image (``None`` without a face); higher reads more distorted."""
    faces = [largest_face(image) for image in images]
    points = face_shapes(images, faces)  # dlib's 68 once per face, for the shape distance and the five points
    shapes = iter(zip(points, shape_distance(points).numpy()))
    serfiq = serfiq_scores(images, faces)
    realism = realism_scores(realism_features(images), real, radius)
    denoising = prior_denoising_errors(backbone, images)
    rows: dict[str, list[float | None]] = {k: [] for k in ("yunet_score", "serfiq", "shape_distance")}
    rows.update(landmark_disagreement=[], realism=[], prior_denoising=[])
    for face, quality, real_score, error in zip(faces, serfiq, realism, denoising):
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
        rows["prior_denoising"].append(float(error))
    return rows


def pooled_labels(files: list[Path]) -> dict[Path, list[int]]:
    """Every labelled image's path -> its labels over all ``files`` (see the module docstring for the format)."""
    pooled: dict[Path, list[int]] = {}
    for file in files:
        content = json.loads(file.read_text())
        for identity, cells in content["labels"].items():
            for cell, marks in cells.items():
                benchmark, _, name = cell.rpartition(":")
                folder = Path(benchmark or content["benchmark"]) / "cells" / identity / name / "images"
                for i, mark in enumerate(marks):
                    pooled.setdefault(folder / f"image_{i:04d}.png", []).append(mark)
    return pooled


def merge_copies(pooled: dict[Path, list[int]]) -> dict[Path, list[int]]:
    """The images of ``pooled`` present on disk, copies of one file (a vanilla cell copied into several benchmark
    folders) merged under the first path seen, with all their labels."""
    merged: dict[str, tuple[Path, list[int]]] = {}
    for path, marks in pooled.items():
        if path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            merged.setdefault(digest, (path, []))[1].extend(marks)
    return dict(merged.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, required=True, help="The benchmarks' dataset (its set_C photos).")
    parser.add_argument("--labels", type=Path, nargs="+", required=True, help="Eye labels (module docstring).")
    parser.add_argument("--prior", default="iddm:face-prior-128", help="The base model the avatars came from.")
    parser.add_argument("--resolution", type=int, default=128, help="Crop size of the real faces (the prior's).")
    parser.add_argument("--out", type=Path, help="Also write the table here (markdown).")
    args = parser.parse_args()

    pooled = pooled_labels(args.labels)
    present = merge_copies(pooled)
    backbone = load_backbone(args.prior)
    real_paths = [p for folder in sorted(args.dataset.glob("*/set_C")) for p in list_photos(folder, min_photos=0)]
    real = real_face_features(photos_of(real_paths), args.resolution, "aligned")
    radius = knn_radii(real)
    measured, truth, defense = {}, [], []
    for folder in sorted({path.parent for path in present}):
        paths = sorted(path for path in present if path.parent == folder)
        for name, values in image_measures([load_photo(p) for p in paths], real, radius, backbone).items():
            measured.setdefault(name, []).extend(values)
        # A face some sheet found missing is left out (2); else distorted when at least half the sheets said so.
        truth.extend(2 if 2 in present[p] else int(np.mean(present[p]) >= 0.5) for p in paths)
        defense.extend([not folder.parent.name.startswith("vanilla")] * len(paths))
    truth, defense = np.array(truth), np.array(defense)
    missing = sum(not path.is_file() for path in pooled)
    lines = [
        f"{len(real)} real faces; {int((truth == 1).sum())} distorted and {int((truth == 0).sum())} plausible faces "
        f"by eye, {int((truth == 2).sum())} without a face to judge ({len(args.labels)} label files; {missing} "
        f"labelled images not found; {len(pooled) - missing - len(present)} copies merged)",
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
