"""Imperceptibility of a perturbed image: PSNR and SSIM against the clean one (one implementation for all of iddm).

Images are RGB ``(H, W, 3)``, either ``uint8`` in ``0..255`` or float in ``[0, 1]`` (numpy, or torch
``(3, H, W)`` tensors, which are moved to the CPU and transposed); both are converted to float64 in
``[0, 1]`` first, so a ``uint8`` image and its float copy score the same.

SSIM uses the settings of Wang et al. (IEEE TIP 2004): Gaussian window sigma 1.5, population
covariance, averaged over the RGB channels (``skimage.metrics.structural_similarity``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def to_float01(image: Any, name: str = "image") -> np.ndarray:
    """An RGB image as float64 ``(H, W, 3)`` in ``[0, 1]``.

    Args:
        image: ``(H, W, 3)`` ``uint8`` in ``0..255``, or float in ``[0, 1]``; or a torch ``(3, H, W)`` float tensor.
    """
    if hasattr(image, "detach"):  # a torch (3, H, W) tensor, without importing torch here
        image = image.detach().float().cpu().permute(1, 2, 0).numpy()
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"{name} must be an RGB array of shape (H, W, 3), got {array.shape}.")
    if array.dtype == np.uint8:
        return array.astype(np.float64) / 255.0
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"{name} must be uint8 (0..255) or float ([0, 1]), got dtype {array.dtype}.")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains nan or inf values.")
    if array.min() < -1e-6 or array.max() > 1 + 1e-6:
        raise ValueError(
            f"float {name} must lie in [0, 1], got [{array.min():.3g}, {array.max():.3g}]; "
            "divide 0..255 images by 255 or pass them as uint8."
        )
    return np.clip(array, 0.0, 1.0)


def psnr(a: Any, b: Any) -> float:
    """Peak signal-to-noise ratio in dB, with peak 1.0 on the ``[0, 1]`` scale (= 255 for ``uint8``).

    ``10 * log10(1 / MSE)`` over all pixels and channels; ``inf`` for identical images.
    """
    from skimage.metrics import peak_signal_noise_ratio

    x, y = _pair(a, b)
    if np.array_equal(x, y):
        return math.inf
    return float(peak_signal_noise_ratio(x, y, data_range=1.0))


def ssim(a: Any, b: Any) -> float:
    """Structural similarity in ``[-1, 1]`` (1.0 for identical images); both images at least 7x7."""
    from skimage.metrics import structural_similarity

    x, y = _pair(a, b)
    if min(x.shape[:2]) < 7:
        raise ValueError(f"SSIM needs images of at least 7x7 px, got {x.shape[1]}x{x.shape[0]}.")
    return float(
        structural_similarity(
            x, y, data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
        )
    )


def mean_psnr_ssim(images_a: Sequence[Any], images_b: Sequence[Any]) -> tuple[float, float]:
    """Mean per-pair PSNR (dB) and mean SSIM of two equally long lists of images (e.g. ``X`` and ``X + delta``).

    PSNR is averaged per pair (not computed from the pooled MSE), so it is ``inf`` when any pair is
    identical (e.g. privacy 0, where ``delta = 0``). Raises on empty or unequal lists.
    """
    if len(images_a) != len(images_b):
        raise ValueError(f"Need as many images in both lists, got {len(images_a)} and {len(images_b)}.")
    if len(images_a) == 0:
        raise ValueError("No images to compare.")
    psnrs = [psnr(a, b) for a, b in zip(images_a, images_b)]
    ssims = [ssim(a, b) for a, b in zip(images_a, images_b)]
    return float(np.mean(psnrs)), float(np.mean(ssims))


def _pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    x, y = to_float01(a, "a"), to_float01(b, "b")
    if x.shape != y.shape:
        raise ValueError(
            f"Images differ in shape: {x.shape} vs {y.shape}; compare an image with its own perturbation."
        )
    return x, y
