"""End-to-end personalization on the micro backbone: outputs, generation, resume after SIGKILL, bad paths."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import sigkill_when
from PIL import Image
from safetensors.torch import load_file

from iddm.cli import main
from iddm.config import build_config
from iddm.diffusion import load_backbone
from iddm.schedule import PersonalizeConfig, personalize
from iddm.schedule.checkpoint import list_checkpoints

FAST = dict(
    pretrained_model_name_or_path="iddm:micro",
    resolution=32,
    max_train_steps=6,
    train_batch_size=2,
    checkpointing_steps=0,
    validation_steps=0,
    num_validation_images=2,
    num_inference_steps=2,
)


def _config(photos: Path, output_dir: Path, **overrides) -> PersonalizeConfig:
    return build_config(PersonalizeConfig, {"photos": photos, "output_dir": output_dir, **FAST, **overrides})


def _unet_weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(output_dir / "model" / "unet" / "diffusion_pytorch_model.safetensors")


def test_micro_run_writes_every_output_and_generates(train_dir, tmp_path):
    before = {p.name: (p.read_bytes(), p.stat().st_mtime) for p in train_dir.iterdir()}
    out = tmp_path / "run"
    result = personalize(_config(train_dir, out))
    for name in ("README.md", "iddm_model.json", "iddm_backbone.json", "context.safetensors"):
        assert (out / "model" / name).is_file(), name
    assert (out / "iddm_run.json").is_file() and (out / "private" / "iddm_log.json").is_file()
    assert (out / "validation" / "final.png").is_file()
    assert (out / "private" / "training_photos" / "clean_grid.png").is_file()
    run = json.loads((out / "iddm_run.json").read_text())
    assert run["status"] == "finished" and run["model"]["backbone"] == "pixel" and run["steps"] == 6
    assert run["config"]["learning_rate"] == 1e-3 and run["config"]["lr_scheduler"] == "cosine"  # the model's
    assert np.isfinite(result.final_loss)
    card = (out / "model" / "README.md").read_text()
    assert "Privacy off" in card and "`max_train_steps` | `6`" in card
    assert str(train_dir) not in card and str(tmp_path) not in card  # no local paths in what may be published
    # Inputs untouched.
    assert {p.name: (p.read_bytes(), p.stat().st_mtime) for p in train_dir.iterdir()} == before
    # The written model loads like any other and generates EXIF-free PNGs and a grid.
    gen = tmp_path / "gen"
    assert (
        main(
            [
                "generate",
                "--pretrained_model_name_or_path",
                str(out),
                "--output_dir",
                str(gen),
                "--num_images",
                "3",
                "--num_inference_steps",
                "2",
            ]
        )
        == 0
    )
    images = sorted(gen.glob("image_*.png"))
    assert len(images) == 3 and (gen / "grid.png").is_file()
    with Image.open(images[0]) as image:
        assert image.size == (32, 32) and not image.getexif() and "exif" not in image.info


def test_same_seed_same_weights_and_seed_matters(train_dir, tmp_path):
    personalize(_config(train_dir, tmp_path / "a", max_train_steps=3))
    personalize(_config(train_dir, tmp_path / "b", max_train_steps=3))
    personalize(_config(train_dir, tmp_path / "c", max_train_steps=3, seed=1))
    a, b, c = (_unet_weights(tmp_path / n) for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_refuses_finished_output_unless_overwrite(train_dir, tmp_path):
    out = tmp_path / "run"
    personalize(_config(train_dir, out, max_train_steps=1))
    with pytest.raises(FileExistsError, match="--overwrite"):
        personalize(_config(train_dir, out, max_train_steps=1))
    personalize(_config(train_dir, out, max_train_steps=1, overwrite=True))


def test_unwritable_output_and_missing_model_are_clear_errors(train_dir, tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    with pytest.raises(PermissionError, match="is a file"):
        personalize(_config(train_dir, blocker / "out"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_backbone("./no/such/model")
    not_diffusers = tmp_path / "empty_model"
    not_diffusers.mkdir()
    with pytest.raises(ValueError, match="model_index.json"):
        load_backbone(not_diffusers)
    # Through the CLI: exit code 2 and one readable line, no traceback.
    code = main(
        [
            "personalize",
            "--photos",
            str(train_dir),
            "--output_dir",
            str(tmp_path / "o"),
            "--pretrained_model_name_or_path",
            str(not_diffusers),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "model_index.json" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()  # nothing is created before every check has passed


def test_checkpoints_rotate_and_resume_latest_matches_uninterrupted(train_dir, tmp_path):
    full = tmp_path / "full"
    personalize(_config(train_dir, full, max_train_steps=6, checkpointing_steps=2, checkpoints_total_limit=2))
    assert [p.name for p in list_checkpoints(full)] == ["checkpoint-2", "checkpoint-4"]
    # Simulate a run that stopped after checkpoint-4: drop the final outputs, resume from latest.
    partial = tmp_path / "partial"
    shutil.copytree(full, partial)
    (partial / "iddm_run.json").unlink()
    personalize(_config(train_dir, partial, max_train_steps=6, checkpointing_steps=2, resume_from_checkpoint="latest"))
    a, b = _unet_weights(full), _unet_weights(partial)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_corrupt_latest_checkpoint_falls_back_to_the_older_one(train_dir, tmp_path, caplog):
    full = tmp_path / "full"
    personalize(_config(train_dir, full, max_train_steps=6, checkpointing_steps=2, checkpoints_total_limit=3))
    partial = tmp_path / "partial"
    shutil.copytree(full, partial)
    (partial / "iddm_run.json").unlink()
    weights = partial / "checkpoint-4" / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated, as by a full disk
    personalize(_config(train_dir, partial, max_train_steps=6, checkpointing_steps=2, resume_from_checkpoint="latest"))
    assert "Skipping checkpoint-4" in caplog.text and "Falling back" in caplog.text
    a, b = _unet_weights(full), _unet_weights(partial)
    assert all(torch.equal(a[k], b[k]) for k in a)  # resumed from checkpoint-2: the same weights in the end


@pytest.mark.slow
def test_sigkill_halfway_then_resume_equals_uninterrupted(train_dir, tmp_path):
    args = [
        "--photos",
        str(train_dir),
        "--pretrained_model_name_or_path",
        "iddm:micro",
        "--resolution",
        "32",
        "--max_train_steps",
        "10",
        "--train_batch_size",
        "2",
        "--checkpointing_steps",
        "3",
        "--validation_steps",
        "0",
        "--num_validation_images",
        "1",
        "--num_inference_steps",
        "1",
    ]
    command = [sys.executable, "-m", "iddm.cli", "personalize", *args]
    reference = tmp_path / "reference"
    personalize(_config(train_dir, reference, max_train_steps=10, checkpointing_steps=3))

    killed = tmp_path / "killed"
    sigkill_when(["personalize", *args, "--output_dir", str(killed)], killed / "checkpoint-6", timeout=240)
    assert (killed / "checkpoint-3").is_dir(), "the run never reached its first checkpoint"
    assert not (killed / "iddm_run.json").exists(), "the run finished before it could be killed"
    assert not (killed / "model").exists()

    resumed = subprocess.run(
        [*command, "--output_dir", str(killed), "--resume_from_checkpoint", "latest"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = _unet_weights(reference), _unet_weights(killed)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert torch.equal(
        load_file(reference / "model" / "context.safetensors")["context"],
        load_file(killed / "model" / "context.safetensors")["context"],
    )
