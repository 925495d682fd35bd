"""IDDM: privacy knob, data steps, targeted variant, two-stage schedule, resume, SD path end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from iddm.config import build_config
from iddm.decouple import IdentityLoss, build_data_optimizer, parse_level, resolve_privacy
from iddm.diffusion import PixelBackbone, prepare_photos, save_tiny_sd_pipeline
from iddm.faces import BUILTIN_DECOYS, detect_single_face, embed_photos, load_recognizer
from iddm.images import list_photos, load_photo
from iddm.schedule import PersonalizeConfig, StagePlan, personalize

FAST = dict(
    pretrained_model_name_or_path="iddm:micro",
    resolution=32,
    max_train_steps=6,
    train_batch_size=2,
    checkpointing_steps=0,
    validation_steps=0,
    num_validation_images=1,
    num_inference_steps=2,
    surrogates=["sface"],
    eot=["jpeg", "blur"],
)


@pytest.fixture(scope="module")
def photos64(train_dir):
    return prepare_photos(train_dir, resolution=64)


def _config(photos: Path, output_dir: Path, **overrides) -> PersonalizeConfig:
    return build_config(PersonalizeConfig, {"photos": photos, "output_dir": output_dir, **FAST, **overrides})


def _weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(output_dir / "model" / "unet" / "diffusion_pytorch_model.safetensors")


def _settings(**overrides):
    return resolve_privacy(_config(Path("photos"), Path("out"), **overrides).privacy_config)


def test_privacy_levels_parse_and_map_monotonically():
    assert parse_level("off") == (0.0, "off") and parse_level("HIGH") == (1.0, "high")
    assert parse_level("0.5") == (0.5, "0.50")
    for bad in ("max", "1.5", "-0.1"):
        with pytest.raises(ValueError, match="privacy"):
            parse_level(bad)
    settings = [_settings(privacy=level) for level in ("off", "low", "medium", "high")]
    assert not settings[0].enabled and all(s.enabled for s in settings[1:])
    assert [s.epsilon for s in settings] == sorted(s.epsilon for s in settings)
    assert settings[-1].epsilon == pytest.approx(16 / 255)
    assert [s.warp for s in settings] == pytest.approx([0, 0.99, 1.98, 3.0])
    overridden = _settings(privacy="high", epsilon=0.01, data_steps=2, warp=0)
    assert overridden.epsilon == 0.01 and overridden.data_steps == 2 and overridden.warp == 0
    # The controls keep their published definitions: no warp, shape limit, δ structure or sharing for noise and ASPL.
    identity_only = dict(warp=2.0, shape_limit=1.0, delta_grid=8, delta_chroma=0.25, shared_perturbation=True)
    for defense in ("noise", "aspl"):
        control = _settings(privacy="high", defense=defense, **identity_only)
        assert (control.warp, control.shape_limit, control.delta_grid) == (0, 0, 0)
        assert control.delta_chroma == 1.0 and not control.shared_perturbation
    assert _settings(privacy="high", defense="iddm", **identity_only).shared_perturbation
    assert _settings(privacy="high", defense="cloak").warp == 3.0


def test_privacy_off_is_vanilla_bit_for_bit(train_dir, tmp_path):
    personalize(_config(train_dir, tmp_path / "vanilla"))
    personalize(_config(train_dir, tmp_path / "off", privacy="off"))
    personalize(_config(train_dir, tmp_path / "zero", privacy="0"))
    vanilla = _weights(tmp_path / "vanilla")
    for name in ("off", "zero"):
        other = _weights(tmp_path / name)
        assert all(torch.equal(vanilla[k], other[k]) for k in vanilla)
    assert not (tmp_path / "off" / "private" / "decoupled_photos").exists()


def test_one_data_step_lowers_identity_loss_and_respects_epsilon(photos64):
    settings = _settings(privacy="high", eot=[], lambda_gen=0.0, step_size=4 / 255)
    optimizer = build_data_optimizer(settings, photos64, torch.device("cpu"))
    backbone = PixelBackbone.from_scratch(64)
    clean = photos64.images
    indices = torch.arange(len(clean))
    before, _ = optimizer.identity(clean, indices)
    generator = torch.Generator().manual_seed(0)
    optimizer.run_round(backbone, clean, "a photo of sks person", 1, generator)
    perturbed = optimizer.perturbation.perturbed(clean)
    after, _ = optimizer.identity(perturbed, indices)
    assert after.item() < before.item() - 0.01
    assert optimizer.perturbation.delta.abs().max().item() <= settings.epsilon + 1e-7
    assert perturbed.min() >= 0 and perturbed.max() <= 1
    assert optimizer.perturbation.perturbed(clean) is perturbed  # kept between data rounds
    # Many steps stay inside the budget too, and the generation proxy term runs.
    optimizer.settings = _settings(privacy="high", eot=["jpeg"])
    record = optimizer.run_round(backbone, clean, "a photo of sks person", 3, generator)
    assert not torch.equal(optimizer.perturbation.perturbed(clean), perturbed)  # a data round renews it
    assert record["linf"] <= settings.epsilon + 1e-7 and np.isfinite(record["surrogate_cos_x0"]["sface"])
    assert record["psnr_db"] > 20


def test_targeted_variant_pulls_toward_the_decoy(photos64, identity_photos):
    decoy = identity_photos["biden"][0]
    base = dict(privacy="high", eot=[], lambda_gen=0.0, step_size=2 / 255)
    untargeted = _settings(**base, decoy="none")
    targeted = _settings(**base, decoy=str(decoy))
    backbone = PixelBackbone.from_scratch(64)
    clean = photos64.images
    results = {}
    for name, settings in (("untargeted", untargeted), ("targeted", targeted)):
        optimizer = build_data_optimizer(settings, photos64, torch.device("cpu"))
        optimizer.run_round(backbone, clean, "a photo of sks person", 4, torch.Generator().manual_seed(0))
        results[name] = optimizer
    decoy_embedding = results["targeted"].identity.decoys["sface"]
    identity: IdentityLoss = results["targeted"].identity
    sface = identity.recognizers[0]
    indices = torch.arange(len(clean))

    def decoy_cosine(images):
        return (identity.embed(sface, images, indices) @ decoy_embedding).mean().item()

    assert decoy_cosine(results["targeted"].perturbation.perturbed(clean)) > decoy_cosine(clean) + 0.05
    assert decoy_cosine(results["targeted"].perturbation.perturbed(clean)) > decoy_cosine(
        results["untargeted"].perturbation.perturbed(clean)
    )


def test_stage_plan_counts():
    plan = StagePlan.from_fraction(total_steps=1500, stage1_fraction=2 / 3, round_steps=50, data_steps=5)
    assert (plan.rounds, plan.stage1_steps, plan.stage2_steps, plan.total_data_steps) == (20, 1000, 500, 100)
    rounds_after = [s for s in range(1500) if plan.data_round_after(s)]
    assert rounds_after == list(range(49, 1000, 50))
    assert plan.stage(999) == 1 and plan.stage(1000) == 2
    assert StagePlan.from_fraction(100, 0.5, 10, 0).rounds == 0
    with pytest.raises(ValueError):
        StagePlan.from_fraction(100, 1.5, 10, 1)


def test_the_base_model_sets_the_round_length_and_realism_weight_unless_given():
    from iddm.diffusion import load_backbone
    from iddm.schedule.trainer import resolve_options

    def resolved(model: str, **options) -> tuple[int, float, int]:
        config = build_config(PersonalizeConfig, {"photos": "p", "output_dir": "o", "privacy": "high", **options})
        settings = resolve_privacy(resolve_options(config, load_backbone(model)).privacy_config)
        return settings.round_steps, settings.lambda_natural, settings.delta_grid

    assert resolved("iddm:face-prior-128") == (125, 1.0, 16)  # measured there: docs/results/frontier_128_cfp.md
    assert resolved("iddm:face-prior-128", lambda_natural=0.0, round_steps=10, delta_grid=0) == (10, 0.0, 0)
    assert resolved("iddm:micro") == (50, 0.0, 0)


def test_schedule_runs_the_configured_rounds_and_writes_audit_outputs(train_dir, tmp_path):
    out = tmp_path / "iddm"
    personalize(_config(train_dir, out, privacy="high", round_steps=2, stage1_fraction=0.67, data_steps=2))
    log = json.loads((out / "private" / "iddm_log.json").read_text())
    assert log["plan"] == {"total_steps": 6, "round_steps": 2, "rounds": 2, "data_steps": 2}
    assert [r["step"] for r in log["rounds"]] == [2, 4]
    for record in log["rounds"]:
        assert set(record["surrogate_cos_x0"]) == set(record["surrogate_cos_data"]) == {"sface"}
        assert record["linf"] <= 16 / 255 + 1e-6 and record["psnr_db"] > 20 and 0 < record["ssim"] <= 1
    decoupled = sorted((out / "private" / "decoupled_photos").glob("*.png"))
    assert [p.stem for p in decoupled] == sorted(p.stem for p in train_dir.iterdir())
    with Image.open(decoupled[0]) as image:
        assert image.size == (32, 32) and not image.getexif()
    assert (out / "private" / "iddm_log.png").is_file()
    card = (out / "model" / "README.md").read_text()
    assert "White-box face recognition surrogates" in card and "sface" in card
    assert "faces reshaped by up to 3 px per 64 px" in card  # the knob's warp at high
    run = json.loads((out / "iddm_run.json").read_text())
    assert run["model"]["surrogates"] == ["sface"] and run["model"]["privacy"]["label"] == "high"


@pytest.mark.parametrize("warp", [0.0, 2.0])
def test_resume_in_stage1_equals_uninterrupted(warp, train_dir, tmp_path):
    settings = dict(privacy="high", round_steps=2, stage1_fraction=0.67, data_steps=2, checkpointing_steps=2)
    settings["warp"] = warp
    full = tmp_path / "full"
    personalize(_config(train_dir, full, **settings, checkpoints_total_limit=None))
    partial = tmp_path / "partial"
    partial.mkdir()
    # Only checkpoint-2 survives: resume from inside Stage 1, with δ (and the warp) restored from the checkpoint.
    shutil.copytree(full / "checkpoint-2", partial / "checkpoint-2")
    personalize(_config(train_dir, partial, **settings, resume_from_checkpoint="latest"))
    a, b = _weights(full), _weights(partial)
    assert all(torch.equal(a[k], b[k]) for k in a)
    for path in (full / "private" / "decoupled_photos").glob("*.png"):
        resumed = partial / "private" / "decoupled_photos" / path.name
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(resumed)))


def test_a_warp_reshapes_the_faces_within_its_budget(photos64, tmp_path):
    # A negligible δ budget: whatever lowers the identity loss here is the warp.
    settings = _settings(privacy="high", eot=[], lambda_gen=0.0, epsilon=1e-6, warp=2.0, warp_grid=4)
    optimizer = build_data_optimizer(settings, photos64, torch.device("cpu"))
    clean, indices = photos64.images, torch.arange(len(photos64.images))
    assert optimizer.perturbation.flow.shape == (len(clean), 2, 4, 4)  # --warp_grid control points
    before, _ = optimizer.identity(clean, indices)
    record = optimizer.run_round(PixelBackbone.from_scratch(64), clean, "p", 4, torch.Generator().manual_seed(0))
    perturbation = optimizer.perturbation
    after, _ = optimizer.identity(perturbation.perturbed(clean), indices)
    assert after.item() < before.item() - 0.01
    assert perturbation.delta.abs().max() <= 2e-6 and 0 < record["warp_px"] <= 2.0 and record["psnr_db"] < 60
    # The warp is saved with δ and restores the same photos (a run's --perturbation_from reads this file).
    perturbation.save(tmp_path / "delta.safetensors")
    assert set(load_file(tmp_path / "delta.safetensors")) == {"delta", "flow"}
    restored = type(perturbation)(clean.shape, torch.device("cpu"))
    restored.load(tmp_path / "delta.safetensors")
    assert torch.equal(restored.perturbed(clean), perturbation.perturbed(clean))


def test_the_shape_limit_keeps_the_warped_faces_within_a_real_face_shape(photos64):
    """The 68 points follow the warp (a shift moves them by the shift), and with --shape_limit a large warp that
    lowers the identity loss leaves every photo's warped face shape within its cap, which it exceeds without."""
    from iddm.decouple.shape_limit import warped_points

    size = tuple(photos64.images.shape[-2:])
    shift = torch.tensor([1.5, -1.0]).view(1, 2, 1, 1).expand(len(photos64), 2, 8, 8)
    points = torch.rand(len(photos64), 68, 2) * 40 + 12
    torch.testing.assert_close(warped_points(shift, points, size), points - torch.tensor([1.5, -1.0]))
    runs = {}
    for limit in (0.0, 1.0):
        settings = _settings(privacy="high", eot=[], lambda_gen=0.0, epsilon=1e-6, warp=4.0, shape_limit=limit)
        optimizer = build_data_optimizer(settings, photos64, torch.device("cpu"))
        record = optimizer.run_round(
            PixelBackbone.from_scratch(64), photos64.images, "p", 4, torch.Generator().manual_seed(0)
        )
        runs[limit] = (optimizer, record)
    unlimited, (limited, record) = runs[0.0][0], runs[1.0]
    assert unlimited.shape_limit is None and "warped_shape_distance" not in runs[0.0][1]
    caps = limited.shape_limit.caps
    assert torch.all(caps >= 1.0)
    free = limited.shape_limit.distances(unlimited.perturbation.flow, size)
    held = limited.shape_limit.distances(limited.perturbation.flow, size)
    assert torch.any(free > caps + 0.05) and torch.all(held <= caps + 0.01), (free, held, caps)
    assert record["warped_shape_distance"] == pytest.approx(float(held.mean()), abs=1e-4) and record["warp_px"] > 0


def test_a_shared_perturbation_gives_every_photo_the_same_change_within_the_shape_limit(photos64, tmp_path):
    """--shared_perturbation holds one δ grid and one warp for all the aligned photos: every photo gets the same
    change (the δ added and the field that moves it), it still lowers the identity loss, the shape limit holds for
    every photo's face, and it saves and restores as one row."""
    settings = _settings(
        privacy="high",
        eot=[],
        lambda_gen=0.0,
        warp=3.0,
        warp_grid=4,
        delta_grid=8,
        shape_limit=1.0,
        shared_perturbation=True,
        step_size=4 / 255,
    )
    optimizer = build_data_optimizer(settings, photos64, torch.device("cpu"))
    clean, indices = photos64.images, torch.arange(len(photos64.images))
    before, _ = optimizer.identity(clean, indices)
    optimizer.run_round(PixelBackbone.from_scratch(64), clean, "p", 4, torch.Generator().manual_seed(0))
    perturbation = optimizer.perturbation
    assert perturbation.delta.shape == (1, 3, 8, 8) and perturbation.flow.shape == (1, 2, 4, 4)
    assert perturbation.delta.abs().max() > 0 and perturbation.flow.abs().max() > 0
    # The same field moves a uniform image identically in every row: one change, not one per photo.
    grey = torch.full_like(clean, 0.5)
    grey[..., ::8, :] = 0.0
    moved = perturbation.perturbed(grey)
    assert all(torch.allclose(moved[0], row, atol=1e-6) for row in moved[1:])
    after, _ = optimizer.identity(perturbation.perturbed(clean), indices)
    assert after.item() < before.item() - 0.01
    size = tuple(clean.shape[-2:])
    held = optimizer.shape_limit.distances(perturbation.flow, size)
    assert held.shape == (len(clean),) and torch.all(held <= optimizer.shape_limit.caps + 0.01)
    perturbation.save(tmp_path / "delta.safetensors")
    restored = type(perturbation)(clean.shape, torch.device("cpu"), 4, 8, shared=True)
    restored.load(tmp_path / "delta.safetensors")
    assert torch.equal(restored.perturbed(clean), perturbation.perturbed(clean))
    with pytest.raises(ValueError, match="shared_perturbation"):  # a shared δ does not load into a per-photo one
        type(perturbation)(clean.shape, torch.device("cpu"), 4, 8).load(tmp_path / "delta.safetensors")


@pytest.mark.parametrize("method", ["lora", "dreambooth"])
def test_iddm_on_tiny_stable_diffusion(method, train_dir, tmp_path):
    tiny = save_tiny_sd_pipeline(tmp_path / "tiny")
    out = tmp_path / method
    config = _config(
        train_dir,
        out,
        pretrained_model_name_or_path=str(tiny),
        method=method,
        resolution=None,
        privacy="medium",
        max_train_steps=2,
        round_steps=1,
        stage1_fraction=0.5,
        data_steps=1,
        learning_rate=1e-2,
    )
    personalize(config)
    log = json.loads((out / "private" / "iddm_log.json").read_text())
    assert len(log["rounds"]) == 1 and np.isfinite(log["rounds"][0]["surrogate_cos_x0"]["sface"])
    assert len(list((out / "private" / "decoupled_photos").glob("*.png"))) == 3
    expected = "pytorch_lora_weights.safetensors" if method == "lora" else "model_index.json"
    assert (out / "model" / expected).is_file()


def test_surrogate_must_be_differentiable(photos64):
    with pytest.raises(ValueError, match="not differentiable"):
        IdentityLoss([load_recognizer("dlib")], [1.0], photos64.images, photos64.landmarks)


def test_a_stochastic_ensemble_step_evaluates_one_surrogate_on_the_full_scale(photos64):
    settings = _settings(privacy="high", surrogates=["sface", "facenet"], surrogates_per_step=1)
    optimizer = build_data_optimizer(settings, photos64, torch.device("cpu"))
    identity = optimizer.identity
    clean, indices = photos64.images, torch.arange(len(photos64.images))
    full, cosines = identity(clean, indices)
    alone = [identity(clean, indices, only=[k]) for k in range(2)]
    # Each surrogate alone carries the ensemble's whole weight, so the two halves average to the full loss.
    assert all(list(logged) == [identity.recognizers[k].name] for k, (_, logged) in enumerate(alone))
    assert (alone[0][0] + alone[1][0]).item() / 2 == pytest.approx(full.item(), rel=1e-5)
    record = optimizer.run_round(PixelBackbone.from_scratch(64), clean, "a photo of sks person", 4, torch.Generator())
    assert set(record["surrogate_cos_x0"]) == set(cosines) and record["linf"] > 0
    assert any(np.isfinite(c) for c in record["surrogate_cos_x0"].values())


def test_a_folder_decoy_is_the_mean_of_its_photos_embeddings_orthogonal_to_the_user(
    photos64, identity_photos, tmp_path
):
    sface = load_recognizer("sface")

    def raw_embeddings(paths) -> torch.Tensor:
        photos = [load_photo(p) for p in paths]
        return torch.stack(embed_photos(sface, photos, [detect_single_face(p) for p in photos]))

    folder = tmp_path / "composite"
    folder.mkdir()
    paths = [identity_photos[name][0] for name in ("biden", "sunak")]
    for path in paths:
        shutil.copy(path, folder / Path(path).name)
    identity = build_data_optimizer(
        _settings(privacy="high", decoy=str(folder)), photos64, torch.device("cpu")
    ).identity
    # The loss keeps the part of the mean decoy orthogonal to the user's anchor.
    mean = torch.nn.functional.normalize(raw_embeddings(paths).mean(0), dim=0)
    anchor = identity.anchors["sface"]
    expected = torch.nn.functional.normalize(mean - (mean @ anchor) * anchor, dim=0)
    assert torch.allclose(identity.decoys["sface"], expected, atol=1e-4)
    assert abs(float(identity.decoys["sface"] @ anchor)) < 1e-5
    # The built-in composite: five different strangers, none of them the user. No decoy by default.
    assert _settings(privacy="high", decoy="iddm:composite").decoy == str(BUILTIN_DECOYS["iddm:composite"])
    assert _settings(privacy="high").decoy is None
    members = raw_embeddings(list_photos(BUILTIN_DECOYS["iddm:composite"]))
    assert len(members) == 5 and float((members @ members.T).triu(1).max()) < 0.363  # SFace's match threshold
    assert _settings(privacy="high", decoy="none").decoy is None
    assert _settings(privacy="high", decoy="iddm:composite", defense="noise").decoy is None  # no identity loss


def test_bf16_surrogates_agree_with_fp32(photos64):
    losses = {}
    for precision in ("fp32", "bf16"):
        settings = _settings(privacy="high", surrogates=["sface", "facenet"], surrogate_precision=precision)
        identity = build_data_optimizer(settings, photos64, torch.device("cpu")).identity
        images = (photos64.images + 0.03 * torch.randn(photos64.images.shape, generator=torch.Generator())).clamp(0, 1)
        images.requires_grad_(True)
        loss, cosines = identity(images, torch.arange(len(images)))
        (gradient,) = torch.autograd.grad(loss, images)
        losses[precision] = (loss.item(), cosines, gradient.sign())
    (fp32, cos32, sign32), (bf16, cos16, sign16) = losses["fp32"], losses["bf16"]
    assert all(abs(cos32[name] - cos16[name]) < 0.03 for name in cos32)
    assert abs(fp32 - bf16) < 0.03
    # A signed-gradient step moves (almost) every pixel the same way in either precision.
    assert (sign32 == sign16).float().mean() > 0.8
