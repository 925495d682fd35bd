"""The Stable Diffusion path on a tiny random pipeline: tokenizer, LoRA (with alpha), DreamBooth, kohya export,
mixed precision, prior preservation, checkpoints, tracking and the flags users paste from diffusers' scripts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_SD_OPTIONS
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from iddm.cli import main
from iddm.config import build_config
from iddm.diffusion import (
    LORA_WEIGHT_NAME,
    LatentDistribution,
    StableDiffusionBackbone,
    build_clip_tokenizer,
    load_backbone,
    save_tiny_sd_pipeline,
)
from iddm.diffusion.export import KOHYA_WEIGHT_NAME
from iddm.prior.defaults import RECOMMENDED_LORA
from iddm.schedule import PersonalizeConfig, personalize

FAST = TINY_SD_OPTIONS
LOCON_TARGETS = RECOMMENDED_LORA["lora_target_modules"]


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory) -> Path:
    return save_tiny_sd_pipeline(tmp_path_factory.mktemp("tiny") / "tiny-sd")


@pytest.fixture(scope="module")
def lora_run(tiny_sd, train_dir, tmp_path_factory) -> Path:
    """A LoRA run with alpha != rank, a text-encoder LoRA, a checkpoint and the kohya export; LoRA on
    convolutions and feed-forward layers besides attention, as the face prior's defaults do."""
    out = tmp_path_factory.mktemp("lora") / "run"
    values = {
        "photos": train_dir, "output_dir": out, "pretrained_model_name_or_path": str(tiny_sd), **FAST,
        "max_train_steps": 4, "checkpointing_steps": 2, "lora_rank": 4, "lora_alpha": 16,
        "train_text_encoder": True, "output_kohya_format": True, "lora_target_modules": LOCON_TARGETS,
    }  # fmt: skip
    personalize(build_config(PersonalizeConfig, values))
    return out


def _generate(pipeline: StableDiffusionPipeline) -> np.ndarray:
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    return pipeline("a photo of sks person", num_inference_steps=2, generator=generator, output_type="np").images


def _base(tiny_sd: Path) -> StableDiffusionPipeline:
    return StableDiffusionPipeline.from_pretrained(tiny_sd, local_files_only=True)


def test_real_clip_tokenizer_offline():
    tokenizer = build_clip_tokenizer()
    assert len(tokenizer) == 49408 and tokenizer.model_max_length == 77
    assert tokenizer("a photo of").input_ids == [49406, 320, 1125, 539, 49407]


def test_a_prompt_longer_than_the_tokenizer_takes_is_cut_with_one_warning(tiny_sd, caplog):
    backbone = load_backbone(tiny_sd)
    long = "a photo of sks person " + "in a very long and detailed scene " * 12
    short = backbone.encode_prompts(["a photo of sks person"]).hidden_states
    cut = backbone.encode_prompts([long, long]).hidden_states
    backbone.encode_prompts([long])
    assert cut.shape[1] == short.shape[1] == 77
    warnings = [r.getMessage() for r in caplog.records if "cut to the text encoder's 77" in r.getMessage()]
    assert len(warnings) == 1 and "tokens cut" in warnings[0]


def test_tiny_sd_cli_writes_a_loadable_pipeline(tmp_path):
    assert main(["tiny-sd", "--output_dir", str(tmp_path / "p")]) == 0
    pipeline = StableDiffusionPipeline.from_pretrained(tmp_path / "p", local_files_only=True)
    assert pipeline.tokenizer("a photo of").input_ids == [49406, 320, 1125, 539, 49407]
    assert _generate(pipeline).shape == (1, 64, 64, 3)


def test_lora_loads_in_diffusers_with_its_alpha_and_matches_training_time_validation(lora_run, tiny_sd):
    model = lora_run / "model"
    weights = load_file(model / LORA_WEIGHT_NAME)
    assert any(k.startswith("unet.") for k in weights) and any(k.startswith("text_encoder.") for k in weights)
    base = _base(tiny_sd)
    before = _generate(base)
    base.load_lora_weights(model)
    after = _generate(base)
    assert np.abs(after - before).mean() > 1e-4
    # Every trained layer is adapted after loading (a file mixing key namings once lost its attention layers).
    unet_keys = [k.removeprefix("unet.") for k in weights if k.startswith("unet.")]
    trained = {k.split(".lora_A")[0] for k in unet_keys if ".lora_A." in k}
    loaded = {name.removesuffix(".lora_A") for name, _ in base.unet.named_modules() if name.endswith(".lora_A")}
    assert trained == loaded and any(".attn1.to_k" in name for name in loaded) and any("conv1" in n for n in loaded)
    assert base.unet.peft_config["default_0"].lora_alpha == 16  # not the rank: the trained strength is kept
    # iddm's own sampler on the same weights draws the training-time validation grid exactly.
    validation = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(lora_run / "validation" / "final.png"))
    regenerated = _iddm_sample(tiny_sd, model)
    assert np.abs(validation[2:-2, 2:-2].astype(int) - regenerated.astype(int)).max() <= 1
    card = (model / "README.md").read_text()
    assert "load_lora_weights" in card and str(tiny_sd) not in card


def _iddm_sample(tiny_sd: Path, lora: Path) -> np.ndarray:
    from iddm.diffusion import sample
    from iddm.diffusion.data import to_uint8
    from iddm.diffusion.generate import load_for_generation

    backbone = load_for_generation(str(tiny_sd), lora)
    images = sample(backbone, ["a photo of sks person"], torch.Generator().manual_seed(0), 2, 7.5)
    return to_uint8(images[0])


def test_kohya_export_round_trips_to_identical_generations(lora_run, tiny_sd, tmp_path):
    kohya = load_file(lora_run / "model" / KOHYA_WEIGHT_NAME)
    assert any(k.startswith("lora_unet_") and k.endswith(".lora_down.weight") for k in kohya)
    assert any(k.startswith("lora_te1_") for k in kohya)
    alphas = {float(v) for k, v in kohya.items() if k.endswith(".alpha")}
    assert alphas == {16.0}
    diffusers_format, kohya_format = _base(tiny_sd), _base(tiny_sd)
    diffusers_format.load_lora_weights(lora_run / "model")
    kohya_format.load_lora_weights(lora_run / "model", weight_name=KOHYA_WEIGHT_NAME)
    np.testing.assert_allclose(_generate(kohya_format), _generate(diffusers_format), atol=1e-5)
    # `iddm export` writes the same file for a finished run.
    assert main(["export", str(lora_run), "--output", str(tmp_path / "k.safetensors")]) == 0
    exported = load_file(tmp_path / "k.safetensors")
    assert set(exported) == set(kohya) and all(torch.equal(exported[k], kohya[k]) for k in kohya)


def test_intermediate_checkpoints_hold_loadable_lora_weights(lora_run, tiny_sd):
    checkpoint = lora_run / "checkpoint-2"
    assert (checkpoint / LORA_WEIGHT_NAME).is_file() and (checkpoint / "manifest.json").is_file()
    base = _base(tiny_sd)
    before = _generate(base)
    base.load_lora_weights(checkpoint)
    assert np.abs(_generate(base) - before).mean() > 1e-5


def test_generate_from_a_lora_run_folder_and_with_the_lora_flag(lora_run, tiny_sd, tmp_path):
    common = ["--output_dir", "OUT", "--num_images", "2", "--num_inference_steps", "2", "--seed", "3"]

    def run(*args: str, out: str) -> list[np.ndarray]:
        argv = ["generate", *args, *[out if a == "OUT" else a for a in common]]
        assert main(argv) == 0
        from iddm.images import load_photo

        return [load_photo(p) for p in sorted(Path(out).glob("image_*.png"))]

    base = run("--pretrained_model_name_or_path", str(tiny_sd), out=str(tmp_path / "base"))
    flag = run("--pretrained_model_name_or_path", str(tiny_sd), "--lora", str(lora_run), out=str(tmp_path / "flag"))
    folder = run("--pretrained_model_name_or_path", str(lora_run), out=str(tmp_path / "folder"))
    assert len(flag) == 2 and all(np.array_equal(a, b) for a, b in zip(flag, folder))
    assert all(np.abs(a.astype(int) - b.astype(int)).mean() > 0.5 for a, b in zip(flag, base))  # the LoRA acts
    bad = ["generate", "--pretrained_model_name_or_path", str(tiny_sd), "--lora", str(tmp_path), "--output_dir", "x"]
    assert main(bad) == 2


def test_dreambooth_bf16_saves_frozen_parts_as_loaded_and_runs_in_plain_diffusers(tiny_sd, train_dir, tmp_path):
    out = tmp_path / "dreambooth"
    config = {"photos": train_dir, "output_dir": out, "pretrained_model_name_or_path": str(tiny_sd), **FAST}
    personalize(build_config(PersonalizeConfig, {**config, "method": "dreambooth", "mixed_precision": "bf16"}))
    tuned = StableDiffusionPipeline.from_pretrained(out / "model", local_files_only=True)
    assert {tuned.vae.dtype, tuned.text_encoder.dtype, tuned.unet.dtype} == {torch.float32}
    base = _base(tiny_sd)
    assert np.abs(_generate(tuned) - _generate(base)).mean() > 1e-4


def test_lora_trains_in_fp32_beside_bf16_frozen_weights(tiny_sd, train_dir, tmp_path):
    from iddm.schedule import Trainer

    values = {"photos": train_dir, "output_dir": tmp_path / "o", "pretrained_model_name_or_path": str(tiny_sd), **FAST}
    trainer = Trainer(build_config(PersonalizeConfig, {**values, "mixed_precision": "bf16", "max_train_steps": 1}))
    trained = {p.dtype for p in trainer.backbone.trainable_parameters()}
    frozen = {p.dtype for p in trainer.backbone.unet.parameters() if not p.requires_grad}
    assert trained == {torch.float32} and frozen == {torch.bfloat16}
    assert trainer.backbone.vae.dtype == torch.bfloat16


def test_a_seed_fixes_the_run_whatever_ran_before_it_in_the_process(tiny_sd, train_dir, tmp_path):
    # peft initializes LoRA from the global RNG: a benchmark worker's earlier cells must not change a run.
    values = {"photos": train_dir, "pretrained_model_name_or_path": str(tiny_sd), **FAST, "max_train_steps": 1}
    weights = []
    for name, draws in (("first", 0), ("after_other_work", 1000)):
        torch.rand(draws)
        personalize(build_config(PersonalizeConfig, {**values, "output_dir": tmp_path / name, "seed": 3}))
        weights.append(load_file(tmp_path / name / "model" / LORA_WEIGHT_NAME))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


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


def test_diffusers_training_flags_and_tensorboard(tiny_sd, train_dir, tmp_path):
    out = tmp_path / "flags"
    argv = [
        "personalize", "--instance_data_dir", str(train_dir), "--output_dir", str(out),
        "--pretrained_model_name_or_path", str(tiny_sd), "--rank", "2", "--snr_gamma", "5", "--noise_offset", "0.05",
        "--random_flip", "--gradient_accumulation_steps", "2", "--max_train_steps", "2", "--train_batch_size", "1",
        "--validation_steps", "1", "--num_validation_images", "1", "--num_inference_steps", "1",
        "--checkpointing_steps", "0", "--report_to", "tensorboard", "--allow_tf32",
    ]  # fmt: skip
    assert main(argv) == 0
    run = json.loads((out / "iddm_run.json").read_text())
    assert run["config"]["lora_rank"] == 2 and run["config"]["gradient_accumulation_steps"] == 2
    assert run["steps"] == 2 and (out / "validation" / "step-000002.png").is_file()
    events = list((out / "private" / "logs").rglob("events.out.tfevents.*"))
    assert events, "tensorboard wrote no event file"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    assert "loss" in accumulator.Tags()["scalars"] and "validation" in accumulator.Tags()["images"]


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_other_prediction_types_train(prediction_type, tiny_sd, train_dir, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_sd, folder)
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    scheduler["prediction_type"] = prediction_type
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    values = {"photos": train_dir, "output_dir": tmp_path / "o", "pretrained_model_name_or_path": str(folder), **FAST}
    result = personalize(build_config(PersonalizeConfig, values))
    assert np.isfinite(result.final_loss)


def test_unsupported_pipelines_and_unreachable_hub_ids_are_clear_errors(tiny_sd, tmp_path, capsys):
    from iddm.diffusion import load_backbone

    other = tmp_path / "other"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ValueError, match="is a FluxPipeline; iddm personalizes"):
        load_backbone(other)
    with pytest.raises(ValueError, match="Cannot load 'no-such-org/no-such-model' from the Hugging Face hub"):
        load_backbone("no-such-org/no-such-model")


def test_cached_latents_give_the_loss_of_encoding_each_batch(tiny_sd):
    backbone = load_backbone(str(tiny_sd))
    images = torch.rand(3, 3, backbone.resolution, backbone.resolution)
    conditioning = backbone.encode_prompts(["a photo of sks person"] * 3)
    encoded = LatentDistribution.cat([backbone.encode(images[:2]), backbone.encode(images[2:])])
    with torch.no_grad():
        direct = backbone.training_loss(images, conditioning, torch.Generator().manual_seed(0))
        cached = backbone.training_loss(encoded, conditioning, torch.Generator().manual_seed(0))
    torch.testing.assert_close(cached, direct, atol=1e-5, rtol=1e-5)


def test_personalization_encodes_its_photos_once_not_every_step(tiny_sd, train_dir, tmp_path, monkeypatch):
    encoded = []
    real_encode = StableDiffusionBackbone.encode

    def counting_encode(self, images):
        encoded.append(len(images))
        return real_encode(self, images)

    monkeypatch.setattr(StableDiffusionBackbone, "encode", counting_encode)
    values = {"photos": train_dir, "pretrained_model_name_or_path": str(tiny_sd), **FAST, "max_train_steps": 5}
    personalize(build_config(PersonalizeConfig, {**values, "output_dir": tmp_path / "run", "random_flip": True}))
    # Three photos and their mirror images, in chunks of the batch size, once for all five steps.
    assert sorted(encoded) == [1, 1, 2, 2]
