"""Differentiable robustness transforms for expectation over transformation (EOT).

Social platforms re-encode, resize and smooth uploaded images; a perturbation that only works on
pristine pixels is worthless there. Each data step draws one of these transforms and optimizes
through it. All take and return ``(N, 3, H, W)`` float images in ``[0, 1]`` of unchanged size, so the
fixed face alignment of the clean photos still applies.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

Transform = Callable[[torch.Tensor], torch.Tensor]

# ITU-T T.81 Annex K quantization tables (luminance, chrominance).
_LUMA_TABLE = [
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
]  # fmt: skip
_CHROMA_TABLE = [
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99] + [99] * 32  # fmt: skip


def _dct_matrix(size: int = 8) -> torch.Tensor:
    """Orthonormal DCT-II basis ``(size, size)``: ``coefficients = D @ block @ D.T``."""
    n = torch.arange(size, dtype=torch.float64)
    basis = torch.cos((2 * n[None, :] + 1) * n[:, None] * math.pi / (2 * size))
    basis[0] /= math.sqrt(2)
    return (basis * math.sqrt(2 / size)).float()


def _quality_scale(quality: float) -> float:
    """IJG libjpeg's mapping of quality 1..100 to a quantization-table scale."""
    quality = min(max(quality, 1.0), 100.0)
    return (5000 / quality if quality < 50 else 200 - 2 * quality) / 100


def _soft_round(x: torch.Tensor) -> torch.Tensor:
    """Rounding with a useful gradient (Shin & Song, 2017): round(x) + (x - round(x))^3."""
    rounded = torch.round(x)
    return rounded + (x - rounded) ** 3


def differentiable_jpeg(images: torch.Tensor, quality: float) -> torch.Tensor:
    """Approximate JPEG compression at ``quality`` (YCbCr, 4:2:0 chroma, 8x8 DCT quantization).

    Args:
        images: ``(N, 3, H, W)`` in ``[0, 1]``; H and W are padded to multiples of 16 internally.
    """
    n, _, height, width = images.shape
    pad_h, pad_w = (-height) % 16, (-width) % 16
    x = F.pad(images, (0, pad_w, 0, pad_h), mode="replicate") * 255
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
    chroma = F.avg_pool2d(torch.stack([cb, cr], 1), 2)
    scale = _quality_scale(quality)
    dct = _dct_matrix().to(images)

    def quantize(channel: torch.Tensor, table: list[int]) -> torch.Tensor:
        q = torch.clamp(
            torch.floor(torch.tensor(table, dtype=images.dtype, device=images.device) * scale + 0.5), min=1
        )
        h, w = channel.shape[-2:]
        blocks = channel.reshape(-1, h // 8, 8, w // 8, 8).transpose(2, 3) - 128
        coefficients = dct @ blocks @ dct.T
        coefficients = _soft_round(coefficients / q.view(8, 8)) * q.view(8, 8)
        restored = dct.T @ coefficients @ dct + 128
        return restored.transpose(2, 3).reshape(channel.shape)

    y = quantize(y, _LUMA_TABLE)
    cb_cr = torch.stack([quantize(chroma[:, 0], _CHROMA_TABLE), quantize(chroma[:, 1], _CHROMA_TABLE)], 1)
    cb, cr = F.interpolate(cb_cr, scale_factor=2, mode="nearest").unbind(1)
    r = y + 1.402 * (cr - 128)
    g = y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128)
    b = y + 1.772 * (cb - 128)
    out = torch.stack([r, g, b], 1)[:, :, :height, :width] / 255
    return out.clamp(0, 1)


def down_up_resize(images: torch.Tensor, scale: float) -> torch.Tensor:
    """Downscale by ``scale`` (antialiased) and back up: a platform thumbnail viewed at full size."""
    height, width = images.shape[-2:]
    small = F.interpolate(
        images, size=(max(8, round(height * scale)), max(8, round(width * scale))), mode="bilinear", antialias=True
    )
    return F.interpolate(small, size=(height, width), mode="bilinear", align_corners=False)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding; ``sigma`` in pixels."""
    radius = max(1, int(math.ceil(3 * sigma)))
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).view(1, 1, 1, -1).repeat(images.shape[1], 1, 1, 1)
    x = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel, groups=images.shape[1])
    return F.conv2d(x, kernel.transpose(2, 3), groups=images.shape[1])


def _random_jpeg(generator: torch.Generator) -> Transform:
    quality = float(torch.randint(50, 96, (1,), generator=generator))
    return lambda x: differentiable_jpeg(x, quality)


def _random_resize(generator: torch.Generator) -> Transform:
    scale = 0.5 + 0.4 * float(torch.rand(1, generator=generator))
    return lambda x: down_up_resize(x, scale)


def _random_blur(generator: torch.Generator) -> Transform:
    sigma = 0.5 + 2 * float(torch.rand(1, generator=generator))
    # Relative to a 64-px image: the blur that wipes out a perturbation scales with the resolution.
    return lambda x: gaussian_blur(x, sigma * min(x.shape[-2:]) / 64)


EOT_TRANSFORMS: dict[str, Callable[[torch.Generator], Transform]] = {
    "jpeg": _random_jpeg,  # quality 50..95
    "resize": _random_resize,  # down to 0.5..0.9 and back
    "blur": _random_blur,  # sigma 0.5..2.5 px per 64 px of image side (the purification attack's range)
}
"""Name -> factory drawing that transform's random strength from a generator."""


def jitter_faces(images: torch.Tensor, amplitude: float, generator: torch.Generator) -> torch.Tensor:
    """Move each face a little against the fixed crop: a random similarity transform per image.

    Scale ``1 ± a``, rotation ``± 60·a`` degrees and shift ``± a/2`` of the image size, each uniform,
    with ``a = amplitude`` (reflected borders). An attacker's FR pipeline aligns faces its own way; a
    perturbation tuned to one exact crop transfers worse (input diversity, Xie et al. 2019).

    Args:
        images: ``(N, 3, H, W)`` in ``[0, 1]``.
        amplitude: ``a`` in ``[0, 1)``; 0 returns ``images`` unchanged.
        generator: CPU generator for the draws.
    """
    if amplitude <= 0:
        return images
    uniform = (torch.rand((len(images), 4), generator=generator) * 2 - 1).to(images)
    scale = 1 + amplitude * uniform[:, 0]
    angle = math.radians(60) * amplitude * uniform[:, 1]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    shift = amplitude * uniform[:, 2:]
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def sample_transform(names: list[str] | tuple[str, ...], generator: torch.Generator, jitter: float = 0.0) -> Transform:
    """Draw the identity or one of ``names`` (uniformly) with a random strength, after a face jitter of
    amplitude ``jitter`` (:func:`jitter_faces`; 0: none)."""
    unknown = sorted(set(names) - set(EOT_TRANSFORMS))
    if unknown:
        raise ValueError(f"Unknown EOT transform(s) {unknown}; known: {sorted(EOT_TRANSFORMS)}.")
    choice = int(torch.randint(0, len(names) + 1, (1,), generator=generator))
    robustness = (lambda x: x) if choice == len(names) else EOT_TRANSFORMS[names[choice]](generator)
    if jitter <= 0:
        return robustness
    return lambda x: robustness(jitter_faces(x, jitter, generator))
