"""Fit the statistical face-shape model that ``shape_distance`` reads (``iddm/weights/attributes/face_shape.json``).

UTKFace's photos (Z. Zhang, Y. Song, H. Qi, CVPR 2017; **non-commercial research only**, as is the model this
writes) are detected with YuNet; dlib's 68 points of each face (:class:`iddm.faces.dlib_backend.DlibLandmarks68`)
are aligned by generalized Procrustes, and the main modes of their variation are kept
(:func:`iddm.evaluate.geometry.fit_shape_model`). The same held-out collection-minute groups as the attribute
model (``benchmarks/train_attributes.py``) are left out of the fit: their mean distance should read about 1.0.
Only the mean shape, the modes and their variances are written, no photo or landmark of anyone.

Usage::

    nice -n 19 python benchmarks/fit_face_shape.py --data ../shared/data/faces/utkface [--modes 24]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from train_attributes import OUT, held_out, utkface_faces

from iddm.evaluate.geometry import face_shapes, fit_shape_model
from iddm.faces.shape import SHAPE_FILE, shape_distance
from iddm.images import atomic_write_json
from iddm.weights import write_manifest


def load_shapes(data: Path) -> tuple[np.ndarray, list[str], dict]:
    """68-point shapes ``(N, 68, 2)`` of every photo with a face, their split groups, and what was skipped."""
    shapes, groups, skipped = [], [], {"bad_name": 0, "no_face": 0}
    started = time.monotonic()
    for count, (photo, face, labels) in enumerate(utkface_faces(data, skipped), 1):
        shapes.append(face_shapes([photo], [face])[0])
        groups.append(labels[3])
        if count % 1000 == 0:
            print(f"{count} faces, {time.monotonic() - started:.0f} s", flush=True)
    return np.stack(shapes), groups, skipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/faces/utkface"), help="UTKFace's photos.")
    parser.add_argument("--modes", type=int, default=24, help="Principal shape modes kept.")
    parser.add_argument("--held_out", type=float, default=0.2, help="Share of groups left out of the fit.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the held-out groups (the attribute model's).")
    args = parser.parse_args()
    shapes, groups, skipped = load_shapes(args.data)
    test = held_out(groups, args.held_out, args.seed)
    model = fit_shape_model(list(shapes[~test]), args.modes)
    held = shape_distance(list(shapes[test]), model).numpy()
    model["data"] = "UTKFace (Zhang, Song and Qi, CVPR 2017); non-commercial research only"
    model["skipped"] = skipped
    model["held_out_distance"] = {"faces": int(test.sum()), "mean": float(held.mean()), "std": float(held.std())}
    print(json.dumps({k: v for k, v in model.items() if k not in ("mean_shape", "modes", "variances")}, indent=1))
    atomic_write_json(OUT / SHAPE_FILE, model)
    write_manifest(OUT)


if __name__ == "__main__":
    main()
