"""The Stable Diffusion path on a tiny random pipeline: tokenizer, LoRA, DreamBooth, prior preservation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from iddm.cli import main
from iddm.config import build_config
from iddm.diffusion import LORA_WEIGHT_NAME, build_clip_tokenizer, save_tiny_sd_pipeline
from iddm.schedule import PersonalizeConfig, personalize

FAST = dict(
    max_train_steps=3,
    train_batch_size=2,
    checkpointing_steps=0,
    validation_steps=0,
    num_validation_images=1,
    num_inference_steps=2,
    learning_rate=5e-2,
)


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory) -> Path:
    return save_tiny_sd_pipeline(tmp_path_factory.mktemp("tiny") / "tiny-sd")


def _generate(pipeline: StableDiffusionPipeline) -> np.ndarray:
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    return pipeline("a photo of sks person", num_inference_steps=2, generator=generator, output_type="np").images


def test_real_clip_tokenizer_offline():
    tokenizer = build_clip_tokenizer()
    assert len(tokenizer) == 49408 and tokenizer.model_max_length == 77
    assert tokenizer("a photo of").input_ids == [49406, 320, 1125, 539, 49407]


def test_tiny_sd_cli_writes_a_loadable_pipeline(tmp_path):
    assert main(["tiny-sd", "--output_dir", str(tmp_path / "p")]) == 0
    pipeline = StableDiffusionPipeline.from_pretrained(tmp_path / "p", local_files_only=True)
    assert pipeline.tokenizer("a photo of").input_ids == [49406, 320, 1125, 539, 49407]
    assert _generate(pipeline).shape == (1, 64, 64, 3)


def test_lora_output_loads_with_diffusers_and_changes_generations(tiny_sd, train_dir, tmp_path):
    out = tmp_path / "lora"
    config = {"photos": train_dir, "output_dir": out, "pretrained_model_name_or_path": str(tiny_sd), **FAST}
    personalize(build_config(PersonalizeConfig, {**config, "method": "lora", "train_text_encoder": True}))
    weights = load_file(out / LORA_WEIGHT_NAME)
    assert any(k.startswith("unet.") for k in weights) and any(k.startswith("text_encoder.") for k in weights)
    base = StableDiffusionPipeline.from_pretrained(tiny_sd, local_files_only=True)
    before = _generate(base)
    base.load_lora_weights(out)
    after = _generate(base)
    assert np.abs(after - before).mean() > 1e-4
    assert "load_lora_weights" in (out / "README.md").read_text()


def test_dreambooth_output_is_a_pipeline_folder_that_changes_generations(tiny_sd, train_dir, tmp_path):
    out = tmp_path / "dreambooth"
    config = {"photos": train_dir, "output_dir": out, "pretrained_model_name_or_path": str(tiny_sd), **FAST}
    personalize(build_config(PersonalizeConfig, {**config, "method": "dreambooth"}))
    tuned = StableDiffusionPipeline.from_pretrained(out, local_files_only=True)
    base = StableDiffusionPipeline.from_pretrained(tiny_sd, local_files_only=True)
    assert np.abs(_generate(tuned) - _generate(base)).mean() > 1e-4
    # `iddm generate` on the DreamBooth folder and on base + LoRA-less path both work offline.
    assert (
        main(
            [
                "generate",
                "--pretrained_model_name_or_path",
                str(out),
                "--output_dir",
                str(tmp_path / "g"),
                "--num_images",
                "2",
                "--num_inference_steps",
                "2",
            ]
        )
        == 0
    )
    assert len(list((tmp_path / "g").glob("image_*.png"))) == 2


def test_prior_preservation_generates_and_caches_class_images(tiny_sd, train_dir, tmp_path):
    class_dir = tmp_path / "class"
    config = {
        "photos": train_dir,
        "pretrained_model_name_or_path": str(tiny_sd),
        "with_prior_preservation": True,
        "num_class_images": 2,
        "class_data_dir": class_dir,
        **FAST,
        "max_train_steps": 1,
    }
    personalize(build_config(PersonalizeConfig, {**config, "output_dir": tmp_path / "a"}))
    cached = sorted(class_dir.glob("*.png"))
    assert len(cached) == 2
    stamps = [p.stat().st_mtime_ns for p in cached]
    personalize(build_config(PersonalizeConfig, {**config, "output_dir": tmp_path / "b"}))
    assert [p.stat().st_mtime_ns for p in sorted(class_dir.glob("*.png"))] == stamps


def test_generate_with_lora_flag(tiny_sd, train_dir, tmp_path):
    out = tmp_path / "lora"
    config = {"photos": train_dir, "output_dir": out, "pretrained_model_name_or_path": str(tiny_sd), **FAST}
    personalize(build_config(PersonalizeConfig, config))
    gen = tmp_path / "gen"
    assert (
        main(
            [
                "generate",
                "--pretrained_model_name_or_path",
                str(tiny_sd),
                "--lora",
                str(out),
                "--output_dir",
                str(gen),
                "--num_images",
                "2",
                "--num_inference_steps",
                "2",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "generate",
                "--pretrained_model_name_or_path",
                str(tiny_sd),
                "--lora",
                str(tmp_path),
                "--output_dir",
                str(gen),
            ]
        )
        == 2
    )
