"""The data step's memory saving (gradient checkpointing, VAE slicing) leaves IDDM's perturbation unchanged."""

from __future__ import annotations

import pytest
import torch

from iddm.config import build_config
from iddm.decouple import build_data_optimizer, resolve_privacy
from iddm.decouple.memory import low_memory_data_step
from iddm.decouple.objective import OBJECTIVES, ObjectiveInputs
from iddm.diffusion import (
    MethodSettings,
    PixelBackbone,
    StableDiffusionBackbone,
    build_tiny_sd_pipeline,
    prepare_photos,
)
from iddm.schedule import PersonalizeConfig

PROMPT = "a photo of sks person"


@pytest.fixture(scope="module")
def photos64(train_dir):
    return prepare_photos(train_dir, resolution=64)


def _tiny_sd_lora() -> StableDiffusionBackbone:
    """The tiny SD pipeline with LoRA adapters, as a LoRA run has it when a data round starts (adapters moved off
    zero so that the UNet's LoRA path matters)."""
    backbone = StableDiffusionBackbone(build_tiny_sd_pipeline(seed=0, resolution=64))
    backbone.prepare_for_training(MethodSettings("lora"))
    backbone.to("cpu")
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in backbone.trainable_parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return backbone


def _settings(saving: bool, **overrides):
    values = {"photos": "p", "output_dir": "o", "privacy": "high", "surrogates": ["sface"]}
    values |= {"data_step_checkpointing": saving, **overrides}
    return resolve_privacy(build_config(PersonalizeConfig, values).privacy_config)


def _round(backbone, photos, saving: bool, steps: int = 2, **overrides) -> tuple[dict, dict[str, torch.Tensor]]:
    optimizer = build_data_optimizer(_settings(saving, **overrides), photos, torch.device("cpu"))
    record = optimizer.run_round(backbone, photos.images, PROMPT, steps, torch.Generator().manual_seed(7))
    return record, {k: v.clone() for k, v in optimizer.perturbation.state().items()}


def test_memory_saving_gives_the_same_perturbation_on_tiny_stable_diffusion(photos64, monkeypatch):
    backbone = _tiny_sd_lora()
    seen = []
    decode = backbone.to_image_space

    resnet = next(m for m in backbone.vae.decoder.modules() if type(m).__name__ == "ResnetBlock2D")

    def spy(latents):
        seen.append((backbone.unet.is_gradient_checkpointing, "forward" in vars(resnet), backbone.vae.use_slicing,
                     len(latents)))  # fmt: skip
        return decode(latents)

    monkeypatch.setattr(backbone, "to_image_space", spy)
    old_record, old = _round(backbone, photos64, saving=False)
    new_record, new = _round(backbone, photos64, saving=True)
    count = len(photos64.images)
    assert seen == [(False, False, False, count)] * 2 + [(True, True, True, count)] * 2  # decoded under the switches
    assert set(old) == {"delta", "flow"}  # high privacy: δ and the warp
    assert old["delta"].abs().max() > 0 and old["flow"].abs().max() > 0
    for name in old:
        # Signed steps: a gradient that changed sign would move a pixel by 2 step sizes; none may.
        torch.testing.assert_close(new[name], old[name], rtol=0, atol=1e-6)
    for key in ("surrogate_cos_x0_mean", "data_loss", "psnr_db", "linf"):
        assert new_record[key] == pytest.approx(old_record[key], rel=1e-5, abs=1e-6)
    # Nothing is left switched on for the personalization steps that follow.
    assert not backbone.unet.is_gradient_checkpointing and not backbone.vae.is_gradient_checkpointing
    assert not backbone.vae.use_slicing and "forward" not in vars(resnet) and backbone.to_image_space is spy


def test_memory_saving_gives_the_same_gradient_through_jitter_and_jpeg(photos64):
    """The data step's gradient on δ with and without the saving, through a face jitter and a JPEG (whose rounding
    amplifies float rounding): equal up to float rounding, so the signed step differs in almost no pixel."""
    backbone = _tiny_sd_lora()
    backbone.train(False)
    gradients = []
    for saving in (False, True):
        settings = _settings(saving, eot=["jpeg"], jitter=0.2, max_denoise_timestep=50, warp=0.0)
        optimizer = build_data_optimizer(settings, photos64, torch.device("cpu"))
        with torch.no_grad():
            conditioning = backbone.encode_prompts([PROMPT] * len(photos64))
        generator = torch.Generator().manual_seed(7)
        inputs = ObjectiveInputs(photos64.images, backbone, conditioning, optimizer.identity, settings, generator)
        delta = torch.zeros_like(photos64.images).requires_grad_(True)
        with low_memory_data_step(backbone, saving):
            loss, _ = OBJECTIVES["iddm"](inputs, photos64.images, delta)
            gradients.append(torch.autograd.grad(loss, [delta])[0])
    old, new = gradients
    assert old.abs().max() > 0
    torch.testing.assert_close(new, old, rtol=0, atol=1e-2 * float(old.abs().max()))
    assert (new.sign() != old.sign()).float().mean() < 1e-3


def test_a_failing_step_restores_the_switches_and_user_switches_stay_on():
    backbone = _tiny_sd_lora()
    backbone.unet.enable_gradient_checkpointing()  # --gradient_checkpointing
    layers = [m for m in backbone.vae.modules() if type(m).__name__ in ("ResnetBlock2D", "Attention", "Upsample2D")]
    layers += [backbone.vae.encoder, backbone.vae.decoder]
    with pytest.raises(RuntimeError, match="boom"), low_memory_data_step(backbone) as names:
        assert names == ["vae layer checkpointing", "vae slicing"]
        assert all("forward" in vars(layer) for layer in layers) and backbone.vae.use_slicing
        raise RuntimeError("boom")
    assert backbone.unet.is_gradient_checkpointing and not any("forward" in vars(layer) for layer in layers)
    assert not backbone.vae.use_slicing


def test_the_pixel_backbone_checkpoints_its_unet_only_and_keeps_its_result(photos64):
    backbone = PixelBackbone.from_scratch(64)
    with low_memory_data_step(backbone) as names:
        assert names == ["unet gradient checkpointing"]
    _, old = _round(backbone, photos64, saving=False, steps=2)
    _, new = _round(backbone, photos64, saving=True, steps=2)
    torch.testing.assert_close(new["delta"], old["delta"], rtol=0, atol=1e-6)


def test_the_iddm_objective_encodes_the_photos_once_for_both_model_terms(photos64, monkeypatch):
    """x̂0's identity term and the realism term start from one encoding (the encoder's cost, paid once) and still
    draw their own VAE samples: the loss equals the two terms computed apart on the same random stream."""
    backbone = _tiny_sd_lora()
    backbone.train(False)
    settings = _settings(False, eot=[], warp=0.0, lambda_natural=1.0, lambda_data=0.0, lambda_fid=0.0)
    optimizer = build_data_optimizer(settings, photos64, torch.device("cpu"))
    with torch.no_grad():
        conditioning = backbone.encode_prompts([PROMPT] * len(photos64))
    images = photos64.images

    def inputs(seed: int) -> ObjectiveInputs:
        generator = torch.Generator().manual_seed(seed)
        return ObjectiveInputs(images, backbone, conditioning, optimizer.identity, settings, generator)

    apart = inputs(7)
    x0 = backbone.denoised_estimate(images, conditioning, apart.generator, settings.max_denoise_timestep)
    expected = settings.lambda_gen * apart.identity_of(x0)[0]
    expected = expected + backbone.training_loss(images, conditioning, apart.generator).mean()

    calls = []
    encode = backbone.encode
    monkeypatch.setattr(backbone, "encode", lambda photos: calls.append(len(photos)) or encode(photos))
    loss, logged = OBJECTIVES["iddm"](inputs(7), images, torch.zeros_like(images))
    assert calls == [len(images)] and "natural" in logged
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
