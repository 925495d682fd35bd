"""How far each benchmark cell's generations are from real faces: KID to real photos, relative to vanilla's.

    python benchmarks/realism_to_real.py --dataset runs/eval_cfp --benchmark runs/bench_cfp128m [--benchmark ...] \
        [--resolution 128] [--out docs/results/realism_to_real.md]

The reference is every ``set_C`` photo of ``--dataset`` (the gallery's real faces), cropped as the face priors
train (5-point alignment at ``--resolution``); the distance is :func:`iddm.evaluate.face_utility.kid_to_real`
(TAEF2 features, not an identity embedding). Each cell is also given as a ratio to the vanilla cell of the same
identity (from any of the ``--benchmark`` folders): people differ in how close even vanilla gets. ``iddm
benchmark`` reports the same measure per folder (``KID→real``, its reference every photo no cell trains on); this
script compares cells across folders (settings benchmarked separately, as ``benchmarks/frontier.py`` does).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from iddm.evaluate.cells import load_cell
from iddm.evaluate.face_utility import kid_to_real, photos_of, real_face_features
from iddm.images import atomic_write_text, list_photos, load_photo


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
            rows.append((folder.name, record.identity, record.method, record.level, kid))
    vanilla = {identity: kid for _, identity, method, _, kid in rows if method == "vanilla" and kid is not None}
    lines = [
        f"KID to {len(reference)} real gallery faces (TAEF2 features); ×vanilla: the same identity's vanilla cell.",
        "",
        "| benchmark | identity | method | level | KID→real | ×vanilla |",
        "|---|---|---|---|---|---|",
    ]
    for name, identity, method, level, kid in rows:
        ratio = kid / vanilla[identity] if kid is not None and identity in vanilla else None
        lines.append(
            f"| {name} | {identity} | {method} | {level} | {'–' if kid is None else f'{kid:.3f}'} | "
            f"{'–' if ratio is None else f'{ratio:.2f}'} |"
        )
    print("\n".join(lines))
    if args.out is not None:
        atomic_write_text(args.out, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
