"""Stable Diffusion XL on a tiny random SDXL pipeline: conditioning as diffusers computes it, LoRA on the UNet and
both text encoders (with alpha), DreamBooth, IDDM's data rounds, generation, kohya export, and clear refusals of
pipelines iddm does not personalize."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_SD_OPTIONS
from diffusers import StableDiffusionXLPipeline
from safetensors import safe_open
from safetensors.torch import load_file

from iddm.cli import main
from iddm.config import build_config
from iddm.diffusion import LORA_WEIGHT_NAME, StableDiffusionXLBackbone, load_backbone, sample
from iddm.diffusion.export import KOHYA_WEIGHT_NAME
from iddm.images import load_photo
from iddm.schedule import PersonalizeConfig, Trainer, personalize

PROMPT = "a photo of sks person"
FAST = TINY_SD_OPTIONS


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny") / "tiny-sdxl"
    assert main(["tiny-sd", "--xl", "--output_dir", str(folder)]) == 0
    return folder


@pytest.fixture(scope="module")
def lora_run(tiny_sdxl, train_dir, tmp_path_factory) -> Path:
    """``iddm personalize`` with LoRA on the UNet and both text encoders, alpha != rank, and the kohya export."""
    out = tmp_path_factory.mktemp("lora") / "run"
    argv = [
        "personalize", "--photos", str(train_dir), "--output_dir", str(out),
        "--pretrained_model_name_or_path", str(tiny_sdxl), "--train_text_encoder", "--lora_rank", "4",
        "--lora_alpha", "16", "--output_kohya_format", "--max_train_steps", "3", "--train_batch_size", "2",
        "--checkpointing_steps", "0", "--validation_steps", "0", "--num_validation_images", "1",
        "--num_inference_steps", "2", "--learning_rate", "5e-2",
    ]  # fmt: skip
    assert main(argv) == 0
    return out


def _base(tiny_sdxl: Path) -> StableDiffusionXLPipeline:
    pipeline = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl, local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _generate(pipeline: StableDiffusionXLPipeline, seed: int = 0, guidance_scale: float = 5.0) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    return pipeline(
        PROMPT, num_inference_steps=2, guidance_scale=guidance_scale, generator=generator, output_type="np"
    ).images


@pytest.mark.slow
def test_conditioning_and_sampling_match_the_diffusers_sdxl_pipeline(tiny_sdxl):
    backbone = load_backbone(tiny_sdxl)
    assert isinstance(backbone, StableDiffusionXLBackbone) and backbone.resolution == 64  # 32 latents x VAE's 2
    recommended = backbone.recommended("lora")
    assert recommended["learning_rate"] == 1e-4 and recommended["guidance_scale"] == 5.0
    assert recommended["resolution_default"] == 64 and backbone.recommended("dreambooth")["learning_rate"] == 5e-6
    pipeline = backbone.pipeline
    with torch.no_grad():
        ours = backbone.encode_prompts([PROMPT, ""])
        embeds, negative, pooled, negative_pooled = pipeline.encode_prompt([PROMPT], device="cpu")
    assert ours.hidden_states.shape == (2, 77, 64) and ours.added["text_embeds"].shape == (2, 32)
    torch.testing.assert_close(ours.hidden_states, torch.cat([embeds, negative]))
    torch.testing.assert_close(ours.added["text_embeds"], torch.cat([pooled, negative_pooled]))
    assert not negative.any()  # SDXL's unconditional branch: zeros (force_zeros_for_empty_prompt)
    time_ids = pipeline._get_add_time_ids((64, 64), (0, 0), (64, 64), torch.float32, text_encoder_projection_dim=32)
    torch.testing.assert_close(ours.added["time_ids"], time_ids.repeat(2, 1))
    # iddm's DDIM sampler with guidance draws exactly what the SDXL pipeline draws (same DDIM scheduler).
    ours = sample(backbone, [PROMPT], torch.Generator().manual_seed(0), 2, 5.0)[0].permute(1, 2, 0).numpy()
    reference = _generate(pipeline)[0]
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    unguided = sample(backbone, [PROMPT], torch.Generator().manual_seed(0), 2, 1.0)[0].permute(1, 2, 0).numpy()
    assert np.abs(unguided - reference).mean() > 1e-4  # the comparison above can fail


def test_the_real_sdxl_architecture_gets_1024_px_and_conditioning_its_unet_takes():
    """SDXL base 1.0's shapes (2.6 B UNet parameters, CLIP ViT-L and bigG) on the meta device: no memory or weights."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from iddm.diffusion import build_clip_tokenizer

    def clip(hidden: int, layers: int, heads: int, act: str) -> CLIPTextConfig:
        return CLIPTextConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_attention_heads=heads,
                              num_hidden_layers=layers, projection_dim=hidden, hidden_act=act, bos_token_id=49406,
                              eos_token_id=49407, pad_token_id=49407)  # fmt: skip

    with torch.device("meta"):
        unet = UNet2DConditionModel(
            sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(5, 10, 20), use_linear_projection=True, transformer_layers_per_block=(1, 2, 10),
            cross_attention_dim=2048, addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        )  # fmt: skip
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, sample_size=1024,
            scaling_factor=0.13025, force_upcast=True,
        )  # fmt: skip
        text_encoder = CLIPTextModel(clip(768, 12, 12, "quick_gelu"))
        text_encoder_2 = CLIPTextModelWithProjection(clip(1280, 32, 20, "gelu"))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    pipeline = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=build_clip_tokenizer(),
        tokenizer_2=build_clip_tokenizer(), unet=unet, scheduler=scheduler, add_watermarker=False,
    )  # fmt: skip
    backbone = StableDiffusionXLBackbone(pipeline)
    assert backbone.resolution == 1024 and backbone.latent_shape == (4, 128, 128)
    assert backbone.recommended("lora")["resolution_default"] == 1024
    conditioning = backbone.encode_prompts([PROMPT])
    assert conditioning.hidden_states.shape == (1, 77, 768 + 1280)
    assert conditioning.added["text_embeds"].shape == (1, 1280) and conditioning.added["time_ids"].shape == (1, 6)
    with torch.no_grad():
        noisy = torch.zeros(1, *backbone.latent_shape, device="meta")
        assert backbone.predict(noisy, torch.tensor([500], device="meta"), conditioning).shape == (1, 4, 128, 128)


@pytest.mark.slow
def test_lora_loads_in_plain_diffusers_with_both_text_encoders_and_alpha(lora_run, tiny_sdxl):
    model = lora_run / "model"
    weights = load_file(model / LORA_WEIGHT_NAME)
    prefixes = {key.split(".")[0] for key in weights}
    assert prefixes == {"unet", "text_encoder", "text_encoder_2"}
    with safe_open(str(model / LORA_WEIGHT_NAME), framework="pt") as handle:
        metadata = json.loads(handle.metadata()["lora_adapter_metadata"])
    assert {metadata[f"{p}.lora_alpha"] for p in prefixes} == {16} and {metadata[f"{p}.r"] for p in prefixes} == {4}
    run = json.loads((lora_run / "iddm_run.json").read_text())
    assert run["model"]["backbone"] == "sdxl" and run["config"]["guidance_scale"] == 5.0  # SDXL's recommendation
    assert "StableDiffusionXLPipeline" in (model / "README.md").read_text()
    base = _base(tiny_sdxl)
    before = _generate(base)
    base.load_lora_weights(model)
    for name in ("unet", "text_encoder", "text_encoder_2"):
        assert getattr(base, name).peft_config["default_0"].lora_alpha == 16  # not the rank: the strength is kept
    assert np.abs(_generate(base) - before).mean() > 1e-4


@pytest.mark.slow
def test_generate_from_the_run_folder_draws_what_diffusers_draws(lora_run, tiny_sdxl, tmp_path):
    common = ["--num_images", "2", "--num_inference_steps", "2", "--seed", "3"]
    assert main(["generate", "--pretrained_model_name_or_path", str(lora_run), "--output_dir", str(tmp_path / "a"),
                 *common]) == 0  # fmt: skip
    drawn = [load_photo(p) for p in sorted((tmp_path / "a").glob("image_*.png"))]
    assert len(drawn) == 2 and (tmp_path / "a" / "grid.png").is_file()
    pipeline = _base(tiny_sdxl)
    pipeline.load_lora_weights(lora_run / "model")
    for i, image in enumerate(drawn):  # the run's guidance (5.0, SDXL's) and seed + i, in plain diffusers
        reference = (_generate(pipeline, seed=3 + i)[0] * 255 + 0.5).astype(np.uint8)
        assert np.abs(image.astype(int) - reference.astype(int)).max() <= 1


@pytest.mark.slow
def test_kohya_export_has_both_text_encoders_and_round_trips(lora_run, tiny_sdxl, tmp_path):
    kohya = load_file(lora_run / "model" / KOHYA_WEIGHT_NAME)
    assert any(k.startswith("lora_unet_") and k.endswith(".lora_down.weight") for k in kohya)
    assert any(k.startswith("lora_te1_") for k in kohya) and any(k.startswith("lora_te2_") for k in kohya)
    assert {float(v) for k, v in kohya.items() if k.endswith(".alpha")} == {16.0}
    diffusers_format, kohya_format = _base(tiny_sdxl), _base(tiny_sdxl)
    diffusers_format.load_lora_weights(lora_run / "model")
    kohya_format.load_lora_weights(lora_run / "model", weight_name=KOHYA_WEIGHT_NAME)
    for name in ("unet", "text_encoder", "text_encoder_2"):
        assert getattr(kohya_format, name).peft_config  # every part of the kohya file was loaded somewhere
    np.testing.assert_allclose(_generate(kohya_format), _generate(diffusers_format), atol=1e-5)
    assert main(["export", str(lora_run), "--output", str(tmp_path / "k.safetensors")]) == 0
    exported = load_file(tmp_path / "k.safetensors")
    assert set(exported) == set(kohya) and all(torch.equal(exported[k], kohya[k]) for k in kohya)


@pytest.mark.slow
def test_dreambooth_bf16_keeps_the_vae_fp32_and_saves_a_plain_sdxl_folder(tiny_sdxl, train_dir, tmp_path):
    out = tmp_path / "dreambooth"
    values = {"photos": train_dir, "output_dir": out, "pretrained_model_name_or_path": str(tiny_sdxl), **FAST,
              "max_train_steps": 2, "train_batch_size": 1}  # fmt: skip
    trainer = Trainer(build_config(PersonalizeConfig, {**values, "method": "dreambooth", "mixed_precision": "bf16"}))
    backbone = trainer.backbone
    assert backbone.vae.dtype == torch.float32  # force_upcast: SDXL's VAE would overflow in half precision
    assert backbone.unet.dtype == torch.float32  # it trains in full
    assert {backbone.pipeline.text_encoder.dtype, backbone.pipeline.text_encoder_2.dtype} == {torch.bfloat16}
    trainer.run()
    tuned = StableDiffusionXLPipeline.from_pretrained(out / "model", local_files_only=True)
    tuned.set_progress_bar_config(disable=True)
    parts = (tuned.vae, tuned.text_encoder, tuned.text_encoder_2, tuned.unet)
    assert {part.dtype for part in parts} == {torch.float32}  # frozen parts as loaded
    assert np.abs(_generate(tuned) - _generate(_base(tiny_sdxl))).mean() > 1e-4


@pytest.mark.slow
def test_iddm_data_round_runs_through_the_sdxl_denoised_estimate(tiny_sdxl, train_dir, tmp_path):
    out = tmp_path / "iddm"
    values = {
        "photos": train_dir, "output_dir": out, "pretrained_model_name_or_path": str(tiny_sdxl), **FAST,
        "privacy": "medium", "max_train_steps": 2, "round_steps": 1, "stage1_fraction": 0.5, "data_steps": 1,
        "surrogates": ["sface"], "eot": ["jpeg"], "learning_rate": 1e-2,
    }  # fmt: skip
    personalize(build_config(PersonalizeConfig, values))
    log = json.loads((out / "private" / "iddm_log.json").read_text())
    assert len(log["rounds"]) == 1
    record = log["rounds"][0]
    assert np.isfinite(record["surrogate_cos_x0"]["sface"]) and np.isfinite(record["surrogate_cos_data"]["sface"])
    assert 0 < record["linf"] <= 16 / 255 + 1e-6  # the round moved the photos, within the budget
    assert len(list((out / "private" / "decoupled_photos").glob("*.png"))) == 3
    assert (out / "model" / LORA_WEIGHT_NAME).is_file()


@pytest.mark.parametrize(
    ("class_name", "scheduler"),
    [
        ("StableDiffusionXLImg2ImgPipeline", None),
        ("StableDiffusion3Pipeline", None),
        ("FluxPipeline", None),
        ("StableDiffusionXLPipeline", "EDMEulerScheduler"),
    ],
)
def test_unsupported_pipelines_are_refused_in_one_line(class_name, scheduler, train_dir, tmp_path, capsys):
    # The refusal comes from the folder's JSON files alone, before any weight is read.
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    if scheduler is not None:  # an SDXL model whose noise schedule iddm cannot train (EDM, as Playground v2.5)
        (model / "scheduler").mkdir()
        (model / "scheduler" / "scheduler_config.json").write_text(json.dumps({"_class_name": scheduler}))
    out = tmp_path / "out"
    argv = ["personalize", "--photos", str(train_dir), "--output_dir", str(out),
            "--pretrained_model_name_or_path", str(model)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("iddm personalize: error:")]
    assert len(errors) == 1 and (scheduler or class_name) in errors[0] and "Traceback" not in err
    assert not out.exists()


def test_an_edm_sdxl_pipeline_built_in_code_is_refused():
    from diffusers import EDMEulerScheduler

    from iddm.diffusion.tiny import build_tiny_sdxl_pipeline

    pipeline = build_tiny_sdxl_pipeline()
    pipeline.scheduler = EDMEulerScheduler()
    with pytest.raises(ValueError, match="EDMEulerScheduler: it is an EDM model"):
        StableDiffusionXLBackbone(pipeline)
