"""How much of a training perturbation survives the face prior's autoencoder alone, per defense.

    python benchmarks/vae_filter.py --benchmark runs/eval_prior [--level high] [--backends sface facenet dlib]

A latent diffusion model never sees the photo X + δ itself: it learns from E(X + δ), and what it can
reproduce is at best D(E(X + δ)). A pixel-space FR cloak made without the encoder may be filtered
out there. For every cell of a finished ``iddm benchmark`` with a perturbation (cloak, noise, IDDM,
ASPL) this embeds, with each FR model, the clean crop X, the perturbed photo X + δ, and the
autoencoder's round trips D(E(X + δ)) and D(E(X)) (the prior's VAE, mean of the posterior), and
prints the mean cosines to X. ``kept`` = (cos(D(E(X)), X) − cos(D(E(X+δ)), X)) / (1 − cos(X+δ, X)):
the share of the identity shift in pixels that is still there after the autoencoder (1: all of
it, 0: none). Photos where a detector misses a face in any of the four images are left out.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from iddm.diffusion import DEFAULT_MODEL, load_backbone
from iddm.evaluate.attacker import load_backends
from iddm.evaluate.cells import CELL_FILE, load_cell
from iddm.evaluate.linkability import embed_images
from iddm.evaluate.utility import perturbation_pairs
from iddm.images import atomic_write_json

VIEWS = ("perturbed", "vae_perturbed", "vae_clean")


def round_trip(backbone, images: list[np.ndarray]) -> list[np.ndarray]:
    """``D(E(x))`` of uint8 ``(R, R, 3)`` images through the backbone's autoencoder (posterior mean)."""
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        decoded = backbone.to_image_space(backbone.to_diffusion_space(batch))
    return list((decoded.permute(0, 2, 3, 1).numpy() * 255).round().clip(0, 255).astype(np.uint8))


def cosines(pairs, backbone, recognizers) -> dict[str, dict[str, list[float]]]:
    """Recognizer name -> view -> cosine to the clean crop, per photo where all four faces are found."""
    clean = [c for c, _ in pairs]
    views = {"clean": clean, "perturbed": [p for _, p in pairs]}
    views["vae_perturbed"] = round_trip(backbone, views["perturbed"])
    views["vae_clean"] = round_trip(backbone, clean)
    found = {}
    for name, images in views.items():
        faces = embed_images(images, list(recognizers.values()))
        rows = np.cumsum(faces.detected) - 1
        found[name] = (faces.detected, rows, faces.embeddings)
    result: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for i in range(len(pairs)):
        if not all(found[name][0][i] for name in views):
            continue
        for key in recognizers:
            name = recognizers[key].name
            anchor = found["clean"][2][name][found["clean"][1][i]]
            for view in VIEWS:
                result[key][view].append(float(anchor @ found[view][2][name][found[view][1][i]]))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmark", type=Path, required=True, help="Output folder of a finished iddm benchmark.")
    parser.add_argument("--level", default="high", help="Privacy level of the cells to read.")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="Base model whose autoencoder filters the photos.")
    parser.add_argument("--backends", nargs="+", default=["sface", "facenet", "dlib"], help="FR models.")
    parser.add_argument("--output", type=Path, help="JSON file of the results (default: BENCHMARK/vae_filter.json).")
    args = parser.parse_args()
    backbone = load_backbone(args.model)
    recognizers = load_backends(args.backends)
    per_method: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for finished in sorted((args.benchmark / "cells").glob(f"*/*/{CELL_FILE}")):
        cell, record = finished.parent, load_cell(finished.parent)
        if record.level != args.level:
            continue
        method = record.method
        run = cell / "aspl_perturbation" if method == "aspl" else cell / "run"
        pairs, note = perturbation_pairs(run)
        if not pairs:
            print(f"{cell.parent.name}/{cell.name}: skipped ({note})", file=sys.stderr)
            continue
        for key, views in cosines(pairs, backbone, recognizers).items():
            for view, values in views.items():
                per_method[method][key][view] += values
    if not per_method:
        print(f"No cell at level {args.level} with a perturbation under {args.benchmark}/cells.", file=sys.stderr)
        return 2
    table = {}
    print(f"\nMean FR cosine to the clean crop X ({args.level}; n = photos with a face in all four images)\n")
    print("| method | FR | n | X+δ | D(E(X+δ)) | D(E(X)) | kept |")
    print("|---|---|---|---|---|---|---|")
    for method, by_key in per_method.items():
        for key, views in by_key.items():
            means = {view: float(np.mean(views[view])) for view in VIEWS}
            shift = 1 - means["perturbed"]
            kept = (means["vae_clean"] - means["vae_perturbed"]) / shift if shift > 1e-6 else None
            table.setdefault(method, {})[key] = {**means, "kept": kept, "n": len(views["perturbed"])}
            kept_text = f"{kept:.2f}" if kept is not None else "–"
            print(
                f"| {method} | {key} | {len(views['perturbed'])} | {means['perturbed']:.3f} | "
                f"{means['vae_perturbed']:.3f} | {means['vae_clean']:.3f} | {kept_text} |"
            )
    atomic_write_json(args.output or args.benchmark / "vae_filter.json", {"level": args.level, "methods": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
