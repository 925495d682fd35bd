"""The face prior: `iddm pretrain` on tiny configs (determinism, resume, outputs, bad input), the shipped weights."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import sigkill_when
from diffusers import StableDiffusionPipeline
from PIL import Image
from safetensors.torch import load_file

from iddm.cli import main
from iddm.config import build_config, config_from_namespace
from iddm.diffusion.data import aligned_template, crop_coverage, warp_crop
from iddm.diffusion.objectives import masked_mse
from iddm.faces import detect_single_face, similarity_transform
from iddm.images import load_photo
from iddm.prior import (
    MANIFEST_FILE,
    PRIOR_FILE,
    PretrainConfig,
    pretrain,
    verify_manifest,
    write_manifest,
)
from iddm.prior.captions import caption
from iddm.prior.cli import add_commands
from iddm.prior.data import find_identities, is_excluded, load_corpus, with_gray_copies
from iddm.prior.train import list_checkpoints, min_snr_weights
from iddm.weights import prior_path

REPO = Path(__file__).resolve().parents[1]
FACES = REPO / "data" / "faces"
WEIGHT_FILES = (
    "unet/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/model.safetensors",
)
TINY = dict(
    autoencoder="train",
    unet_attention_head_dim=8,
    resolution=32,
    vae_channels=[8, 16],
    unet_channels=[16, 32],
    unet_layers_per_block=1,
    unet_attention_levels=[1],
    text_hidden_size=16,
    text_layers=1,
    vae_steps=4,
    unet_steps=4,
    vae_batch_size=4,
    unet_batch_size=4,
    lr_warmup_steps=1,
    checkpointing_steps=0,
    num_sample_images=1,
    sample_steps=2,
    num_threads=1,
)
TINY_FLAGS = [
    "--autoencoder", "train", "--unet_attention_head_dim", "8",
    "--resolution", "32", "--vae_channels", "8", "16", "--unet_channels", "16", "32", "--unet_layers_per_block", "1",
    "--unet_attention_levels", "1", "--text_hidden_size", "16", "--text_layers", "1", "--vae_batch_size", "4",
    "--unet_batch_size", "4", "--lr_warmup_steps", "1", "--num_sample_images", "0", "--num_threads", "1",
]  # fmt: skip


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    """Two ORL people (grey PGM) and one pretraining LFW person (colour JPEG), two photos each."""
    root = tmp_path_factory.mktemp("corpus")
    for identity, names in (("orl/s1", ["1.pgm", "2.pgm"]), ("orl/s2", ["1.pgm", "2.pgm"])):
        (root / identity).mkdir(parents=True)
        for name in names:
            shutil.copy(FACES / identity / name, root / identity / name)
    (root / "lfw7" / "Ariel_Sharon").mkdir(parents=True)
    for n in (1, 2):
        name = f"Ariel_Sharon_000{n}.jpg"
        shutil.copy(FACES / "lfw7" / "Ariel_Sharon" / name, root / "lfw7" / "Ariel_Sharon" / name)
    return root


def _config(data_dir: Path, output_dir: Path, **overrides) -> PretrainConfig:
    return build_config(PretrainConfig, {**TINY, "data_dir": data_dir, "output_dir": output_dir, **overrides})


def _weights(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in WEIGHT_FILES}


@pytest.fixture(scope="module")
def tiny_prior(corpus_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prior") / "prior"
    pretrain(_config(corpus_dir, out, checkpointing_steps=2, keep_checkpoints=True, checkpoints_total_limit=None))
    return out


# -- the repository's corpus ----------------------------------------------------------------------------


def test_repository_corpus_and_held_out_people():
    identities = find_identities(FACES)
    lfw = sorted(name for name in identities if name.startswith("lfw7/"))
    assert len(lfw) == 7 and all(len(identities[name]) == 50 for name in lfw)
    assert sum(name.startswith("orl/") for name in identities) == 40
    held_out = [name for name in identities if is_excluded(name, PretrainConfig().exclude)]
    assert held_out == ["lfw7/Gerhard_Schroeder", "lfw7/Hugo_Chavez", "lfw7/Tony_Blair"]
    for person in ("Gerhard_Schroeder", "Hugo_Chavez", "Tony_Blair"):
        assert person in (FACES / "SOURCES.md").read_text()


# -- outputs, determinism, resume ----------------------------------------------------------------------


def test_tiny_prior_is_a_plain_diffusers_pipeline_that_generates(tiny_prior):
    for name in ("model_index.json", PRIOR_FILE, MANIFEST_FILE, "samples.png", "tokenizer/tokenizer.json"):
        assert (tiny_prior / name).is_file(), name
    verify_manifest(tiny_prior)
    pipeline = StableDiffusionPipeline.from_pretrained(tiny_prior, local_files_only=True)
    assert {pipeline.unet.dtype, pipeline.vae.dtype, pipeline.text_encoder.dtype} == {torch.float32}
    assert pipeline.tokenizer("a photo of").input_ids == [49406, 320, 1125, 539, 49407]
    pipeline.set_progress_bar_config(disable=True)
    images = pipeline(
        "a photo of a person", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()
    info = json.loads((tiny_prior / PRIOR_FILE).read_text())
    assert info["personalization"]["crop"] == "aligned" and info["personalization"]["margin"] == 0.25
    assert info["corpus"]["identities"] == 3 and info["corpus"]["gray_photos"] == 4
    assert info["corpus"]["color_photos"] == 2 and info["corpus"]["face_detection_rate"] == 1.0
    assert info["latent_shape"] == [4, 16, 16]


def test_same_seed_same_weights_and_seed_matters(corpus_dir, tiny_prior, tmp_path):
    pretrain(_config(corpus_dir, tmp_path / "again", checkpointing_steps=2, keep_checkpoints=True))
    assert _weights(tmp_path / "again") == _weights(tiny_prior)
    pretrain(_config(corpus_dir, tmp_path / "other", seed=1, num_sample_images=0))
    other = _weights(tmp_path / "other")
    assert all(other[name] != data for name, data in _weights(tiny_prior).items())


@pytest.mark.parametrize("checkpoint", ["checkpoint-2", "checkpoint-6"])  # autoencoder stage, UNet stage
def test_resume_from_either_stage_equals_uninterrupted(corpus_dir, tiny_prior, tmp_path, checkpoint):
    out = tmp_path / "resumed"
    out.mkdir()
    shutil.copytree(tiny_prior / checkpoint, out / checkpoint)
    pretrain(_config(corpus_dir, out, checkpointing_steps=2, resume_from_checkpoint="latest"))
    assert _weights(out) == _weights(tiny_prior)
    assert not list_checkpoints(out)  # removed after a finished run unless --keep_checkpoints


def test_a_corrupt_newest_checkpoint_falls_back_to_the_one_before(corpus_dir, tiny_prior, tmp_path, caplog):
    out = tmp_path / "resumed"
    out.mkdir()
    for name in ("checkpoint-4", "checkpoint-6"):
        shutil.copytree(tiny_prior / name, out / name)
    (out / "checkpoint-6" / "unet.safetensors").write_bytes(b"truncated")
    pretrain(_config(corpus_dir, out, checkpointing_steps=2, resume_from_checkpoint="latest"))
    assert "Skipping checkpoint-6" in caplog.text
    assert _weights(out) == _weights(tiny_prior)


@pytest.mark.slow
def test_sigkill_halfway_then_resume_equals_uninterrupted(corpus_dir, tmp_path):
    flags = [*TINY_FLAGS, "--data_dir", str(corpus_dir), "--vae_steps", "30", "--unet_steps", "30"]
    flags += ["--checkpointing_steps", "10"]
    reference = tmp_path / "reference"
    assert main(["pretrain", *flags, "--output_dir", str(reference)]) == 0
    killed = tmp_path / "killed"
    sigkill_when(["pretrain", *flags, "--output_dir", str(killed)], killed / "checkpoint-30", timeout=120)
    assert (killed / "checkpoint-30").is_dir(), "the run never reached its checkpoint"
    assert not (killed / MANIFEST_FILE).exists(), "the run finished before it could be killed"
    assert main(["pretrain", *flags, "--output_dir", str(killed), "--resume_from_checkpoint", "latest"]) == 0
    assert _weights(killed) == _weights(reference)


def test_finished_output_is_refused_unless_overwrite(corpus_dir, tiny_prior, capsys):
    assert main(["pretrain", *TINY_FLAGS, "--data_dir", str(corpus_dir), "--output_dir", str(tiny_prior)]) == 2
    err = capsys.readouterr().err.strip()
    assert "already holds a finished prior" in err and "--overwrite" in err and len(err.splitlines()) == 1, err


# -- the manifest ----------------------------------------------------------------------------------------


def test_manifest_refuses_a_modified_missing_or_unlisted_file(tiny_prior, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(tiny_prior, folder, ignore=shutil.ignore_patterns("checkpoint-*"))
    verify_manifest(folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"SHA-256 mismatch for \['unet/diffusion_pytorch_model.safetensors'\]"):
        verify_manifest(folder)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        verify_manifest(folder)
    write_manifest(folder)
    (folder / "extra.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"not in SHA256SUMS: \['extra.bin'\]"):
        verify_manifest(folder)
    (folder / MANIFEST_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="no SHA256SUMS"):
        verify_manifest(folder)


@pytest.mark.parametrize(
    ("name", "max_mib", "held_out"),
    [
        ("iddm:face-prior-64", 26, {"lfw7/Gerhard_Schroeder", "lfw7/Hugo_Chavez", "lfw7/Tony_Blair"}),
        ("iddm:face-prior-128", 50, None),
    ],
)
def test_shipped_prior_verifies_loads_offline_and_generates(name, max_mib, held_out):
    path = prior_path(name)
    info = json.loads((path / PRIOR_FILE).read_text())
    total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    assert total <= max_mib * 2**20, f"shipped prior is {total / 2**20:.1f} MiB"
    assert info["personalization"]["crop"] == "aligned"
    if held_out is not None:
        assert set(info["corpus"]["held_out_identities"]) == held_out
    else:  # the 128-px prior: the 64 CFP evaluation people of the committed split were never seen
        split = json.loads((Path(__file__).parents[1] / "benchmarks" / "cfp_eval_split.json").read_text())
        assert set(split["identities"]) <= set(info["corpus"]["held_out_identities"])
    pipeline = StableDiffusionPipeline.from_pretrained(path, local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)
    image = pipeline(
        "a photo of a person", num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    assert image.shape == (1, info["personalization"]["resolution"], info["personalization"]["resolution"], 3)


def test_builtin_models_are_described_and_the_prior_loads_without_diffusers_noise():
    from iddm.diffusion.loading import BUILTIN_MODELS, describe_builtin, load_backbone

    assert "128x128" in describe_builtin("iddm:face-prior") == describe_builtin("iddm:face-prior-128")
    assert "64x64" in describe_builtin("iddm:face-prior-64")
    assert all(describe_builtin(name) for name in BUILTIN_MODELS)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    diffusers_logger = logging.getLogger("diffusers")
    diffusers_logger.addHandler(handler)
    try:
        load_backbone("iddm:face-prior").to("cpu", torch.bfloat16)
    finally:
        diffusers_logger.removeHandler(handler)
    assert not [r.getMessage() for r in records if r.levelno >= logging.WARNING]


def test_model_cards_carry_the_data_terms_of_the_128_px_prior():
    from iddm.run_layout import ModelManifest
    from iddm.schedule.model_card import render_model_card

    def card(base: str) -> str:
        manifest = ModelManifest("sd", base, "lora", 128, "a photo of sks person", "none", {}, [])
        return render_model_card(manifest, {}, None, None)

    assert "non-commercial research only" in card("iddm:face-prior-128")
    assert "non-commercial" not in card("iddm:face-prior-64")


# -- the command and bad input ---------------------------------------------------------------------------


def test_add_commands_on_a_fresh_parser_and_yaml(tmp_path):
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    config_file = tmp_path / "prior.yaml"
    config_file.write_text("unet_steps: 7\nvae_learning_rate: 2e-4\nexclude: [Tony_Blair]\n")
    args = parser.parse_args(["pretrain", "--config", str(config_file), "--output_dir", "x", "--unet_steps", "9"])
    config = config_from_namespace(PretrainConfig, args)
    assert (config.unet_steps, config.vae_learning_rate, config.exclude) == (9, 2e-4, ["Tony_Blair"])
    assert config.output_dir == Path("x") and args.func.__name__ == "_cmd_pretrain"
    help_text = parser._subparsers._group_actions[0].choices["pretrain"].format_help()
    for name in PretrainConfig.__dataclass_fields__:
        assert f"--{name}" in help_text


def _pretrain_error(data_dir: Path, tmp_path: Path, capsys, *extra: str) -> str:
    code = main(["pretrain", *TINY_FLAGS, "--data_dir", str(data_dir), "--output_dir", str(tmp_path / "o"), *extra])
    # Progress bars (erased on a terminal) come before the one error line.
    err = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()
    assert code == 2, err
    assert err[-1].startswith("iddm pretrain: error: ") and not any("Traceback" in line for line in err), err
    assert not (tmp_path / "o").exists()  # refused before any output folder is made
    return err[-1]


def test_folder_without_faces_is_one_clear_error(tmp_path, capsys):
    for person in ("a", "b"):
        (tmp_path / "faces" / person).mkdir(parents=True)
        for n in range(2):
            Image.fromarray(np.full((80, 80, 3), 40 * n + 60, np.uint8)).save(tmp_path / "faces" / person / f"{n}.png")
    err = _pretrain_error(tmp_path / "faces", tmp_path, capsys)
    assert "none of 4 photo(s) has a usable face" in err
    (tmp_path / "empty").mkdir()
    assert "no photo files" in _pretrain_error(tmp_path / "empty", tmp_path, capsys)
    assert "does not exist" in _pretrain_error(tmp_path / "missing", tmp_path, capsys)


def test_one_identity_only_is_refused(corpus_dir, tmp_path, capsys):
    flat = tmp_path / "flat"
    shutil.copytree(corpus_dir / "orl" / "s1", flat)
    err = _pretrain_error(flat, tmp_path, capsys)
    assert "1 identity with usable photos, at least 2 needed" in err
    err = _pretrain_error(corpus_dir, tmp_path, capsys, "--exclude", "s1", "s2", "Ariel_Sharon")
    assert "every identity is excluded" in err


def test_grey_and_colour_mixed_in_one_identity_are_captioned_per_photo(corpus_dir, tmp_path):
    mixed = tmp_path / "mixed"
    shutil.copytree(corpus_dir, mixed)
    # A colour JPEG saved as 3-channel grey, and a PGM in the colour person's folder.
    colour = mixed / "lfw7" / "Ariel_Sharon" / "Ariel_Sharon_0001.jpg"
    Image.open(colour).convert("L").convert("RGB").save(mixed / "lfw7" / "Ariel_Sharon" / "grey_rgb.jpg", quality=95)
    shutil.copy(corpus_dir / "orl" / "s1" / "1.pgm", mixed / "lfw7" / "Ariel_Sharon" / "orl.pgm")
    corpus = load_corpus(mixed, [], 32, 0.25)
    gray = dict(zip((p.name for p in corpus.paths), corpus.gray.tolist()))
    assert gray["grey_rgb.jpg"] and gray["orl.pgm"] and gray["1.pgm"]
    assert not gray["Ariel_Sharon_0001.jpg"] and not gray["Ariel_Sharon_0002.jpg"]
    images, flags = corpus.training_tensors()
    assert images.shape == (2 * len(corpus), 3, 32, 32) and flags.tolist() == np.repeat(corpus.gray, 2).tolist()
    assert torch.equal(images[1], images[0].flip(-1))


def test_grey_copies_are_the_luma_of_a_seeded_share_of_colour_crops_captioned_black_and_white(corpus_dir):
    corpus = load_corpus(corpus_dir, [], 32, 0.25)
    colour = np.flatnonzero(~corpus.gray)
    assert len(colour) == 2 and with_gray_copies(corpus, 0.0) is corpus
    copied = with_gray_copies(corpus, 1.0)
    n = len(corpus)
    assert len(copied) == n + 2 and copied.gray_copies == 2 and copied.gray[n:].all()
    for original, copy in zip(colour, range(n, n + 2), strict=True):
        pixels = copied.images[copy]
        assert (pixels == pixels[..., :1]).all()  # one value in all three channels
        reference = np.asarray(Image.fromarray(corpus.images[original]).convert("L"), dtype=np.int16)
        assert np.abs(pixels[..., 0].astype(np.int16) - reference).max() <= 1  # PIL's luma, rounded its own way
        assert copied.identities[copy] == corpus.identities[original]
        assert np.array_equal(copied.coverage[copy], corpus.coverage[original])
        assert caption(copied.labels[copy]).startswith("a black and white photo of")
        assert not caption(corpus.labels[original]).startswith("a black and white")
    assert copied.fingerprint != corpus.fingerprint  # their latents are cached apart
    summary = copied.summary()
    assert summary["photos_used"] == n and summary["gray_copies"] == 2 and summary["color_photos"] == 2
    half = [with_gray_copies(corpus, 0.5, seed=seed) for seed in (0, 0)]
    assert half[0].gray_copies == 1 and np.array_equal(half[0].images, half[1].images)
    with pytest.raises(ValueError, match="gray_copies"):
        with_gray_copies(corpus, 1.5)


def test_corrupt_file_is_skipped_and_listed_or_refused(corpus_dir, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(corpus_dir, data)
    (data / "orl" / "s1" / "3.pgm").write_bytes(b"P5\n92 112\n255\n" + b"\x00" * 100)  # truncated
    out = tmp_path / "run"
    result = pretrain(_config(data, out, vae_steps=1, unet_steps=1, num_sample_images=0))
    assert result.corpus["photos_skipped"] == 1 and "3.pgm" in result.corpus["skipped"][0]
    assert json.loads((out / PRIOR_FILE).read_text())["corpus"]["photos_skipped"] == 1
    err = _pretrain_error(data, tmp_path, capsys, "--no-skip_bad_photos")
    assert "1 photo(s)" in err and "3.pgm" in err and "corrupt" in err


def test_min_snr_weights_clip_the_signal_to_noise_ratio_per_prediction_type():
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    timesteps = torch.tensor([0, 50, 400, 999])
    alpha_bar = scheduler.alphas_cumprod[timesteps].double()
    snr = alpha_bar / (1 - alpha_bar)
    assert snr[0] > 5 > snr[3]  # both sides of gamma are exercised
    v = min_snr_weights(scheduler, timesteps, PretrainConfig(prediction_type="v_prediction", snr_gamma=5.0))
    eps = min_snr_weights(scheduler, timesteps, PretrainConfig(prediction_type="epsilon", snr_gamma=5.0))
    torch.testing.assert_close(v.double(), snr.clamp(max=5) / (snr + 1), rtol=1e-4, atol=0)
    torch.testing.assert_close(eps.double(), snr.clamp(max=5) / snr, rtol=1e-4, atol=0)
    assert torch.equal(min_snr_weights(scheduler, timesteps, PretrainConfig(snr_gamma=None)), torch.ones(4))


def test_crop_coverage_marks_exactly_the_mirrored_border():
    # ORL's photos are tight 92x112 portraits: iddm's zoomed-out crop of them reaches past the photo.
    photo = load_photo(FACES / "orl" / "s1" / "1.pgm")
    matrix = similarity_transform(detect_single_face(photo).landmarks, aligned_template(128, 0.25))
    inside = crop_coverage(photo.shape, matrix, 128)
    assert 0.5 < inside.mean() < 0.95 and inside[64, 64] and not inside[0, 0]
    # Where warp_crop reads the photo, a white photo stays white with a black constant border; elsewhere it is 0.
    white = np.full(photo.shape, 255, np.uint8)
    lit = cv2.warpAffine(white, matrix, (128, 128), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT) > 0
    assert not (inside & ~lit[..., 0]).any()  # never marks a border pixel as inside
    assert (lit[..., 0] & ~inside).mean() < 0.02  # and is conservative by at most a one-pixel rim
    mirrored = warp_crop(photo, matrix, 128)
    assert mirrored[~inside].std() > 10  # the mirrored border is picture content, which the loss mask removes


def test_latent_masks_keep_cells_wholly_inside_the_photo(corpus_dir):
    corpus = load_corpus(corpus_dir, [], resolution=32, margin=0.25)
    masks = corpus.latent_masks(8)
    assert masks.shape == (len(corpus), 1, 8, 8) and masks.dtype == torch.float32
    blocks = corpus.coverage.reshape(len(corpus), 8, 4, 8, 4)
    assert np.array_equal(masks[:, 0].numpy().astype(bool), blocks.all(axis=(2, 4)))
    assert 0 < masks.mean() < 1  # ORL's tight 92x112 photos leave part of every crop outside
    mirrored = corpus.latent_masks(8, flip=True)
    assert torch.equal(mirrored[0::2], masks) and torch.equal(mirrored[1::2], masks.flip(-1))
    with pytest.raises(ValueError, match="does not divide"):
        corpus.latent_masks(5)


def test_masked_mse_ignores_masked_cells_and_averages_over_kept_ones():
    generator = torch.Generator().manual_seed(0)
    prediction, target = torch.randn(2, 3, 4, 4, generator=generator), torch.randn(2, 3, 4, 4, generator=generator)
    plain = ((prediction - target) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(masked_mse(prediction, target), plain)
    torch.testing.assert_close(masked_mse(prediction, target, torch.ones(2, 1, 4, 4)), plain)
    keep = torch.zeros(2, 1, 4, 4)
    keep[0, :, :2] = 1  # sample 0 keeps its top half; sample 1 keeps nothing
    changed = target.clone()
    changed[:, :, 2:] += 100  # what the mask removes cannot move the loss
    loss = masked_mse(prediction, changed, keep)
    torch.testing.assert_close(loss[0], ((prediction[0, :, :2] - target[0, :, :2]) ** 2).mean())
    assert loss[1] == 0


def test_init_from_a_prior_starts_from_its_unet_and_refuses_another_shape(corpus_dir, tmp_path, capsys):
    taef2 = dict(TINY, autoencoder="taef2", unet_steps=2, num_sample_images=0)
    first = tmp_path / "first"
    pretrain(build_config(PretrainConfig, {**taef2, "data_dir": corpus_dir, "output_dir": first}))
    tuned = tmp_path / "tuned"
    overrides = {"init_from": str(first), "unet_learning_rate": 0.0, "unet_steps": 1, "seed": 1}
    pretrain(build_config(PretrainConfig, {**taef2, **overrides, "data_dir": corpus_dir, "output_dir": tuned}))
    for name in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        assert (first / name).read_bytes() != b""
        ours, theirs = load_file(tuned / name), load_file(first / name)
        assert all(torch.equal(ours[key], theirs[key]) for key in theirs), name  # learning rate 0: unchanged
    # Grey copies change the corpus' latent statistics; the fine-tuned UNet keeps the scale it learned on.
    grey = tmp_path / "grey"
    overrides.update(gray_copies=1.0)
    pretrain(build_config(PretrainConfig, {**taef2, **overrides, "data_dir": corpus_dir, "output_dir": grey}))
    statistics = [json.loads((folder / "vae" / "config.json").read_text()) for folder in (first, grey)]
    for key in ("latents_mean", "latents_std", "scaling_factor"):
        assert statistics[0][key] == statistics[1][key], key
    assert json.loads((grey / PRIOR_FILE).read_text())["corpus"]["gray_copies"] == 2
    flags = ["--autoencoder", "taef2", "--init_from"]
    err = _pretrain_error(corpus_dir, tmp_path, capsys, *flags, str(first), "--unet_channels", "16", "16")
    assert "does not fit the architecture" in err
    assert "is missing" in _pretrain_error(corpus_dir, tmp_path, capsys, *flags, str(tmp_path / "nowhere"))
    err = _pretrain_error(corpus_dir, tmp_path, capsys, *flags, str(first), "--latent_normalization", "scalar")
    assert "normalizes its latents otherwise" in err
    assert "needs --autoencoder taef2" in _pretrain_error(corpus_dir, tmp_path, capsys, "--init_from", str(first))


def test_fp16_on_cpu_and_bad_architecture_are_clear_errors(corpus_dir, tmp_path, capsys):
    assert "must be positive" in _pretrain_error(corpus_dir, tmp_path, capsys, "--snr_gamma", "0")
    assert "must be in [0, 1]" in _pretrain_error(corpus_dir, tmp_path, capsys, "--gray_copies", "1.5")
    assert "needs a CUDA GPU" in _pretrain_error(corpus_dir, tmp_path, capsys, "--mixed_precision", "fp16", "--cpu")
    err = _pretrain_error(corpus_dir, tmp_path, capsys, "--unet_attention_levels", "5")
    assert "out of range" in err


@pytest.mark.slow
def test_model_card_of_a_prior_lora_says_what_to_install_and_its_snippet_runs(train_dir, tmp_path):
    import re
    import subprocess
    import sys

    from iddm.schedule import PersonalizeConfig, personalize

    out = tmp_path / "run"
    config = build_config(
        PersonalizeConfig,
        {"photos": train_dir, "output_dir": out, "max_train_steps": 2, "validation_steps": 0,
         "num_validation_images": 1, "num_inference_steps": 1, "checkpointing_steps": 0},
    )  # fmt: skip
    personalize(config)
    card = (out / "model" / "README.md").read_text()
    assert "iddm:face-prior-128" in card and "not Stable Diffusion" in card and "install iddm" in card
    assert "non-commercial research only" in card  # the default prior's data terms reach every model made from it
    assert json.loads((out / "model" / "iddm_model.json").read_text())["base_model"] == "iddm:face-prior-128"
    snippet = re.search(r"```\n(from diffusers.*?)```", card, re.S).group(1)
    snippet = snippet.replace("THIS_FOLDER", str(out / "model"))
    snippet = snippet.replace(".images[0]", ".images[0]\nassert image.size == (128, 128)")
    snippet = snippet.replace("pipe(", "pipe(num_inference_steps=2, prompt=", 1)
    done = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
