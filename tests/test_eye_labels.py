"""The blind eye-labelling tool: sheets hide the cell, and marks come back to the right images."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import benchmark_script
from PIL import Image

from iddm.diffusion.loading import load_backbone


def _tool():
    return benchmark_script("eye_labels")


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
    # A cell of another benchmark folder joins the same person's sheet.
    other = tmp_path / "other" / "cells" / "a" / "iddm-high-seed0" / "images"
    other.mkdir(parents=True)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(other / "image_0000.png")
    cells = ["vanilla-off-seed0", f"{tmp_path / 'other'}:iddm-high-seed0"]
    assert tool.write_sheets(tmp_path / "bench", cells, tmp_path / "mixed", seed=0, identities=["a"]) == 1
    items = json.loads((tmp_path / "mixed" / tool.KEY_FILE).read_text())["items"]["a"]
    assert (cells[1], "image_0000.png") in map(tuple, items) and len(items) == 4


def _agreement():
    return benchmark_script("eye_agreement")


def test_agreement_scores_rank_and_manifold():
    agreement = _agreement()
    positive = np.array([True, True, False, False, False])
    assert agreement.roc_auc(np.array([3.0, 2.0, 1.0, 0.0, 2.0]), positive) == pytest.approx(5.5 / 6)
    assert agreement.roc_auc(np.array([0.0, 0.0, 1.0, 1.0, 1.0]), positive) == 0.0  # backwards reads below 0.5
    real = np.random.default_rng(0).normal(size=(50, 4))
    inside, outside = agreement.realism_scores(
        np.stack([real[0] + 1e-3, real[0] + 100.0]), real, agreement.knn_radii(real)
    )
    assert inside > 1.0 > outside  # on a real face: within its k-NN ball; far away: outside every ball
    points = np.arange(136, dtype=float).reshape(68, 2)
    five = agreement.five_of_68(points)
    assert five.shape == (5, 2) and np.allclose(five[0], points[36:42].mean(0)) and np.allclose(five[4], points[54])


def test_agreement_pools_sheets_and_reads_the_prior_denoising_error(tmp_path, photos_dir):
    agreement = _agreement()
    sheets = [
        {"benchmark": "runs/a", "labels": {"p": {"vanilla-off-seed0": [0, 1], "runs/b:iddm-high-seed0": [2]}}},
        {"benchmark": "runs/b", "labels": {"p": {"iddm-high-seed0": [1, 1]}}},
    ]
    files = [tmp_path / f"{i}.json" for i in range(2)]
    for file, sheet in zip(files, sheets):
        file.write_text(json.dumps(sheet))
    pooled = agreement.pooled_labels(files)
    defense = Path("runs/b/cells/p/iddm-high-seed0/images")
    assert pooled[defense / "image_0000.png"] == [2, 1]  # the same image seen on two sheets
    assert pooled[defense / "image_0001.png"] == [1]
    assert pooled[Path("runs/a/cells/p/vanilla-off-seed0/images/image_0001.png")] == [1]
    # A vanilla cell copied into two benchmark folders is one set of images.
    for folder, level in (("a", 10), ("b", 10), ("c", 20)):
        cell = tmp_path / folder / "cells" / "p" / "vanilla-off-seed0" / "images"
        cell.mkdir(parents=True)
        Image.fromarray(np.full((8, 8, 3), level, np.uint8)).save(cell / "image_0000.png")
    copies = {tmp_path / f / "cells/p/vanilla-off-seed0/images/image_0000.png": [i] for i, f in enumerate("abc")}
    merged = agreement.merge_copies({**copies, tmp_path / "gone.png": [1]})
    assert list(merged.values()) == [[0, 1], [2]] and tmp_path / "gone.png" not in merged

    backbone = load_backbone("iddm:face-prior-128")  # the shipped prior: real weights, no hub
    photo = np.asarray(Image.open(photos_dir / "ardern_1.jpg").convert("RGB").resize((128, 128)))
    blocks = photo.reshape(8, 16, 8, 16, 3).transpose(0, 2, 1, 3, 4).reshape(64, 16, 16, 3)
    scrambled = blocks[np.random.default_rng(0).permutation(64)].reshape(8, 8, 16, 16, 3)
    scrambled = np.ascontiguousarray(scrambled.transpose(0, 2, 1, 3, 4).reshape(128, 128, 3))
    errors = agreement.prior_denoising_errors(backbone, [photo, photo, scrambled], batch_size=2)
    assert errors.shape == (3,) and np.isfinite(errors).all() and (errors > 0).all()
    assert errors[0] == pytest.approx(errors[1], rel=1e-5)  # same noise for every image, across batches too
    assert errors[2] > errors[0]  # a face cut into shuffled tiles is harder for the face prior to restore
