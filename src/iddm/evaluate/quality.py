"""Image utility metrics: no-reference quality (BRISQUE) and imperceptibility of ``X + delta`` (PSNR, SSIM).

Images are RGB ``(H, W, 3)``, either ``uint8`` in ``0..255`` or float in ``[0, 1]``; both are
converted to float64 in ``[0, 1]`` first, so a ``uint8`` image and its float copy score the same.

BRISQUE (Mittal, Moorthy and Bovik, IEEE TIP 2012) comes from the PyPI ``brisque`` package (its
SVR model trained on LIVE). Lower is better; scores are roughly in ``[0, 100]`` but the SVR output is
not clipped. Measured on the 10 face photos of ``tests/fixtures/photos`` (centre crops, Lanczos
downscaled), mean clean / +N(0, 25) noise / blur sigma 2:

=========  ================  =====================================================
side (px)  clean/noise/blur  clean ranked better than noise25 and blur2
=========  ================  =====================================================
256        9 / 55 / 68       10/10, 10/10
128        9 / 51 / 63       10/10, 10/10
64         19 / 51 / 64      10/10, 10/10 (std of clean: 12)
48         32 / 59 / 74      9/10, 9/10 (std 42: erratic)
32         64 / 67 / 91      7/10, 6/10 (useless)
<= 16      constant 155.8 or nan
=========  ================  =====================================================

Upscaling small images before scoring does *not* help: bicubic upscaling smooths the image, so
BRISQUE reads it as blurred (a 64 px face scores 19 natively, 32 at 128 px, 60 at 256 px) and stops
telling noise from clean (64 -> 256 px: noisy copies score *better* than clean ones). So
:func:`brisque_score` scores at native resolution and refuses images whose shorter side is below
:data:`BRISQUE_MIN_SIDE` (64 px) unless the caller lowers ``min_side`` explicitly. Compare BRISQUE
only between images of the same resolution.

SSIM uses the settings of Wang et al. (IEEE TIP 2004): Gaussian window sigma 1.5, population
covariance, averaged over the RGB channels (``skimage.metrics.structural_similarity``).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["BRISQUE_MIN_SIDE", "brisque_score", "mean_psnr_ssim", "psnr", "ssim", "to_float01"]

BRISQUE_MIN_SIDE = 64
"""Shortest image side (px) at which BRISQUE still ranks clean above noisy/blurred faces reliably (measured)."""


def to_float01(image: Any, name: str = "image") -> np.ndarray:
    """An RGB image as float64 ``(H, W, 3)`` in ``[0, 1]``.

    Args:
        image: ``(H, W, 3)`` ``uint8`` in ``0..255``, or float in ``[0, 1]``.
    """
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


@functools.cache
def _brisque_model() -> Any:
    """The ``brisque`` package's model, built once (loading the SVR takes a few milliseconds, importing it ~1 s)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # it imports scipy.ndimage.filters
            from brisque import BRISQUE
    except ImportError as err:
        raise ImportError(
            f"BRISQUE needs the 'brisque' package ({err}). Install it with: pip install brisque"
        ) from err
    return BRISQUE(url=False)


def brisque_score(image: Any, min_side: int = BRISQUE_MIN_SIDE) -> float:
    """No-reference BRISQUE quality of one RGB image (lower = better; roughly ``0..100``, not clipped).

    Args:
        image: ``(H, W, 3)`` ``uint8`` or float in ``[0, 1]``, scored at its native resolution.
        min_side: refuse images whose shorter side is smaller (see the module docstring for why
            small images are neither scored nor upscaled by default).

    Returns:
        The score; ``nan`` for a flat image (no texture to measure).
    """
    array = to_float01(image)
    if min(array.shape[:2]) < min_side:
        raise ValueError(
            f"BRISQUE is unreliable below {min_side} px (image is {array.shape[1]}x{array.shape[0]}); generate or "
            f"crop at >= {BRISQUE_MIN_SIDE} px, or pass min_side= explicitly to score it anyway (upscaling would "
            "make it read as blurred)."
        )
    if array.std() == 0:
        return math.nan
    with warnings.catch_warnings():
        # Degenerate local statistics give nan (returned as such); the package's own numpy deprecations are noise.
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return float(_brisque_model().score(array))


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
