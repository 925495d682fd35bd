"""Encoding the pretraining corpus once with a frozen autoencoder, cached in shards that survive a killed run.

The cache lives in ``OUTPUT/.latent-cache/<key>/shard-NNNNN.safetensors`` (hidden: not part of the prior);
``key`` covers the corpus' contents (:attr:`Corpus.fingerprint`), the crop, the mirror option and the
autoencoder's weights, so a changed corpus or autoencoder never reads stale latents. Each shard is written
atomically; a shard that does not load or has the wrong shape is encoded again (logged), never trusted.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from iddm.images import atomic_write_safetensors
from iddm.progress import progress_bar

logger = logging.getLogger(__name__)

CACHE_DIR = ".latent-cache"
SHARD_SIZE = 512
"""Crops per cache shard: a killed encoding loses at most this many."""


def module_digest(module: torch.nn.Module) -> str:
    """SHA-256 over a module's parameter and buffer names, shapes and float32 values."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def cache_key(fingerprint: str, resolution: int, margin: float, flip: bool, autoencoder_digest: str) -> str:
    """The cache folder name of one corpus x crop x autoencoder (24 hex digits)."""
    text = f"{fingerprint}|{resolution}|{margin}|{flip}|{autoencoder_digest}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _crops(images: np.ndarray, flip: bool) -> torch.Tensor:
    """``(n, R, R, 3)`` uint8 -> ``(n or 2n, 3, R, R)`` float32 in ``[-1, 1]`` (with mirrors interleaved)."""
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    return torch.stack([pixels, pixels.flip(-1)], dim=1).flatten(0, 1) if flip else pixels


def _load_shard(path: Path, expected: int, shape: tuple[int, ...]) -> torch.Tensor | None:
    try:
        latents = load_file(path)["latents"]
    except (OSError, SafetensorError, KeyError) as err:
        logger.warning("Latent cache shard %s does not load (%s): encoding it again.", path, err)
        return None
    if tuple(latents.shape) != (expected, *shape):
        logger.warning("Latent cache shard %s has shape %s: encoding it again.", path, tuple(latents.shape))
        return None
    return latents.float()


@torch.no_grad()
def encode_corpus(
    vae: torch.nn.Module,
    images: np.ndarray,
    cache_dir: Path,
    flip: bool = False,
    batch_size: int = 32,
    shard_size: int = SHARD_SIZE,
) -> torch.Tensor:
    """Unscaled latents ``(M, C, R/8, R/8)`` float32 of every crop (``M = N``, or ``2N`` with mirrors interleaved).

    Args:
        vae: a frozen autoencoder with ``AutoencoderKL``'s ``encode(x).latent_dist.mean`` (inputs in ``[-1, 1]``).
        images: ``(N, R, R, 3)`` uint8 crops.
        cache_dir: this corpus' cache folder (see :func:`cache_key`); created if missing.
        flip: also encode the mirror image of every crop.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    device = next(vae.parameters()).device
    dtype = next(vae.parameters()).dtype
    side = images.shape[1]
    shape: tuple[int, ...] | None = None
    shards = []
    starts = range(0, len(images), shard_size)
    for number, start in enumerate(progress_bar(starts, desc="encode corpus", unit="shard", leave=False)):
        chunk = images[start : start + shard_size]
        expected = len(chunk) * (2 if flip else 1)
        path = cache_dir / f"shard-{number:05d}.safetensors"
        if shape is None:
            probe = vae.encode(torch.zeros(1, 3, side, side, device=device, dtype=dtype)).latent_dist.mean
            shape = tuple(probe.shape[1:])
        latents = _load_shard(path, expected, shape) if path.is_file() else None
        if latents is None:
            pixels = _crops(chunk, flip)
            parts = [
                vae.encode(pixels[i : i + batch_size].to(device, dtype)).latent_dist.mean.float().cpu()
                for i in range(0, len(pixels), batch_size)
            ]
            latents = torch.cat(parts)
            atomic_write_safetensors(path, {"latents": latents.half().contiguous()})
            latents = latents.half().float()  # the same values a resumed run reads back
        shards.append(latents)
    return torch.cat(shards)
