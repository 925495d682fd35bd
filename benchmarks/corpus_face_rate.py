"""How often YuNet finds a face in the aligned crops a prior was pretrained on, grey and colour photos apart.

``benchmarks/prior_quality.py`` counts the prior's samples with a face found, per prompt; this is the same count on
the training crops themselves, made by pretraining's own loader (:func:`iddm.prior.data.load_corpus` with the
prior's recorded resolution, margin, excluded and held-out people): the share a sampler that drew the training
data exactly would reach.

    python benchmarks/corpus_face_rate.py [--prior iddm:face-prior-128] [--corpus ../shared/data/faces]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from iddm.faces import detect_faces
from iddm.images import atomic_write_json
from iddm.prior import PRIOR_FILE
from iddm.prior.data import load_corpus
from iddm.progress import progress_bar
from iddm.weights import prior_path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prior", default="iddm:face-prior-128", help="Shipped prior name or prior folder.")
    parser.add_argument("--corpus", type=Path, default=Path("../shared/data/faces"), help="The pretraining corpus.")
    parser.add_argument("--output", type=Path, default=None, help="JSON file to write (default: print only).")
    args = parser.parse_args(argv)

    try:
        config = json.loads((prior_path(args.prior) / PRIOR_FILE).read_text())["pretrain_config"]
        corpus = load_corpus(
            args.corpus, config["exclude"], config["resolution"], config["margin"],
            min_identities=config["min_identities"], held_out_cfp=config["held_out_cfp"],
        )  # fmt: skip
    except (OSError, KeyError, ValueError) as err:  # PhotoError is a ValueError
        sys.exit(f"corpus_face_rate: {err}")
    found = np.array([len(detect_faces(crop)) > 0 for crop in progress_bar(corpus.images, desc="YuNet")])
    result = {"prior": args.prior, "resolution": config["resolution"], "margin": config["margin"]}
    for kind, rows in (("grey", corpus.gray), ("colour", ~corpus.gray)):
        result[kind] = {"crops": int(rows.sum()), "face_detection_rate": float(found[rows].mean())}
        print(f"{kind}: YuNet finds a face in {found[rows].mean():.3f} of {rows.sum()} training crops")
    if args.output is not None:
        atomic_write_json(args.output, result)
    return result


if __name__ == "__main__":
    main()
