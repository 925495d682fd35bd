"""DDIM sampling with classifier-free guidance over any :class:`~iddm.diffusion.backbone.Backbone`."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler

from iddm.diffusion.backbone import Backbone


@torch.no_grad()
def sample(
    backbone: Backbone,
    prompts: list[str],
    generator: torch.Generator,
    num_inference_steps: int = 25,
    guidance_scale: float = 1.0,
    negative_prompt: str = "",
) -> torch.Tensor:
    """DDIM samples ``(N, 3, H, W)`` in ``[0, 1]``, one per prompt; the initial noise is drawn on ``generator`` (CPU).

    ``guidance_scale == 1`` runs the conditional model alone (Song et al. 2021; Ho & Salimans 2022 for guidance).
    """
    was_training = backbone.unet.training
    backbone.train(False)
    scheduler = DDIMScheduler.from_config(backbone.noise_scheduler.config)
    scheduler.set_timesteps(num_inference_steps)
    shape = (len(prompts), *backbone.latent_shape)
    latents = torch.randn(shape, generator=generator).to(backbone.device, backbone.unet.dtype)
    latents = latents * scheduler.init_noise_sigma
    latents = denoise(backbone, scheduler, latents, scheduler.timesteps, prompts, guidance_scale, negative_prompt)
    images = backbone.to_image_space(latents).float()
    backbone.train(was_training)
    return images


@torch.no_grad()
def denoise(
    backbone: Backbone,
    scheduler: DDIMScheduler,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    prompts: list[str],
    guidance_scale: float = 1.0,
    negative_prompt: str = "",
) -> torch.Tensor:
    """Run ``scheduler`` over ``timesteps`` from ``latents`` (diffusion space, one per prompt), with classifier-free
    guidance against ``negative_prompt`` unless ``guidance_scale == 1``; returns the final latents."""
    guided = guidance_scale != 1.0
    conditioning = backbone.encode_prompts(prompts)
    if guided:
        conditioning = backbone.encode_prompts([negative_prompt] * len(prompts)).cat(conditioning)
    for t in timesteps:
        model_input = scheduler.scale_model_input(torch.cat([latents] * 2) if guided else latents, t)
        prediction = backbone.predict(model_input, t, conditioning)
        if guided:
            uncond, cond = prediction.chunk(2)
            prediction = uncond + guidance_scale * (cond - uncond)
        latents = scheduler.step(prediction, t, latents).prev_sample
    return latents
