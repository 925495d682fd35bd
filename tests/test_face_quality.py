"""Utility a person would see: SER-FIQ, consistency, realism (Fréchet, KID), attributes, colour and face geometry.

Real face photos of ``tests/fixtures/photos``; the shipped attribute model and face-shape statistics.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from iddm.evaluate import attributes, face_quality, geometry
from iddm.evaluate.face_utility import add_kid_to_real, face_utility, kid_to_real, real_face_features
from iddm.evaluate.quality import frechet_distance
from iddm.evaluate.results import CellRecord, FaceUtility, csv_row, from_json, to_json
from iddm.faces import detect_faces
from iddm.faces.shape import face_shape_points, mahalanobis, real_face_shape, residual_dimensions, shape_distance
from iddm.images import load_photo

PHOTOS = sorted((Path(__file__).parent / "fixtures" / "photos").glob("*.jpg"))
FEMALE = {"ardern"}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def photos():
    images = [load_photo(p) for p in PHOTOS]
    return images, [detect_faces(image)[0] for image in images]


def _degrade(image: np.ndarray, face, seed: int = 0) -> np.ndarray:
    """Blur (sigma 4 px at the 112-px scale of the face) and N(0, 25) noise."""
    blurred = cv2.GaussianBlur(image, (0, 0), face.size / 112 * 4)
    noise = np.random.default_rng(seed).normal(0, 25, image.shape)
    return np.clip(blurred + noise, 0, 255).astype(np.uint8)


def _portrait(image: np.ndarray, face, side: int = 128) -> np.ndarray:
    """A square crop around the face, resized to ``side`` px (a generated avatar's framing)."""
    x, y, w, h = face.box
    half = int(max(w, h))
    cx, cy = int(x + w / 2), int(y + h / 2)
    padded = cv2.copyMakeBorder(image, half, half, half, half, cv2.BORDER_REFLECT)
    crop = padded[cy : cy + 2 * half, cx : cx + 2 * half]
    return cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA)


def test_serfiq_ranks_clean_faces_above_blurred_noisy_copies(photos):
    images, faces = photos
    clean = face_quality.serfiq_scores(images, faces)
    degraded = face_quality.serfiq_scores([_degrade(i, f) for i, f in zip(images, faces)], faces)
    assert all(0 < s <= 1 for s in clean + degraded)
    assert sum(c > d for c, d in zip(clean, degraded)) == len(images)
    assert np.mean(clean) - np.mean(degraded) > 0.02
    assert face_quality.serfiq_scores(images[:1], [None]) == [None]
    assert face_quality.serfiq_scores(images[:1], faces[:1]) == clean[:1]  # seeded


def test_consistency_is_higher_among_one_persons_photos_than_across_people(photos):
    from iddm.evaluate.face_utility import sface_consistency

    images, faces = photos
    obama = [i for i, p in enumerate(PHOTOS) if p.stem.startswith("obama")]
    mixed = [i for i, p in enumerate(PHOTOS) if p.stem.split("_")[0] in {"obama", "biden", "sunak", "macron"}][:4]
    same = sface_consistency([images[i] for i in obama], [faces[i] for i in obama])
    different = sface_consistency([images[i] for i in mixed], [faces[i] for i in mixed])
    assert same > different + 0.2
    assert face_quality.consistency(np.ones((1, 4))) is None


def test_kid_is_near_zero_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 16)), rng.normal(size=(200, 16))
    same = face_quality.kernel_inception_distance(a, b, subsets=20, subset_size=100)
    shifted = face_quality.kernel_inception_distance(a, b + 1.0, subsets=20, subset_size=100)
    assert abs(same) < 0.05 < shifted
    with pytest.warns(UserWarning, match="KID undefined"):
        assert face_quality.kernel_inception_distance(a[:3], b) is None
    with pytest.warns(UserWarning, match="Fréchet distance undefined"):
        assert frechet_distance(a[:9], b) is None


def test_taef2_realism_features_tell_degraded_photos_from_clean_ones(photos):
    images, faces = photos
    clean = face_quality.realism_features(images)
    assert clean.shape == (len(images), 64) and np.isfinite(clean).all()
    degraded = face_quality.realism_features([_degrade(i, f, seed=1) for i, f in zip(images, faces)])
    split = face_quality.kernel_inception_distance(clean[::2], clean[1::2], min_samples=4)
    shifted = face_quality.kernel_inception_distance(clean[::2], degraded[1::2], min_samples=4)
    assert shifted > split


def test_attribute_model_reads_gender_of_the_test_photos_and_ships_its_held_out_accuracy(photos):
    images, faces = photos
    predicted = attributes.predict_faces(images, faces)
    truth = np.array([1 if p.stem.split("_")[0] in FEMALE else 0 for p in PHOTOS])
    assert np.mean(predicted["gender"] == truth) >= 0.8
    accuracy = attributes.held_out_accuracy()["held_out"]
    for name in attributes.HEADS:
        assert accuracy[name]["accuracy"] > accuracy[name]["majority_class_rate"]
    grey = np.repeat(images[0].mean(2, keepdims=True), 3, axis=2).astype(np.uint8)
    assert attributes.is_colour(images[0]) and not attributes.is_colour(grey)


def test_attribute_agreement_is_one_for_the_same_faces_and_undefined_without_faces(photos):
    images, faces = photos
    predicted = attributes.predict_faces(images[:1], faces[:1])
    assert set(attributes.attribute_agreement(predicted, predicted).agreement.values()) == {1.0}
    everyone = attributes.predict_faces(images, faces)
    assert attributes.attribute_agreement(everyone, everyone).photos["gender"] == "male"  # 8 of the 10 photos
    assert attributes.attribute_agreement(predicted, attributes.predict_faces([], [])) is None


def _caricature(image: np.ndarray, face) -> np.ndarray:
    """``image`` with the nose and mouth magnified up to 1.8x about the point between them, fading out over 0.7 of
    the face's size: what an exaggerating warp does to a face."""
    centre = (face.landmarks[2] + face.landmarks[3:].mean(0)) / 2
    radius = 0.7 * face.size
    ys, xs = np.mgrid[: image.shape[0], : image.shape[1]].astype(np.float32)
    dx, dy = xs - centre[0], ys - centre[1]
    weight = np.clip(1 - np.hypot(dx, dy) / radius, 0, 1) ** 2
    shrink = 1 - weight * (1 - 1 / 1.8)  # sample nearer the centre: the middle of the face grows
    map_x, map_y = (centre[0] + dx * shrink).astype(np.float32), (centre[1] + dy * shrink).astype(np.float32)
    return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def test_face_shape_distance_sees_a_caricature(photos):
    """Real faces read about 1 (as unusual as a typical real face); magnifying the nose and mouth, which moves
    YuNet's five points little, raises the 68-point distance for most of the photos."""
    images, faces = photos
    real = geometry.shape_distances(images, faces)
    assert len(real) == len(images) and 0.4 < np.median(real) < 2.0
    caricatures = [_caricature(image, face) for image, face in zip(images, faces)]
    moved = geometry.shape_distances(caricatures, [detect_faces(image)[0] for image in caricatures])
    # The magnification lives in the main modes; where a photo's residual part is already the larger, the distance
    # (the larger part) moves less: most photos, not all.
    assert np.mean(moved > real) >= 0.7 and moved.mean() > real.mean() + 0.1, (real.round(2), moved.round(2))
    model = real_face_shape()
    assert model["points"] == 68 and abs(model["held_out_distance"]["mean"] - 1.0) < 0.1
    assert len(geometry.shape_distances([], [])) == 0


def test_face_shape_distance_is_differentiable_and_ignores_pose_and_framing(photos):
    """The torch distance (what IDDM's warp limit steps on) equals the same distance with skimage's similarity
    alignment, does not change when the face is rotated, scaled or moved, has a gradient in the points, and sees a
    reshaping that the main modes of real faces' shapes do not."""
    images, faces = photos
    points = np.stack([face_shape_points(image, face.landmarks) for image, face in zip(images, faces)])
    model = real_face_shape()
    mean, modes = np.asarray(model["mean_shape"]), np.asarray(model["modes"])
    offsets = np.stack([(geometry._aligned(p, mean) - mean).ravel() for p in points])
    along = np.sqrt(np.mean((offsets @ modes.T) ** 2 / np.asarray(model["variances"]), axis=1))
    residual = offsets - (offsets @ modes.T) @ modes
    across = np.sqrt((residual**2).sum(1) / (residual_dimensions(model) * model["residual_variance"]))
    np.testing.assert_allclose(mahalanobis(points, model).numpy(), np.stack([along, across], 1), rtol=1e-6)
    expected = np.maximum(along / model["real_part_means"][0], across / model["real_part_means"][1])
    distance = shape_distance(points)
    np.testing.assert_allclose(distance.numpy(), expected / model["real_distance_mean"], rtol=1e-6)
    angle = 0.3
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = points @ rotation.T * 1.7 + np.array([40.0, -12.0])
    np.testing.assert_allclose(shape_distance(moved).numpy(), distance.numpy(), rtol=1e-9)
    tensor = torch.tensor(points, requires_grad=True)
    shape_distance(tensor).sum().backward()
    assert torch.isfinite(tensor.grad).all() and tensor.grad.abs().max() > 0
    # A jagged reshaping (each point moved on its own by 1% of the face's width, as a fine warp does) barely moves the
    # main modes but takes the residual part far outside real faces', and with it the distance.
    jitter = np.random.default_rng(0).normal(size=points.shape) * 0.01 * np.ptp(points[:, :, 0], axis=1)[:, None, None]
    parts, jittered = mahalanobis(points, model), mahalanobis(points + jitter, model)
    assert (jittered[:, 0] - parts[:, 0]).abs().max() < 0.3 and bool((jittered[:, 1] > parts[:, 1] + 1).all())
    assert bool((shape_distance(points + jitter) > distance + 0.7).all())


def test_landmark_displacement_is_zero_for_the_same_photo_and_measures_a_shift(photos):
    images, _ = photos
    crops = [cv2.resize(image[:, : image.shape[0]], (128, 128)) for image in images[:3]]
    same = [detect_faces(c)[0] for c in crops]
    shifted = [detect_faces(np.roll(c, 4, axis=1))[0] for c in crops]
    zero, pairs = geometry.landmark_displacement(same, same, [128] * 3)
    assert zero == 0.0 and pairs == 3
    moved, _ = geometry.landmark_displacement(same, shifted, [128] * 3)
    assert 1.0 < moved < 3.0  # 4 px of 128 = 2 px per 64 px
    assert geometry.landmark_displacement([None], same[:1], [128]) == (None, 0)


def test_face_utility_of_avatars_against_vanilla_counts_faceless_images_and_gives_null_for_too_few(photos):
    images, faces = photos
    avatars = [_portrait(i, f) for i, f in zip(images, faces)]
    blank = np.full((128, 128, 3), 128, np.uint8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = face_utility(avatars[:5] + [blank], vanilla_images=avatars[5:])
    assert not [w for w in caught if "undefined" in str(w.message)]  # the too-few warnings went into the notes
    assert result.num_faces == 5 and any("1 of 6 images without a detected face" in n for n in result.notes)
    assert result.frechet_to_vanilla is None and any("Fréchet distance undefined" in n for n in result.notes)
    assert result.kid_to_vanilla is not None
    assert result.serfiq is not None and result.vanilla.serfiq is not None
    assert result.attribute_agreement == {} and any("attribute agreement undefined" in n for n in result.notes)
    assert result.relative()["serfiq"] == pytest.approx(result.serfiq / result.vanilla.serfiq)
    again = from_json(FaceUtility, to_json(result))
    assert again.vanilla.consistency == pytest.approx(result.vanilla.consistency)


def test_cell_records_without_face_utility_still_load_and_the_csv_has_face_columns():
    from dataclasses import replace

    from iddm.evaluate.results import PerturbationQuality, Utility, WallSeconds

    utility = Utility(2, [64, 64], 0.0, 1.0, [], None, None, PerturbationQuality(), None, None, None, None)
    record = CellRecord("a", "iddm", "high", "iddm", [], "r", "i", [], WallSeconds(), {}, utility)
    old = to_json(record)
    del old["utility"]["face"]
    assert from_json(CellRecord, old).utility.face is None
    face = FaceUtility(2, serfiq=0.8, attribute_agreement={"gender": 1.0}, vanilla=FaceUtility(2, serfiq=0.9))
    row = csv_row(replace(record, utility=replace(utility, face=face)))
    assert row["face_serfiq_rel"] == pytest.approx(0.8 / 0.9) and row["face_agreement_gender"] == 1.0
    assert row["face_kid_to_vanilla"] is None and row["face_kid_to_real"] is None
    face = FaceUtility(2, kid_to_real=0.9, vanilla=FaceUtility(2, kid_to_real=0.6))
    assert csv_row(replace(record, utility=replace(utility, face=face)))["face_kid_to_real_rel"] == pytest.approx(1.5)


def test_face_utility_measures_how_far_decoupling_moved_the_training_photos_landmarks(photos):
    images, faces = photos
    crops = [_portrait(i, f) for i, f in zip(images[:3], faces[:3])]
    shifted = [np.roll(c, 4, axis=0) for c in crops]  # 4 px of 128 down: 2 px per 64 px
    same = face_utility(crops[:1], pairs=list(zip(crops, crops)))
    moved = face_utility(crops[:1], pairs=list(zip(crops, shifted)))
    assert same.landmark_displacement == 0.0 and same.landmark_pairs == 3
    assert 1.0 < moved.landmark_displacement < 3.0
    assert face_utility(crops[:1]).landmark_displacement is None


def test_kid_to_real_faces_grows_for_degraded_avatars_and_is_null_for_too_few(photos):
    images, faces = photos
    people = [p.stem.split("_")[0] for p in PHOTOS]
    real = [load_photo(p) for p, who in zip(PHOTOS, people) if who in ("obama", "biden")]
    reference = real_face_features(real, 128, "aligned")
    assert reference.shape == (5, 64)
    others = [(i, f) for (i, f), who in zip(zip(images, faces), people) if who not in ("obama", "biden")]
    avatars = [_portrait(i, f) for i, f in others]
    clean, _ = kid_to_real(avatars, reference)
    degraded, _ = kid_to_real([_portrait(_degrade(i, f, seed=2), f) for i, f in others], reference)
    assert degraded > clean
    undefined, notes = kid_to_real(avatars[:2], reference)
    assert undefined is None and "KID undefined" in notes[0]

    face = face_utility(avatars, vanilla_images=avatars)
    add_kid_to_real(face, avatars, avatars, real, "aligned")  # what `iddm evaluate` does with its real photos
    assert face.kid_to_real == pytest.approx(clean, abs=1e-6) and face.vanilla.kid_to_real == face.kid_to_real
