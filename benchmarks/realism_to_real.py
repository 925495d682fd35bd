"""How far each benchmark cell's generations are from real faces: KID to real photos and face-shape distance,
relative to vanilla's.

    python benchmarks/realism_to_real.py --dataset runs/eval_cfp --benchmark runs/bench_cfp128m [--benchmark ...] \
        [--resolution 128] [--out docs/results/realism_to_real.md]

The reference is every ``set_C`` photo of ``--dataset`` (the gallery's real faces), cropped as the face priors
train (5-point alignment at ``--resolution``); the distance is :func:`iddm.evaluate.face_utility.kid_to_real`
(TAEF2 features, not an identity embedding). Each cell is also given as a ratio to the vanilla cell of the same
identity (from any of the ``--benchmark`` folders): people differ in how close even vanilla gets. ``iddm
benchmark`` reports the same measure per folder (``KID→real``, its reference every photo no cell trains on); this
script compares cells across folders (settings benchmarked separately, as ``benchmarks/frontier.py`` does).
The face-shape distance (:func:`iddm.evaluate.geometry.shape_distances`, 68 points; 1.0 = a typical real face) is
recomputed with the current code, so cells evaluated before a change of the measure are compared on the same one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from iddm.evaluate.cells import load_cell
from iddm.evaluate.face_utility import kid_to_real, largest_face, photos_of, real_face_features
from iddm.evaluate.geometry import shape_distances
from iddm.images import atomic_write_text, list_photos, load_photo


def _ratio(value: float | None, baseline: float | None) -> str:
    return "–" if value is None or not baseline else f"{value / baseline:.2f}"


def _value(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, required=True, help="The benchmark's dataset (its set_C photos).")
    parser.add_argument("--benchmark", type=Path, action="append", required=True, help="A benchmark output folder.")
    parser.add_argument("--resolution", type=int, default=128, help="Crop size of the real faces (px).")
    parser.add_argument("--out", type=Path, help="Also write the table here (Markdown).")
    args = parser.parse_args()
    photos = [path for folder in sorted(args.dataset.glob("*/set_C")) for path in list_photos(folder, min_photos=1)]
    reference = real_face_features(photos_of(photos), args.resolution, "aligned")
    rows = []
    for folder in args.benchmark:
        for path in sorted(folder.glob("cells/*/*/cell.json")):
            record = load_cell(path.parent)
            images = [load_photo(p) for p in sorted((folder / record.images_dir).glob("image_*.png"))]
            kid, _ = kid_to_real(images, reference)
            shapes = shape_distances(images, [largest_face(image) for image in images])
            shape = float(np.mean(shapes)) if len(shapes) else None
            rows.append((folder.name, record.identity, record.method, record.level, kid, shape))
    vanilla = {row[1]: row[4:] for row in rows if row[2] == "vanilla"}
    lines = [
        f"KID to {len(reference)} real gallery faces (TAEF2 features) and face-shape distance (68 points, 1.0 = a "
        "typical real face); ×vanilla: the same identity's vanilla cell.",
        "",
        "| benchmark | identity | method | level | KID→real | ×vanilla | shape | ×vanilla |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, identity, method, level, kid, shape in rows:
        base_kid, base_shape = vanilla.get(identity, (None, None))
        lines.append(
            f"| {name} | {identity} | {method} | {level} | {_value(kid, 3)} | {_ratio(kid, base_kid)} | "
            f"{_value(shape, 2)} | {_ratio(shape, base_shape)} |"
        )
    print("\n".join(lines))
    if args.out is not None:
        atomic_write_text(args.out, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
