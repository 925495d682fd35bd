"""The purifying attacker: purifier specs and ranges, noisy upscaling, SDEdit with a base model, the best purifier."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from iddm.evaluate.purify import (
    NO_PURIFIER,
    PurifierSpec,
    SDEditPurifier,
    best_purifiers,
    build_purifiers,
    default_purifiers,
    parse_purifier,
    parse_purifiers,
    purification_cost,
    sdedit,
)
from iddm.evaluate.results import BackendLinkability, PurifierCost
from iddm.evaluate.robustness import noisy_upscale
from iddm.fidelity import psnr
from iddm.images import load_photo


@pytest.fixture(scope="module")
def photo(photos_dir) -> np.ndarray:
    return load_photo(photos_dir / "obama_1.jpg")


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory) -> Path:
    from iddm.diffusion import save_tiny_sd_pipeline

    return save_tiny_sd_pipeline(tmp_path_factory.mktemp("tiny") / "tiny-sd")


@pytest.mark.parametrize(
    ("spec", "kind", "strength", "name"),
    [
        ("jpeg:30", "jpeg", 30, "jpeg30"),
        ("jpeg30", "jpeg", 30, "jpeg30"),
        ("blur:2", "blur", 2, "blur2"),
        ("noisy_upscale:0.5", "noisy_upscale", 0.5, "noisy_upscale0.5"),
        ("noisy_upscale0.25", "noisy_upscale", 0.25, "noisy_upscale0.25"),
        ("sdedit:1", "sdedit", 1.0, "sdedit1"),
        (" sdedit : 0.3 ", "sdedit", 0.3, "sdedit0.3"),
    ],
)
def test_parse_purifier(spec, kind, strength, name):
    parsed = parse_purifier(spec)
    assert (parsed.kind, parsed.strength, parsed.name) == (kind, strength, name)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("jpeg:0", "integer in 1..100"),
        ("jpeg:101", "integer in 1..100"),
        ("jpeg:30.5", "integer in 1..100"),
        ("blur:0", "in (0, 8]"),
        ("blur:9", "in (0, 8]"),
        ("noisy_upscale:0", "in (0, 1]"),
        ("noisy_upscale:1.5", "in (0, 1]"),
        ("sdedit:0", "SDEdit strength in (0, 1]"),
        ("sdedit:1.01", "SDEdit strength in (0, 1]"),
        ("sdedit:-0.2", "SDEdit strength in (0, 1]"),
        ("sdedit:nan", "Unknown purifier"),
        ("median:3", "Unknown purifier"),
    ],
)
def test_out_of_range_strengths_are_refused_in_one_line(spec, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")) as err:
        parse_purifier(spec)
    assert "\n" not in str(err.value)


def test_bad_strength_is_refused_before_the_model_loads(tmp_path):
    # The base model does not exist: the strength must be refused first, not the path.
    with pytest.raises(ValueError, match="SDEdit strength"):
        build_purifiers(["jpeg:30", "sdedit:1.5"], base_model=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="listed twice"):
        parse_purifiers(["jpeg:30", "jpeg30"])
    with pytest.raises(ValueError, match="--purify_model"):
        build_purifiers(["sdedit:0.3"], base_model=None)
    with pytest.raises(ValueError, match="no pretrained weights"):
        build_purifiers(["sdedit:0.3"], base_model="iddm:micro")


def test_defaults_use_sdedit_only_with_a_pretrained_base():
    assert [p.name for p in default_purifiers(None)] == [p.name for p in default_purifiers("iddm:micro")]
    names = [p.name for p in default_purifiers("iddm:face-prior")]
    assert {"jpeg30", "blur1", "blur2", "blur3", "noisy_upscale0.5", "sdedit0.1", "sdedit0.5"} <= set(names)


def test_noisy_upscale(photo):
    before = photo.copy()
    out = noisy_upscale(photo, 0.5, seed=1)
    assert out.shape == photo.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(photo, before)  # the input is untouched
    np.testing.assert_array_equal(out, noisy_upscale(photo, 0.5, seed=1))  # reproducible
    assert not np.array_equal(out, noisy_upscale(photo, 0.5, seed=2))
    # Lower scale (more destroyed detail) costs more; without noise at scale 1 it is the identity.
    assert psnr(photo, noisy_upscale(photo, 0.25)) < psnr(photo, out) < 40
    np.testing.assert_array_equal(noisy_upscale(photo, 1.0, noise_std=0.0), photo)
    for bad in ({"scale": 0.0}, {"scale": 1.2}, {"scale": 0.5, "noise_std": -1.0}):
        with pytest.raises(ValueError):
            noisy_upscale(photo, **bad)


def test_sdedit_cost_grows_with_strength_on_a_pixel_backbone(photo):
    # A pixel-space backbone encodes exactly, so at a small strength SDEdit must return nearly the input
    # (whatever the untrained UNet predicts, the noise level there is tiny), and the change grows with strength.
    from PIL import Image

    from iddm.diffusion import PixelBackbone

    backbone = PixelBackbone.from_scratch(32, seed=0)
    image = np.array(Image.fromarray(photo).resize((32, 32), Image.Resampling.BICUBIC))
    batch = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    psnrs = []
    for strength in (0.1, 0.5, 1.0):
        out = sdedit(backbone, batch, strength, torch.Generator().manual_seed(0), num_inference_steps=10)
        assert out.shape == batch.shape and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
        psnrs.append(psnr(batch[0].permute(1, 2, 0).numpy(), out[0].permute(1, 2, 0).numpy()))
    assert psnrs[0] > 30 and psnrs[0] > psnrs[1] > psnrs[2], psnrs
    with pytest.raises(ValueError, match=r"SDEdit strength in \(0, 1\]"):
        sdedit(backbone, batch, 0.0, torch.Generator())


def test_sdedit_purifier_on_a_tiny_stable_diffusion(tiny_sd, photo):
    purifier = SDEditPurifier(tiny_sd, device="cpu", num_inference_steps=2, batch_size=2)
    images = [photo[:200, :160].copy(), photo[:64, :64].copy(), photo[:64, :64].copy()]
    out = purifier(images, 0.5)
    assert [o.shape for o in out] == [i.shape for i in images] and all(o.dtype == np.uint8 for o in out)
    # Image i uses seed + i, whatever the batching: images 1 and 2 are equal inputs with different seeds.
    again = SDEditPurifier(tiny_sd, device="cpu", num_inference_steps=2, batch_size=1)(images, 0.5)
    for a, b in zip(out, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(out[1], out[2])
    assert not np.array_equal(out[1], purifier(images[1:2], 1.0)[0])


def _metrics(rank1, match_rate) -> BackendLinkability:
    return BackendLinkability(
        recognizer="sface", role="black-box", white_box=False, num_probes=4, num_faces=4, fdfr=0.0, threshold=0.3,
        num_identities=5, rank1=rank1, match_rate=match_rate, chance_rank1=0.2,
    )  # fmt: skip


def test_best_purifier_keeps_the_strongest_link_and_its_cost():
    plain = {"sface": _metrics(0.25, 0.0), "dlib": _metrics(0.5, 0.25)}
    linkability = {
        "jpeg30": {"sface": _metrics(0.5, 0.0), "dlib": _metrics(0.5, 0.25)},  # dlib: a tie keeps the plain attack
        "blur2": {"sface": _metrics(0.5, 0.25), "dlib": _metrics(None, None)},  # no face after blur: no link
    }
    cost = {"jpeg30": PurifierCost(31.0, 0.9), "blur2": PurifierCost(25.0, 0.7)}
    best = best_purifiers(plain, linkability, cost)
    assert (best["sface"].purifier, best["sface"].rank1, best["sface"].match_rate) == ("blur2", 0.5, 0.25)
    assert (best["sface"].psnr_db, best["sface"].ssim) == (25.0, 0.7)
    assert best["dlib"].purifier == NO_PURIFIER and best["dlib"].rank1 == 0.5 and best["dlib"].psnr_db is None


def test_purification_cost(photo):
    same = purification_cost([photo], [photo.copy()])
    assert same.psnr_db == 100.0 and same.ssim == pytest.approx(1.0)
    blurred = build_purifiers(["blur:3"])["blur3"]([photo])
    cost = purification_cost([photo], blurred)
    assert 15 < cost.psnr_db < 40 and 0 < cost.ssim < 0.95


def test_evaluate_purify_reports_the_best_purifier(identity_photos, tiny_sd, tmp_path):
    from iddm.cli import main

    folders = {n: tmp_path / n for n in ("probes", "reference", "gallery")}
    for folder in folders.values():
        folder.mkdir()
    for path in identity_photos["obama"][:3]:
        shutil.copy(path, folders["probes"] / path.name)
    shutil.copy(identity_photos["obama"][3], folders["reference"])
    for name in ("macron", "ardern", "biden", "sunak"):
        (folders["gallery"] / name).mkdir()
        for path in identity_photos[name]:
            shutil.copy(path, folders["gallery"] / name / path.name)
    out = tmp_path / "out"
    args = ["evaluate", "--images", str(folders["probes"]), "--reference", str(folders["reference"])]
    args += ["--gallery", str(folders["gallery"]), "--output_dir", str(out), "--backends", "sface", "--purify"]
    args += ["--purifiers", "jpeg:30", "noisy_upscale:0.5", "sdedit:0.5", "--purify_model", str(tiny_sd)]
    args += ["--num_inference_steps", "2"]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    purification = metrics["purification"]
    assert list(purification["linkability"]) == ["jpeg30", "noisy_upscale0.5", "sdedit0.5"]
    # Real photos of the user stay linked after JPEG 30: purification does not break a real link.
    assert purification["linkability"]["jpeg30"]["sface"]["rank1"] == 1.0
    cost = purification["cost"]
    assert cost["jpeg30"]["psnr_db"] > cost["sdedit0.5"]["psnr_db"]  # a random tiny SD draws noise
    best = purification["best"]["sface"]
    assert best["purifier"] == NO_PURIFIER and best["rank1"] == metrics["backends"]["sface"]["rank1"] == 1.0
    report = (out / "report.md").read_text()
    assert "best purifier" in report.lower() and "sdedit0.5" in report


def test_evaluate_refuses_a_bad_strength_before_any_work(identity_photos, tmp_path, capsys):
    from iddm.cli import main

    out = tmp_path / "out"
    args = ["evaluate", "--images", str(tmp_path), "--reference", str(tmp_path), "--gallery", str(tmp_path)]
    args += ["--output_dir", str(out), "--purify", "--purifiers", "jpeg:30", "sdedit:2"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "SDEdit strength in (0, 1]" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_purifier_spec_is_hashable_and_named():
    assert {PurifierSpec("blur", 1.0), PurifierSpec("blur", 1.0)} == {PurifierSpec("blur", 1.0)}


def test_benchmark_purify_adds_best_purifier_columns(identity_photos, tmp_path):
    import csv

    from conftest import TINY_BENCHMARK

    from iddm.cli import main
    from iddm.evaluate.purify import PURIFICATION_FILE

    dataset = tmp_path / "dataset"
    for name in ("obama", "macron", "ardern", "biden"):
        (dataset / name).mkdir(parents=True)
        for path in identity_photos[name]:
            shutil.copy(path, dataset / name / path.name)
    out = tmp_path / "out"
    args = ["benchmark", "--dataset", str(dataset), "--output_dir", str(out), *TINY_BENCHMARK, "--methods", "vanilla"]
    args += ["--backends", "sface", "--surrogates", "sface", "--purify", "--purifiers", "jpeg:30", "blur:2"]
    assert main(args) == 0
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3
    for row in rows:
        assert row["sface_best_purifier"] in {"none", "jpeg30", "blur2"}
        if row["sface_r1u"]:  # 4 micro steps may draw no face at all: then R1-U is undefined (empty)
            assert float(row["sface_best_purifier_r1u"]) >= float(row["sface_r1u"])
        assert 5 < float(row["purify_blur2_psnr_db"]) < 60 and 5 < float(row["purify_jpeg30_psnr_db"]) < 60
        assert 0 < float(row["purify_blur2_ssim"]) < 1
    files = sorted(out.glob(f"cells/*/*/{PURIFICATION_FILE}"))
    assert len(files) == 3
    stamps = [f.stat().st_mtime_ns for f in files]
    assert "purifying attacker" in (out / "results.md").read_text()
    assert main(args) == 0  # a rerun reads every cell's purification back
    assert [f.stat().st_mtime_ns for f in files] == stamps
    # SDEdit with a base model that has no pretrained weights is refused before any work.
    args += ["sdedit:0.3"]
    assert main([*args[:4], str(tmp_path / "other"), *args[5:]]) == 2
    assert not (tmp_path / "other").exists()
