"""Measure each FR model's genuine and impostor cosine statistics on the face corpus (ships with iddm).

    python benchmarks/impostor_statistics.py [--data data/faces] [--backends sface facenet dlib]

Detects the largest face of every photo of ``DATA/<corpus>/<identity>/`` (YuNet, on a padded copy:
the corpus images are tight face crops), embeds it with each FR model and writes
``src/iddm/faces/impostor_statistics.json`` (see :mod:`iddm.faces.statistics`), printing a table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from iddm.faces import detect_faces, embed_photos, load_recognizer
from iddm.faces.statistics import STATISTICS_FILE, corpus_statistics
from iddm.images import atomic_write_json, list_photos, load_photo

ROOT = Path(__file__).resolve().parents[1]


def padded(image: np.ndarray) -> np.ndarray:
    """A copy with a 25% reflected border, so a detector sees the whole face of a tight crop."""
    pad = max(image.shape[:2]) // 4
    return cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REFLECT_101)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "faces", help="Corpus root (corpus/identity/*).")
    parser.add_argument("--backends", nargs="+", default=["sface", "facenet", "dlib"], help="FR models to measure.")
    parser.add_argument("--output", type=Path, default=STATISTICS_FILE, help="JSON file to write.")
    args = parser.parse_args()
    identities = {
        f"{corpus.name}/{folder.name}": folder
        for corpus in sorted(p for p in args.data.iterdir() if p.is_dir())
        for folder in sorted(p for p in corpus.iterdir() if p.is_dir())
    }
    images, faces, owners = [], [], []
    for name, folder in identities.items():
        for path in list_photos(folder, min_photos=0):
            image = padded(load_photo(path))
            found = detect_faces(image)
            if found:
                images.append(image)
                faces.append(found[0])
                owners.append(name)
    print(f"{len(images)} faces of {len(set(owners))} identities", file=sys.stderr)
    statistics = json.loads(args.output.read_text()) if args.output.is_file() else {}
    for key in args.backends:
        recognizer = load_recognizer(key)
        rows = np.stack([e.numpy() for e in embed_photos(recognizer, images, faces)])
        corpora: dict[str, dict[str, np.ndarray]] = {}
        for name in dict.fromkeys(owners):
            corpora.setdefault(name.split("/")[0], {})[name] = rows[[o == name for o in owners]]
        statistics[recognizer.name] = {**corpus_statistics(corpora), "threshold": recognizer.threshold}
        s = statistics[recognizer.name]
        print(
            f"{recognizer.name:14s} impostor {s['anchor_impostor_mean']:.3f} ± {s['anchor_impostor_std']:.3f} "
            f"genuine (anchor) {s['anchor_genuine_mean']:.3f} ± {s['anchor_genuine_std']:.3f} "
            f"pairwise impostor {s['pair_impostor_mean']:.3f}; threshold {recognizer.threshold:.3f}"
        )
    statistics["_source"] = (
        "benchmarks/impostor_statistics.py on data/faces (LFW7 + ORL; credits in data/faces/SOURCES.md)"
    )
    atomic_write_json(args.output, statistics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
