"""Genuine and impostor statistics of each FR model's embedding space, measured once on the face corpus.

IDDM's calibrated identity loss stops at the level of "a random other person" (its margin is the
``anchor_impostor_mean`` here), and the evaluation's over-decoupling attacks compare against the same
scale. The numbers ship in ``impostor_statistics.json`` beside this module, made by
``python benchmarks/impostor_statistics.py`` from ``data/faces`` (LFW7 and ORL, see its SOURCES.md).

An *anchor* is ``normalize(mean of the unit embeddings of ANCHOR_PHOTOS photos)`` of one identity, as
the user's anchor ``e_k`` is built from their few training photos. Impostor pairs are only formed
within one corpus (colour news photos against colour news photos, grey studio shots against grey
ones): across corpora the domain gap alone lowers cosines. The shipped values average the corpora.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

STATISTICS_FILE = Path(__file__).with_name("impostor_statistics.json")
ANCHOR_PHOTOS = 4


@functools.cache
def _all_statistics() -> dict:
    return json.loads(STATISTICS_FILE.read_text()) if STATISTICS_FILE.is_file() else {}


def impostor_statistics(name: str) -> dict[str, float]:
    """The measured statistics of recognizer ``name`` (its ``.name``, e.g. ``sface``, ``facenet-casia``).

    Raises:
        ValueError: no statistics were measured for it (e.g. a bring-your-own ArcFace): the calibrated
            identity loss cannot be used with it; measure them or pass ``--identity_loss unbounded``.
    """
    statistics = _all_statistics().get(name)
    if statistics is None:
        raise ValueError(
            f"No impostor statistics for face recognizer {name!r} (measured: {sorted(_all_statistics())}); run "
            "benchmarks/impostor_statistics.py with it, or use --identity_loss unbounded."
        )
    return statistics


def embedding_statistics(
    embeddings: Mapping[str, np.ndarray], seed: int = 0, anchor_photos: int = ANCHOR_PHOTOS
) -> dict[str, float]:
    """Genuine and impostor cosine statistics of one FR model.

    Args:
        embeddings: identity -> ``(n_i, D)`` unit embeddings of its photos (identities with fewer than
            ``anchor_photos + 1`` photos are skipped).
        seed: which photos form each identity's anchor.

    Returns:
        ``pair_impostor_mean/std`` (photo vs photo of different people), ``anchor_impostor_mean/std/p05/p95``
        (photo vs another identity's anchor), ``anchor_genuine_mean/std`` (photo vs its own identity's anchor
        made of other photos), and the counts.
    """
    rng = np.random.default_rng(seed)
    names = [n for n, e in embeddings.items() if len(e) > anchor_photos]
    anchors, probes = {}, {}
    for name in names:
        order = rng.permutation(len(embeddings[name]))
        anchor = embeddings[name][order[:anchor_photos]].mean(0)
        anchors[name] = anchor / np.linalg.norm(anchor)
        probes[name] = embeddings[name][order[anchor_photos:]]
    genuine = np.concatenate([probes[n] @ anchors[n] for n in names])
    impostor = np.concatenate([probes[n] @ anchors[m] for n in names for m in names if m != n])
    everything = np.concatenate([embeddings[n] for n in names])
    labels = np.concatenate([[i] * len(embeddings[n]) for i, n in enumerate(names)])
    pairwise = everything @ everything.T
    different = labels[:, None] != labels[None, :]
    pair_impostor = pairwise[different]
    return {
        "anchor_impostor_mean": float(impostor.mean()),
        "anchor_impostor_std": float(impostor.std()),
        "anchor_impostor_p05": float(np.percentile(impostor, 5)),
        "anchor_impostor_p95": float(np.percentile(impostor, 95)),
        "anchor_genuine_mean": float(genuine.mean()),
        "anchor_genuine_std": float(genuine.std()),
        "pair_impostor_mean": float(pair_impostor.mean()),
        "pair_impostor_std": float(pair_impostor.std()),
        "identities": len(names),
        "photos": int(len(everything)),
        "anchor_photos": anchor_photos,
    }


def corpus_statistics(
    corpora: Mapping[str, Mapping[str, np.ndarray]], seed: int = 0, anchor_photos: int = ANCHOR_PHOTOS
) -> dict:
    """:func:`embedding_statistics` per corpus (``corpus -> identity -> (n_i, D)``) and their average.

    Returns the averaged statistics (counts summed) with the per-corpus ones under ``by_corpus``.
    """
    parts = {name: embedding_statistics(e, seed, anchor_photos) for name, e in corpora.items()}
    keys = [k for k in next(iter(parts.values())) if k not in ("identities", "photos", "anchor_photos")]
    pooled: dict = {k: float(np.mean([p[k] for p in parts.values()])) for k in keys}
    pooled["identities"] = sum(p["identities"] for p in parts.values())
    pooled["photos"] = sum(p["photos"] for p in parts.values())
    pooled["anchor_photos"] = anchor_photos
    return {**pooled, "by_corpus": parts}
