"""Measure FR models' verification accuracy and the cosine threshold at a false accept rate on CFP frontal photos.

    python benchmarks/verification_threshold.py --cfp ../shared/data/faces/cfp --backends mobilefacenet sface \
        [--num_people 120] [--mobilefacenet PATH]

Takes the first ``--num_people`` CFP identities (sorted) that are *not* in iddm's CFP evaluation split
(``benchmarks/cfp_eval_split.json``), their 10 frontal photos each; detects the face of each photo with
YuNet (on a padded copy: CFP photos are tight crops), embeds it with each FR model and prints, per model:
genuine and impostor pair counts, the threshold at FAR 1e-3 and 1e-2 (:func:`calibrate_threshold`), TAR
there, the equal error rate, the FAR/TAR at the model's own threshold, and rank-1 identification
(each photo against every other photo). CFP is research, non-commercial: the photos are read from the
folder named and never committed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np

from iddm.evaluate.metrics import calibrate_threshold
from iddm.faces import detect_faces, embed_photos, load_recognizer
from iddm.images import load_photo

ROOT = Path(__file__).resolve().parents[1]


def padded(image: np.ndarray) -> np.ndarray:
    """A copy with a 25% reflected border, so the detector sees the whole face of a tight crop."""
    pad = max(image.shape[:2]) // 4
    return cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REFLECT_101)


def verification(embeddings: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """Pairwise verification and rank-1 of unit ``embeddings`` ``(N, D)`` with identity ``labels`` ``(N,)``."""
    scores = embeddings @ embeddings.T
    upper = np.triu(np.ones_like(scores, dtype=bool), k=1)
    same = labels[:, None] == labels[None, :]
    genuine, impostor = scores[upper & same], scores[upper & ~same]
    result: dict[str, float] = {"genuine_pairs": int(genuine.size), "impostor_pairs": int(impostor.size)}
    for far in (1e-3, 1e-2):
        t = calibrate_threshold(impostor, far)
        result[f"threshold_far{far:g}"] = t
        result[f"tar_far{far:g}"] = float((genuine >= t).mean())
    grid = np.sort(np.concatenate([genuine, impostor]))
    far_curve = 1 - np.searchsorted(np.sort(impostor), grid, side="left") / impostor.size
    frr_curve = np.searchsorted(np.sort(genuine), grid, side="left") / genuine.size
    i = int(np.argmin(np.abs(far_curve - frr_curve)))
    result["eer"] = float((far_curve[i] + frr_curve[i]) / 2)
    result["eer_threshold"] = float(grid[i])
    result["own_threshold"] = threshold
    result["far_at_own"] = float((impostor >= threshold).mean())
    result["tar_at_own"] = float((genuine >= threshold).mean())
    np.fill_diagonal(scores, -np.inf)
    result["rank1"] = float((labels[scores.argmax(1)] == labels).mean())
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cfp", type=Path, required=True, help="The CFP folder (NNN_Name/frontal_NN.jpg).")
    parser.add_argument("--backends", nargs="+", default=["mobilefacenet", "sface"], help="FR models to measure.")
    parser.add_argument("--num_people", type=int, default=120, help="CFP identities outside the evaluation split.")
    parser.add_argument("--mobilefacenet", type=Path, help="MobileFaceNet.tflite (else $IDDM_MOBILEFACENET).")
    parser.add_argument("--output", type=Path, help="Also write the results as JSON here.")
    args = parser.parse_args()
    if args.mobilefacenet is not None:
        os.environ["IDDM_MOBILEFACENET"] = str(args.mobilefacenet)
    split = json.loads((ROOT / "benchmarks" / "cfp_eval_split.json").read_text())
    held_out = {Path(n).name for n in split["identities"]}
    people = [p for p in sorted(args.cfp.iterdir()) if p.is_dir() and p.name not in held_out][: args.num_people]
    images, faces, labels = [], [], []
    for index, person in enumerate(people):
        for path in sorted(person.glob("frontal_*.jpg")):
            image = padded(load_photo(path))
            found = detect_faces(image)
            if found:
                images.append(image)
                faces.append(found[0])
                labels.append(index)
    labels_array = np.array(labels)
    print(f"{len(images)} faces of {len(set(labels))} CFP people (frontal, outside the evaluation split)")
    results = {}
    for key in args.backends:
        recognizer = load_recognizer(key)
        embeddings = np.stack([e.numpy() for e in embed_photos(recognizer, images, faces)])
        results[key] = verification(embeddings, labels_array, recognizer.threshold)
        print(key, json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in results[key].items()}))
    if args.output:
        args.output.write_text(json.dumps({"people": len(set(labels)), "faces": len(images), **results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
