"""The benchmark's picture of what each defense did to each person (``side_by_side.png``).

One row per identity and defense (the defenses in the order they were planned; one row per identity when only
vanilla ran): the identity's clean training crops, vanilla's first generations, then per privacy level the
decoupled crop the defense trained on and that cell's first generations. Every row repeats the photos and vanilla,
so a row reads on its own and the defenses of one person lie one above the other, level under level. Only the
first personalization seed of each cell is shown. A tile a cell does not have (a failed cell, a level the defense
did not run, a photo without a face) stays white, so the columns line up across rows.
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
VANILLA = "vanilla"


def layout(records: Sequence[CellRecord]) -> tuple[list[str], list[str]]:
    """``(defenses, levels)`` of :func:`side_by_side`'s rows and columns, each in the order first planned."""
    defenses = list(dict.fromkeys(r.method for r in records if r.method != VANILLA))
    levels = list(dict.fromkeys(r.level for r in records if r.method != VANILLA))
    return defenses, levels


def describe(records: Sequence[CellRecord]) -> str:
    """What the rows and columns of :func:`side_by_side` show, in words."""
    defenses, levels = layout(records)
    rows = f"one row per identity and defense ({', '.join(defenses)})" if defenses else "one row per identity"
    columns = [f"{PHOTOS_SHOWN} clean training crops", f"vanilla: {GENERATIONS_SHOWN} generations"]
    columns += [f"{level}: 1 decoupled crop, {GENERATIONS_SHOWN} generations" for level in levels]
    return f"{rows}: {'; '.join(columns)}"


def _generations(output_dir: Path, record: CellRecord) -> list[np.ndarray]:
    paths = sorted((output_dir / record.images_dir).glob("image_*.png"))[:GENERATIONS_SHOWN]
    return [load_photo(path) for path in paths]


def _padded(images: list[np.ndarray], blank: np.ndarray) -> list[np.ndarray]:
    return images + [blank] * (GENERATIONS_SHOWN - len(images))


def _rows(
    cells: dict[tuple[str, str], CellRecord],
    defenses: list[str],
    levels: list[str],
    output_dir: Path,
    blank: np.ndarray,
) -> list[list[np.ndarray]]:
    """One identity's rows of tiles, one per defense (vanilla alone without one), ``blank`` where a tile is
    missing. The photos and vanilla's generations are read once and repeated at the head of every row."""
    pairs = {key: perturbation_pairs(output_dir / record.run_dir)[0] for key, record in cells.items()}
    clean = next((p for p in pairs.values() if p), [])
    head = [image for image, _ in clean[:PHOTOS_SHOWN]]
    head += [blank] * (PHOTOS_SHOWN - len(head))
    vanilla = next((record for (method, _), record in cells.items() if method == VANILLA), None)
    head += _padded(_generations(output_dir, vanilla) if vanilla else [], blank)
    rows = []
    for defense in defenses or [None]:
        tiles = list(head)
        for level in levels:
            record, pair = cells.get((defense, level)), pairs.get((defense, level))
            tiles.append(pair[0][1] if pair else blank)
            tiles += _padded(_generations(output_dir, record) if record else [], blank)
        rows.append(tiles)
    return rows


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
    defenses, levels = layout(first)
    rows = [row for cells in by_identity.values() for row in _rows(cells, defenses, levels, output_dir, blank)]
    return make_grid([tile for row in rows for tile in row], columns=len(rows[0]))


__all__ = ["describe", "layout", "side_by_side"]
