"""TAEF2, the tiny autoencoder distilled from the FLUX.2 VAE, as a diffusers model with ``AutoencoderKL``'s interface.

Written from the architecture description of TAEF2 (Ollin Boer Bohan, madebyollin/taesd, MIT): it is not
loadable by diffusers' ``AutoencoderTiny`` because three middle blocks carry an extra 1x1 "pool" branch.
Images of ``R x R x 3`` map to ``R/8 x R/8 x 32`` latents and back (128 px -> 16x16x32).

:class:`TinyFluxAutoencoder` keeps the ``AutoencoderKL`` calling convention that Stable Diffusion code uses:
``encode(x)`` takes images in ``[-1, 1]`` and returns ``.latent_dist`` (a point mass: TAEF2 is deterministic),
``decode(z)`` returns ``.sample`` in about ``[-1, 1]``, and ``config.scaling_factor`` scales latents for the
UNet. Both directions are differentiable, so IDDM's data step optimizes through them as through SD's VAE.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from iddm.images import file_sha256
from iddm.weights import write_manifest

TAEF2_SHA256 = {
    "taef2_encoder.pth": "10a4e1021e89d7551eaf161352da8dbd0b1aa83872ae28b150c1df1ce2f147b6",
    "taef2_decoder.pth": "0a44a31e1ae59eb9dbf9359d24942fd3ef5928162c1800d97a28c61d51be0ab5",
}
"""SHA-256 of the upstream fp16 state dicts (madebyollin/taesd commit 5cccb12d) that :func:`convert_taef2` reads."""

# diffusers' pipeline loader looks ModelMixin up in the module that model_index.json names.
__all__ = [
    "TAEF2_SHA256",
    "ModelMixin",
    "TinyFluxAutoencoder",
    "convert_taef2",
    "save_taef2",
]  # ModelMixin: diffusers' loader


def _conv(c_in: int, c_out: int, bias: bool = True, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)


class Block(nn.Module):
    """``ReLU(conv(ReLU(conv(ReLU(conv(x))))) + x)``; with ``pool``, first ``x = x + pool(x)`` (1x1 convs, GroupNorm).

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``.
    """

    def __init__(self, channels: int, pool: bool = False):
        super().__init__()
        self.pool = (
            nn.Sequential(
                nn.Conv2d(channels, 4 * channels, 1, bias=False),
                nn.GroupNorm(4, 4 * channels),
                nn.ReLU(),
                nn.Conv2d(4 * channels, channels, 1, bias=False),
            )
            if pool
            else None
        )
        self.conv = nn.Sequential(
            _conv(channels, channels), nn.ReLU(), _conv(channels, channels), nn.ReLU(), _conv(channels, channels)
        )
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + x)


class Clamp(nn.Module):
    """Soft clamp of latents to ``(-3, 3)``: ``tanh(x / 3) * 3``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


def build_encoder(width: int = 64, latent_channels: int = 32) -> nn.Sequential:
    """``(B, 3, R, R)`` RGB in ``[0, 1]`` -> ``(B, latent_channels, R/8, R/8)``; indices match the upstream keys."""
    layers: list[nn.Module] = [_conv(3, width), Block(width)]
    for level in range(3):
        layers.append(_conv(width, width, bias=False, stride=2))
        layers += [Block(width, pool=level == 2) for _ in range(3)]
    layers.append(_conv(width, latent_channels))
    return nn.Sequential(*layers)


def build_decoder(width: int = 64, latent_channels: int = 32) -> nn.Sequential:
    """``(B, latent_channels, r, r)`` -> ``(B, 3, 8r, 8r)`` RGB in about ``[0, 1]``; indices match upstream."""
    layers: list[nn.Module] = [Clamp(), _conv(latent_channels, width), nn.ReLU()]
    for level in range(3):
        layers += [Block(width, pool=level == 0) for _ in range(3)]
        layers += [nn.Upsample(scale_factor=2), _conv(width, width, bias=False)]
    layers += [Block(width), _conv(width, 3)]
    return nn.Sequential(*layers)


class PointLatent:
    """The ``latent_dist`` of a deterministic encoder: ``mean`` is the latent, ``std`` zero, every draw the mean."""

    def __init__(self, latents: torch.Tensor):
        self.mean = latents
        self.std = torch.zeros_like(latents)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.mean

    def mode(self) -> torch.Tensor:
        return self.mean


@dataclass
class TinyEncoderOutput(BaseOutput):
    latent_dist: PointLatent


@dataclass
class TinyDecoderOutput(BaseOutput):
    sample: torch.Tensor


class TinyFluxAutoencoder(ModelMixin, ConfigMixin):
    """TAEF2 with ``AutoencoderKL``'s interface (images in ``[-1, 1]``, ``latent_dist``, ``.sample``).

    Args:
        latent_channels: latent channels (32 for TAEF2).
        width: channels of every inner convolution (64 for TAEF2).
        block_out_channels: only its length is read (by diffusers' pipelines and iddm: the downsampling factor is
            ``2 ** (len - 1)`` = 8).
        scaling_factor: latents are multiplied by it before the UNet (``1 / std`` of the pretraining latents).
        latents_mean, latents_std: per-channel statistics of the raw latents; when set, ``encode`` returns
            ``(z - mean) / std`` and ``decode`` undoes it (TAEF2's channels have means from -1.2 to 1.0).
        force_upcast: whether mixed-precision code should keep this model in float32.
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 32,
        width: int = 64,
        block_out_channels: tuple[int, ...] = (64, 64, 64, 64),
        scaling_factor: float = 1.0,
        shift_factor: float | None = None,
        force_upcast: bool = False,
        sample_size: int = 128,
        latents_mean: list[float] | None = None,
        latents_std: list[float] | None = None,
    ):
        super().__init__()
        self.encoder = build_encoder(width, latent_channels)
        self.decoder = build_decoder(width, latent_channels)

    def _statistics(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.config.latents_mean is None:
            return None
        shape = (1, -1, 1, 1)
        mean = torch.tensor(self.config.latents_mean, dtype=like.dtype, device=like.device).view(shape)
        return mean, torch.tensor(self.config.latents_std, dtype=like.dtype, device=like.device).view(shape)

    def encode(self, x: torch.Tensor, return_dict: bool = True) -> TinyEncoderOutput | tuple[PointLatent]:
        """``(B, 3, R, R)`` images in ``[-1, 1]`` -> ``latent_dist`` over ``(B, C, R/8, R/8)`` (unscaled) latents,
        per-channel normalized when ``latents_mean`` is set."""
        z = self.encoder(x.add(1).div(2))
        statistics = self._statistics(z)
        dist = PointLatent(z if statistics is None else (z - statistics[0]) / statistics[1])
        return TinyEncoderOutput(latent_dist=dist) if return_dict else (dist,)

    def decode(
        self, z: torch.Tensor, return_dict: bool = True, generator: torch.Generator | None = None
    ) -> TinyDecoderOutput | tuple[torch.Tensor]:
        """``(B, C, r, r)`` unscaled latents -> ``(B, 3, 8r, 8r)`` images in about ``[-1, 1]`` (not clamped)."""
        statistics = self._statistics(z)
        if statistics is not None:
            z = z * statistics[1] + statistics[0]
        images = self.decoder(z).mul(2).sub(1)
        return TinyDecoderOutput(sample=images) if return_dict else (images,)

    def forward(self, sample: torch.Tensor, return_dict: bool = True) -> TinyDecoderOutput | tuple[torch.Tensor]:
        return self.decode(self.encode(sample).latent_dist.mean, return_dict=return_dict)


def convert_taef2(source_dir: str | Path, **config) -> TinyFluxAutoencoder:
    """A :class:`TinyFluxAutoencoder` holding the upstream ``taef2_encoder.pth`` / ``taef2_decoder.pth`` of
    ``source_dir``, each checked against :data:`TAEF2_SHA256` and loaded with ``weights_only=True`` (float32).

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: a file's SHA-256 differs, or its tensors do not fit the architecture.
    """
    source_dir = Path(source_dir)
    model = TinyFluxAutoencoder(**config)
    for name, digest in TAEF2_SHA256.items():
        path = source_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: TAEF2 weight file not found.")
        if file_sha256(path) != digest:
            raise ValueError(f"{path}: SHA-256 differs from TAEF2's ({digest[:12]}...); refusing to load it.")
        state = torch.load(path, weights_only=True, map_location="cpu")
        part = model.encoder if "encoder" in name else model.decoder
        try:
            part.load_state_dict({k: v.float() for k, v in state.items()})
        except RuntimeError as err:
            raise ValueError(f"{path} does not fit TAEF2's architecture: {str(err).splitlines()[0]}") from None
    return model.eval()


def save_taef2(source_dir: str | Path, output_dir: str | Path) -> Path:
    """Write the upstream TAEF2 of ``source_dir`` as a diffusers model folder (fp16 safetensors, loaded as float32),
    its MIT licence beside it, and a ``SHA256SUMS`` manifest: how ``iddm/weights/taef2`` was made."""
    output_dir = Path(output_dir)
    model = convert_taef2(source_dir).half()
    model.save_pretrained(output_dir, safe_serialization=True)
    licence = Path(source_dir) / "LICENSE"
    if licence.is_file():
        (output_dir / "LICENSE").write_text(licence.read_text())
    write_manifest(output_dir)
    return output_dir
