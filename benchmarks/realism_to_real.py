"""How far each benchmark cell's generations are from real faces: KID to real photos, relative to vanilla's.

    python benchmarks/realism_to_real.py --dataset runs/eval_cfp --benchmark runs/bench_cfp128m [--benchmark ...] \
        [--resolution 128] [--out docs/results/realism_to_real.md]

The reference is every ``set_C`` photo of ``--dataset`` (the gallery's real faces), cropped as the face priors
train (5-point alignment at ``--resolution``); features are :func:`iddm.evaluate.face_quality.realism_features`
(TAEF2's encoder, not an identity embedding), the distance the KID of
:func:`~iddm.evaluate.face_quality.kernel_inception_distance`. Each cell is also given as a ratio to the vanilla
cell of the same identity (from any of the ``--benchmark`` folders): people differ in how close even vanilla gets.
Why: SER-FIQ, consistency and face-shape distance called IDDM ``high``'s caricatured, painterly avatars on the
128-px prior nearly as good as vanilla's (docs/results/frontier_128_cfp.md); this distance ranked them as the
pictures do. It is not yet in ``iddm benchmark``'s tables.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from iddm.diffusion.data import prepare_photos, to_uint8
from iddm.evaluate.cells import load_cell
from iddm.evaluate.face_quality import kernel_inception_distance, realism_features
from iddm.images import PhotoError, atomic_write_text, load_photo


def real_faces(dataset: Path, resolution: int) -> list[np.ndarray]:
    crops = []
    for folder in sorted(dataset.glob("*/set_C")):
        try:
            photos = prepare_photos(folder, resolution, min_photos=1, skip_bad_photos=True)
        except PhotoError:
            continue
        crops += [to_uint8(image) for image in photos.images]
    return crops


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, required=True, help="The benchmark's dataset (its set_C photos).")
    parser.add_argument("--benchmark", type=Path, action="append", required=True, help="A benchmark output folder.")
    parser.add_argument("--resolution", type=int, default=128, help="Crop size of the real faces (px).")
    parser.add_argument("--out", type=Path, help="Also write the table here (Markdown).")
    args = parser.parse_args()
    reference = realism_features(real_faces(args.dataset, args.resolution))
    rows = []
    for folder in args.benchmark:
        for path in sorted(folder.glob("cells/*/*/cell.json")):
            record = load_cell(path.parent)
            images = [load_photo(p) for p in sorted((folder / record.images_dir).glob("image_*.png"))]
            kid = kernel_inception_distance(realism_features(images), reference)
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
