"""How linkable a perfect copy of the training photos would be: the ceiling for a personalized model's generations.

    python benchmarks/linkability_ceiling.py --dataset data/eval [--model iddm:face-prior]

A personalized latent model can at best give back its training photos X as its autoencoder renders them,
D(E(X)). For every user identity of a benchmark dataset this attacks, exactly as ``iddm benchmark`` does
(the same reference photos and gallery), three views of the training photos: the photos as given, the
model-resolution aligned crops X, and their round trip D(E(X)) (posterior mean). If vanilla's generations
are much less linkable than D(E(X)), personalization is the bottleneck; if D(E(X)) itself is not, the
autoencoder is.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from vae_filter import round_trip

from iddm.diffusion import DEFAULT_MODEL, load_backbone, prepare_photos
from iddm.evaluate.attacker import linkability_by_backend, load_backends
from iddm.evaluate.cells import embed_identities, identity_knowledge, mirror_training_photos
from iddm.evaluate.dataset import discover_dataset
from iddm.evaluate.linkability import embed_images
from iddm.images import load_photo


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, required=True, help="A benchmark dataset (set_A/set_B/set_C).")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="Base model: its resolution, crop and autoencoder.")
    parser.add_argument("--backends", nargs="+", default=["sface", "facenet", "dlib"], help="FR models.")
    args = parser.parse_args()
    identities = discover_dataset(args.dataset)
    recognizers = load_backends(args.backends)
    faces = embed_identities(identities, recognizers)
    backbone = load_backbone(args.model)
    resolution, crop = backbone.resolution, backbone.recommended("lora").get("crop", "aligned")
    roles = {key: "black-box" for key in recognizers}
    print(f"\nR1-U / match of the training photos (chance: 1 / gallery identities; {args.model}, {resolution} px)\n")
    print("| identity | view | " + " | ".join(args.backends) + " |")
    print("|---|---|" + "---|" * len(args.backends))
    means: dict[str, list[list[float]]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for identity in identities:
            if not identity.is_user:
                continue
            reference, gallery = identity_knowledge(identity, faces)
            photos_dir = mirror_training_photos(identity, Path(scratch) / identity.name)
            crops = list(prepare_photos(photos_dir, resolution, crop=crop, min_photos=1).as_uint8())
            views = {
                "photos": [load_photo(p) for p in identity.train],
                f"X ({resolution} px)": crops,
                "D(E(X))": round_trip(backbone, crops),
            }
            for view, images in views.items():
                probes = embed_images(images, list(recognizers.values()))
                result = linkability_by_backend(probes, reference, gallery, recognizers, roles)
                values = [(result[k].rank1 or 0.0, result[k].match_rate or 0.0) for k in args.backends]
                means.setdefault(view, []).append([v for pair in values for v in pair])
                cells = " | ".join(f"{r:.2f} / {m:.2f}" for r, m in values)
                print(f"| {identity.name} | {view} | {cells} |", flush=True)
    for view, rows in means.items():
        mean = np.mean(rows, axis=0)
        cells = " | ".join(f"{mean[2 * i]:.2f} / {mean[2 * i + 1]:.2f}" for i in range(len(args.backends)))
        print(f"| mean ({len(rows)}) | {view} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
