"""Platform-style degradations applied to generated images before the attacker embeds them (DESIGN.md §3).

These are the real, non-differentiable operations (PIL, OpenCV), used for evaluation only; the
optimizer's differentiable approximations live elsewhere. Every function takes and returns an RGB
``uint8`` ``(H, W, 3)`` array of the same shape and never modifies its input.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable

import numpy as np
from PIL import Image

__all__ = ["ROBUSTNESS_CONDITIONS", "clean", "gaussian_blur", "jpeg", "noisy_upscale", "relative_blur", "resize"]


def _check(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(
            f"Expected an RGB uint8 image of shape (H, W, 3), got {array.dtype} {array.shape}; "
            "convert float [0, 1] images with (x * 255).round().astype(np.uint8)."
        )
    return array


def clean(image: np.ndarray) -> np.ndarray:
    """No degradation (a copy)."""
    return _check(image).copy()


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """JPEG-compress and decode in memory with PIL (libjpeg), 4:2:0 chroma subsampling as platforms use.

    Args:
        image: RGB ``uint8`` ``(H, W, 3)``.
        quality: JPEG quality ``1..100`` (platforms re-encode at roughly 70--90).
    """
    array = _check(image)
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must lie in 1..100, got {quality}.")
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=int(quality), subsampling="4:2:0")
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.uint8).copy()


def resize(image: np.ndarray, scale: float) -> np.ndarray:
    """Downscale by ``scale`` then upscale back to the original size (a thumbnail viewed full size).

    Both steps use PIL's bicubic filter, which antialiases when downscaling. The small side is
    ``max(1, round(side * scale))``.

    Args:
        image: RGB ``uint8`` ``(H, W, 3)``.
        scale: factor in ``(0, 1]``; ``1`` returns a copy.
    """
    array = _check(image)
    if not 0 < scale <= 1:
        raise ValueError(f"scale must lie in (0, 1] (downscale then back up), got {scale}.")
    height, width = array.shape[:2]
    small_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if small_size == (width, height):
        return array.copy()
    small = Image.fromarray(array).resize(small_size, Image.Resampling.BICUBIC)
    return np.asarray(small.resize((width, height), Image.Resampling.BICUBIC), dtype=np.uint8).copy()


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with OpenCV (kernel size from ``sigma``, reflected borders).

    Args:
        image: RGB ``uint8`` ``(H, W, 3)``.
        sigma: standard deviation in pixels, ``>= 0``; ``0`` returns a copy.
    """
    import cv2

    array = _check(image)
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}.")
    if sigma == 0:
        return array.copy()
    return cv2.GaussianBlur(array, (0, 0), sigmaX=float(sigma), sigmaY=float(sigma))


def relative_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """:func:`gaussian_blur` with ``sigma`` in pixels per 64 px of the image's shorter side (a 512-px image gets
    8x the blur of a 64-px one): blurring wipes out fine adversarial texture, and an attacker scales it to the image.
    """
    return gaussian_blur(image, sigma * min(image.shape[:2]) / 64)


def noisy_upscale(image: np.ndarray, scale: float, noise_std: float = 0.05, seed: int = 0) -> np.ndarray:
    """Noisy upscaling, a purification (Hönig et al., ICLR 2025): down-scale, add Gaussian noise, up-scale back.

    The noise drowns the fine texture a perturbation lives in and the bicubic up-scaling smooths it away (their
    attacker up-scales with a super-resolution diffusion model; :mod:`iddm.evaluate.purify` has the generative
    counterpart). Down- and up-scaling use PIL's bicubic filter as :func:`resize`.

    Args:
        image: RGB ``uint8`` ``(H, W, 3)``.
        scale: down-scaling factor in ``(0, 1]``.
        noise_std: standard deviation of the noise in ``[0, 1]`` pixel units, ``>= 0`` (0.05 as Hönig et al.).
        seed: the noise's seed (the same image and seed give the same output).
    """
    array = _check(image)
    if not 0 < scale <= 1:
        raise ValueError(f"noisy upscaling scale must lie in (0, 1], got {scale}.")
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}.")
    height, width = array.shape[:2]
    small_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = np.asarray(Image.fromarray(array).resize(small_size, Image.Resampling.BICUBIC), dtype=np.float64)
    noise = np.random.default_rng(seed).normal(0.0, noise_std * 255.0, small.shape)
    noisy = np.clip(np.round(small + noise), 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(noisy).resize((width, height), Image.Resampling.BICUBIC), dtype=np.uint8).copy()


ROBUSTNESS_CONDITIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "clean": clean,
    "jpeg90": functools.partial(jpeg, quality=90),
    "jpeg75": functools.partial(jpeg, quality=75),
    "jpeg50": functools.partial(jpeg, quality=50),
    "resize0.5": functools.partial(resize, scale=0.5),
    "blur": functools.partial(relative_blur, sigma=1.0),
    "blur2": functools.partial(relative_blur, sigma=2.0),
}
"""The protocol's conditions: every linkability metric is reported again after each of them."""
