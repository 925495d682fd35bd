"""The attacker who knows IDDM's built-in decoy: project it out of every embedding, then link again.

    python benchmarks/decoy_aware_attack.py --dataset runs/eval5 --results runs/eval_v2 [--decoy iddm:composite]

IDDM pulls the faces toward a public decoy (``--decoy iddm:composite``: five ORL faces shipped with iddm).
An attacker who has read the code can embed the same five photos with any FR model, and remove the
decoy's direction ``d`` from the probes, the reference and the gallery before ranking:
``e' = normalize(e - (e · d) d)``. If the pull toward the decoy is all that hides the user, R1-U and
the user's z-score come back. This re-attacks the stored probe embeddings of every cell of an
``iddm benchmark`` output (``cells/<identity>/<method>-<level>/probes.npz``) with the same reference and
gallery as the benchmark, and prints both attacks side by side.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

from iddm.decouple.privacy import decoy_path
from iddm.evaluate.attacker import linkability_by_backend, load_backends
from iddm.evaluate.cells import embed_identities, identity_knowledge
from iddm.evaluate.dataset import discover_dataset
from iddm.evaluate.linkability import FaceSet, embed_images
from iddm.images import list_photos, load_photo


def without_direction(embeddings: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """``(N, D)`` unit rows with their component along the unit ``direction`` ``(D,)`` removed, renormalized."""
    projected = embeddings - np.outer(embeddings @ direction, direction)
    return projected / np.maximum(np.linalg.norm(projected, axis=1, keepdims=True), 1e-12)


def decoy_removed(faces: FaceSet, directions: dict[str, np.ndarray]) -> FaceSet:
    """The same faces with each backend's decoy direction projected out."""
    embeddings = {name: without_direction(e, directions[name]) for name, e in faces.embeddings.items()}
    return dataclasses.replace(faces, embeddings=embeddings)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, required=True, help="The benchmark's dataset folder.")
    parser.add_argument("--results", type=Path, required=True, help="The benchmark's output folder (cells/).")
    parser.add_argument("--decoy", default="iddm:composite", help="The decoy the attacker knows (name or folder).")
    parser.add_argument("--backends", nargs="+", default=["sface", "facenet", "dlib"], help="FR models.")
    args = parser.parse_args()
    recognizers = load_backends(args.backends)
    identities = discover_dataset(args.dataset)
    faces = embed_identities(identities, recognizers)
    decoy_photos = [load_photo(p) for p in list_photos(decoy_path(args.decoy))]
    decoy = embed_images(decoy_photos, list(recognizers.values()))
    directions = {}
    for name, e in decoy.embeddings.items():
        mean = e.mean(0)
        directions[name] = mean / np.linalg.norm(mean)
    roles = {key: "black-box" for key in recognizers}
    names = [recognizers[k].name for k in args.backends]
    print(f"\nR1-U / user z-score, as benchmarked -> with the decoy {args.decoy!r} projected out\n")
    print("| identity | cell | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for identity in identities:
        if not identity.is_user:
            continue
        reference, gallery = identity_knowledge(identity, faces)
        for cell_dir in sorted((args.results / "cells" / identity.name).glob("*/probes.npz")):
            stored = np.load(cell_dir)
            probes = FaceSet(stored["detected"], {n: stored[f"probe/{n}"] for n in names})
            plain = linkability_by_backend(probes, reference, gallery, recognizers, roles)
            aware = linkability_by_backend(
                decoy_removed(probes, directions),
                decoy_removed(reference, directions),
                decoy_removed(gallery, directions),
                recognizers,
                roles,
            )
            row = " | ".join(
                f"{plain[k].rank1:.2f} / {plain[k].user_z:.2f} -> {aware[k].rank1:.2f} / {aware[k].user_z:.2f}"
                for k in args.backends
            )
            print(f"| {identity.name} | {cell_dir.parent.name} | {row} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
