"""YuNet detection policy and 5-point alignment (OpenCV and differentiable torch) on real photos."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from iddm.faces import (
    ARCFACE_TEMPLATE_112,
    FaceAligner,
    FaceNotFoundError,
    align_crop,
    detect_faces,
    detect_single_face,
    scaled_template,
    similarity_transform,
    warp_faces,
)
from iddm.images import PhotoError, load_photo


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0


def _to_uint8(tensor: torch.Tensor) -> np.ndarray:
    return (tensor[0].permute(1, 2, 0).detach().numpy() * 255.0).round().clip(0, 255).astype(np.uint8)


def test_one_face_in_each_fixture_photo(photo_paths):
    assert len(photo_paths) == 10
    for path in photo_paths:
        image = load_photo(path)
        faces = detect_faces(image)
        assert len(faces) == 1, path.name
        face = faces[0]
        x, y, w, h = face.box
        assert 0.5 < face.score <= 1.0
        assert face.size >= 60, path.name
        right_eye, left_eye, nose, right_mouth, left_mouth = face.landmarks
        assert right_eye[0] < nose[0] < left_eye[0] and right_mouth[0] < left_mouth[0]
        assert max(right_eye[1], left_eye[1]) < nose[1] < min(right_mouth[1], left_mouth[1])
        assert np.all(face.landmarks >= [x, y]) and np.all(face.landmarks <= [x + w, y + h])


@pytest.mark.parametrize("name", ["coffee", "gradient"])
def test_no_face_names_the_file(tmp_path, name):
    if name == "coffee":
        image = skimage.data.coffee()
    else:
        ramp = np.linspace(0, 255, 400, dtype=np.float64)
        image = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], 128.0 + 0 * ramp[None, :]), axis=-1)
        image = image.astype(np.uint8)
    path = tmp_path / f"{name}.png"
    Image.fromarray(image).save(path)
    assert detect_faces(load_photo(path)) == []
    with pytest.raises(FaceNotFoundError, match=f"{name}.png: no face found"):
        detect_single_face(load_photo(path), source=str(path))


def test_several_faces_returns_largest_with_warning(detected_photos, caplog):
    small, _ = detected_photos["obama_1"]  # face ~135 px
    large, large_face = detected_photos["ardern_1"]  # face ~203 px
    height = max(small.shape[0], large.shape[0])
    montage = np.zeros((height, small.shape[1] + large.shape[1], 3), np.uint8)
    montage[: small.shape[0], : small.shape[1]] = small
    montage[: large.shape[0], small.shape[1] :] = large
    with caplog.at_level(logging.WARNING, logger="iddm.faces.detect"):
        face = detect_single_face(montage, source="montage.jpg")
    assert len(detect_faces(montage)) == 2
    # The largest face is Ardern's, shifted right by the width of the first photo (the montage is
    # downscaled for detection, so landmarks move by a few pixels).
    expected = large_face.landmarks + [small.shape[1], 0]
    assert np.abs(face.landmarks - expected).max() < 0.05 * large_face.size
    assert any("montage.jpg" in r.getMessage() and "2 faces" in r.getMessage() for r in caplog.records)


def test_tiny_face_is_too_small(detected_photos):
    image, face = detected_photos["obama_4"]
    scale = 14.0 / face.size
    small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    canvas = np.full((480, 640, 3), 128, np.uint8)
    canvas[100 : 100 + small.shape[0], 200 : 200 + small.shape[1]] = small
    with pytest.raises(FaceNotFoundError, match=r"tiny\.jpg: the face is too small \(1\d px"):
        detect_single_face(canvas, source="tiny.jpg")
    # The same face is accepted with a lower limit.
    assert detect_single_face(canvas, source="tiny.jpg", min_face_size=10).size < 20


def test_grayscale_photo(tmp_path, photos_dir, detected_photos):
    path = tmp_path / "gray.jpg"
    Image.open(photos_dir / "obama_2.jpg").convert("L").save(path, quality=92)
    image = load_photo(path)
    assert image.shape[2] == 3
    face = detect_single_face(image, source=str(path))
    _, color_face = detected_photos["obama_2"]
    assert np.abs(face.landmarks - color_face.landmarks).max() < 0.05 * color_face.size
    assert len(detect_faces(image[:, :, 0])) == 1  # a 2-D array works too


def test_corrupt_file_raises_photo_error(tmp_path, photos_dir):
    path = tmp_path / "broken.jpg"
    path.write_bytes((photos_dir / "obama_1.jpg").read_bytes()[:300])
    with pytest.raises(PhotoError, match="broken.jpg"):
        load_photo(path)


def test_non_uint8_image_is_refused():
    with pytest.raises(TypeError, match="uint8"):
        detect_faces(np.zeros((64, 64, 3), np.float32))


@pytest.mark.parametrize("size", [64, 32])
def test_small_aligned_face_crop_is_detected(detected_photos, size):
    """Generated 64x64 faces (and 32x32) are upscaled for detection and found, in their own coordinates."""
    template = scaled_template(ARCFACE_TEMPLATE_112, 112, size)
    for name in ["obama_1", "macron_1", "ardern_2"]:
        image, face = detected_photos[name]
        crop = align_crop(image, face.landmarks, template, size)
        found = detect_single_face(crop, source=f"{name}-{size}px", min_face_size=10)
        assert np.abs(found.landmarks - template).max() < 0.12 * size, name


def test_big_photo_is_downscaled_and_mapped_back(detected_photos):
    image, face = detected_photos["obama_3"]
    big = cv2.resize(image, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)  # 2560 px high
    found = detect_single_face(big)
    assert np.abs((found.landmarks + 0.5) / 4 - 0.5 - face.landmarks).max() < 0.05 * face.size


def test_similarity_transform_and_templates(detected_photos):
    np.testing.assert_allclose(
        similarity_transform(ARCFACE_TEMPLATE_112, ARCFACE_TEMPLATE_112), [[1, 0, 0], [0, 1, 0]], atol=1e-9
    )
    _, face = detected_photos["obama_1"]
    matrix = similarity_transform(face.landmarks, ARCFACE_TEMPLATE_112)
    mapped = face.landmarks @ matrix[:, :2].T + matrix[:, 2]
    assert np.abs(mapped - ARCFACE_TEMPLATE_112).max() < 4.0
    # A rotation + scale + shift of the landmarks is recovered exactly.
    angle, scale = 0.3, 2.5
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = ARCFACE_TEMPLATE_112 @ rot.T + [40.0, -7.0]
    np.testing.assert_allclose(similarity_transform(moved, ARCFACE_TEMPLATE_112)[:, :2], np.linalg.inv(rot), atol=1e-9)
    # Scaling follows cv2.resize's pixel-centre convention; margin zooms out around the centre.
    np.testing.assert_allclose(scaled_template(ARCFACE_TEMPLATE_112, 112, 224), (ARCFACE_TEMPLATE_112 + 0.5) * 2 - 0.5)
    zoomed = scaled_template(ARCFACE_TEMPLATE_112, 112, 112, margin=1.0)
    np.testing.assert_allclose(zoomed, (ARCFACE_TEMPLATE_112 + 0.5 - 56) / 2 + 56 - 0.5)
    with pytest.raises(ValueError, match="degenerate"):
        similarity_transform(np.ones((5, 2)), ARCFACE_TEMPLATE_112)


def test_align_crop_matches_opencv_face_recognizer_sf(detected_photos):
    """Our 112 px ArcFace alignment is the one OpenCV's FaceRecognizerSF.alignCrop produces."""
    from iddm.faces.sface import sface_model_path

    recognizer = cv2.FaceRecognizerSF.create(str(sface_model_path()), "")
    image, face = detected_photos["obama_2"]
    row = np.concatenate([face.box, face.landmarks.ravel(), [face.score]]).astype(np.float32)[None]
    reference = recognizer.alignCrop(np.ascontiguousarray(image[:, :, ::-1]), row)[:, :, ::-1]
    crop = align_crop(image, face.landmarks, ARCFACE_TEMPLATE_112, 112)
    assert np.abs(crop.astype(float) - reference).mean() < 0.5


@pytest.mark.parametrize(("size", "margin"), [((112, 112), 0.0), ((64, 64), 0.0), ((224, 160), 0.3)])
def test_warp_faces_matches_align_crop(detected_photos, size, margin):
    template = scaled_template(ARCFACE_TEMPLATE_112, 112, size, margin)
    for name in ["obama_1", "biden_1", "macron_2"]:  # faces larger and smaller than the crop
        image, face = detected_photos[name]
        reference = align_crop(image, face.landmarks, template, size).astype(np.float64)
        matrix = torch.from_numpy(similarity_transform(face.landmarks, template))[None]
        crop = warp_faces(_to_tensor(image).double(), matrix, size)[0].permute(1, 2, 0).numpy() * 255.0
        assert crop.shape == reference.shape
        inner = np.abs(crop - reference)[4:-4, 4:-4]
        assert inner.mean() < 1.0, name
        assert np.percentile(inner, 99) < 4.0, name


def test_warp_faces_passes_gradients_to_the_face_region(detected_photos):
    image, face = detected_photos["obama_1"]
    images = _to_tensor(image).requires_grad_(True)
    matrix = similarity_transform(face.landmarks, ARCFACE_TEMPLATE_112)
    warp_faces(images, matrix, 112).sum().backward()
    grad = images.grad[0].abs().sum(0).numpy()
    assert grad.sum() > 0
    ys, xs = np.nonzero(grad)
    x, y, w, h = face.box
    # Only pixels around the face receive gradient.
    assert xs.min() > x - w and xs.max() < x + 2 * w and ys.min() > y - h and ys.max() < y + 2 * h
    # Antialiasing makes every source pixel of a shrunk face contribute (plain bilinear skips some).
    images_aa = _to_tensor(image).requires_grad_(True)
    small = scaled_template(ARCFACE_TEMPLATE_112, 112, 32)
    warp_faces(images_aa, similarity_transform(face.landmarks, small), 32, antialias=True).sum().backward()
    images_plain = _to_tensor(image).requires_grad_(True)
    warp_faces(images_plain, similarity_transform(face.landmarks, small), 32).sum().backward()
    assert (images_aa.grad != 0).sum() > 2 * (images_plain.grad != 0).sum()


def test_face_aligner_rescales_to_the_batch_size(detected_photos):
    names = ["obama_1", "ardern_1"]
    images = [detected_photos[n][0] for n in names]
    aligner = FaceAligner(
        [detected_photos[n][1].landmarks for n in names], [im.shape[:2] for im in images], ARCFACE_TEMPLATE_112, 112
    )
    assert aligner.matrices.shape == (2, 2, 3)
    full = [aligner(_to_tensor(im), indices=[i]) for i, im in enumerate(images)]
    for i, image in enumerate(images):
        # A 256 x 256 (aspect ratio changed) version of the photo gives nearly the same crop.
        resized = cv2.resize(image, (256, 256), interpolation=cv2.INTER_AREA)
        crop = aligner(_to_tensor(resized), indices=torch.tensor([i]))
        assert (crop - full[i]).abs().mean() < 6 / 255, names[i]
    # A batch of both photos at the same size, in reverse order, via indices.
    batch = torch.cat([_to_tensor(cv2.resize(im, (128, 160), interpolation=cv2.INTER_AREA)) for im in images[::-1]])
    crops = aligner(batch, indices=[1, 0])
    assert crops.shape == (2, 3, 112, 112)
    assert (crops[0] - full[1][0]).abs().mean() < 8 / 255
    with pytest.raises(ValueError, match="indices"):
        aligner(batch[:1])
    with pytest.raises(IndexError):
        aligner(batch, indices=[0, 2])
