"""The core math against references: x̂0 against an oracle UNet, timestep draws, the differentiable JPEG
against PIL, the ASPL objective's sign, the calibrated identity hinge and Stage 2's model-side term."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from iddm.config import build_config
from iddm.decouple import ObjectiveInputs, build_data_optimizer, identity_terms, resolve_privacy
from iddm.decouple.objective import aspl_objective, limit_chroma, warp
from iddm.decouple.transforms import EOT_TRANSFORMS, differentiable_jpeg, jitter_faces, sample_transform
from iddm.diffusion import PixelBackbone, prepare_photos
from iddm.diffusion.objectives import latent_keep_mask, predicted_x0, training_target, uniform_timesteps
from iddm.faces import detect_single_face, impostor_statistics
from iddm.images import load_photo
from iddm.schedule import PersonalizeConfig, personalize


class OracleUNet(torch.nn.Module):
    """Knows the clean sample ``x0`` and returns the exact target of ``prediction_type`` for any noisy input."""

    def __init__(self, x0: torch.Tensor, alphas_cumprod: torch.Tensor, prediction_type: str):
        super().__init__()
        self.x0, self.alphas_cumprod, self.prediction_type = x0, alphas_cumprod, prediction_type
        self.config = SimpleNamespace(sample_size=x0.shape[-1], in_channels=x0.shape[1])
        self.seen_timesteps: list[int] = []

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def forward(self, noisy, timesteps, hidden_states):
        self.seen_timesteps += timesteps.tolist()
        a = self.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        noise = (noisy - a.sqrt() * self.x0) / (1 - a).sqrt()
        return SimpleNamespace(sample=training_target(self.prediction_type, self.x0, noise, a.view(-1)))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_denoised_estimate_recovers_x0_from_an_oracle_unet(prediction_type):
    backbone = PixelBackbone.from_scratch(32)
    backbone.noise_scheduler.register_to_config(prediction_type=prediction_type)
    images = torch.rand(3, 3, 32, 32)
    oracle = OracleUNet(images * 2 - 1, backbone.noise_scheduler.alphas_cumprod, prediction_type)
    backbone.unet = oracle
    estimate = backbone.denoised_estimate(
        images, backbone.encode_prompts(["p"] * 3), torch.Generator().manual_seed(0), max_timestep=900
    )
    torch.testing.assert_close(estimate, images, atol=2e-4, rtol=0)
    assert max(oracle.seen_timesteps) < 900


def test_predicted_x0_inverts_each_training_target():
    x0, noise = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8)
    alpha_bar = torch.tensor([0.999, 0.7, 0.3, 0.01])
    a = alpha_bar.view(-1, 1, 1, 1)
    noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
    for kind in ("epsilon", "v_prediction", "sample"):
        target = training_target(kind, x0, noise, alpha_bar)
        torch.testing.assert_close(predicted_x0(kind, noisy, target, alpha_bar), x0, atol=5e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="Unsupported prediction_type 'flow'"):
        training_target("flow", x0, noise, alpha_bar)


def test_timesteps_are_uniform_below_any_bound():
    # The earlier draw, `t % max_timestep` over [0, 1000), favoured small t unless max_timestep divided 1000.
    draws = uniform_timesteps(70_000, 7, torch.Generator().manual_seed(0))
    counts = np.bincount(draws.numpy(), minlength=7)
    assert draws.min() == 0 and draws.max() == 6
    assert np.abs(counts / counts.sum() - 1 / 7).max() < 0.01


@pytest.mark.parametrize("quality", [50, 75, 90])
def test_differentiable_jpeg_approximates_pil(quality):
    photo = load_photo(Path(__file__).parent / "fixtures" / "photos" / "obama_1.jpg")
    image = np.asarray(Image.fromarray(photo).resize((128, 128)))
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality, subsampling=2)
    pil = np.asarray(Image.open(buffer)).astype(np.float64) / 255
    original = image.astype(np.float64) / 255
    ours = differentiable_jpeg(torch.from_numpy(original).permute(2, 0, 1)[None].float(), quality)
    ours = ours[0].permute(1, 2, 0).double().numpy()
    pil_change, our_change = np.abs(original - pil).mean(), np.abs(original - ours).mean()
    assert np.abs(ours - pil).mean() < 0.7 * pil_change  # closer to PIL's output than the original is
    assert abs(our_change - pil_change) < 0.2 * pil_change  # and it removes about as much as PIL does


def test_face_jitter_moves_the_face_within_its_amplitude():
    photo = load_photo(Path(__file__).parent / "fixtures" / "photos" / "obama_1.jpg")
    image = np.array(Image.fromarray(photo).resize((128, 128)))
    images = torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255).repeat(6, 1, 1, 1)
    clean = detect_single_face(image).landmarks
    amplitude = 0.1
    jittered = jitter_faces(images, amplitude, torch.Generator().manual_seed(0))
    assert torch.equal(jitter_faces(images, amplitude, torch.Generator().manual_seed(0)), jittered)
    assert torch.equal(jitter_faces(images, 0.0, torch.Generator()), images)
    moved = []
    for frame in jittered:
        crop = (frame.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        moved.append(np.linalg.norm(detect_single_face(crop).landmarks - clean, axis=1).max())
    # Bound from the draws' ranges (pixels of a 128 px image): |s R p - p| + s |t| with |p| <= sqrt(2) half-widths.
    bound = ((amplitude + np.radians(60) * amplitude) * np.sqrt(2) + (1 + amplitude) * amplitude * np.sqrt(2)) * 64
    assert max(moved) < bound + 2  # + the detector's own landmark noise
    assert np.mean(moved) > 2  # and it does move the face
    # Composed with a robustness transform, still differentiable and shape-preserving.
    x = images.clone().requires_grad_(True)
    out = sample_transform(["blur"], torch.Generator().manual_seed(1), jitter=amplitude)(x)
    out.sum().backward()
    assert out.shape == x.shape and x.grad.abs().sum() > 0


def test_eot_blur_spans_the_purification_attack_and_scales_with_the_image():
    def spread(side: int, seed: int) -> float:
        """Variance (px²) of a blurred impulse at the centre of a ``side`` px image: the blur's sigma²."""
        impulse = torch.zeros(1, 1, side, side)
        impulse[..., side // 2, side // 2] = 1
        out = EOT_TRANSFORMS["blur"](torch.Generator().manual_seed(seed))(impulse)[0, 0]
        offsets = (torch.arange(side) - side // 2).float() ** 2
        return float((out.sum(0) * offsets).sum() / out.sum())

    sigmas = [spread(64, seed) ** 0.5 for seed in range(40)]
    assert 0.5 - 0.05 < min(sigmas) < 1.0 and 2.0 < max(sigmas) < 2.5 + 0.05  # 0.5..2.5 px at 64 px
    assert spread(512, 3) == pytest.approx(16 * spread(128, 3), rel=0.02)  # sigma x4 at 4x the side


def test_warp_moves_content_by_its_flow_and_is_differentiable():
    images = torch.rand(2, 3, 24, 32)
    assert torch.allclose(warp(images, torch.zeros(2, 2, 8, 8)), images, atol=1e-5)  # zero flow: unchanged
    flow = torch.zeros(2, 2, 8, 8)
    flow[:, 0] = 2.0  # every pixel samples 2 px to its right: the content moves 2 px left
    shifted = warp(images, flow)
    assert torch.allclose(shifted[..., :-2], images[..., 2:], atol=1e-5)
    flow = torch.zeros(2, 2, 8, 8, requires_grad=True)
    warp(images, flow).square().sum().backward()
    assert flow.grad.abs().sum() > 0


def _settings(**overrides):
    config = build_config(PersonalizeConfig, {"photos": "p", "output_dir": "o", "surrogates": ["sface"], **overrides})
    return resolve_privacy(config.privacy_config)


@pytest.fixture(scope="module")
def photos32(train_dir):
    return prepare_photos(train_dir, resolution=32)


def test_aspl_step_raises_the_personalization_loss(photos32):
    settings = _settings(privacy="high", defense="aspl", step_size=4 / 255)
    optimizer = build_data_optimizer(settings, photos32, torch.device("cpu"))
    backbone = PixelBackbone.from_scratch(32)
    clean = photos32.images
    conditioning = backbone.encode_prompts(["p"] * len(clean))

    def personalization_loss(delta: torch.Tensor) -> float:
        generator = torch.Generator().manual_seed(5)
        inputs = ObjectiveInputs(clean, backbone, conditioning, optimizer.identity, settings, generator)
        return -aspl_objective(inputs, clean, delta)[0].item()  # the same noise and timesteps every time

    before = personalization_loss(optimizer.perturbation.delta)
    optimizer.run_round(backbone, clean, "p", 3, torch.Generator().manual_seed(1))
    assert personalization_loss(optimizer.perturbation.delta) > before


def test_calibrated_loss_stops_at_the_stranger_level_the_unbounded_loss_does_not(photos32):
    cosines = torch.tensor([0.9, 0.2, 0.1, -0.3], requires_grad=True)
    terms = identity_terms(cosines, band=(0.05, 0.15))
    assert terms.tolist() == pytest.approx([0.75, 0.05, 0.0, 0.35])
    terms.sum().backward()
    assert cosines.grad.tolist() == [1.0, 1.0, 0.0, -1.0]  # nothing inside the band; pulled back up below it
    assert identity_terms(cosines.detach(), None).tolist() == pytest.approx(cosines.tolist())

    final = {}
    for loss in ("calibrated", "unbounded"):
        settings = _settings(
            privacy="high", identity_loss=loss, eot=[], jitter=0.0, decoy="none", lambda_gen=0.0, step_size=3 / 255
        )
        optimizer = build_data_optimizer(settings, photos32, torch.device("cpu"))
        generator = torch.Generator().manual_seed(0)
        optimizer.run_round(PixelBackbone.from_scratch(32), photos32.images, "p", 25, generator)
        cosines = optimizer.identity.cosines(optimizer.perturbation.perturbed(photos32.images), torch.arange(3))
        final[loss] = cosines["sface"].mean().item()
    statistics = impostor_statistics("sface")
    level, spread = statistics["anchor_impostor_mean"], statistics["anchor_impostor_std"]
    assert final["unbounded"] < level - 2 * spread  # far below a random stranger: a signal to an attacker
    assert level - 1.5 * spread < final["calibrated"] < level + 0.5 * spread  # decoupled, to a stranger


def test_low_frequency_steps_keep_the_perturbation_smooth(photos32):
    def roughness(delta: torch.Tensor) -> float:
        """Share of δ's energy above the frequencies a 4 px block average keeps."""
        smooth = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(delta, 4), size=delta.shape[-2:])
        return float((delta - smooth).pow(2).sum() / delta.pow(2).sum())

    result = {}
    for factor in (1, 4):
        settings = _settings(privacy="high", eot=[], lambda_gen=0.0, low_frequency=factor, step_size=2 / 255)
        optimizer = build_data_optimizer(settings, photos32, torch.device("cpu"))
        optimizer.run_round(PixelBackbone.from_scratch(32), photos32.images, "p", 3, torch.Generator().manual_seed(0))
        result[factor] = roughness(optimizer.perturbation.delta)
    assert result[4] < 0.5 * result[1]


def test_grid_perturbation_is_smooth_bounded_and_decouples(photos32):
    """δ held on an 8x8 grid: full-resolution δ is a smooth upsampling within ε, saved on its grid, and its data
    steps still lower the surrogate's cosine to the user."""
    images, indices = photos32.images, torch.arange(3)
    roughness, cosine = {}, {}
    for grid in (0, 8):
        settings = _settings(privacy="high", eot=[], lambda_gen=0.0, delta_grid=grid, warp=0.0, step_size=4 / 255)
        optimizer = build_data_optimizer(settings, photos32, torch.device("cpu"))
        optimizer.run_round(PixelBackbone.from_scratch(32), images, "p", 6, torch.Generator().manual_seed(0))
        perturbation = optimizer.perturbation
        full = perturbation.full(perturbation.delta, images)
        assert full.shape == images.shape and 0 < full.abs().max() <= settings.epsilon + 1e-7
        roughness[grid] = float((full[..., 1:] - full[..., :-1]).abs().mean() / full.abs().mean())
        cosine[grid] = optimizer.identity.cosines(perturbation.perturbed(images), indices)["sface"].mean().item()
    assert perturbation.state()["delta"].shape == (3, 3, 8, 8)
    assert roughness[8] < 0.3 * roughness[0]  # shading, not pixel-to-pixel texture
    assert cosine[8] < optimizer.identity.cosines(images, indices)["sface"].mean().item() - 0.02


def test_chroma_limit_keeps_the_perturbation_grey_and_still_decouples(photos32):
    """``delta_chroma`` bounds δ's colour part (its difference from the channels' grey mean): 0 gives a grey δ, which
    cannot shift hue or skin tone, and its data steps still lower the surrogate's cosine to the user."""
    images, indices = photos32.images, torch.arange(3)
    for chroma in (0.0, 0.25):
        settings = _settings(
            privacy="high", eot=[], lambda_gen=0.0, delta_grid=8, delta_chroma=chroma, warp=0.0, step_size=4 / 255
        )
        optimizer = build_data_optimizer(settings, photos32, torch.device("cpu"))
        optimizer.run_round(PixelBackbone.from_scratch(32), images, "p", 6, torch.Generator().manual_seed(0))
        delta = optimizer.perturbation.delta
        colour = (delta - delta.mean(dim=1, keepdim=True)).abs().max().item()
        assert colour <= chroma * settings.epsilon + 1e-7 and delta.abs().max() > 0.5 * settings.epsilon
        cosine = optimizer.identity.cosines(optimizer.perturbation.perturbed(images), indices)["sface"].mean().item()
        assert cosine < optimizer.identity.cosines(images, indices)["sface"].mean().item() - 0.02
    unlimited = limit_chroma(torch.tensor([[0.03, -0.03, 0.0]]).view(1, 3, 1, 1), 1.0)
    assert torch.equal(unlimited.flatten(), torch.tensor([0.03, -0.03, 0.0]))  # below the bound: unchanged


def test_naturalness_term_moves_the_photos_where_the_model_denoises_well(photos32):
    """λ_nat alone lowers the model's denoising loss on the decoupled photos; ASPL, its opposite, raises it."""
    backbone = PixelBackbone.from_scratch(32)
    conditioning = backbone.encode_prompts(["p"] * 3)

    def denoising_loss(images: torch.Tensor) -> float:
        with torch.no_grad():
            draws = [backbone.training_loss(images, conditioning, torch.Generator().manual_seed(s)) for s in range(8)]
        return float(torch.cat(draws).mean())

    losses = {}
    for name, overrides in {
        "natural": {"lambda_natural": 1.0, "lambda_gen": 0.0, "lambda_data": 0.0},
        "aspl": {"defense": "aspl"},
    }.items():
        settings = _settings(privacy="high", eot=[], warp=0.0, step_size=4 / 255, **overrides)
        optimizer = build_data_optimizer(settings, photos32, torch.device("cpu"))
        record = optimizer.run_round(backbone, photos32.images, "p", 8, torch.Generator().manual_seed(0))
        assert record["linf"] > 0
        losses[name] = denoising_loss(optimizer.perturbation.perturbed(photos32.images))
    assert losses["natural"] < denoising_loss(photos32.images) < losses["aspl"]


def test_stage2_model_side_term_changes_training(train_dir, tmp_path):
    common = {
        "photos": train_dir, "pretrained_model_name_or_path": "iddm:micro", "resolution": 32, "max_train_steps": 4,
        "train_batch_size": 2, "checkpointing_steps": 0,
        "validation_steps": 0, "num_validation_images": 1, "num_inference_steps": 1, "surrogates": ["sface"],
        "eot": [], "privacy": "high", "round_steps": 2, "stage1_fraction": 0.5, "data_steps": 1,
    }  # fmt: skip
    for name, weight in (("without", 0.0), ("with", 5.0)):
        personalize(build_config(PersonalizeConfig, {**common, "output_dir": tmp_path / name, "lambda_model": weight}))
    weights = [load_file(tmp_path / n / "model/unet/diffusion_pytorch_model.safetensors") for n in ("without", "with")]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_latent_keep_mask_drops_cells_that_touch_uncovered_pixels():
    coverage = torch.ones(2, 1, 16, 16)
    coverage[0, :, :3] = 0  # the top three pixel rows: mirrored border
    coverage[1, :, :, -1] = 0
    keep = latent_keep_mask(coverage, (4, 4))
    assert keep.shape == (2, 1, 4, 4)
    assert keep[0, 0, 0].eq(0).all() and keep[0, 0, 1:].eq(1).all()
    assert keep[1, 0, :, -1].eq(0).all() and keep[1, 0, :, :-1].eq(1).all()
    with pytest.raises(ValueError, match="does not divide 16x16"):
        latent_keep_mask(coverage, (3, 3))


def test_training_loss_ignores_errors_on_the_mirrored_border():
    backbone = PixelBackbone.from_scratch(32)
    images = torch.rand(2, 3, 32, 32)
    oracle = OracleUNet(images * 2 - 1, backbone.noise_scheduler.alphas_cumprod, "epsilon")

    def wrong_on_top(noisy, timesteps, hidden_states):
        output = OracleUNet.forward(oracle, noisy, timesteps, hidden_states)
        output.sample[:, :, :8] += 1.0  # errs only where the crop is mirrored border
        return output

    backbone.unet = oracle
    oracle.forward = wrong_on_top
    conditioning = backbone.encode_prompts(["p"] * 2)
    coverage = torch.ones(2, 1, 32, 32)
    coverage[:, :, :8] = 0

    def loss(cover):
        return backbone.training_loss(images, conditioning, torch.Generator().manual_seed(0), coverage=cover)

    assert loss(None).min() > 0.2
    assert loss(coverage).max() < 1e-6
    torch.testing.assert_close(loss(torch.ones(2, 1, 32, 32)), loss(None))
