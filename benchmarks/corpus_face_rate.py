"""How often YuNet finds a face in the aligned crops a prior was pretrained on, grey and colour photos apart.

``benchmarks/prior_quality.py`` counts the prior's samples with a face found, per prompt; this is the same count on
the training crops themselves (the prior's resolution and margin, its excluded and held-out people left out): the
share a sampler that drew the training data exactly would reach. Every grey photo is measured and a seeded
sample of ``--colour_photos`` colour ones.

    python benchmarks/corpus_face_rate.py [--prior iddm:face-prior-128] [--corpus ../shared/data/faces]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np

from iddm.faces import detect_faces
from iddm.images import PhotoError, atomic_write_json, load_photo
from iddm.prior import PRIOR_FILE
from iddm.prior.data import aligned_crop, find_identities, is_excluded, is_gray_file, split_cfp
from iddm.weights import prior_path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prior", default="iddm:face-prior-128", help="Shipped prior name or prior folder.")
    parser.add_argument("--corpus", type=Path, default=Path("../shared/data/faces"), help="The pretraining corpus.")
    parser.add_argument("--colour_photos", type=int, default=1500, help="Colour photos sampled (seeded).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the colour sample.")
    parser.add_argument("--output", type=Path, default=None, help="JSON file to write (default: print only).")
    args = parser.parse_args(argv)

    try:
        config = json.loads((prior_path(args.prior) / PRIOR_FILE).read_text())["pretrain_config"]
        found = find_identities(args.corpus)
    except (OSError, KeyError, ValueError) as err:  # PhotoError is a ValueError
        sys.exit(f"corpus_face_rate: {err}")
    held_out = set(split_cfp(list(found), config["held_out_cfp"]))
    files = [
        path
        for identity, paths in found.items()
        if identity not in held_out and not is_excluded(identity, config["exclude"])
        for path in paths
    ]
    kinds = {"grey": [], "colour": []}
    for path in files:
        try:
            kinds["grey" if is_gray_file(path, load_photo(path)) else "colour"].append(path)
        except PhotoError:
            continue
    kinds["colour"] = random.Random(args.seed).sample(kinds["colour"], min(args.colour_photos, len(kinds["colour"])))
    result = {"prior": args.prior, "resolution": config["resolution"], "margin": config["margin"]}
    for kind, paths in kinds.items():
        found_face = []
        for path in paths:
            try:
                crop, _ = aligned_crop(load_photo(path), str(path), config["resolution"], config["margin"])
            except (PhotoError, ValueError):  # no face in the photo: pretraining skipped it too
                continue
            found_face.append(len(detect_faces(crop)) > 0)
        result[kind] = {"crops": len(found_face), "face_detection_rate": float(np.mean(found_face))}
        print(f"{kind}: YuNet finds a face in {np.mean(found_face):.3f} of {len(found_face)} training crops")
    if args.output is not None:
        atomic_write_json(args.output, result)
    return result


if __name__ == "__main__":
    main()
