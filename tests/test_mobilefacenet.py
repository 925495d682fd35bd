"""MobileFaceNet (TFLite, black-box): real model on real photos, bad model files, never a surrogate.

The model file is not shipped (its upstream terms are not stated): tests that run it read it from the shared
weights folder and skip where it (or ai-edge-litert) is missing, e.g. on a fresh clone in CI. The bad-file
tests need neither.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import aligned_crops

import iddm.faces.mobilefacenet as mobilefacenet_module
from iddm.faces import load_recognizer
from iddm.faces.mobilefacenet import (
    MOBILEFACENET_SHA256,
    MobileFaceNet,
    check_model_file,
    resolve_model_path,
    use_model_path,
)

SHARED_MODEL = Path(__file__).resolve().parents[2] / "shared" / "weights" / "mobilefacenet" / "MobileFaceNet.tflite"
HAS_LITERT = importlib.util.find_spec("ai_edge_litert") is not None
needs_model = pytest.mark.skipif(
    not (SHARED_MODEL.is_file() and HAS_LITERT), reason="needs ../shared/weights/mobilefacenet and ai-edge-litert"
)


@pytest.fixture(scope="module")
def mobilefacenet() -> MobileFaceNet:
    return MobileFaceNet(SHARED_MODEL, num_threads=1)


@needs_model
def test_separates_the_test_identities_at_its_threshold(mobilefacenet, detected_photos):
    names, batch = aligned_crops(mobilefacenet, detected_photos)
    emb = mobilefacenet.embed(batch)
    assert emb.shape == (len(names), 192) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(len(names)))
    identities = [n.rsplit("_", 1)[0] for n in names]
    similarity = (emb @ emb.T).numpy()
    genuine, impostor = [], []
    for i, j in itertools.combinations(range(len(names)), 2):
        (genuine if identities[i] == identities[j] else impostor).append(similarity[i, j])
    assert len(genuine) == 8
    assert min(genuine) >= mobilefacenet.threshold > max(impostor)


@needs_model
def test_odd_batches_match_one_by_one(mobilefacenet, detected_photos):
    # The interpreter's batch is fixed at 2: a batch of 3 is padded, and each row must not depend on its neighbour.
    _, batch = aligned_crops(mobilefacenet, detected_photos)
    together = mobilefacenet.embed(batch[:3])
    alone = torch.cat([mobilefacenet.embed(batch[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)
    assert mobilefacenet.embed(batch[:0]).shape == (0, 192)
    with pytest.raises(ValueError, match=r"\(N, 3, 112, 112\)"):
        mobilefacenet.embed(torch.rand(1, 3, 64, 64))


@needs_model
def test_registry_loads_the_chosen_file_and_is_black_box(monkeypatch):
    monkeypatch.setattr(mobilefacenet_module, "_default_path", None)
    use_model_path(SHARED_MODEL.parent)  # a folder holding the file works too
    recognizer = load_recognizer("MobileFaceNet")
    assert recognizer.name == "mobilefacenet" and recognizer.path == SHARED_MODEL
    assert not recognizer.differentiable
    faces = torch.rand(2, 3, 112, 112, requires_grad=True)
    assert not recognizer.embed(faces).requires_grad  # no gradient reaches the pixels


def test_never_a_surrogate():
    from iddm.decouple.privacy import DIFFERENTIABLE_SURROGATES

    assert "mobilefacenet" not in DIFFERENTIABLE_SURROGATES
    assert MobileFaceNet.differentiable is False


def test_missing_model_is_one_line_naming_it(tmp_path, monkeypatch):
    monkeypatch.setattr(mobilefacenet_module, "_default_path", None)
    with pytest.raises(ValueError, match="--mobilefacenet PATH"):
        resolve_model_path(None)
    missing = tmp_path / "nope.tflite"
    with pytest.raises(FileNotFoundError, match=f"MobileFaceNet model file {missing} does not exist"):
        MobileFaceNet(missing)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "MobileFaceNet.tflite")):
        load_recognizer("mobilefacenet", model_path=tmp_path)  # a folder without the file


def test_truncated_or_other_file_is_refused_before_loading(tmp_path):
    truncated = tmp_path / "MobileFaceNet.tflite"
    truncated.write_bytes(b"TFL3" + bytes(1000))
    with pytest.raises(ValueError) as err:
        MobileFaceNet(tmp_path)
    message = str(err.value)
    assert "\n" not in message and str(truncated) in message and "1,004 bytes" in message
    assert MOBILEFACENET_SHA256[:12] in message
    check_model_file(truncated, hashlib.sha256(truncated.read_bytes()).hexdigest())  # its own digest passes


@pytest.mark.skipif(not HAS_LITERT, reason="needs ai-edge-litert")
def test_unloadable_file_without_digest_check_is_one_line(tmp_path):
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(b"not a flatbuffer at all" * 10)
    with pytest.raises(ValueError) as err:
        MobileFaceNet(broken, expected_sha256=None)
    assert "\n" not in str(err.value) and f"MobileFaceNet model file {broken} cannot be loaded" in str(err.value)


@needs_model
def test_truncated_real_file_without_digest_check_is_one_line(tmp_path):
    truncated = tmp_path / "half.tflite"
    truncated.write_bytes(SHARED_MODEL.read_bytes()[: SHARED_MODEL.stat().st_size // 2])
    with pytest.raises(ValueError) as err:
        MobileFaceNet(truncated, expected_sha256=None)
    assert "\n" not in str(err.value) and str(truncated) in str(err.value)


def test_cli_names_the_bad_model_file(tmp_path, photos_dir, capsys):
    from iddm.cli import main

    bad = tmp_path / "MobileFaceNet.tflite"
    bad.write_bytes(b"\x00" * 64)
    code = main(["faces", str(photos_dir / "obama_1.jpg"), "--backends", "mobilefacenet", "--mobilefacenet", str(bad)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and str(bad) in err


@needs_model
def test_cli_faces_reports_mobilefacenet(photos_dir, capsys):
    from iddm.cli import main

    photos = [str(photos_dir / n) for n in ("obama_1.jpg", "obama_2.jpg", "macron_1.jpg")]
    code = main(["faces", *photos, "--backends", "mobilefacenet", "--json", "--mobilefacenet", str(SHARED_MODEL)])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    entry = report["backends"]["mobilefacenet"]
    assert entry["differentiable"] is False
    similarity = np.array(entry["similarity"], dtype=float)
    assert similarity[0, 1] >= entry["threshold"] > max(similarity[0, 2], similarity[1, 2])
