"""The adaptive attacker (iddm.evaluate.adaptive, benchmarks/adaptive_attack.py) on real face photos.

Benchmark-like folders are built here from SFace embeddings of the fixture photos (5 identities): the
"generations" are embeddings of augmented crops of each person's photos, and the "reference" the photos' own.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import benchmark_script

from iddm.evaluate.adaptive import (
    HeadConfig,
    apply_head,
    attack,
    attack_fold,
    gallery_of,
    identity_folds,
    load_benchmark,
    run_adaptive_attack,
    summarize,
    train_head,
    training_set,
)
from iddm.evaluate.cells import Cell, save_probes
from iddm.evaluate.linkability import FaceSet

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "adaptive_attack.py"
THRESHOLD = 0.363
"""SFace's cosine threshold (``iddm.faces.sface.SFACE_THRESHOLD``)."""


def _script():
    return benchmark_script("adaptive_attack")


@pytest.fixture(scope="module")
def real_embeddings(detected_photos) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Identity -> ``(reference (R, 128), augmented (A, 128))`` SFace unit embeddings of its real photos.

    Augmentations of each aligned crop: mirror, darker, brighter, mirror + noise (seeded).
    """
    from iddm.faces import align_crop
    from iddm.faces.sface import SFace

    sface = SFace()
    generator = torch.Generator().manual_seed(0)
    by_identity: dict[str, list[np.ndarray]] = {}
    for stem, (image, face) in sorted(detected_photos.items()):
        by_identity.setdefault(stem.rsplit("_", 1)[0], []).append(
            align_crop(image, face.landmarks, sface.template, sface.input_size)
        )
    out = {}
    for name, crops in by_identity.items():
        batch = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0
        noise = 0.03 * torch.randn(batch.shape, generator=generator)
        augmented = [batch.flip(-1), batch * 0.8, (batch * 1.2).clamp(0, 1), (batch.flip(-1) + noise).clamp(0, 1)]
        with torch.no_grad():
            reference = sface.embed(batch).numpy()
            generations = sface.embed(torch.cat(augmented)).numpy()
        out[name] = (reference.astype(np.float32), generations.astype(np.float32))
    assert len(out) == 5 and sum(len(r) for r, _ in out.values()) == 10
    return out


def _normalize(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_benchmark(root: Path, cells: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]]) -> Path:
    """A finished-benchmark-like folder: ``(identity, method, level) -> (probes, reference)`` of one FR (sface)."""
    records = []
    for (identity, method, level), (probes, reference) in cells.items():
        record = {"identity": identity, "method": method, "level": level, "seed": 0}
        backend = {"recognizer": "sface", "threshold": THRESHOLD, "rank1": 0.5, "match_rate": 0.25}
        record["backends"] = {"sface": {**backend, "role": "white-box" if method == "iddm" else "black-box"}}
        folder = Cell(identity, method, level, 0).folder(root)
        folder.mkdir(parents=True)
        (folder / "cell.json").write_text(json.dumps(record))
        detected = np.ones(len(probes), bool)
        save_probes(
            folder / "probes.npz",
            FaceSet(detected, {"sface": probes}),
            FaceSet(np.ones(len(reference), bool), {"sface": reference}),
        )
        records.append(record)
    (root / "results.json").write_text(json.dumps({"settings": {}, "identities": [], "cells": records}))
    return root


def distorted(x: np.ndarray, typical: np.ndarray, offset: np.ndarray, seed: int) -> np.ndarray:
    """A known distortion, as a decoupling to a typical stranger: ``normalize(x + 4 typical + 8 offset + noise)``.

    ``typical``: the unit mean of real faces; ``offset``: a random unit direction.
    """
    noise = 0.02 * np.random.default_rng(seed).standard_normal(x.shape)
    return _normalize(x + 4 * typical + 8 * offset + noise)


def _distorted_cells(real_embeddings, seed: int) -> dict:
    """Per identity a ``vanilla`` cell (real augmented embeddings) and an ``iddm`` cell (the same, distorted)."""
    typical = _normalize(np.concatenate([r for r, _ in real_embeddings.values()]).mean(axis=0, keepdims=True))[0]
    offset = _normalize(np.random.default_rng(seed).standard_normal((1, typical.shape[0])))[0]
    cells = {}
    for i, (name, (reference, generations)) in enumerate(sorted(real_embeddings.items())):
        cells[(name, "vanilla", "off")] = (generations, reference)
        cells[(name, "iddm", "high")] = (distorted(generations, typical, offset, seed=i), reference)
    return cells


# ----------------------------------------------------------------------------------------------------
# Folds never share an identity
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 5, 11, 20])
def test_folds_are_identity_disjoint_and_evaluate_every_identity_once(n):
    names = [f"id{i:02d}" for i in range(n)]
    for k in range(2, n + 1):
        folds = identity_folds(names + names[:1], k, seed=3)  # a repeated name is one identity
        assert len(folds) == k
        evaluated = [name for _, test in folds for name in test]
        assert sorted(evaluated) == names  # each exactly once
        for train, test in folds:
            assert test and not set(train) & set(test) and set(train) | set(test) == set(names)
        assert max(len(t) for _, t in folds) - min(len(t) for _, t in folds) <= 1
    assert identity_folds(names, 2, seed=1) == identity_folds(names, 2, seed=1)


@pytest.mark.parametrize("n, k", [(3, 4), (5, 1), (1, 2)])
def test_too_few_identities_for_the_folds_is_refused(n, k):
    with pytest.raises(ValueError, match="identit|at least 2"):
        identity_folds([f"id{i}" for i in range(n)], k)


def _random_cluster_cells(real_embeddings) -> dict:
    """Generations that carry no trace of the person: a random direction per identity, plus noise."""
    rng = np.random.default_rng(7)
    cells = {}
    for name, (reference, generations) in real_embeddings.items():
        center = rng.standard_normal(reference.shape[1])
        probes = _normalize(center / np.linalg.norm(center) + 0.1 * rng.standard_normal(generations.shape))
        cells[(name, "iddm", "high")] = (probes, reference)
    return cells


def test_the_attacker_never_trains_on_an_identity_it_attacks(real_embeddings, tmp_path):
    """A head that saw the attacked identity memorizes its cluster (R1-U 1); held out, it cannot beat chance much.

    The generations here are random per-identity clusters unrelated to the real photos, so only a fold that leaked
    the evaluated identity into training could link them.
    """
    cells, references = load_benchmark(write_benchmark(tmp_path, _random_cluster_cells(real_embeddings)))
    config = HeadConfig(kind="linear", ridge=1e-3, select=False)
    result = run_adaptive_attack(cells, references, k=5, config=config)
    (group,) = result["groups"]
    assert sorted(i for f in group["folds"] for i in f["evaluated"]) == sorted(real_embeddings)
    for fold in group["folds"]:
        assert fold["trained_on"] and not set(fold["trained_on"]) & set(fold["evaluated"]), fold
    held_out = np.mean([row["adaptive_rank1"] for row in group["rows"]])
    assert held_out <= 0.4  # chance 0.2

    refs = references["sface"]
    probes, targets, templates, real, _ = training_set(cells, refs, list(refs))  # the leak, made on purpose
    head = train_head(probes, targets, templates, real, config)
    gallery, labels = gallery_of(refs)
    leaked = [
        attack(apply_head(head, c.probes), gallery, labels, c.identity, refs[c.identity], THRESHOLD)[0] for c in cells
    ]
    assert np.mean(leaked) >= 0.9 > held_out + 0.4
    with pytest.raises(ValueError, match="overlap"):
        attack_fold(cells, refs, ["obama", "macron"], ["macron"], config)


# ----------------------------------------------------------------------------------------------------
# The head learns: a known distortion of real embeddings is undone on held-out identities
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["align", "linear"])
def test_the_head_undoes_a_known_distortion_on_identities_it_never_saw(real_embeddings, tmp_path, kind):
    cells, references = load_benchmark(write_benchmark(tmp_path, _distorted_cells(real_embeddings, seed=11)))
    result = run_adaptive_attack(cells, references, k=5, config=HeadConfig(kind=kind))
    summary = {g["method"]: summarize(g)["across_identities"] for g in result["groups"]}
    protected, vanilla = summary["iddm"], summary["vanilla"]
    # The distortion hides the person from the plain attacker, as a protection would ...
    assert vanilla["plain_rank1"]["mean"] >= 0.9
    assert protected["plain_rank1"]["mean"] <= 0.4 and protected["plain_match"]["mean"] <= 0.3
    # ... and a head fitted on four other people undoes it for the fifth, every time.
    assert protected["adaptive_rank1"]["mean"] >= 0.9 and protected["adaptive_rank1"]["min"] >= 0.75
    assert protected["adaptive_match"]["mean"] >= protected["plain_match"]["mean"] + 0.5
    iddm = next(g for g in result["groups"] if g["method"] == "iddm")
    assert {f["head"] for f in iddm["folds"]} <= {"align", kind} and "plain" not in {f["head"] for f in iddm["folds"]}
    for group in result["groups"]:
        for fold in group["folds"]:
            assert not set(fold["trained_on"]) & set(fold["evaluated"])


def test_an_untrained_head_is_the_plain_attacker_and_training_is_seeded(real_embeddings):
    reference, generations = real_embeddings["obama"]
    targets = np.zeros(len(generations), int)
    plain = train_head(generations, targets, reference[:1], reference, HeadConfig(), kind="plain")
    np.testing.assert_allclose(apply_head(plain, generations), generations, atol=1e-6)
    aligned = apply_head(
        train_head(generations, targets, reference[:1], reference, HeadConfig(kind="align")), generations
    )
    np.testing.assert_allclose(aligned.mean(axis=0), _normalize(reference.mean(axis=0, keepdims=True))[0], atol=0.2)
    config = HeadConfig(kind="mlp", hidden=16, steps=5, seed=5)
    first, second = (
        apply_head(train_head(generations, targets, reference[:1], reference, config), generations) for _ in "ab"
    )
    np.testing.assert_array_equal(first, second)
    with pytest.raises(ValueError, match="head kind"):
        HeadConfig(kind="transformer")


# ----------------------------------------------------------------------------------------------------
# The entry point
# ----------------------------------------------------------------------------------------------------


def test_the_script_writes_json_and_markdown_per_method_and_level(real_embeddings, tmp_path):
    bench = write_benchmark(tmp_path / "bench", _distorted_cells(real_embeddings, seed=2))
    out = tmp_path / "out"
    args = ["--benchmark_dir", str(bench), "--folds", "5"]
    assert _script().main([*args, "--output_dir", str(out)]) == 0
    result = json.loads((out / "adaptive_attack.json").read_text())
    table = (out / "adaptive_attack.md").read_text()
    assert [(g["method"], g["level"]) for g in result["groups"]] == [("iddm", "high"), ("vanilla", "off")]
    assert "| sface | white-box | iddm-high | 5 | 0.20 |" in table and "vanilla-off" in table
    iddm = result["groups"][0]["summary"]
    assert set(iddm["per_identity"]) == set(real_embeddings)
    assert iddm["across_identities"]["benchmark_rank1"]["mean"] == pytest.approx(0.5)
    assert iddm["across_identities"]["adaptive_rank1"]["mean"] > iddm["across_identities"]["plain_rank1"]["mean"]
    assert _script().main([*args, "--output_dir", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / "adaptive_attack.json").read_text() == (out / "adaptive_attack.json").read_text()


def _bad_inputs(tmp_path: Path, real_embeddings) -> dict[str, tuple[Path, list[str], str]]:
    cells = {(n, "vanilla", "off"): (g, r) for n, (r, g) in real_embeddings.items()}
    good = write_benchmark(tmp_path / "good", cells)
    unfinished = tmp_path / "unfinished"
    (unfinished / "cells").mkdir(parents=True)
    no_probes = tmp_path / "no_probes"
    shutil.copytree(good, no_probes)
    (no_probes / "cells" / "obama" / "vanilla-off-seed0" / "probes.npz").unlink()
    corrupt = tmp_path / "corrupt"
    shutil.copytree(good, corrupt)
    (corrupt / "results.json").write_text("{not json")
    return {
        "missing": (tmp_path / "nowhere", [], "no such benchmark folder"),
        "unfinished": (unfinished, [], "no results.json"),
        "no_probes": (no_probes, [], "incomplete benchmark"),
        "corrupt": (corrupt, [], "not a readable"),
        "too_few": (good, ["--folds", "6"], "5 identities are too few for 6"),
        "one_fold": (good, ["--folds", "1"], "at least 2"),
    }


def test_bad_input_is_one_line_and_a_nonzero_exit(real_embeddings, tmp_path, capsys):
    for name, (folder, extra, message) in _bad_inputs(tmp_path, real_embeddings).items():
        assert _script().main(["--benchmark_dir", str(folder), *extra]) != 0, name
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (name, err)
    process = subprocess.run(
        [sys.executable, str(SCRIPT), "--benchmark_dir", str(tmp_path / "unfinished")],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert process.returncode != 0 and "Traceback" not in process.stderr
    assert process.stderr.strip().count("\n") == 0 and "no results.json" in process.stderr
