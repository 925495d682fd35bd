"""``iddm faces``: the per-photo detection + pairwise similarity report, with bad photos in the mix."""

from __future__ import annotations

import json

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from iddm.faces import RECOGNIZERS, embed_photos, load_recognizer
from iddm.faces.report import faces_report, format_faces_report


@pytest.fixture(scope="module")
def report(photos_dir, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("faces-report")
    coffee = folder / "coffee.png"
    Image.fromarray(skimage.data.coffee()).save(coffee)
    corrupt = folder / "corrupt.jpg"
    corrupt.write_bytes((photos_dir / "obama_1.jpg").read_bytes()[:500])
    paths = [photos_dir / "obama_1.jpg", coffee, photos_dir / "obama_2.jpg", corrupt, photos_dir / "macron_1.jpg"]
    return faces_report(paths, ["sface", "dlib"])


def test_layout(report, photos_dir):
    assert list(report) == ["photos", "detections", "backends"]
    assert report["photos"][0] == str(photos_dir / "obama_1.jpg")
    assert all(isinstance(p, str) for p in report["photos"])
    assert list(report["backends"]) == ["sface", "dlib"]
    for info in report["backends"].values():
        assert set(info) == {"differentiable", "threshold", "similarity"}
        assert len(info["similarity"]) == 5 and all(len(row) == 5 for row in info["similarity"])
    assert report["backends"]["sface"]["differentiable"] is True
    assert report["backends"]["dlib"]["differentiable"] is False
    assert json.loads(json.dumps(report)) == report


def test_bad_photos_get_errors_and_null_rows(report):
    detections = report["detections"]
    assert [d["face_found"] for d in detections] == [True, False, True, False, True]
    assert "coffee.png: no face found" in detections[1]["error"] and detections[1]["num_faces"] == 0
    assert "corrupt.jpg" in detections[3]["error"]
    assert detections[0]["num_faces"] == 1 and detections[0]["face_size_px"] > 100 and detections[0]["error"] is None
    for info in report["backends"].values():
        similarity = info["similarity"]
        for bad in (1, 3):
            assert all(v is None for v in similarity[bad])
            assert all(row[bad] is None for row in similarity)


def test_similarities_and_matches(report):
    for name, info in report["backends"].items():
        s = np.array([[np.nan if v is None else v for v in row] for row in info["similarity"]])
        np.testing.assert_allclose(s, s.T, atol=1e-4, equal_nan=True)
        np.testing.assert_allclose(s[[0, 2, 4], [0, 2, 4]], 1.0, atol=1e-3)
        assert s[0, 2] >= info["threshold"], name  # Obama - Obama
        assert s[0, 4] < info["threshold"] and s[2, 4] < info["threshold"], name  # Obama - Macron


def test_text_table(report):
    text = format_faces_report(report)
    assert "obama_1.jpg" in text and "coffee.png" in text and "no face found" in text
    assert "sface" in text and "dlib" in text and "*" in text
    sface_block = text.split("sface (")[1].split("dlib (")[0]
    assert sface_block.count("*") >= 5  # 3 self-pairs + the Obama pair twice (plus the legend)


def test_unknown_backend_lists_known_names():
    with pytest.raises(ValueError, match="known: arcface, dlib, facenet, mobilefacenet, sface"):
        load_recognizer("vggface")
    assert set(RECOGNIZERS) == {"sface", "facenet", "dlib", "arcface", "mobilefacenet"}


def test_arcface_needs_weights():
    with pytest.raises((ValueError, ImportError), match="arcface"):
        load_recognizer("arcface")


def test_embed_photos_keeps_none(detected_photos):
    recognizer = load_recognizer("sface")
    image, face = detected_photos["obama_3"]
    out = embed_photos(recognizer, [image, image, image], [face, None, face])
    assert out[1] is None
    assert out[0].shape == (128,) and torch.allclose(out[0], out[2])
    with pytest.raises(ValueError, match="faces"):
        embed_photos(recognizer, [image], [])
