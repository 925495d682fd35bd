"""The prior's components in Stable Diffusion's shape, built from a :class:`PretrainConfig`.

* the autoencoder: the shipped pretrained TAEF2 (``autoencoder="taef2"``: ``R x R x 3`` <-> ``R/8 x R/8 x 32``,
  128 px -> 16x16x32), or an ``AutoencoderKL`` to train (``"train"``: ``f = 2 ** (len(vae_channels) - 1)``,
  ``latent_channels``; 64 px -> 16x16x4 with the 64-px prior's settings);
* ``UNet2DConditionModel`` on those latents, cross-attending to the text encoder;
* a tiny **frozen, randomly initialized** ``CLIPTextModel`` (SD's text encoder is frozen too) with the real
  CLIP tokenizer (:func:`iddm.diffusion.tiny.build_clip_tokenizer`).
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from iddm.diffusion.taef2 import TinyFluxAutoencoder
from iddm.diffusion.tiny import CLIP_VOCAB_SIZE
from iddm.prior.config import PretrainConfig
from iddm.weights import taef2_path

TAEF2_FACTOR, TAEF2_CHANNELS = 8, 32


def vae_factor(config: PretrainConfig) -> int:
    """Downsampling factor of the autoencoder (TAEF2: 8; a trained ``AutoencoderKL``: 4 with three blocks)."""
    return TAEF2_FACTOR if config.autoencoder == "taef2" else 2 ** (len(config.vae_channels) - 1)


def latent_channels(config: PretrainConfig) -> int:
    """Latent channels of the autoencoder (TAEF2: 32; a trained one: ``config.latent_channels``)."""
    return TAEF2_CHANNELS if config.autoencoder == "taef2" else config.latent_channels


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


def build_vae(config: PretrainConfig) -> AutoencoderKL | TinyFluxAutoencoder:
    """The shipped TAEF2 (verified by SHA-256, frozen) or a fresh ``AutoencoderKL`` to train."""
    if config.autoencoder == "taef2":
        vae = TinyFluxAutoencoder.from_pretrained(taef2_path(), torch_dtype=torch.float32)
        vae.register_to_config(sample_size=config.resolution)
        return vae.requires_grad_(False).eval()
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
        in_channels=latent_channels(config),
        out_channels=latent_channels(config),
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
