"""Would the prior put IDDM's decoupled photos back on the face manifold? SDEdit them and measure.

    python benchmarks/sdedit_projection.py --benchmark runs/bench_cfp128n --dataset runs/eval_cfp --level high \
        [--users 8] [--strengths 0.3 0.5 0.7] [--out runs/sdedit_projection]

For the first ``--users`` identities of a benchmark folder, the IDDM cell's decoupled training photos (``private/``)
are denoised from SDEdit strength ``s`` by the base model (:class:`iddm.evaluate.purify.SDEditPurifier`, the
attacker's purifier, here used as the defender's projection). Printed per set (clean photos from the dataset's
``set_A``, decoupled, each strength): black-box dlib rank-1 of the user among the benchmark's gallery identities
(anchors: the mean of each identity's embedded dataset photos, the benchmark's embedding cache) and the 68-point
face-shape distance (1.0 = a typical real face). ``OUT.png`` shows per identity 2 photos of each set side by side
(not for committing where the photos are non-commercial research data, as CFP's).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from iddm.evaluate.benchmark import EMBEDDING_CACHE
from iddm.evaluate.embedding_cache import load_embedding_cache
from iddm.evaluate.face_utility import largest_face
from iddm.evaluate.geometry import shape_distances
from iddm.evaluate.purify import SDEditPurifier
from iddm.faces import embed_photos, load_recognizer
from iddm.images import list_photos, load_photo


def _gallery_anchors(benchmark: Path) -> tuple[list[str], np.ndarray]:
    cache = load_embedding_cache(benchmark / EMBEDDING_CACHE)
    if not cache:
        raise SystemExit(f"{benchmark / EMBEDDING_CACHE} is missing or unreadable: run `iddm benchmark` first.")
    names = sorted(cache)
    anchors = np.stack([cache[name][1].embeddings["dlib"].mean(0) for name in names])
    return names, anchors / np.linalg.norm(anchors, axis=1, keepdims=True)


def _measure(recognizer, images: list[np.ndarray], user: str, names: list[str], anchors: np.ndarray):
    faces = [largest_face(image) for image in images]
    embedded = [e.numpy() for e in embed_photos(recognizer, images, faces) if e is not None]
    if not embedded:
        return None, None
    rank1 = float(np.mean([names[int(row.argmax())] == user for row in np.stack(embedded) @ anchors.T]))
    shapes = shape_distances(images, faces)
    return rank1, (float(shapes.mean()) if len(shapes) else None)


def _tile(image: np.ndarray, side: int = 128) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.BICUBIC))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmark", type=Path, required=True, help="An `iddm benchmark` output folder.")
    parser.add_argument("--dataset", type=Path, required=True, help="Its dataset (the clean set_A photos).")
    parser.add_argument("--level", default="high", help="The IDDM level whose decoupled photos are projected.")
    parser.add_argument("--users", type=int, default=8, help="How many identities (the first, sorted by name).")
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.3, 0.5, 0.7], help="SDEdit strengths.")
    parser.add_argument("--model", default="iddm:face-prior-128", help="The base model that projects.")
    parser.add_argument("--out", type=Path, default=Path("runs/sdedit_projection"), help="OUT.png is written.")
    args = parser.parse_args()

    names, anchors = _gallery_anchors(args.benchmark)
    recognizer = load_recognizer("dlib")
    purifier = SDEditPurifier(args.model, device="cpu", seed=0)
    users = sorted(p.name for p in (args.benchmark / "cells").iterdir())[: args.users]
    results: dict[str, list[tuple[float | None, float | None]]] = {}
    rows = []
    for user in users:
        private = args.benchmark / "cells" / user / f"iddm-{args.level}-seed0" / "run" / "private"
        sets = {
            "clean": [load_photo(p) for p in list_photos(args.dataset / user / "set_A")],
            "decoupled": [load_photo(p) for p in list_photos(private / "decoupled_photos")],
        }
        for strength in args.strengths:
            sets[f"SDEdit {strength}"] = purifier(sets["decoupled"], strength)
        for name, images in sets.items():
            results.setdefault(name, []).append(_measure(recognizer, images, user, names, anchors))
        rows.append(np.concatenate([_tile(image) for images in sets.values() for image in images[:2]], axis=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(args.out.with_suffix(".png"))
    print(f"| set ({len(users)} identities, {args.level}) | dlib rank-1 | face shape (68 points) |\n|---|---|---|")
    for name, values in results.items():
        rank1 = [r for r, _ in values if r is not None]
        shape = [s for _, s in values if s is not None]
        print(f"| {name} | {np.mean(rank1):.2f} ± {np.std(rank1):.2f} | {np.mean(shape):.2f} ± {np.std(shape):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
