"""The prior's components in Stable Diffusion's shape, built from a :class:`PretrainConfig`.

* ``AutoencoderKL``: ``R x R x 3`` images in ``[-1, 1]`` <-> ``R/f x R/f x latent_channels`` latents,
  ``f = 2 ** (len(vae_channels) - 1)`` (64 px -> 16x16x4 with the defaults);
* ``UNet2DConditionModel`` on those latents, cross-attending to the text encoder;
* a tiny **frozen, randomly initialized** ``CLIPTextModel`` (SD's text encoder is frozen too) with the real
  CLIP tokenizer (:func:`iddm.diffusion.tiny.build_clip_tokenizer`).
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from iddm.diffusion.tiny import CLIP_VOCAB_SIZE
from iddm.prior.config import PretrainConfig


def vae_factor(config: PretrainConfig) -> int:
    """Downsampling factor of the autoencoder (4 with three blocks)."""
    return 2 ** (len(config.vae_channels) - 1)


def _groups(channels: list[int]) -> int:
    """Largest GroupNorm group count in (32, 16, 8, 4, 2, 1) that divides every width."""
    return next(g for g in (32, 16, 8, 4, 2, 1) if all(c % g == 0 for c in channels))


def check_architecture(config: PretrainConfig) -> None:
    """Raise ``ValueError`` with the fix for an inconsistent architecture or resolution."""
    factor = vae_factor(config)
    if config.resolution % factor or config.resolution // factor < 2 ** (len(config.unet_channels) - 1):
        raise ValueError(
            f"--resolution {config.resolution} must be a multiple of the VAE factor {factor} and leave a latent grid "
            f"the {len(config.unet_channels)} UNet levels can halve."
        )
    bad = [level for level in config.unet_attention_levels if not 0 <= level < len(config.unet_channels)]
    if bad:
        raise ValueError(f"--unet_attention_levels {bad} out of range for {len(config.unet_channels)} UNet levels.")
    if any(c % config.unet_attention_head_dim for c in config.unet_channels):
        raise ValueError(
            f"--unet_channels {config.unet_channels} must be multiples of --unet_attention_head_dim "
            f"{config.unet_attention_head_dim}."
        )


def build_vae(config: PretrainConfig) -> AutoencoderKL:
    blocks = len(config.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * blocks,
        up_block_types=["UpDecoderBlock2D"] * blocks,
        block_out_channels=list(config.vae_channels),
        layers_per_block=config.vae_layers_per_block,
        latent_channels=config.latent_channels,
        norm_num_groups=_groups(config.vae_channels),
        sample_size=config.resolution,
    )


def build_unet(config: PretrainConfig) -> UNet2DConditionModel:
    levels = len(config.unet_channels)
    down = tuple(
        "CrossAttnDownBlock2D" if level in config.unet_attention_levels else "DownBlock2D" for level in range(levels)
    )
    up = tuple(name.replace("Down", "Up") for name in reversed(down))
    return UNet2DConditionModel(
        sample_size=config.resolution // vae_factor(config),
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,
        block_out_channels=tuple(config.unet_channels),
        layers_per_block=config.unet_layers_per_block,
        down_block_types=down,
        up_block_types=up,
        cross_attention_dim=config.text_hidden_size,
        attention_head_dim=config.unet_attention_head_dim,
        norm_num_groups=_groups(config.unet_channels),
    )


def build_text_encoder(config: PretrainConfig) -> CLIPTextModel:
    """A frozen random CLIP text encoder of width ``text_hidden_size`` over the full 49,408-token vocabulary."""
    hidden = config.text_hidden_size
    encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
            hidden_size=hidden,
            intermediate_size=hidden * 4,
            num_attention_heads=max(1, hidden // 8),
            num_hidden_layers=config.text_layers,
            vocab_size=CLIP_VOCAB_SIZE,
            max_position_embeddings=77,
            projection_dim=hidden,
        )
    )
    encoder.requires_grad_(False)
    return encoder.eval()


def build_models(config: PretrainConfig) -> tuple[AutoencoderKL, UNet2DConditionModel, CLIPTextModel]:
    """All three networks, initialized from ``config.seed`` alone (the global RNG is left as it was)."""
    check_architecture(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        vae = build_vae(config)
        unet = build_unet(config)
        text_encoder = build_text_encoder(config)
    return vae, unet, text_encoder
