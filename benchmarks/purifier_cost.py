"""What each purifier costs on real, unprotected face photos: image quality and whether the identity survives.

    python benchmarks/purifier_cost.py [--data data/faces/lfw7] [--base_model iddm:face-prior] \
        [--backends sface mobilefacenet --mobilefacenet PATH]

An attacker's purifier is only useful if it strips a protection without erasing the person. On the first
4 photos of each person of ``--data`` (one folder per person; resized to ``--size`` px, 64 by default: the
face prior's generations; SDEdit at another size than its model's adds a resize), the first photo of each
person is purified with every default purifier of :mod:`iddm.evaluate.purify` (SDEdit with ``--base_model``)
and compared with its unpurified self: PSNR / SSIM, face detection, the FR cosine to the unpurified photo,
and rank-1 against the other photos of every person (unpurified). Prints one JSON line per purifier.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from iddm.evaluate.purify import NO_PURIFIER, build_purifiers, default_purifiers, purification_cost
from iddm.faces import detect_faces, embed_photos, load_recognizer

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "faces" / "lfw7", help="One folder per person.")
    parser.add_argument("--base_model", default="iddm:face-prior", help="The model SDEdit purifies with.")
    parser.add_argument("--backends", nargs="+", default=["sface", "mobilefacenet"], help="FR models.")
    parser.add_argument("--mobilefacenet", type=Path, help="MobileFaceNet.tflite (else $IDDM_MOBILEFACENET).")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps of SDEdit's full schedule.")
    parser.add_argument("--size", type=int, default=64, help="Photo side in px (the face prior's generations: 64).")
    args = parser.parse_args()
    if args.mobilefacenet is not None:
        os.environ["IDDM_MOBILEFACENET"] = str(args.mobilefacenet)
    images, labels = [], []
    for index, person in enumerate(sorted(p for p in args.data.iterdir() if p.is_dir())):
        for path in sorted(person.glob("*.jpg"))[:4]:
            images.append(
                np.asarray(Image.open(path).convert("RGB").resize((args.size, args.size), Image.Resampling.BICUBIC))
            )
            labels.append(index)
    probes = [i for i in range(len(images)) if i % 4 == 0]
    gallery = [i for i in range(len(images)) if i % 4 != 0]
    purifiers = build_purifiers(default_purifiers(args.base_model), args.base_model, num_inference_steps=args.steps)
    recognizers = [load_recognizer(key) for key in args.backends]

    def embed(batch):
        faces = [max(detect_faces(i), key=lambda f: f.size, default=None) for i in batch]
        return {r.name: embed_photos(r, batch, faces) for r in recognizers}, faces

    clean, _ = embed(images)
    people = len(set(labels))
    print(f"{len(probes)} probes, {len(gallery)} gallery photos of {people} people (chance {1 / people:.2f})")
    for name, purify in [(NO_PURIFIER, list), *purifiers.items()]:
        purified = purify([images[i] for i in probes])
        cost = purification_cost([images[i] for i in probes], purified)
        embedded, faces = embed(purified)
        row = {"purifier": name, "psnr_db": round(cost.psnr_db, 2), "ssim": round(cost.ssim, 3)}
        row["detected"] = sum(f is not None for f in faces) / len(faces)
        for r in recognizers:
            cosines, hits = [], []
            for k, i in enumerate(probes):
                e = embedded[r.name][k]
                if e is None or clean[r.name][i] is None:
                    continue
                cosines.append(float(e @ clean[r.name][i]))
                scores = [(float(e @ clean[r.name][j]), labels[j]) for j in gallery if clean[r.name][j] is not None]
                hits.append(max(scores)[1] == labels[i])
            row[r.name] = {
                "cosine_to_unpurified": round(float(np.mean(cosines)), 3),
                "rank1": round(float(np.mean(hits)), 2),
            }
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
