"""The attacker's embeddings of a benchmark dataset, kept on disk between runs of the same benchmark."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from iddm.evaluate.dataset import Identity
from iddm.evaluate.linkability import FaceSet
from iddm.images import atomic_write_bytes

logger = logging.getLogger(__name__)


def photos_key(identity: Identity, recognizers: Sequence[str]) -> str:
    """What an identity's embeddings depend on: its photos (path, size, modification time) and ``recognizers``
    (names, and whatever else identifies their weights)."""
    stats = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) if p.exists() else (str(p),) for p in identity.photos]
    return hashlib.sha256(json.dumps([stats, sorted(recognizers)]).encode()).hexdigest()


def load_embedding_cache(path: Path) -> dict[str, tuple[str, FaceSet]]:
    """``identity -> (key, faces)`` from ``path`` (empty when missing or unreadable: it is only a cache)."""
    try:
        with np.load(path) as data:
            keys = json.loads(str(data["keys"]))
            return {
                name: (
                    key,
                    FaceSet(
                        data[f"{name}/detected"],
                        {k.split("/", 2)[2]: data[k] for k in data.files if k.startswith(f"{name}/embedding/")},
                    ),
                )  # fmt: skip
                for name, key in keys.items()
            }
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        if path.exists():
            logger.warning("Ignoring the attacker's embedding cache %s (%s); embedding again.", path, err)
        return {}


def save_embedding_cache(path: Path, faces: Mapping[str, FaceSet], keys: Mapping[str, str]) -> None:
    arrays: dict[str, np.ndarray] = {"keys": np.array(json.dumps(dict(keys)))}
    for name, face_set in faces.items():
        arrays[f"{name}/detected"] = face_set.detected
        arrays |= {f"{name}/embedding/{backend}": e for backend, e in face_set.embeddings.items()}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())
