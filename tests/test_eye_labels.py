"""The blind eye-labelling tool: sheets hide the cell, and marks come back to the right images."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("eye_labels", ROOT / "benchmarks" / "eye_labels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_marks_on_shuffled_sheets_come_back_to_their_images(tmp_path):
    tool = _tool()
    # Two identities; in each cell, image i is drawn with grey level 10*i (vanilla) or 200+10*i (defense).
    for identity in ("a", "b"):
        for cell, base in (("vanilla-off-seed0", 10), ("iddm-high-seed0", 200)):
            folder = tmp_path / "bench" / "cells" / identity / cell / "images"
            folder.mkdir(parents=True)
            for i in range(3):
                pixels = np.full((32, 32, 3), base + 10 * i, np.uint8)
                Image.fromarray(pixels).save(folder / f"image_{i:04d}.png")
    (tmp_path / "bench" / "cells" / "c" / "vanilla-off-seed0").mkdir(parents=True)  # unfinished: no sheet
    out = tmp_path / "sheets"
    assert tool.write_sheets(tmp_path / "bench", ["vanilla-off-seed0", "iddm-high-seed0"], out, seed=7) == 2
    key = json.loads((out / tool.KEY_FILE).read_text())
    assert sorted(key["items"]) == ["a", "b"]
    # Mark every tile by what it shows (a bright tile: distorted), as a person would from the sheet alone.
    marks = {}
    for identity in ("a", "b"):
        sheet = np.asarray(Image.open(out / f"sheet_{identity}.png"))
        tiles = [sheet[(n // 8) * 128 + 64, (n % 8) * 128 + 64, 0] for n in range(6)]
        marks[identity] = [int(level >= 200) for level in tiles]
        assert marks[identity] not in ([0, 0, 0, 1, 1, 1], [1, 1, 1, 0, 0, 0])  # the cells are mixed on the sheet
    labels = tool.unshuffle(key, marks)
    assert labels["a"] == {"vanilla-off-seed0": [0, 0, 0], "iddm-high-seed0": [1, 1, 1]}
    assert "| iddm-high-seed0 | 1.00 ± 0.00 | 1.00–1.00 | 0 of 6 |" in tool.summary(labels)
    with pytest.raises(ValueError, match="a: give 6 marks"):
        tool.unshuffle(key, {"a": [0, 1]})
