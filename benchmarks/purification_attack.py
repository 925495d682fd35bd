"""The attacker who purifies generations before linking them: re-attack a finished benchmark's cells.

    python benchmarks/purification_attack.py --dataset runs/eval5 --results runs/eval_final \
        [--purifiers jpeg:30 blur:2 noisy_upscale:0.5 sdedit:0.3] [--purify_model iddm:face-prior] \
        [--backends sface facenet dlib mobilefacenet --mobilefacenet PATH] [--device cuda]

Protections that live in fine texture are often removed by purification (JPEG 30, blur, noisy upscaling,
regeneration by a diffusion model: :mod:`iddm.evaluate.purify`). This applies each purifier to the stored
generations of every finished cell of an ``iddm benchmark`` output, attacks them with the same reference
and gallery as the benchmark, and keeps per cell and FR system the purifier that links best (an oracle
choice over the sweep: an upper bound). Default purifiers: JPEG 30, blur 1/2/3 px per 64 px, noisy
upscaling x0.5/x0.25, and SDEdit at strengths 0.1/0.2/0.3/0.5 with the benchmark's own base model (its
``benchmark.json``; none for ``iddm:micro``, whose base is random). Every strength is checked before any work.

Prints per FR system a row per cell (plain R1-U / match rate, the best purifier, its R1-U / match rate and
PSNR / SSIM), then the mean per method and level over identities (each averaged over its seeds first), and
each purifier's mean cost; writes everything to ``RESULTS/purification.json`` (or ``--output``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from iddm.evaluate.attacker import linkability_by_backend, load_backends
from iddm.evaluate.cells import CELL_FILE, embed_identities, identity_knowledge, load_cell
from iddm.evaluate.dataset import discover_dataset
from iddm.evaluate.linkability import embed_images
from iddm.evaluate.purify import NO_PURIFIER, build_purifiers, default_purifiers, parse_purifiers, purification_attack
from iddm.evaluate.results import cell_name, to_json
from iddm.faces.mobilefacenet import use_model_path
from iddm.images import atomic_write_json, load_photo


def _pair(rank1: float | None, match: float | None) -> str:
    return f"{'–' if rank1 is None else f'{rank1:.2f}'} / {'–' if match is None else f'{match:.2f}'}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, required=True, help="The benchmark's dataset folder.")
    parser.add_argument("--results", type=Path, required=True, help="The benchmark's output folder (cells/).")
    parser.add_argument("--purifiers", nargs="+", help="KIND:STRENGTH specs (default: see above).")
    parser.add_argument("--purify_model", help="Base model SDEdit purifies with (default: the benchmark's model).")
    parser.add_argument("--backends", nargs="+", default=["sface", "facenet", "dlib"], help="FR models.")
    parser.add_argument("--mobilefacenet", type=Path, help="MobileFaceNet.tflite for the 'mobilefacenet' backend.")
    parser.add_argument("--device", help="torch device of SDEdit (default: cuda if available).")
    parser.add_argument("--num_inference_steps", type=int, default=25, help="DDIM steps of SDEdit's full schedule.")
    parser.add_argument("--output", type=Path, help="JSON of the results (default: RESULTS/purification.json).")
    args = parser.parse_args()
    settings_file = args.results / "benchmark.json"
    model = json.loads(settings_file.read_text()).get("model") if settings_file.is_file() else None
    base = args.purify_model or model
    specs = parse_purifiers(args.purifiers) if args.purifiers else default_purifiers(base)  # before any work
    use_model_path(args.mobilefacenet)
    cells = sorted(args.results.glob(f"cells/*/*/{CELL_FILE}"))
    if not cells:
        print(f"No finished cell under {args.results}/cells.", file=sys.stderr)
        return 2
    recognizers = load_backends(args.backends)
    rec = list(recognizers.values())
    purifiers = build_purifiers(specs, base, args.device, num_inference_steps=args.num_inference_steps)
    dataset = discover_dataset(args.dataset)
    faces = embed_identities(dataset, recognizers)  # the gallery holds every identity
    identities = {i.name: i for i in dataset if i.is_user}
    print(f"Purifiers: {', '.join(purifiers)} (SDEdit base: {base if any('sdedit' in p for p in purifiers) else '-'})")
    results = []
    for path in cells:
        record = load_cell(path.parent)
        if record.identity not in identities:
            continue
        images = [load_photo(p) for p in sorted((args.results / record.images_dir).glob("image_*.png"))]
        reference, gallery = identity_knowledge(identities[record.identity], faces)
        roles = {k: "white-box" if k in record.white_box else "black-box" for k in recognizers}

        def attack(purified, name, reference=reference, gallery=gallery, roles=roles):
            probes = embed_images(purified, rec, progress=f"attack: {name}")
            return linkability_by_backend(probes, reference, gallery, recognizers, roles)

        plain = attack(images, NO_PURIFIER)
        purification = purification_attack(images, plain, purifiers, attack)
        row = {"identity": record.identity, "cell": cell_name(record), "method": record.method, "level": record.level}
        row |= {"seed": record.seed, "plain": to_json(plain), "purification": to_json(purification)}
        results.append(row)
        best = purification.best
        print(
            f"{record.identity} {cell_name(record)}: "
            + "; ".join(
                f"{k} plain {_pair(plain[k].rank1, plain[k].match_rate)}, best {best[k].purifier} "
                f"{_pair(best[k].rank1, best[k].match_rate)}"
                for k in recognizers
            ),
            flush=True,
        )
    for key in recognizers:
        print(f"\n{key}: R1-U / match rate, plain and under the best purifier (oracle over the sweep)\n")
        print("| identity | cell | plain | best purifier | best | PSNR / SSIM |")
        print("|---|---|---|---|---|---|")
        for row in results:
            p, b = row["plain"][key], row["purification"]["best"][key]
            cost = "–" if b["psnr_db"] is None else f"{b['psnr_db']:.1f} / {b['ssim']:.3f}"
            print(
                f"| {row['identity']} | {row['cell']} | {_pair(p['rank1'], p['match_rate'])} | {b['purifier']} | "
                f"{_pair(b['rank1'], b['match_rate'])} | {cost} |"
            )
    print("\nMean over identities (each averaged over its seeds first); most frequent best purifier\n")
    print("| FR | method-level | R1-U plain | R1-U best | match plain | match best | chance | best purifier |")
    print("|---|---|---|---|---|---|---|---|")
    groups: dict[tuple[str, str], dict[str, list[list[float]]]] = defaultdict(lambda: defaultdict(list))
    chosen: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for row in results:
        for key in recognizers:
            p, b = row["plain"][key], row["purification"]["best"][key]
            values = [p["rank1"], b["rank1"], p["match_rate"], b["match_rate"], p["chance_rank1"]]
            label = (key, f"{row['method']}-{row['level']}")
            groups[label][row["identity"]].append([np.nan if v is None else v for v in values])
            chosen[label][b["purifier"]] += 1
    for (key, label), by_identity in groups.items():
        means = np.nanmean([np.nanmean(rows, axis=0) for rows in by_identity.values()], axis=0)
        top = ", ".join(f"{n} ×{c}" for n, c in chosen[(key, label)].most_common(2))
        print(f"| {key} | {label} | " + " | ".join(f"{v:.2f}" for v in means) + f" | {top} |")
    print("\nCost of each purifier: mean PSNR (dB) / SSIM of purified vs unpurified generations over all cells\n")
    for name in purifiers:
        psnrs = [row["purification"]["cost"][name]["psnr_db"] for row in results]
        ssims = [row["purification"]["cost"][name]["ssim"] for row in results]
        print(f"- {name}: {np.mean(psnrs):.1f} dB / {np.mean(ssims):.3f}")
    output = args.output or args.results / "purification.json"
    atomic_write_json(output, {"purifiers": list(purifiers), "base_model": base, "cells": results})
    print(f"\nWrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
