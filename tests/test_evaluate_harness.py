"""The attacker's harness end to end: ``iddm evaluate`` and ``iddm benchmark`` on real photos, real FR models,
real tiny diffusion runs, and the HTML report rendered by a real headless browser."""

from __future__ import annotations

import csv
import html.parser
import json
import logging
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_BENCHMARK, benchmark_script
from PIL import Image

from iddm.cli import main
from iddm.config import build_config
from iddm.evaluate.cells import plan_cells
from iddm.evaluate.dataset import Identity, discover_dataset
from iddm.evaluate.linkability import FaceSet, subset
from iddm.evaluate.render import aggregate
from iddm.evaluate.results import CellRecord, from_json
from iddm.evaluate.robustness import ROBUSTNESS_CONDITIONS
from iddm.evaluate.side_by_side import describe, side_by_side
from iddm.images import save_png
from iddm.schedule import PersonalizeConfig, personalize

CHROMIUM = Path("/usr/bin/chromium")
BACKEND_KEYS = {
    "recognizer", "role", "white_box", "num_probes", "num_faces", "fdfr", "threshold", "num_identities", "ism",
    "impostor_mean", "match_rate", "rank1", "chance_rank1", "rank_last", "rank_standard_error", "mean_user_rank",
    "chance_mean_user_rank", "user_z", "user_z_standard_error", "rank1_targeted", "chance_rank1_targeted",
    "rank1_targeted_pool", "match_at_far", "flags",
}  # fmt: skip


def _strict_json(path: Path) -> dict:
    """Parse JSON, refusing the non-standard NaN/Infinity tokens."""

    def refuse(token: str):
        raise AssertionError(f"{path} holds the non-JSON token {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def _package_photos() -> dict[str, np.ndarray]:
    """Two more real identities from installed packages (Eileen Collins, Grace Hopper)."""
    import matplotlib.cbook
    import skimage.data

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as handle:
        hopper = np.asarray(Image.open(handle).convert("RGB"))
    return {"collins": skimage.data.astronaut(), "hopper": hopper}


@pytest.fixture(scope="module")
def attack_dirs(tmp_path_factory, identity_photos) -> dict[str, Path]:
    """Folders for ``iddm evaluate``: Obama probes, other-person probes, Obama's held-out photo, a gallery."""
    root = tmp_path_factory.mktemp("attack")
    folders = {name: root / name for name in ("obama_probes", "other_probes", "reference", "gallery")}
    for folder in folders.values():
        folder.mkdir()
    for path in identity_photos["obama"][:3]:
        shutil.copy(path, folders["obama_probes"] / path.name)
    shutil.copy(identity_photos["obama"][3], folders["reference"])
    for path in identity_photos["macron"]:
        shutil.copy(path, folders["other_probes"] / path.name)
    for name in ("macron", "ardern", "biden", "sunak"):
        (folders["gallery"] / name).mkdir()
        for path in identity_photos[name]:
            shutil.copy(path, folders["gallery"] / name / path.name)
    for name, image in _package_photos().items():
        save_png(folders["gallery"] / name / f"{name}_1.png", image)
    return folders


@pytest.fixture(scope="module")
def cloak_run(tmp_path_factory, identity_photos) -> Path:
    """A real (tiny) finished run with a perturbation, SFace as its only surrogate."""
    root = tmp_path_factory.mktemp("cloak_run")
    photos = root / "photos"
    photos.mkdir()
    for path in identity_photos["obama"][:3]:
        shutil.copy(path, photos / path.name)
    values = dict(photos=photos, output_dir=root / "run", pretrained_model_name_or_path="iddm:micro", resolution=32)
    values.update(max_train_steps=1, train_batch_size=2)
    values.update(privacy="high", defense="cloak", cloak_steps=2, surrogates=["sface"], checkpointing_steps=0)
    # No warp: the decoupled photos then differ from the clean crops by δ alone, bounded by epsilon, which
    # checks that the evaluation lines the crops up exactly.
    values.update(validation_steps=0, num_validation_images=1, num_inference_steps=2, warp=0)
    personalize(build_config(PersonalizeConfig, values))
    return root / "run"


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    """A randomly initialized tiny CLIP saved in transformers format (exercises the real local-loading path)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from iddm.diffusion import build_clip_tokenizer

    folder = tmp_path_factory.mktemp("tiny_clip")
    tower = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2)
    config = CLIPConfig(
        text_config=dict(tower, vocab_size=49408, max_position_embeddings=77),
        vision_config=dict(tower, image_size=32, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=build_clip_tokenizer()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def evaluated(attack_dirs, cloak_run, tiny_clip, tmp_path_factory) -> tuple[Path, dict]:
    """``iddm evaluate`` of three real Obama photos as if they were generations, with every option on."""
    out = tmp_path_factory.mktemp("evaluate_obama")
    args = ["evaluate", "--images", str(attack_dirs["obama_probes"]), "--reference", str(attack_dirs["reference"])]
    args += ["--gallery", str(attack_dirs["gallery"]), "--output_dir", str(out), "--run_dir", str(cloak_run)]
    args += ["--robustness", "--clip_model", str(tiny_clip), "--prompt", "a photo of a man"]
    assert main(args) == 0
    return out, _strict_json(out / "metrics.json")


def test_evaluate_links_the_real_person_on_every_backend(evaluated):
    out, metrics = evaluated
    assert set(metrics) == {
        "images", "num_images", "reference", "gallery", "run", "prompts", "backends", "utility", "robustness",
        "purification", "warnings",
    }  # fmt: skip
    assert metrics["purification"] is None  # the purifying attacker runs only with --purify
    assert metrics["warnings"] == []
    assert metrics["num_images"] == 3
    assert metrics["gallery"]["identities"] == ["user", "ardern", "biden", "collins", "hopper", "macron", "sunak"]
    assert list(metrics["backends"]) == ["sface", "facenet", "dlib"]
    thresholds = {"sface": 0.363, "facenet": 0.45, "dlib": 0.91}
    for key, m in metrics["backends"].items():
        assert set(m) == BACKEND_KEYS, key
        assert m["rank1"] == 1.0 and m["rank1_targeted"] == 1.0 and m["match_rate"] == 1.0, (key, m)
        assert m["rank1_targeted_pool"] == "real photos"  # no other cells: other people's real photos
        assert m["chance_rank1"] == pytest.approx(1 / 7) and m["num_identities"] == 7
        # The real person is ranked first, never last, and stands out: every attack but rank-last beats chance.
        assert m["rank_last"] == 0.0 and m["mean_user_rank"] == 1.0 and m["chance_mean_user_rank"] == 4.0
        assert m["user_z"] > 2 and m["flags"] == ["rank1", "user_z"], (key, m["user_z"], m["flags"])
        assert m["ism"] > m["impostor_mean"]  # more similar than a random stranger
        assert m["ism"] > thresholds[key], (key, m["ism"])
        assert m["fdfr"] == 0.0 and m["num_faces"] == 3
        assert set(m["match_at_far"]) == {"0.01", "0.001"}
        for far in m["match_at_far"].values():
            assert set(far) == {"threshold", "match_rate", "reliable"} and -1 <= far["threshold"] <= 1
    names = {key: m["recognizer"] for key, m in metrics["backends"].items()}
    assert names == {"sface": "sface", "facenet": "facenet-casia", "dlib": "dlib"}
    roles = {key: (m["role"], m["white_box"]) for key, m in metrics["backends"].items()}
    assert roles == {"sface": ("white-box", True), "facenet": ("black-box", False), "dlib": ("black-box", False)}
    assert metrics["run"]["surrogates"] == ["sface"] and metrics["run"]["defense"] == "cloak"

    utility = metrics["utility"]
    assert utility["fdfr"] == 0.0 and utility["face_detection_rate"] == 1.0
    assert 0 < utility["brisque_mean"] < 60 and utility["brisque_note"] is None
    perturbation = utility["perturbation"]
    assert perturbation["num_photos"] == 3 and 0 < perturbation["linf_255"] <= 16  # epsilon 16/255, exact crops
    assert 20 < perturbation["psnr_db"] < 60 and 0 < perturbation["ssim"] < 1
    assert 0 <= utility["clip_score"] <= 100 and utility["clip_note"] is None
    assert utility["ssim_to_vanilla"] is None and "vanilla" in utility["ssim_to_vanilla_note"]
    # KID to the reference and gallery faces is measured, but 3 generations are too few: null with a note, never 0.
    assert utility["face"]["kid_to_real"] is None
    assert any(n.startswith("KID to real faces") for n in utility["face"]["notes"])

    assert list(metrics["robustness"]) == list(ROBUSTNESS_CONDITIONS)
    assert metrics["robustness"]["clean"] == metrics["backends"]
    for condition, by_key in metrics["robustness"].items():
        assert set(by_key) == {"sface", "facenet", "dlib"}, condition
        assert all(0 <= m["rank1"] <= 1 for m in by_key.values())
    report = (out / "report.md").read_text()
    assert "R1-U" in report and "jpeg50" in report and "white-box" in report and "rank-last" in report
    assert "Attacks that beat chance" in report and "sface (white-box): linkable" in report
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 2


def test_evaluate_publishes_the_privacy_report_card(evaluated, cloak_run):
    _, metrics = evaluated
    card = (cloak_run / "model" / "README.md").read_text()
    assert "Not measured yet" not in card and "Measured by `iddm evaluate` on 3 generations against 7" in card
    sface = metrics["backends"]["sface"]
    assert f"| sface | white-box | {sface['rank1']:.2f} ({sface['chance_rank1']:.2f}) |" in card
    published = _strict_json(cloak_run / "model" / "iddm_privacy.json")
    assert published["num_images"] == 3 and published["num_identities"] == 7
    assert published["backends"]["dlib"]["rank_last"] == metrics["backends"]["dlib"]["rank_last"]
    assert published["backends"]["sface"]["flags"] == ["rank1", "user_z"]
    assert str(cloak_run) not in json.dumps(published) and "obama" not in card  # no paths, no photo names


def test_evaluate_another_person_is_not_linked(attack_dirs, tmp_path):
    args = ["evaluate", "--images", str(attack_dirs["other_probes"]), "--reference", str(attack_dirs["reference"])]
    args += ["--gallery", str(attack_dirs["gallery"]), "--output_dir", str(tmp_path)]
    assert main(args) == 0
    metrics = _strict_json(tmp_path / "metrics.json")
    for key, m in metrics["backends"].items():
        assert m["rank1"] == 0.0 and m["match_rate"] == 0.0, (key, m)
        assert m["role"] == "unknown" and m["white_box"] is None  # no --run_dir: nobody knows the surrogates
    assert metrics["robustness"] is None and metrics["run"] is None
    assert metrics["utility"]["clip_score"] is None and "--clip_model" in metrics["utility"]["clip_note"]
    assert metrics["utility"]["perturbation"]["note"] == "no --run_dir given"


def test_evaluate_generates_from_a_model_first(attack_dirs, cloak_run, tmp_path):
    args = ["evaluate", "--model", str(cloak_run), "--num_images", "2", "--num_inference_steps", "2", "--seed", "3"]
    args += ["--reference", str(attack_dirs["reference"]), "--gallery", str(attack_dirs["gallery"])]
    args += [
        "--output_dir",
        str(tmp_path),
        "--backends",
        "sface",
        "--vanilla_images",
        str(attack_dirs["other_probes"]),
    ]
    assert main(args) == 0
    metrics = _strict_json(tmp_path / "metrics.json")
    assert sorted(p.name for p in (tmp_path / "images").glob("image_*.png")) == ["image_0000.png", "image_0001.png"]
    assert metrics["prompts"] == ["a photo of sks person"]  # the micro backbone is not text-conditioned
    utility = metrics["utility"]
    assert utility["resolution"] == [32, 32] and utility["num_images"] == 2
    assert utility["brisque_mean"] is None and "64 px" in utility["brisque_note"]
    assert utility["ssim_to_vanilla"] is None and "differ in size" in utility["ssim_to_vanilla_note"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--images": None}, "exactly one of --images"),
        ({"--gallery": "reference"}, "has no sub-folders"),
        ({"--backends": "nope"}, "Unknown face recognizer"),
    ],
)
def test_evaluate_errors_are_actionable(attack_dirs, tmp_path, capsys, change, message):
    flags = {
        "--images": str(attack_dirs["obama_probes"]),
        "--reference": str(attack_dirs["reference"]),
        "--gallery": str(attack_dirs["gallery"]),
        "--output_dir": str(tmp_path),
    }
    for flag, value in change.items():
        flags[flag] = attack_dirs[value] if value in attack_dirs else value
    args = ["evaluate"] + [str(x) for flag, value in flags.items() if value is not None for x in (flag, value)]
    assert main(args) == 2
    assert message in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------
# iddm benchmark
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, identity_photos) -> Path:
    """The fixture photos as a folder per identity: Obama 4, Macron 2, Ardern 2, Sunak 1, Biden 1."""
    root = tmp_path_factory.mktemp("dataset")
    for name in ("obama", "macron", "ardern", "sunak", "biden"):
        (root / name).mkdir()
        for path in identity_photos[name]:
            shutil.copy(path, root / name / path.name)
    return root


@pytest.fixture(scope="module")
def personalize_yaml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("options") / "personalize.yaml"
    path.write_text("cloak_steps: 2\ntrain_batch_size: 2\nnum_validation_images: 1\ncheckpointing_steps: 0\n")
    return path


ROOT = Path(__file__).resolve().parents[1]
METHODS = ["vanilla", "iddm", "noise", "cloak", "aspl"]


def _benchmark_args(dataset: Path, out: Path, options: Path) -> list[str]:
    args = ["benchmark", "--dataset", str(dataset), "--output_dir", str(out), *TINY_BENCHMARK, "--methods", *METHODS]
    return args + ["--levels", "high", "--surrogates", "sface", "--personalize_config", str(options)]


@pytest.fixture(scope="module")
def benchmark_out(dataset, personalize_yaml, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("benchmark")
    assert main(_benchmark_args(dataset, out, personalize_yaml)) == 0
    return out


def _tiles(figure: np.ndarray, side: int, pad: int = 2):
    def tile(row: int, column: int) -> np.ndarray:
        top, left = pad + row * (side + pad), pad + column * (side + pad)
        return figure[top : top + side, left : left + side]

    return tile


def test_side_by_side_shows_every_person_and_defense_in_line(benchmark_out):
    cells = json.loads((benchmark_out / "results.json").read_text())["cells"]
    generation = np.asarray(Image.open(benchmark_out / cells[0]["images_dir"] / "image_0000.png").convert("RGB"))
    side, pad = generation.shape[0], 2
    defenses = METHODS[1:]
    columns = 2 + 4 + 1 * (1 + 4)  # clean crops, vanilla, then per level a decoupled crop and generations
    figure = np.asarray(Image.open(benchmark_out / "side_by_side.png").convert("RGB"))
    assert figure.shape == (3 * len(defenses) * (side + pad) + pad, columns * (side + pad) + pad, 3)
    tile = _tiles(figure, side, pad)

    identities = list(dict.fromkeys(cell["identity"] for cell in cells))
    for i, identity in enumerate(identities):
        by_method = {cell["method"]: cell for cell in cells if cell["identity"] == identity}
        vanilla = np.asarray(Image.open(benchmark_out / by_method["vanilla"]["images_dir"] / "image_0000.png"))
        for j, defense in enumerate(defenses):
            row = i * len(defenses) + j
            assert np.array_equal(tile(row, 2), vanilla[..., :3])
            assert tile(row, 0).std() > 10  # a clean crop, not a blank tile
            generated = np.asarray(Image.open(benchmark_out / by_method[defense]["images_dir"] / "image_0000.png"))
            assert np.array_equal(tile(row, 7), generated[..., :3])
        decoupled = sorted((benchmark_out / by_method["iddm"]["run_dir"] / "private" / "decoupled_photos").glob("*"))
        assert np.array_equal(tile(i * len(defenses), 6), np.asarray(Image.open(decoupled[0])))
    assert (
        "side_by_side.png: one row per identity and defense (iddm, noise, cloak, aspl): 2 clean training crops; "
        "vanilla: 4 generations; high: 1 decoupled crop, 4 generations" in (benchmark_out / "results.md").read_text()
    )


def test_side_by_side_leaves_a_level_a_defense_did_not_run_white(benchmark_out):
    cells = [from_json(CellRecord, c) for c in json.loads((benchmark_out / "results.json").read_text())["cells"]]
    iddm_first = next(c for c in cells if c.method == "iddm")
    kept = [c for c in cells if c.method in ("vanilla", "iddm", "cloak")] + [replace(iddm_first, level="low")]
    figure = side_by_side(kept, benchmark_out)
    side = np.asarray(Image.open(benchmark_out / cells[0].images_dir / "image_0000.png")).shape[0]
    assert figure.shape[1] == (2 + 4 + 2 * 5) * (side + 2) + 2  # levels high, then low
    tile = _tiles(figure, side)
    assert tile(0, 11).std() > 10  # the first identity's iddm row has its "low" crop
    assert tile(1, 11).min() == 255 and tile(1, 15).min() == 255  # cloak never ran at "low": white
    assert describe(kept).startswith("one row per identity and defense (iddm, cloak)")


def test_benchmark_writes_every_artifact(benchmark_out):
    out = benchmark_out
    names = ("results.csv", "results.json", "results.md", "privacy_utility.png", "report.html", "benchmark.json")
    for name in (*names, "side_by_side.png"):
        assert (out / name).is_file(), name
    with Image.open(out / "privacy_utility.png") as plot:
        assert plot.format == "PNG" and plot.size[0] >= 800
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    expected = {(i, m, "off" if m == "vanilla" else "high") for i in ("obama", "macron", "ardern") for m in METHODS}
    assert len(rows) == len(expected) == 15
    assert {(r["identity"], r["method"], r["level"]) for r in rows} == expected  # sunak and biden: distractors only
    for row in rows:
        white = row["method"] in ("iddm", "cloak")
        assert row["sface_role"] == ("white-box" if white else "black-box"), row["method"]
        assert row["facenet_role"] == row["dlib_role"] == "black-box"
        assert float(row["dlib_r1u_chance"]) == pytest.approx(1 / 5)  # the user + 4 other identities
        assert row["status"] == "done" and row["error"] == ""
        # 4-step models draw no detectable face: R1-T is undefined, never computed on a pool of real photos.
        assert row["dlib_r1t_pool"] == row["dlib_r1t"] == "" and row["dlib_r1u"] == ""
        if row["method"] == "noise":
            assert 0 < float(row["linf_255"]) <= 16 and float(row["psnr_db"]) > 20
        if row["method"] == "cloak":  # δ and the knob's warp: pixels move by more than epsilon, a little
            assert 0 < float(row["linf_255"]) and float(row["psnr_db"]) > 15
        if row["method"] == "vanilla":
            assert row["psnr_db"] == "" and row["ssim_to_vanilla"] == ""
        else:
            assert 0 < float(row["ssim_to_vanilla"]) <= 1

    results = _strict_json(out / "results.json")
    assert len(results["cells"]) == 15 and results["settings"]["max_train_steps"] == 4
    roles = {i["name"]: i for i in results["identities"]}
    assert roles["obama"]["train"] == ["obama_1.jpg", "obama_2.jpg", "obama_3.jpg"]
    assert roles["obama"]["reference"] == ["obama_4.jpg"]
    assert roles["sunak"]["role"] == "distractor" and roles["macron"]["train"] == ["macron_1.jpg"]
    for identity in ("obama", "macron", "ardern"):
        for method in METHODS:
            cell = out / "cells" / identity / f"{method}-{'off' if method == 'vanilla' else 'high'}-seed0"
            assert (cell / "cell.json").is_file() and len(list((cell / "images").glob("image_*.png"))) == 2
    aspl = out / "cells" / "obama" / "aspl-high-seed0"
    assert json.loads((aspl / "aspl_perturbation" / "iddm_run.json").read_text())["model"]["defense"] == "aspl"
    second = json.loads((aspl / "run" / "iddm_run.json").read_text())
    assert second["config"]["perturbation_from"] == str(aspl / "aspl_perturbation")
    table = (out / "results.md").read_text()
    assert "## Mean over identities" in table and "NOT meaningful" in table
    assert table.count("| obama |") == 5


def test_benchmark_rerun_skips_finished_cells(benchmark_out, dataset, personalize_yaml, caplog, capsys):
    cells = sorted((benchmark_out / "cells").glob("*/*/cell.json"))
    before = {p: p.stat().st_mtime_ns for p in cells}
    runs_before = {p: p.stat().st_mtime_ns for p in (benchmark_out / "cells").glob("*/*/run/iddm_run.json")}
    with caplog.at_level(logging.INFO, logger="iddm"):
        assert main(_benchmark_args(dataset, benchmark_out, personalize_yaml)) == 0
    assert sum("Skipping finished cell" in r.getMessage() for r in caplog.records) == 15
    assert {p: p.stat().st_mtime_ns for p in cells} == before
    assert {p: p.stat().st_mtime_ns for p in runs_before} == runs_before

    # A cell interrupted after training reuses its finished run: only generation and evaluation are redone.
    interrupted = benchmark_out / "cells" / "macron" / "cloak-high-seed0"
    record = json.loads((interrupted / "cell.json").read_text())
    (interrupted / "cell.json").unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="iddm"):
        assert main(_benchmark_args(dataset, benchmark_out, personalize_yaml)) == 0
    assert any("Reusing the finished run" in r.getMessage() for r in caplog.records)
    assert (
        runs_before[interrupted / "run" / "iddm_run.json"]
        == (interrupted / "run" / "iddm_run.json").stat().st_mtime_ns
    )
    again = json.loads((interrupted / "cell.json").read_text())
    assert again["backends"] == record["backends"] and again["utility"] == record["utility"]
    assert again["wall_s"]["personalize"] > 0  # the logged training time of the reused run

    changed = _benchmark_args(dataset, benchmark_out, personalize_yaml)
    changed[changed.index("--max_train_steps") + 1] = "5"
    capsys.readouterr()
    assert main(changed) == 2
    assert "other settings (max_train_steps)" in capsys.readouterr().err


def test_archived_records_restore_a_benchmark_that_runs_only_the_rest(
    benchmark_out, dataset, personalize_yaml, tmp_path
):
    """benchmarks/archive_cells.py keeps the records of identities with every cell finished, and nothing made of
    the photos; restored into an empty folder, the benchmark runs only the cells of the other identities."""
    script = ROOT / "benchmarks" / "archive_cells.py"
    archive, restored = tmp_path / "archive", tmp_path / "restored"
    kinds = ["vanilla-off", "iddm-high", "noise-high", "cloak-high", "aspl-high"]
    subprocess.run(
        [sys.executable, script, "--benchmark", benchmark_out, "--archive", archive, "--cells", *kinds], check=True
    )
    kept = sorted(p.relative_to(archive).as_posix() for p in archive.rglob("*") if p.is_file())
    assert kept == ["benchmark.json"] + sorted(
        f"cells/{i}/{k}-seed0/cell.json" for i in ("ardern", "macron", "obama") for k in kinds
    )

    # Drop Ardern from the archive: restoring the rest, the benchmark reruns her five cells only.
    shutil.rmtree(archive / "cells" / "ardern")
    subprocess.run([sys.executable, script, "--benchmark", restored, "--archive", archive, "--restore"], check=True)
    assert main(_benchmark_args(dataset, restored, personalize_yaml)) == 0
    assert sorted(p.parent.parent.name for p in restored.glob("cells/*/*/run")) == ["ardern"] * 5
    records = {(c["identity"], c["method"]): c for c in json.loads((restored / "results.json").read_text())["cells"]}
    original = {
        (c["identity"], c["method"]): c for c in json.loads((benchmark_out / "results.json").read_text())["cells"]
    }
    assert len(records) == 15
    archived = json.loads((archive / "cells" / "obama" / "iddm-high-seed0" / "cell.json").read_text())
    # A restored cell has neither generations nor embeddings here: its record is kept as archived (no KID to real
    # faces or stalker's pool recomputed from what is not there).
    assert records[("obama", "iddm")]["utility"] == archived["utility"]
    assert records[("obama", "iddm")]["backends"] == archived["backends"]
    assert archived["backends"]["sface"]["rank1"] == original[("obama", "iddm")]["backends"]["sface"]["rank1"]


def test_archived_records_keep_no_attributes_read_from_the_users_photos():
    archive_cells = benchmark_script("archive_cells")
    read = {"gender": "male", "age": "20-39", "ethnicity": "black"}
    agreement = {"gender": 1.0, "age": 0.5, "ethnicity": 0.0}
    face = {"attributes_photos": dict(read), "attribute_agreement": agreement, "shape_distance": 1.1}
    record = {"identity": "x", "utility": {"face": {**face, "vanilla": dict(face)}}}
    public = archive_cells.without_personal_attributes(record)["utility"]["face"]
    assert public["attributes_photos"] == {} and public["vanilla"]["attributes_photos"] == {}
    assert public["attribute_agreement"] == agreement and public["vanilla"]["shape_distance"] == 1.1
    assert archive_cells.without_personal_attributes({"utility": {"face": None}}) == {"utility": {"face": None}}


def test_benchmark_anti_dreambooth_layout(identity_photos, tmp_path):
    root = tmp_path / "ad"
    layout = {
        "obama": {"set_A": [0, 1], "set_B": [3], "set_C": [2]},
        "macron": {"set_A": [0], "set_B": [1]},
        "ardern": {"set_B": [0, 1]},  # no set_A: a distractor only
    }
    for name, sets in layout.items():
        for set_name, indices in sets.items():
            (root / name / set_name).mkdir(parents=True)
            for i in indices:
                shutil.copy(identity_photos[name][i], root / name / set_name)
    identities = {i.name: i for i in discover_dataset(root)}
    assert [p.name for p in identities["obama"].train] == ["obama_1.jpg", "obama_2.jpg"]
    assert [p.name for p in identities["obama"].reference] == ["obama_4.jpg"]
    assert not identities["ardern"].is_user and len(identities["ardern"].photos) == 2
    assert [(c.identity, c.name) for c in plan_cells(list(identities.values()), ["vanilla"], ["high"], [0, 1])] == [
        ("macron", "vanilla-off-seed0"),
        ("macron", "vanilla-off-seed1"),
        ("obama", "vanilla-off-seed0"),
        ("obama", "vanilla-off-seed1"),
    ]
    only_obama = plan_cells(list(identities.values()), ["vanilla"], ["high"], [0], users=["obama"])
    assert [(c.identity, c.name) for c in only_obama] == [("obama", "vanilla-off-seed0")]
    with pytest.raises(ValueError, match=r"--users \['ardern'\]: no user identity"):
        plan_cells(list(identities.values()), ["vanilla"], ["high"], users=["ardern"])  # a distractor only
    out = tmp_path / "out"
    args = ["benchmark", "--dataset", str(root), "--output_dir", str(out), *TINY_BENCHMARK, "--methods", "vanilla"]
    assert main(args + ["--backends", "sface", "--seeds", "0", "1"]) == 0
    record = json.loads((out / "cells" / "obama" / "vanilla-off-seed0" / "cell.json").read_text())
    assert record["backends"]["sface"]["chance_rank1"] == pytest.approx(1 / 3)  # user, macron, ardern
    assert record["backends"]["sface"]["role"] == "black-box"
    # Each seed is its own personalization run: seeded with it, and drawing other images.
    cells = {seed: out / "cells" / "obama" / f"vanilla-off-seed{seed}" for seed in (0, 1)}
    for seed, cell in cells.items():
        assert json.loads((cell / "run" / "iddm_run.json").read_text())["config"]["seed"] == seed
    first, second = (np.asarray(Image.open(c / "images" / "image_0000.png")) for c in cells.values())
    assert np.abs(first.astype(int) - second.astype(int)).max() > 0
    with open(out / "results.csv", newline="") as handle:
        rows = sorted(csv.DictReader(handle), key=lambda r: (r["identity"], r["seed"]))
    assert [(r["identity"], r["seed"]) for r in rows] == [
        ("macron", "0"),
        ("macron", "1"),
        ("obama", "0"),
        ("obama", "1"),
    ]
    # Vanilla's second seed is compared with its first: the seed-to-seed yardstick of "distance to vanilla".
    assert [r["ssim_to_vanilla"] != "" for r in rows] == [False, True, False, True]
    assert 0 < float(rows[3]["ssim_to_vanilla"]) < 1
    table = (out / "results.md").read_text()
    assert "## Run-to-run spread" in table and "| vanilla | off | 2 | 2 |" in table  # 2 identities, 2 seeds each


def test_aggregate_averages_each_identity_over_its_seeds_first():
    rows = [
        {"identity": "a", "method": "iddm", "level": "high", "seed": 0, "status": "done", "dlib_r1u": 0.0},
        {"identity": "a", "method": "iddm", "level": "high", "seed": 1, "status": "done", "dlib_r1u": 1.0},
        {"identity": "a", "method": "iddm", "level": "high", "seed": 2, "status": "done", "dlib_r1u": 0.5},
        {"identity": "b", "method": "iddm", "level": "high", "seed": 0, "status": "done", "dlib_r1u": 0.1},
        {"identity": "b", "method": "iddm", "level": "high", "seed": 1, "status": "failed", "error": "x"},
    ]
    (mean,) = aggregate(rows)
    assert mean["identities"] == 2 and mean["seeds"] == 3
    assert mean["dlib_r1u"] == pytest.approx((0.5 + 0.1) / 2)  # not (0 + 1 + 0.5 + 0.1) / 4
    assert mean["dlib_r1u_sd"] == pytest.approx(np.std([0.5, 0.1], ddof=1))
    assert mean["dlib_r1u_seed_sd"] == pytest.approx(0.5)  # identity a's spread; b has one finished seed
    (single,) = aggregate([r for r in rows if r["seed"] == 0])
    assert single["seeds"] == 1 and single["dlib_r1u_seed_sd"] is None


def test_dataset_and_cell_planning_errors(tmp_path, identity_photos):
    (tmp_path / "solo").mkdir()
    shutil.copy(identity_photos["sunak"][0], tmp_path / "solo")
    (tmp_path / "other").mkdir()
    shutil.copy(identity_photos["biden"][0], tmp_path / "other")
    with pytest.raises(ValueError, match="no identity has both photos to train on"):
        discover_dataset(tmp_path)
    users = [Identity("a", [Path("1.jpg"), Path("2.jpg")], 1, 1)]
    with pytest.raises(ValueError, match="Unknown --methods"):
        plan_cells(users, ["iddm", "fawkes"], ["high"])
    with pytest.raises(ValueError, match="that is the 'vanilla' method"):
        plan_cells(users, ["iddm"], ["off"])


def test_subset_keeps_embeddings_of_detected_images():
    faces = FaceSet(np.array([True, False, True, True]), {"m": np.arange(6.0).reshape(3, 2)}, np.array(list("abcd")))
    part = subset(faces, [1, 2, 3])
    assert part.detected.tolist() == [False, True, True] and part.labels.tolist() == ["b", "c", "d"]
    np.testing.assert_array_equal(part.embeddings["m"], [[2.0, 3.0], [4.0, 5.0]])


# ----------------------------------------------------------------------------------------------------
# The report in a real browser
# ----------------------------------------------------------------------------------------------------


class _Images(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "img":
            self.sources.append(attributes.get("src", ""))
        for name in ("href", "src", "srcset", "poster", "data"):
            if name in attributes and tag != "img":
                self.links.append(f"{tag} {name}={attributes[name]}")


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    flags += ["--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}"]
    return subprocess.run([str(CHROMIUM), *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(
    not CHROMIUM.is_file(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)"
)
@pytest.mark.parametrize("which", ["benchmark", "evaluate"])
def test_report_renders_in_headless_chromium(which, benchmark_out, evaluated, tmp_path):
    report = (benchmark_out if which == "benchmark" else evaluated[0]) / "report.html"
    text = report.read_text()
    assert not re.search(r"https?://|<script|<link|@import|url\(", text), "the report must load nothing external"

    dom = _chromium("--dump-dom", report.as_uri(), profile=tmp_path / "profile-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    parser = _Images()
    parser.feed(dom.stdout)
    assert parser.sources, "the rendered report has no images"
    assert all(src.startswith("data:image/png;base64,") for src in parser.sources)
    assert parser.links == []
    if which == "benchmark":  # curve + per identity: photos, reference, crops, and a row per cell
        assert len(parser.sources) >= 1 + 3 * 3 + 15
        assert "Mean over identities" in dom.stdout

    shot = tmp_path / "shot.png"
    result = _chromium("--screenshot=" + str(shot), "--window-size=1200,2000", report.as_uri(), profile=tmp_path / "p")
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (2000, 1200)
    assert pixels.std() > 20, "the screenshot is (nearly) blank"
    assert (pixels < 200).mean() > 0.05  # text, tables and pictures, not a white page


def test_the_attackers_embeddings_are_cached_until_a_photo_changes(dataset, tmp_path, caplog, monkeypatch):
    import iddm.evaluate.cells as cells

    root = tmp_path / "dataset"
    shutil.copytree(dataset, root)
    identities = discover_dataset(root)
    recognizers, cache = cells.cached_backends(("sface",)), tmp_path / "embeddings.npz"
    embed_identities = cells.embed_identities
    first = embed_identities(identities, recognizers, cache)
    read = []
    real_load = cells.load_photo
    monkeypatch.setattr(cells, "load_photo", lambda path: read.append(Path(path).parent.name) or real_load(path))
    again = embed_identities(identities, recognizers, cache)
    assert read == []
    for name, faces in first.items():
        np.testing.assert_array_equal(again[name].detected, faces.detected)
        np.testing.assert_array_equal(again[name].embeddings["sface"], faces.embeddings["sface"])

    # A photo replaced by a faceless image: that identity is embedded again, the others come from the cache.
    photo = sorted((root / "macron").iterdir())[0]
    Image.fromarray(np.full((120, 120, 3), 128, np.uint8)).save(photo, format="JPEG")
    changed = embed_identities(identities, recognizers, cache)
    assert set(read) == {"macron"}
    assert not changed["macron"].detected[0] and first["macron"].detected[0]
    np.testing.assert_array_equal(changed["obama"].embeddings["sface"], first["obama"].embeddings["sface"])

    cache.write_bytes(b"not a zip file")
    with caplog.at_level(logging.WARNING, logger="iddm"):
        rebuilt = embed_identities(identities, recognizers, cache)
    assert "Ignoring the attacker's embedding cache" in caplog.text
    np.testing.assert_array_equal(rebuilt["obama"].embeddings["sface"], first["obama"].embeddings["sface"])
