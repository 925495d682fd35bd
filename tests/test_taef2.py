"""TAEF2 (the shipped pretrained autoencoder) and the 128-px prior's pieces: captions, CFP split, latent cache, and
``iddm pretrain`` with TAEF2 (outputs, resume, a corrupt cache shard)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from iddm.config import build_config
from iddm.diffusion import load_backbone
from iddm.diffusion.taef2 import TAEF2_SHA256, TinyFluxAutoencoder, convert_taef2
from iddm.evaluate.harness import default_probe_prompts
from iddm.prior import PRIOR_FILE, PretrainConfig, pretrain, verify_manifest
from iddm.prior.captions import caption, drop_labels, labels_from_path
from iddm.prior.data import is_excluded, split_cfp
from iddm.prior.latents import CACHE_DIR, encode_corpus
from iddm.weights import taef2_path

REPO = Path(__file__).resolve().parents[1]
FACES = REPO / "data" / "faces"


@pytest.fixture(scope="module")
def taef2() -> TinyFluxAutoencoder:
    return TinyFluxAutoencoder.from_pretrained(taef2_path()).eval()


def _ramp() -> torch.Tensor:
    """The check image of weights/README: R = column, G = row, B = their mean, 64 x 64 in [0, 1]."""
    grid = torch.linspace(0, 1, 64)
    red, green = grid[None, :].expand(64, 64), grid[:, None].expand(64, 64)
    return torch.stack([red, green, (red + green) / 2])[None]


def test_shipped_taef2_matches_the_upstream_check_values(taef2):
    x = _ramp()
    with torch.no_grad():
        z = taef2.encode(x * 2 - 1).latent_dist.mean
        rebuilt = ((taef2.decode(z).sample + 1) / 2).clamp(0, 1)
        zero = (taef2.decode(torch.zeros(1, 32, 8, 8)).sample + 1) / 2
    assert z.shape == (1, 32, 8, 8)
    assert abs(z.mean().item() + 0.05017) < 1e-3 and abs(z.std().item() - 0.73702) < 1e-3
    assert torch.allclose(z[0, :4, 0, 0], torch.tensor([1.9111, -0.3708, 0.5531, -1.7739]), atol=1e-3)
    assert abs(10 * math.log10(1 / (rebuilt - x).pow(2).mean().item()) - 28.07) < 0.05
    assert abs(zero.mean().item() - 0.45199) < 1e-3
    assert (taef2_path() / "LICENSE").read_text().startswith("MIT License")


def test_taef2_keeps_colour_and_is_differentiable_both_ways(taef2):
    photo = torch.zeros(1, 3, 64, 64)
    photo[:, 0, :, :32] = 0.9  # a red half and a blue half
    photo[:, 2, :, 32:] = 0.8
    pixels = photo.clone().requires_grad_(True)
    rebuilt = (taef2.decode(taef2.encode(pixels * 2 - 1).latent_dist.mean).sample + 1) / 2
    assert (rebuilt - photo).abs().mean() < 0.05
    rebuilt[:, 0].mean().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0


def test_convert_taef2_checks_files_and_hashes(tmp_path):
    with pytest.raises(FileNotFoundError, match="taef2_encoder.pth"):
        convert_taef2(tmp_path)
    for name in TAEF2_SHA256:
        torch.save({"0.weight": torch.zeros(1)}, tmp_path / name)
    with pytest.raises(ValueError, match="SHA-256 differs"):
        convert_taef2(tmp_path)


def test_a_pipeline_with_taef2_saves_loads_and_personalizes_like_sd(taef2, tmp_path):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from iddm.diffusion.tiny import assemble_sd_pipeline, build_clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=32,
        out_channels=32,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
    )
    text = CLIPTextModel(
        CLIPTextConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=1)
    )
    assemble_sd_pipeline(unet, taef2, text, build_clip_tokenizer()).save_pretrained(tmp_path / "p")
    assert json.loads((tmp_path / "p" / "model_index.json").read_text())["vae"] == [
        "iddm.diffusion.taef2",
        "TinyFluxAutoencoder",
    ]
    pipeline = StableDiffusionPipeline.from_pretrained(tmp_path / "p", local_files_only=True)
    assert isinstance(pipeline.vae, TinyFluxAutoencoder) and pipeline.vae_scale_factor == 8
    pipeline.set_progress_bar_config(disable=True)
    image = pipeline("a photo", num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 64, 64, 3)
    backbone = load_backbone(tmp_path / "p")
    assert backbone.latent_shape == (32, 8, 8)
    latents = backbone.to_diffusion_space(torch.rand(2, 3, 64, 64), generator=torch.Generator().manual_seed(0))
    assert latents.shape == (2, 32, 8, 8) and backbone.to_image_space(latents).shape == (2, 3, 64, 64)


# -- captions and the identity split ---------------------------------------------------------------------


def test_captions_from_corpus_labels():
    utk = labels_from_path(Path("utkface/70_1_1_20170110.jpg"), gray=False)
    assert utk == {"gray": "no", "view": "frontal", "age": "old", "gender": "female", "ethnicity": "Black"}
    assert caption(utk) == "a photo of an old Black woman"
    assert caption(labels_from_path(Path("9_0_4_2017.jpg"), gray=True)) == "a black and white photo of a boy"
    assert caption(labels_from_path(Path("cfp/001_X/profile_02.jpg"), gray=False)) == "a profile photo of a person"
    assert caption(labels_from_path(Path("orl/s1/1.pgm"), gray=True)) == "a black and white photo of a person"
    assert caption(labels_from_path(Path("16_0_3_2017.jpg"), gray=False)) == "a photo of a teenage Indian boy"
    first = [caption(drop_labels(utk, 0.5, torch.Generator().manual_seed(s))) for s in range(20)]
    again = [caption(drop_labels(utk, 0.5, torch.Generator().manual_seed(s))) for s in range(20)]
    assert first == again and "a photo of a person" in first and "a photo of an old Black woman" in first
    assert all(text.startswith("a photo of") for text in first)  # colour and view are never dropped


def test_cfp_split_is_seeded_sorted_and_excludes_by_name():
    names = [f"cfp/{i:03d}_Person_{i}" for i in range(1, 101)] + ["lfw7/Tony_Blair", "utkface"]
    held_out = split_cfp(names, 64)
    assert held_out == split_cfp(list(reversed(names)), 64) == sorted(held_out) and len(set(held_out)) == 64
    assert all(name.startswith("cfp/") for name in held_out) and held_out != split_cfp(names, 64, seed=1)
    with pytest.raises(ValueError, match="only 100 CFP identities"):
        split_cfp(names, 101)
    assert is_excluded("cfp/123_Barack_Obama", ["Barack_Obama"]) and not is_excluded("cfp/123_Bob", ["Obama"])


# -- the latent cache and pretraining with TAEF2 ----------------------------------------------------------


def test_latent_cache_reads_back_and_reencodes_a_corrupt_shard(taef2, tmp_path, caplog):
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    first = encode_corpus(taef2, images, tmp_path, flip=True, shard_size=2)
    assert first.shape == (10, 32, 4, 4) and len(list(tmp_path.glob("shard-*.safetensors"))) == 3
    mirrored = taef2.encode(torch.from_numpy(images[:1]).permute(0, 3, 1, 2).float().div(127.5).sub(1).flip(-1))
    assert torch.allclose(first[1], mirrored.latent_dist.mean[0], atol=2e-3)  # fp16 in the cache
    (tmp_path / "shard-00001.safetensors").write_bytes(b"truncated")
    assert torch.equal(encode_corpus(taef2, images, tmp_path, flip=True, shard_size=2), first)
    assert "shard-00001.safetensors does not load" in caplog.text


TINY_TAEF2 = dict(
    resolution=32,
    unet_channels=[16, 32],
    unet_attention_levels=[1],
    unet_attention_head_dim=8,
    text_hidden_size=16,
    text_layers=1,
    unet_steps=4,
    unet_batch_size=4,
    lr_warmup_steps=1,
    num_sample_images=2,
    sample_steps=2,
    num_threads=1,
    held_out_cfp=1,
)


@pytest.fixture(scope="module")
def labelled_corpus(tmp_path_factory) -> Path:
    """Two ORL people (grey) and a 'cfp' folder of two people: the LFW photos renamed as frontal/profile shots."""
    root = tmp_path_factory.mktemp("labelled")
    for identity in ("orl/s1", "orl/s2"):
        shutil.copytree(FACES / identity, root / identity, ignore=lambda _d, names: sorted(names)[2:])
    for n, person in enumerate(("Ariel_Sharon", "Colin_Powell"), start=1):
        folder = root / "cfp" / f"00{n}_{person}"
        folder.mkdir(parents=True)
        for k, view in enumerate(("frontal_01", "frontal_02", "profile_01"), start=1):
            shutil.copy(FACES / "lfw7" / person / f"{person}_000{k}.jpg", folder / f"{view}.jpg")
    return root


def _taef2_config(data_dir: Path, output_dir: Path, **overrides) -> PretrainConfig:
    return build_config(PretrainConfig, {**TINY_TAEF2, "data_dir": data_dir, "output_dir": output_dir, **overrides})


def test_pretrain_with_taef2_writes_a_text_conditioned_prior_and_resumes(labelled_corpus, tmp_path):
    out = tmp_path / "prior"
    pretrain(_taef2_config(labelled_corpus, out, checkpointing_steps=2, keep_checkpoints=True))
    verify_manifest(out)
    info = json.loads((out / PRIOR_FILE).read_text())
    assert info["latent_shape"] == [32, 4, 4] and info["autoencoder"].startswith("TAEF2")
    assert info["corpus"]["identities"] == 3 and len(info["corpus"]["held_out_identities"]) == 1
    assert info["corpus"]["labels"]["view"] == {"frontal": 6, "profile": 1}  # one CFP person held out
    assert (out / CACHE_DIR).is_dir() and (out / "vae" / "LICENSE").read_text().startswith("MIT License")
    pipeline = StableDiffusionPipeline.from_pretrained(out, local_files_only=True)
    assert isinstance(pipeline.vae, TinyFluxAutoencoder) and pipeline.vae.config.scaling_factor != 1.0
    # A text-conditioned prior is probed with its own prompts; the 64-px prior knows only the instance prompt.
    assert default_probe_prompts(out, None) == info["probe_prompts"] == PretrainConfig().probe_prompts
    assert default_probe_prompts("iddm:face-prior-64", None) == ["a photo of sks person"]

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(out / "checkpoint-2", resumed / "checkpoint-2")
    pretrain(_taef2_config(labelled_corpus, resumed, checkpointing_steps=2, resume_from_checkpoint="latest"))
    name = "unet/diffusion_pytorch_model.safetensors"
    assert (resumed / name).read_bytes() == (out / name).read_bytes()


def test_per_channel_latents_and_v_prediction_reach_the_written_pipeline(labelled_corpus, taef2, tmp_path):
    out = tmp_path / "prior"
    overrides = dict(latent_normalization="per_channel", prediction_type="v_prediction", num_sample_images=0)
    pretrain(_taef2_config(labelled_corpus, out, **overrides))
    pipeline = StableDiffusionPipeline.from_pretrained(out, local_files_only=True)
    vae = pipeline.vae
    assert len(vae.config.latents_mean) == len(vae.config.latents_std) == 32
    assert pipeline.scheduler.config.prediction_type == "v_prediction"
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        normalized, raw = vae.encode(x).latent_dist.mean, taef2.encode(x).latent_dist.mean
        mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1)
        assert torch.allclose(
            normalized * torch.tensor(vae.config.latents_std).view(1, -1, 1, 1) + mean, raw, atol=1e-4
        )
        assert torch.allclose(vae.decode(normalized).sample, taef2.decode(raw).sample, atol=1e-4)
    assert load_backbone(out).noise_scheduler.config.prediction_type == "v_prediction"
