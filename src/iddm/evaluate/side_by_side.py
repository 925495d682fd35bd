"""The benchmark's picture of what each defense did to each person (``side_by_side.png``).

One row per identity: its clean training crops, then per cell (vanilla first, then the defenses in the order
they were planned) the decoupled crop the defense trained on, where it perturbs the photos, and the cell's first
generations. Only the first personalization seed of each cell is shown. A tile a cell does not have (a failed
cell, a photo without a face) stays white, so the columns line up across identities.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from iddm.evaluate.results import CellRecord
from iddm.evaluate.utility import perturbation_pairs
from iddm.images import load_photo, make_grid

PHOTOS_SHOWN = 2
"""Clean training crops per row (and decoupled crops per defended cell: 1)."""
GENERATIONS_SHOWN = 4
"""Generations per cell and row."""


def cell_columns(records: Sequence[CellRecord]) -> list[tuple[str, str, bool]]:
    """``(method, level, perturbs photos)`` of every cell kind in ``records``: vanilla first, then as planned."""
    columns: dict[tuple[str, str], bool] = {}
    for record in sorted(records, key=lambda r: r.method != "vanilla"):
        columns.setdefault((record.method, record.level), record.method != "vanilla")
    return [(method, level, perturbs) for (method, level), perturbs in columns.items()]


def column_labels(records: Sequence[CellRecord]) -> str:
    """What the columns of :func:`side_by_side` show, left to right, in words."""
    parts = [f"{PHOTOS_SHOWN} clean training crops"]
    for method, level, perturbs in cell_columns(records):
        name = method if method == "vanilla" else f"{method} {level}"
        parts.append(f"{name}: {'1 decoupled crop, ' if perturbs else ''}{GENERATIONS_SHOWN} generations")
    return "; ".join(parts)


def _generations(output_dir: Path, record: CellRecord) -> list[np.ndarray]:
    paths = sorted((output_dir / record.images_dir).glob("image_*.png"))[:GENERATIONS_SHOWN]
    return [load_photo(path) for path in paths]


def _row(cells: dict[tuple[str, str], CellRecord], columns, output_dir: Path, blank: np.ndarray) -> list[np.ndarray]:
    """One identity's tiles (``blank`` where a tile is missing)."""
    pairs = {key: perturbation_pairs(output_dir / record.run_dir)[0] for key, record in cells.items()}
    clean = next((p for p in pairs.values() if p), [])
    tiles = [image for image, _ in clean[:PHOTOS_SHOWN]]
    tiles += [blank] * (PHOTOS_SHOWN - len(tiles))
    for method, level, perturbs in columns:
        record = cells.get((method, level))
        if perturbs:
            tiles.append(pairs[(method, level)][0][1] if record is not None and pairs[(method, level)] else blank)
        images = _generations(output_dir, record) if record is not None else []
        tiles += images + [blank] * (GENERATIONS_SHOWN - len(images))
    return tiles


def side_by_side(records: Sequence[CellRecord], output_dir: str | Path) -> np.ndarray | None:
    """The grid ``(H, W, 3)`` uint8 of :mod:`this module <iddm.evaluate.side_by_side>`, or ``None`` when no cell
    has a generation (tiles at the generations' size; crops of another size are resized)."""
    output_dir = Path(output_dir)
    first = sorted(records, key=lambda r: r.seed)
    by_identity: dict[str, dict[tuple[str, str], CellRecord]] = {}
    for record in first:
        by_identity.setdefault(record.identity, {}).setdefault((record.method, record.level), record)
    sample = next((images[0] for r in first if (images := _generations(output_dir, r))), None)
    if sample is None:
        return None
    blank = np.full_like(sample, 255)
    columns = cell_columns(first)
    rows = [_row(cells, columns, output_dir, blank) for cells in by_identity.values()]
    return make_grid([tile for row in rows for tile in row], columns=len(rows[0]))


__all__ = ["column_labels", "side_by_side"]
