"""How far the warp moved each decoupled training photo's face shape: the geometry against what dlib re-detects.

    python benchmarks/warp_shape.py --benchmark runs/bench_cfp128n --dataset runs/eval_cfp \
        --cells iddm-medium-seed0 iddm-high-seed0 cloak-high-seed0

For every identity and listed cell of an ``iddm benchmark`` folder, reads the saved warp
(``run/private/decoupled_delta.safetensors``) and the decoupled photos, crops the clean training photos again as the
run did, and prints the mean face-shape distance (:func:`iddm.faces.shape.shape_distance`; 1.0 = a typical real face)
of the clean photos, of the decoupled photos as dlib's 68-point predictor re-detects them, and of the clean photos'
68 points carried through the warp analytically (:func:`iddm.decouple.shape_limit.warped_points`: what
``--shape_limit`` holds), mean ± sd over identities, with the mean distance (px) between the re-detected and the
carried points, and between the re-detected and the unmoved ones.
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from iddm.decouple.shape_limit import warped_points
from iddm.diffusion import TrainingPhotos, prepare_photos
from iddm.faces import detect_faces
from iddm.faces.shape import face_shape_points, shape_distance
from iddm.images import load_photo
from iddm.run_layout import RunManifest


@functools.cache
def _clean_photos(folder: Path, resolution: int, crop: str) -> tuple[TrainingPhotos, np.ndarray]:
    """The training photos cropped as a run cropped them, and their 68 points (once per identity, for every cell)."""
    photos = prepare_photos(folder, resolution, crop)
    return photos, np.stack([face_shape_points(i, m) for i, m in zip(photos.as_uint8(), photos.landmarks.numpy())])


def _cell_numbers(cell: Path, dataset: Path, identity: str) -> dict[str, float] | None:
    private = cell / "run" / "private"
    if not (private / "decoupled_delta.safetensors").is_file():
        return None
    run = RunManifest.load(cell / "run")
    photos, clean = _clean_photos(dataset / identity / "set_A", run.model.resolution, run.crop or "aligned")
    flow = load_file(private / "decoupled_delta.safetensors").get("flow")
    carried = (
        clean if flow is None else warped_points(flow.float(), torch.tensor(clean).float(), photos.images.shape[-2:])
    )
    detected = []
    for path in photos.paths:  # the decoupled photo of each clean one, by name
        image = load_photo(private / "decoupled_photos" / f"{path.stem}.png")
        faces = detect_faces(image)
        detected.append(face_shape_points(image, faces[0].landmarks) if faces else np.full((68, 2), np.nan))
    detected = np.stack(detected)
    found = ~np.isnan(detected).any(axis=(1, 2))
    carried = np.asarray(carried, dtype=np.float64)
    return {
        "clean": float(shape_distance(clean).mean()),
        "redetected": float(shape_distance(detected[found]).mean()),
        "carried": float(shape_distance(carried).mean()),
        "px_to_carried": float(np.linalg.norm(detected[found] - carried[found], axis=-1).mean()),
        "px_to_unmoved": float(np.linalg.norm(detected[found] - clean[found], axis=-1).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmark", type=Path, required=True, help="An `iddm benchmark` output folder.")
    parser.add_argument(
        "--dataset", type=Path, required=True, help="The benchmark's dataset (set_A: the clean photos)."
    )
    parser.add_argument("--cells", nargs="+", required=True, help="Cell folder names, e.g. iddm-high-seed0.")
    parser.add_argument("--output", type=Path, default=None, help="Also write the per-identity numbers as JSON.")
    args = parser.parse_args()
    results: dict[str, dict[str, dict[str, float]]] = {}
    for cell_name in args.cells:
        for identity in sorted(p for p in (args.benchmark / "cells").iterdir() if p.is_dir()):
            numbers = _cell_numbers(identity / cell_name, args.dataset, identity.name)
            if numbers is not None:
                results.setdefault(cell_name, {})[identity.name] = numbers
    print(
        "| cell | identities | clean | decoupled, re-detected | decoupled, carried through the warp "
        "| re-detected to carried (px) | re-detected to unmoved (px) |\n|---|---|---|---|---|---|---|"
    )
    for cell_name, per_identity in results.items():
        keys = ["clean", "redetected", "carried", "px_to_carried", "px_to_unmoved"]
        cells = [np.array([n[k] for n in per_identity.values()]) for k in keys]
        print(
            f"| {cell_name} | {len(per_identity)} | "
            + " | ".join(f"{c.mean():.2f} ± {c.std():.2f}" for c in cells)
            + " |"
        )
    if args.output:
        args.output.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
