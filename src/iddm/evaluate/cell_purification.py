"""The purifying attacker over a finished benchmark's cells (``iddm benchmark --purify``): each cell's stored
generations purified and attacked again, the result cached in the cell's ``purification.json``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from iddm.evaluate.attacker import linkability_by_backend
from iddm.evaluate.cells import Cell, cached_backends, embed_identities, identity_knowledge
from iddm.evaluate.linkability import embed_images
from iddm.evaluate.purify import (
    PURIFICATION_FILE,
    PurifierSpec,
    build_purifiers,
    parse_purifiers,
    purification_attack,
)
from iddm.evaluate.results import Purification, from_json, to_json
from iddm.images import atomic_write_json, load_photo


def purify_cells(
    records: Sequence,
    identities: Sequence,
    output_dir: Path,
    backends: Sequence[str],
    specs: Sequence[str | PurifierSpec],
    base_model: str | None = None,
    device: str | None = None,
    num_inference_steps: int = 25,
) -> list:
    """Attach the purifying attacker's result to each finished benchmark cell (``record.purification``).

    A cell's ``purification.json`` made with the same purifiers and FR systems is read back; any other cell is
    attacked from its stored generations with the benchmark's reference and gallery, and its file written.

    Args:
        records: :class:`iddm.evaluate.results.CellRecord` of the finished cells.
        identities: the benchmark's :class:`iddm.evaluate.dataset.Identity` list (the gallery holds every one).
        output_dir: the benchmark's output folder.
        backends: its FR system keys; the rest as :func:`build_purifiers`.
    """
    names = [p.name for p in parse_purifiers(specs)]
    keys = [k.strip().lower() for k in backends]
    todo = []
    for record in records:
        path = Cell.of(record).folder(output_dir) / PURIFICATION_FILE
        if path.is_file():
            data = json.loads(path.read_text())
            if data.get("purifiers") == names and data.get("backends") == keys:
                record.purification = from_json(Purification, data["purification"])
                continue
        todo.append(record)
    if not todo:
        return list(records)
    recognizers = cached_backends(tuple(keys))
    rec = list(recognizers.values())
    purifiers = build_purifiers(specs, base_model, device, num_inference_steps=num_inference_steps)
    faces = embed_identities(identities, recognizers)
    by_name = {i.name: i for i in identities}
    for record in todo:
        images = [load_photo(p) for p in sorted((Path(output_dir) / record.images_dir).glob("image_*.png"))]
        reference, gallery = identity_knowledge(by_name[record.identity], faces)
        roles = {k: record.backends[k].role for k in keys}

        def attack(purified, name, reference=reference, gallery=gallery, roles=roles):
            probes = embed_images(purified, rec, progress=f"attack: {name}")
            return linkability_by_backend(probes, reference, gallery, recognizers, roles)

        record.purification = purification_attack(images, record.backends, purifiers, attack)
        atomic_write_json(
            Cell.of(record).folder(output_dir) / PURIFICATION_FILE,
            {"purifiers": names, "backends": keys, "purification": to_json(record.purification)},
        )
    return list(records)


__all__ = ["purify_cells"]
