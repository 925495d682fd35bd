"""The attacker who purifies generations before linking them: blur of growing strength, then attack again.

    python benchmarks/purification_attack.py --dataset runs/eval5 --results runs/eval_final [--sigmas 0 1 2 3]

A perturbation found by gradient steps on FR surrogates often lives in fine texture; the attacker, who
has read iddm's code, can low-pass the generations before embedding them and keep whichever strength
links best (an adaptive attacker: the maximum over the sweep, never just one fixed condition). This
re-attacks the stored generations of every finished cell of an ``iddm benchmark`` output with the same
reference and gallery as the benchmark, after a Gaussian blur of ``sigma`` px per 64 px of image side
(:func:`iddm.evaluate.robustness.relative_blur`), and prints per cell R1-U / match rate / user z for each
strength and the attacker's best R1-U, then the mean per method over identities.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from iddm.evaluate.attacker import linkability_by_backend, load_backends
from iddm.evaluate.cells import CELL_FILE, embed_identities, identity_knowledge, load_cell
from iddm.evaluate.dataset import discover_dataset
from iddm.evaluate.linkability import embed_images
from iddm.evaluate.results import cell_name
from iddm.evaluate.robustness import relative_blur
from iddm.images import atomic_write_json, load_photo


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, required=True, help="The benchmark's dataset folder.")
    parser.add_argument("--results", type=Path, required=True, help="The benchmark's output folder (cells/).")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0, 1, 2, 3], help="Blur per 64 px of side.")
    parser.add_argument("--backends", nargs="+", default=["sface", "facenet", "dlib"], help="FR models.")
    parser.add_argument("--output", type=Path, help="JSON of the results (default: RESULTS/purification.json).")
    args = parser.parse_args()
    recognizers = load_backends(args.backends)
    dataset = discover_dataset(args.dataset)
    faces = embed_identities(dataset, recognizers)  # the gallery holds every identity
    identities = {i.name: i for i in dataset if i.is_user}
    cells = sorted(args.results.glob(f"cells/*/*/{CELL_FILE}"))
    if not cells:
        print(f"No finished cell under {args.results}/cells.", file=sys.stderr)
        return 2
    results = []
    names = " | ".join(f"σ {s:g}" for s in args.sigmas)
    for key in args.backends:
        print(f"\n{key}: R1-U / match / user z after a blur of σ px per 64 px; best = the attacker's best R1-U\n")
        print(f"| identity | cell | {names} | best |")
        print("|---|---|" + "---|" * (len(args.sigmas) + 1))
        for path in cells:
            record = load_cell(path.parent)
            if record.identity not in identities:
                continue
            images = [load_photo(p) for p in sorted((args.results / record.images_dir).glob("image_*.png"))]
            reference, gallery = identity_knowledge(identities[record.identity], faces)
            row = {"identity": record.identity, "method": record.method, "level": record.level, "seed": record.seed}
            row |= {"backend": key, "by_sigma": {}}
            only = {key: recognizers[key]}
            role = record.backends[key].role if key in record.backends else "unknown"
            for sigma in args.sigmas:
                probes = embed_images([relative_blur(i, sigma) for i in images], list(only.values()))
                m = linkability_by_backend(probes, reference, gallery, only, {key: role})[key]
                row["by_sigma"][sigma] = {"rank1": m.rank1, "match_rate": m.match_rate, "user_z": m.user_z}
            row["best_rank1"] = max((v["rank1"] or 0.0) for v in row["by_sigma"].values())
            results.append(row)
            values = " | ".join(
                f"{v['rank1'] or 0:.2f} / {v['match_rate'] or 0:.2f} / {v['user_z'] or 0:+.2f}"
                for v in row["by_sigma"].values()
            )
            print(f"| {record.identity} | {cell_name(record)} | {values} | {row['best_rank1']:.2f} |", flush=True)
    print("\nMean over identities (each averaged over its seeds): R1-U per σ, and the attacker's best\n")
    print(f"| FR | method-level | {names} | best |")
    print("|---|---|" + "---|" * (len(args.sigmas) + 1))
    groups: dict[tuple[str, str], dict[str, list[list[float]]]] = defaultdict(lambda: defaultdict(list))
    for row in results:
        values = [row["by_sigma"][s]["rank1"] or 0.0 for s in args.sigmas] + [row["best_rank1"]]
        groups[(row["backend"], f"{row['method']}-{row['level']}")][row["identity"]].append(values)
    for (key, label), by_identity in groups.items():
        means = np.mean([np.mean(rows, axis=0) for rows in by_identity.values()], axis=0)
        print(f"| {key} | {label} | " + " | ".join(f"{v:.2f}" for v in means) + " |")
    atomic_write_json(args.output or args.results / "purification.json", {"sigmas": args.sigmas, "cells": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
