"""Blind eye labels of a benchmark's avatars: which look like plausible faces, and which are distorted.

Measures of face quality can miss what a person sees at once (docs/evaluation.md, ``benchmarks/eye_agreement.py``).
This makes the person's judgement a reproducible measurement:

    # 1. One sheet per identity: the images of the given cells shuffled together, numbered, the cell hidden
    #    (FOLDER:CELL takes the same identity's cell from another benchmark folder: compare settings on one sheet).
    python benchmarks/eye_labels.py sheets --benchmark runs/bench --cells vanilla-off-seed0 iddm-high-seed0 \
        [runs/bench_other:iddm-high-seed0] --out runs/eye_sheets
    # 2. Look at each sheet_<identity>.png and write marks.json: {identity: [one mark per number]}, 0 a plausible
    #    face, 1 a distorted one (features out of proportion or out of place, smeared or patched skin), 2 no face.
    # 3. Unshuffle into labels per cell and print the share of distorted faces per cell kind:
    python benchmarks/eye_labels.py score --sheets runs/eye_sheets --marks marks.json \
        --out docs/results/eye_labels/NAME.json
    python benchmarks/eye_labels.py summary --labels docs/results/eye_labels/NAME.json

The sheets hold avatars of the dataset's people: keep them out of the repository when the photos are licensed for
non-commercial research (CFP); the labels are only numbers.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from iddm.images import atomic_write_json

KEY_FILE = "key.json"
TILE = 128
COLUMNS = 8
MARKS = {0: "plausible", 1: "distorted", 2: "no face"}


def images_of(benchmark: Path, identity: str, cell: str) -> Path:
    """The images folder of ``cell`` (a cell name, or ``FOLDER:NAME`` for a cell of another benchmark folder)."""
    folder, _, name = cell.rpartition(":")
    return (Path(folder) if folder else benchmark) / "cells" / identity / name / "images"


def write_sheets(benchmark: Path, cells: list[str], out: Path, seed: int, identities: list[str] | None = None) -> int:
    """Write ``sheet_<identity>.png`` for each identity (of ``identities``, or all) with every cell finished, and
    the hidden ``key.json``."""
    rng = random.Random(seed)
    key = {}
    for identity in sorted(p for p in (benchmark / "cells").iterdir() if p.is_dir()):
        if identities and identity.name not in identities:
            continue
        lists = {cell: sorted(images_of(benchmark, identity.name, cell).glob("image_*.png")) for cell in cells}
        if not all(lists.values()):
            continue
        items = [(cell, path.name) for cell, paths in lists.items() for path in paths]
        rng.shuffle(items)
        rows = -(-len(items) // COLUMNS)
        sheet = Image.new("RGB", (COLUMNS * TILE, rows * TILE), "white")
        for number, (cell, name) in enumerate(items):
            tile = Image.open(images_of(benchmark, identity.name, cell) / name).convert("RGB").resize((TILE, TILE))
            draw = ImageDraw.Draw(tile)
            draw.rectangle([0, 0, 16, 10], fill="black")
            draw.text((1, 0), str(number), fill="yellow")
            sheet.paste(tile, ((number % COLUMNS) * TILE, (number // COLUMNS) * TILE))
        out.mkdir(parents=True, exist_ok=True)
        sheet.save(out / f"sheet_{identity.name}.png")
        key[identity.name] = items
    atomic_write_json(out / KEY_FILE, {"benchmark": str(benchmark), "cells": cells, "seed": seed, "items": key})
    return len(key)


def unshuffle(key: dict, marks: dict[str, list[int]]) -> dict[str, dict[str, list[int]]]:
    """Marks in sheet order -> ``{identity: {cell: [mark of image_0000, image_0001, ...]}}``."""
    labels: dict[str, dict[str, list[int]]] = {}
    for identity, items in key["items"].items():
        if identity not in marks:
            continue
        if len(marks[identity]) != len(items) or not set(marks[identity]) <= set(MARKS):
            raise ValueError(f"{identity}: give {len(items)} marks, each one of {sorted(MARKS)}.")
        per_cell: dict[str, dict[str, int]] = {}
        for (cell, name), mark in zip(items, marks[identity]):
            per_cell.setdefault(cell, {})[name] = mark
        labels[identity] = {cell: [names[n] for n in sorted(names)] for cell, names in per_cell.items()}
    return labels


def distorted_share(marks: list[int]) -> float:
    """Share of marks that are 1 (distorted) among those below 2 (a face); 0 when no image has a face."""
    marks_array = np.asarray(marks)
    return float((marks_array == 1).sum() / max(int((marks_array < 2).sum()), 1))


def summary(labels: dict[str, dict[str, list[int]]]) -> str:
    """Per cell kind: the share of distorted faces among those with a face, mean ± sd over identities."""
    kinds = sorted({cell for cells in labels.values() for cell in cells}, key=lambda c: (not c.startswith("van"), c))
    lines = [
        f"{len(labels)} identities",
        "",
        "| cell | distorted share of faces (mean ± sd over identities) | range | images without a face |",
        "|---|---|---|---|",
    ]
    for kind in kinds:
        marks = [np.array(cells[kind]) for cells in labels.values() if kind in cells]
        shares = np.array([distorted_share(m) for m in marks])
        lines.append(
            f"| {kind} | {shares.mean():.2f} ± {shares.std():.2f} | {shares.min():.2f}–{shares.max():.2f} | "
            f"{sum(int((m == 2).sum()) for m in marks)} of {sum(len(m) for m in marks)} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sheets = commands.add_parser("sheets", help="Write shuffled, numbered sheets and their hidden key.")
    sheets.add_argument("--benchmark", type=Path, required=True, help="A benchmark folder with the cells' images.")
    sheets.add_argument(
        "--cells",
        nargs="+",
        required=True,
        help="Cells to mix on one sheet per identity: names (vanilla-off-seed0) or FOLDER:NAME for another benchmark "
        "folder's cell of the same identity (settings benchmarked separately), so all share one judge's threshold.",
    )
    sheets.add_argument("--identities", nargs="*", help="Only these identities (default: every one with all cells).")
    sheets.add_argument("--out", type=Path, required=True, help="Folder for the sheets and key.json.")
    sheets.add_argument("--seed", type=int, default=7, help="Seed of the shuffle.")
    score = commands.add_parser("score", help="Unshuffle marks into labels per cell and summarize them.")
    score.add_argument("--sheets", type=Path, required=True, help="The folder `sheets` wrote.")
    score.add_argument("--marks", type=Path, required=True, help="JSON {identity: [mark per sheet number]}.")
    score.add_argument("--about", default="", help="How, by whom and when the marks were made.")
    score.add_argument("--out", type=Path, required=True, help="Labels JSON (what eye_agreement.py reads).")
    show = commands.add_parser("summary", help="Summarize a labels JSON.")
    show.add_argument("--labels", type=Path, required=True, help="A labels JSON that `score` wrote.")
    args = parser.parse_args()
    try:
        if args.command == "sheets":
            count = write_sheets(args.benchmark, args.cells, args.out, args.seed, args.identities)
            print(f"{count} sheets in {args.out}")
            return 0 if count else 1
        if args.command == "score":
            key = json.loads((args.sheets / KEY_FILE).read_text())
            labels = unshuffle(key, json.loads(args.marks.read_text()))
            document = {"about": args.about, "benchmark": key["benchmark"], "seed": key["seed"], "labels": labels}
            atomic_write_json(args.out, document)
        else:
            labels = json.loads(args.labels.read_text())["labels"]
        print(summary(labels))
        return 0
    except (OSError, ValueError, KeyError) as error:
        print(f"eye_labels.py: error: {error}")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
