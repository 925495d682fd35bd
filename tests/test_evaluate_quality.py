"""Image quality metrics (BRISQUE, PSNR, SSIM) and the protocol's robustness degradations."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from PIL import Image

from iddm.evaluate.quality import BRISQUE_MIN_SIDE, brisque_score, mean_psnr_ssim, psnr, ssim, to_float01
from iddm.evaluate.robustness import ROBUSTNESS_CONDITIONS, gaussian_blur, jpeg, relative_blur, resize

PHOTO = Path(__file__).parent / "fixtures" / "photos" / "obama_1.jpg"


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """The fixture photo, uint8 ``(640, 512, 3)``."""
    with Image.open(PHOTO) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def test_brisque_prefers_the_clean_photo(photo):
    clean = brisque_score(photo)
    noisy = np.clip(photo + np.random.default_rng(0).normal(0, 30, photo.shape), 0, 255).astype(np.uint8)
    blurred = cv2.GaussianBlur(photo, (0, 0), 3.0)
    assert math.isfinite(clean)
    assert clean < brisque_score(noisy)
    assert clean < brisque_score(blurred)
    assert brisque_score(photo.astype(np.float32) / 255) == pytest.approx(clean, abs=1e-3)


def test_brisque_refuses_small_and_flat_images(photo):
    small = np.asarray(Image.fromarray(photo).resize((48, 48)))
    with pytest.raises(ValueError, match="unreliable below 64 px"):
        brisque_score(small)
    assert math.isfinite(brisque_score(small, min_side=32))
    assert math.isnan(brisque_score(np.full((BRISQUE_MIN_SIDE, BRISQUE_MIN_SIDE, 3), 128, np.uint8)))


def test_psnr_ssim_known_values(photo):
    assert psnr(photo, photo) == math.inf
    assert ssim(photo, photo) == pytest.approx(1.0)
    # +/-4 grey levels everywhere (no clipping in a mid-grey image): MSE = (4/255)^2.
    grey = np.full((32, 32, 3), 128, np.uint8)
    shifted = grey.copy()
    shifted[::2] += 4
    shifted[1::2] -= 4
    assert psnr(grey, shifted) == pytest.approx(10 * math.log10(255**2 / 16))
    assert psnr(grey / 255.0, shifted / 255.0) == pytest.approx(psnr(grey, shifted))
    assert ssim(photo, cv2.GaussianBlur(photo, (0, 0), 2.0)) < 0.95
    mean_p, mean_s = mean_psnr_ssim([grey, photo], [shifted, photo])
    assert mean_p == math.inf and mean_s < 1.0
    mean_p, mean_s = mean_psnr_ssim([grey], [shifted])
    assert mean_p == pytest.approx(psnr(grey, shifted)) and mean_s == pytest.approx(ssim(grey, shifted))


def test_quality_input_errors(photo):
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(photo, photo[:-1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        psnr(photo.astype(np.float32), photo.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        to_float01(photo[..., 0])
    with pytest.raises(ValueError, match="as many images"):
        mean_psnr_ssim([photo], [])
    with pytest.raises(ValueError, match="7x7"):
        ssim(photo[:5, :5], photo[:5, :5])


def test_robustness_conditions_keep_shape_and_change_the_image(photo):
    assert set(ROBUSTNESS_CONDITIONS) == {"clean", "jpeg90", "jpeg75", "jpeg50", "resize0.5", "blur", "blur2"}
    before = photo.copy()
    for name, transform in ROBUSTNESS_CONDITIONS.items():
        out = transform(photo)
        assert out.shape == photo.shape and out.dtype == np.uint8, name
        assert np.array_equal(out, photo) == (name == "clean"), name
    assert np.array_equal(photo, before)  # inputs are never modified

    def error(image: np.ndarray) -> float:
        return float(np.abs(image.astype(np.int16) - photo).mean())

    assert error(jpeg(photo, 50)) > error(jpeg(photo, 75)) > error(jpeg(photo, 90)) > 0
    assert error(resize(photo, 0.25)) > error(resize(photo, 0.5)) > 0
    assert error(gaussian_blur(photo, 2.0)) > error(gaussian_blur(photo, 1.0)) > 0
    assert np.array_equal(resize(photo, 1.0), photo) and np.array_equal(gaussian_blur(photo, 0.0), photo)
    # The attacker's blur scales with the image: sigma per 64 px of the shorter side.
    small = np.ascontiguousarray(photo[:64, :96])
    assert np.array_equal(relative_blur(small, 1.5), gaussian_blur(small, 1.5))
    assert np.array_equal(relative_blur(photo, 1.5), gaussian_blur(photo, 1.5 * min(photo.shape[:2]) / 64))


def test_robustness_input_errors(photo):
    with pytest.raises(ValueError, match="RGB uint8"):
        jpeg(photo / 255.0, 90)
    with pytest.raises(ValueError, match="1..100"):
        jpeg(photo, 0)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        resize(photo, 2.0)
    with pytest.raises(ValueError, match=">= 0"):
        gaussian_blur(photo, -1.0)


def test_colourfulness_tells_grey_from_colour():
    from iddm.evaluate.quality import GRAY_COLOURFULNESS, colourfulness

    photo = skimage.data.astronaut()
    grey = np.repeat(photo.mean(axis=2, keepdims=True), 3, axis=2).astype(np.uint8)
    assert colourfulness(grey) == 0.0 and colourfulness(photo) > 3 * GRAY_COLOURFULNESS
    assert colourfulness(photo) == pytest.approx(colourfulness(photo / 255.0))


def test_frechet_distance_is_zero_for_one_set_the_shift_for_a_shifted_one_and_undefined_for_few():
    from iddm.evaluate.quality import frechet_distance

    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 8))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, a + 2.0) == pytest.approx(8 * 4.0, rel=1e-6)  # |shift|^2, equal covariances
    assert frechet_distance(a, 3 * a) > frechet_distance(a, 1.5 * a) > 0
    with pytest.warns(UserWarning, match="undefined: 9 and 400"):
        assert frechet_distance(a[:9], a) is None
