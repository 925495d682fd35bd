"""Keep a benchmark's finished cell records in the repository, and put them back: one benchmark across sessions.

    python benchmarks/archive_cells.py --benchmark runs/bench_sl15 --archive docs/results/cells/cfp128_sl15 \
        --cells vanilla-off iddm-high
    python benchmarks/archive_cells.py --benchmark runs/bench_sl15 --archive docs/results/cells/cfp128_sl15 --restore

A 20-identity benchmark on 2 CPU cores outlasts a working session, and its output folder (``runs/``) does not
outlast the machine. Archiving copies ``benchmark.json`` (the settings every cell must share) and the
``cell.json`` of every identity that has all of ``--cells`` finished (metrics and settings only: no photos,
generations, weights or face embeddings, which stay out of the repository, the CFP photos and what is made from
them being non-commercial research data; and without the attribute model's reading of the user's own photos,
gender, age band and ethnicity of a named person, kept only as the agreement with the avatars).
``benchmarks/cells_summary.py --benchmark ARCHIVE`` reads an archive as it reads a run.

``--restore`` copies the archived records a run folder lacks back into it (refusing a folder whose settings
differ), and ``iddm benchmark`` then counts those cells as finished and runs only the others. Whole identities
are archived, so a restored identity's cells never need a vanilla cell's generations that are not there. A
restored cell has no ``probes.npz`` and no images: the stalker's pools leave it out, its KID to real faces
stays empty, its tiles in ``side_by_side.png`` stay white, and the adaptive and purifying attackers need its
cell rerun.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from iddm.evaluate.benchmark import SETTINGS_FILE
from iddm.evaluate.cells import CELL_FILE
from iddm.images import atomic_write_text


def finished_identities(benchmark: Path, cells: list[str]) -> list[Path]:
    """The identity folders of ``benchmark`` in which every cell of ``cells`` (``METHOD-LEVEL-seedN``) has its
    record."""
    folders = sorted(p for p in (benchmark / "cells").glob("*") if p.is_dir())
    return [f for f in folders if all((f / cell / CELL_FILE).is_file() for cell in cells)]


def without_personal_attributes(record: dict) -> dict:
    """``record`` (a ``cell.json``) without the attributes read from the user's photos (its own and its vanilla
    cell's copy): ``{}``, as a cell whose photos show no face has."""
    face = (record.get("utility") or {}).get("face")
    for part in (face, (face or {}).get("vanilla")):
        if part:
            part["attributes_photos"] = {}
    return record


def copy_records(source: Path, target: Path, records: list[Path]) -> int:
    """Copy ``records`` (``cell.json`` paths under ``source``) to the same places under ``target``, without personal
    attributes, keeping any already there; returns how many were copied."""
    copied = 0
    for record in records:
        destination = target / record.relative_to(source)
        if destination.is_file():
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        cell = without_personal_attributes(json.loads(record.read_text()))
        atomic_write_text(destination, json.dumps(cell, indent=2) + "\n")
        copied += 1
    return copied


def same_settings(source: Path, target: Path) -> bool:
    """Whether ``target`` has no settings yet or the same as ``source``."""
    theirs = target / SETTINGS_FILE
    return not theirs.is_file() or json.loads(theirs.read_text()) == json.loads((source / SETTINGS_FILE).read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmark", type=Path, required=True, help="An `iddm benchmark` output folder.")
    parser.add_argument("--archive", type=Path, required=True, help="The archive folder (in the repository).")
    parser.add_argument(
        "--cells", nargs="+", help="METHOD-LEVEL names every archived identity must have finished (archiving)."
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="Seeds of the cells to archive.")
    parser.add_argument("--restore", action="store_true", help="Copy the archive's records into --benchmark.")
    args = parser.parse_args()
    source, target = (args.archive, args.benchmark) if args.restore else (args.benchmark, args.archive)
    if not (source / SETTINGS_FILE).is_file():
        raise SystemExit(f"{source} has no {SETTINGS_FILE}: not a benchmark folder or archive.")
    if not same_settings(source, target):
        raise SystemExit(f"{target / SETTINGS_FILE} differs from {source / SETTINGS_FILE}: other settings.")
    if args.restore:
        records = sorted(source.glob(f"cells/*/*/{CELL_FILE}"))
    else:
        if not args.cells:
            raise SystemExit("--cells is required to archive (the METHOD-LEVEL names of a finished identity).")
        identities = finished_identities(source, [f"{c}-seed{s}" for c in args.cells for s in args.seeds])
        records = [f / f"{c}-seed{s}" / CELL_FILE for f in identities for c in args.cells for s in args.seeds]
    if not (target / SETTINGS_FILE).is_file():
        target.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target / SETTINGS_FILE, (source / SETTINGS_FILE).read_text())
    copied = copy_records(source, target, records)
    print(f"{'Restored' if args.restore else 'Archived'} {copied} new cell records ({len(records)} in {source}).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
