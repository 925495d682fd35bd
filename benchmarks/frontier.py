"""Several settings of one defense, benchmarked in separate output folders, side by side with vanilla.

    python benchmarks/frontier.py --run vanilla=runs/bench --run "warp 3=runs/bench" --run "warp 0=runs/sweep/w0" \
        --method iddm --level high --out docs/results/frontier_128

Every ``--run NAME=DIR`` names a finished (or partial) ``iddm benchmark`` folder; vanilla's cells come from the
first folder that has them, each setting's ``--method``/``--level`` cells from its own. Only identities with a
cell in every setting are compared. Writes ``OUT.md`` (per setting: the black-box attackers' rank-1 and match rate,
the white-box surrogates' rank-last, and the face utility of ``iddm.evaluate.face_utility``, each as mean ± standard
deviation over identities) and ``OUT.png`` (per identity: clean crops, vanilla's generations, then per setting one
decoupled crop and its generations).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from iddm.evaluate.cells import load_cell
from iddm.evaluate.side_by_side import describe, side_by_side
from iddm.images import atomic_write_text, save_png

LINK = [("dlib", "rank1"), ("dlib", "match_rate"), ("mobilefacenet", "rank1"), ("mobilefacenet", "match_rate")]
LAST = [("sface", "rank_last"), ("facenet", "rank_last")]
FACE = ["serfiq", "consistency", "shape_distance", "landmark_displacement", "colour_avatars"]


def _cells(folder: Path, method: str, level: str | None) -> dict:
    """Identity -> its cell record (seed 0) of ``method``/``level`` in benchmark ``folder``, paths made absolute."""
    found = {}
    for path in sorted(folder.glob("cells/*/*/cell.json")):
        record = load_cell(path.parent)
        if record.method == method and (level is None or record.level == level) and record.seed == 0:
            absolute = {k: str((folder / getattr(record, k)).resolve()) for k in ("run_dir", "images_dir")}
            found[record.identity] = replace(record, **absolute)
    return found


def _values(record) -> dict[str, float | None]:
    values = {f"{fr} {key}": getattr(record.backends[fr], key) for fr, key in LINK + LAST if fr in record.backends}
    face = record.utility.face
    values |= {name: getattr(face, name, None) if face else None for name in FACE}
    if face is not None and face.attribute_agreement:
        values["attribute agreement"] = float(np.mean(list(face.attribute_agreement.values())))
    values["photo PSNR (dB)"] = record.utility.perturbation.psnr_db if record.utility.perturbation else None
    values["face detection"] = record.utility.face_detection_rate
    return values


def _summary(rows: list[dict]) -> dict[str, str]:
    out = {}
    for key in rows[0]:
        numbers = [r[key] for r in rows if r.get(key) is not None and np.isfinite(r[key])]
        out[key] = f"{np.mean(numbers):.2f} ± {np.std(numbers):.2f}" if numbers else "–"
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", required=True, help="NAME=DIR of a benchmark output folder.")
    parser.add_argument("--method", default="iddm", help="The defense whose settings are compared.")
    parser.add_argument("--level", default="high", help="Its privacy level in every folder.")
    parser.add_argument("--out", type=Path, required=True, help="Writes OUT.md and OUT.png.")
    args = parser.parse_args()
    runs = [tuple(item.split("=", 1)) for item in args.run]
    if any(len(run) != 2 for run in runs):
        parser.error("--run takes NAME=DIR")
    vanilla: dict = {}
    for _, folder in runs:
        vanilla = {**_cells(Path(folder), "vanilla", None), **vanilla}
    settings = {name: _cells(Path(folder), args.method, args.level) for name, folder in runs if name != "vanilla"}
    shared = sorted(set(vanilla).intersection(*settings.values()))
    if not shared:
        parser.error("no identity has a vanilla cell and a cell in every setting")
    table = {"vanilla": _summary([_values(vanilla[i]) for i in shared])}
    table |= {name: _summary([_values(cells[i]) for i in shared]) for name, cells in settings.items()}
    keys = list(table["vanilla"]) + [k for name in settings for k in table[name] if k not in table["vanilla"]]
    lines = [f"{args.method} at {args.level}, {len(shared)} identities ({', '.join(shared)}); mean ± sd", ""]
    lines += ["| measure | " + " | ".join(table) + " |", "|---" * (len(table) + 1) + "|"]
    lines += [f"| {key} | " + " | ".join(column.get(key, "–") for column in table.values()) + " |" for key in keys]
    # Each setting becomes a "level" of the one method, so the side-by-side gives it its own column.
    records = [vanilla[i] for i in shared]
    records += [replace(cells[i], level=name) for name, cells in settings.items() for i in shared]
    grid = side_by_side(records, "/")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    lines += ["", f"`{args.out.name}.png`, {describe(records)}."]
    atomic_write_text(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    if grid is not None:
        save_png(args.out.with_suffix(".png"), grid)
    print("\n".join(lines))
    print(json.dumps({"identities": shared, "settings": list(settings)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
