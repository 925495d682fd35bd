"""Mean ± sd over identities of a benchmark's finished cells, for the identities every listed method-level has.

    python benchmarks/cells_summary.py --benchmark runs/bench_cfp128n --cells vanilla-off iddm-medium iddm-high
    python benchmarks/cells_summary.py --benchmark runs/bench_sl --cells vanilla-off runs/bench:iddm-high iddm-high

Reads each cell's ``cell.json`` (so it also summarizes a run that is still going, on the identities done so far,
and an archive of records that ``benchmarks/archive_cells.py`` committed): black-box and white-box rank-1 and match
rates, rank-last, face detection, SER-FIQ, attribute agreement, consistency, face shape (each also as a ratio to
the same identity's vanilla cell), colour, the Fréchet distance and KID to vanilla, landmark displacement and the
decoupled photos' PSNR. The face shape and KID to real faces of cells evaluated by older code are recomputed by
``benchmarks/realism_to_real.py``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from iddm.evaluate.cells import CELL_FILE


def _face(cell: dict, key: str) -> float | None:
    return cell["utility"]["face"][key]


def _agreement(face: dict) -> float | None:
    """Mean agreement over the attributes (gender, age band, ethnicity) between the photos and the avatars."""
    values = [v for v in (face.get("attribute_agreement") or {}).values() if v is not None]
    return float(np.mean(values)) if values else None


def _ratio(cell: dict, key: str) -> float | None:
    """The cell's face measure ``key`` (or ``"attribute_agreement"``, averaged) over its vanilla cell's."""
    of = _agreement if key == "attribute_agreement" else (lambda face: face.get(key))
    face = cell["utility"]["face"]
    value, baseline = of(face), of(face["vanilla"]) if face["vanilla"] else None
    return None if value is None or not baseline else value / baseline


MEASURES = {
    "dlib R1-U": lambda c: c["backends"]["dlib"]["rank1"],
    "dlib match": lambda c: c["backends"]["dlib"]["match_rate"],
    "MobileFaceNet R1-U": lambda c: c["backends"]["mobilefacenet"]["rank1"],
    "MobileFaceNet match": lambda c: c["backends"]["mobilefacenet"]["match_rate"],
    "SFace R1-U / rank-last": lambda c: (c["backends"]["sface"]["rank1"], c["backends"]["sface"]["rank_last"]),
    "FaceNet R1-U / rank-last": lambda c: (c["backends"]["facenet"]["rank1"], c["backends"]["facenet"]["rank_last"]),
    "face detection": lambda c: c["utility"]["face_detection_rate"],
    "SER-FIQ": lambda c: _face(c, "serfiq"),
    "SER-FIQ ×vanilla": lambda c: _ratio(c, "serfiq"),
    "attribute agreement": lambda c: _agreement(c["utility"]["face"]),
    "attribute agreement ×vanilla": lambda c: _ratio(c, "attribute_agreement"),
    "consistency": lambda c: _face(c, "consistency"),
    "consistency ×vanilla": lambda c: _ratio(c, "consistency"),
    "face shape": lambda c: _face(c, "shape_distance"),
    "face shape ×vanilla": lambda c: _ratio(c, "shape_distance"),
    "Fréchet distance to vanilla": lambda c: _face(c, "frechet_to_vanilla"),
    "KID to vanilla": lambda c: _face(c, "kid_to_vanilla"),
    "colour avatars": lambda c: _face(c, "colour_avatars"),
    "landmark Δ px per 64": lambda c: _face(c, "landmark_displacement"),
    "decoupled photos' PSNR dB": lambda c: (c["utility"]["perturbation"] or {}).get("psnr_db"),
}


def _summary(values: list) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    array = np.asarray(values, dtype=float)
    if array.ndim == 2:
        return " / ".join(f"{m:.2f}" for m in array.mean(axis=0))
    return f"{array.mean():.2f} ± {array.std():.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmark", type=Path, required=True, help="An `iddm benchmark` output folder.")
    parser.add_argument(
        "--cells",
        nargs="+",
        required=True,
        help="METHOD-LEVEL names, e.g. vanilla-off iddm-high, or FOLDER:METHOD-LEVEL for a cell of another benchmark "
        "of the same identities (settings benchmarked separately).",
    )
    parser.add_argument("--seed", type=int, default=0, help="The seed of the cells read.")
    args = parser.parse_args()

    def cell_file(identity: str, cell: str) -> Path:  # "METHOD-LEVEL", or "FOLDER:METHOD-LEVEL" for another benchmark
        folder, _, name = cell.rpartition(":")
        return Path(folder or args.benchmark) / "cells" / identity / f"{name}-seed{args.seed}" / CELL_FILE

    folders = sorted(p for p in (args.benchmark / "cells").iterdir() if p.is_dir())
    users = [f for f in folders if all(cell_file(f.name, c).is_file() for c in args.cells)]
    if not users:
        raise SystemExit(f"No identity of {args.benchmark} has all of {args.cells} finished.")
    cells = {(u.name, c): json.loads(cell_file(u.name, c).read_text()) for u in users for c in args.cells}
    print(f"{len(users)} identities with every cell finished: {', '.join(u.name for u in users)}\n")
    print("| measure | " + " | ".join(args.cells) + " |\n|---" + "|---" * len(args.cells) + "|")
    for name, measure in MEASURES.items():
        print(
            f"| {name} | "
            + " | ".join(_summary([measure(cells[(u.name, c)]) for u in users]) for c in args.cells)
            + " |"
        )
    print(
        "\n| identity | "
        + " | ".join(f"{c} dlib R1-U / match" for c in args.cells)
        + " |\n|---"
        + "|---" * len(args.cells)
        + "|"
    )
    for u in users:
        dlib = [cells[(u.name, c)]["backends"]["dlib"] for c in args.cells]
        print(f"| {u.name} | " + " | ".join(f"{d['rank1']:.2f} / {d['match_rate']:.2f}" for d in dlib) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
