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

PSNR and SSIM (imperceptibility of ``X + delta``) live in :mod:`iddm.fidelity`, shared with the optimizer's logs.

:func:`colourfulness` (Hasler and Süsstrunk, 2003) tells a colour face from a grey one; :func:`frechet_distance`
compares two sets of features as Gaussians (as FID does), undefined (``None``, with a warning) for too few.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any

import numpy as np

from iddm.fidelity import mean_psnr_ssim, psnr, ssim, to_float01

__all__ = [
    "BRISQUE_MIN_SIDE",
    "GRAY_COLOURFULNESS",
    "MIN_FRECHET_SAMPLES",
    "brisque_score",
    "colourfulness",
    "frechet_distance",
    "mean_psnr_ssim",
    "psnr",
    "ssim",
    "to_float01",
]

GRAY_COLOURFULNESS = 10.0
"""Below this colourfulness an image reads as black and white (Hasler and Süsstrunk: 0 none, 15 slightly, 33
moderately colourful)."""
MIN_FRECHET_SAMPLES = 10
"""Fewest feature vectors per set for :func:`frechet_distance`; fewer give ``None``, never a number."""


def colourfulness(image: Any) -> float:
    """Hasler and Süsstrunk's colourfulness of an RGB image on the 0..255 scale: 0 for a grey image, about 50
    for a typical colour photo. ``M = sqrt(sd(rg)^2 + sd(yb)^2) + 0.3 sqrt(mean(rg)^2 + mean(yb)^2)`` with
    ``rg = R - G`` and ``yb = (R + G) / 2 - B``."""
    rgb = to_float01(image) * 255.0
    rg = rgb[..., 0] - rgb[..., 1]
    yb = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def frechet_distance(a: Any, b: Any, min_samples: int = MIN_FRECHET_SAMPLES) -> float | None:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` ``(N, D)`` and ``b`` ``(M, D)``:
    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))``. Comparable only between set pairs of similar sizes
    (it is biased upward for small sets).

    Returns:
        The distance (>= 0), or ``None`` with a warning when either set has fewer than ``min_samples`` rows.
    """
    from scipy import linalg

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if min(len(a), len(b)) < min_samples:
        warnings.warn(
            f"Fréchet distance undefined: {len(a)} and {len(b)} feature vectors, at least {min_samples} per set "
            "needed.",
            stacklevel=2,
        )
        return None
    mean = a.mean(0) - b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b)
    root = root.real if np.iscomplexobj(root) else root
    return float(max(mean @ mean + np.trace(cov_a + cov_b - 2 * root), 0.0))


BRISQUE_MIN_SIDE = 64
"""Shortest image side (px) at which BRISQUE still ranks clean above noisy/blurred faces reliably (measured)."""


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
