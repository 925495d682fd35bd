"""SFace (torch, converted from ONNX) and dlib ResNet on real photos: identity separation, cv2 agreement, gradients."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest
import torch
from conftest import aligned_crops

from iddm.faces import FaceAligner, load_recognizer
from iddm.faces.dlib_backend import DLIB_COSINE_THRESHOLD, DlibResNet, dlib_model_file
from iddm.faces.sface import SFace, sface_model_path


@pytest.fixture(scope="module")
def sface() -> SFace:
    return SFace()


@pytest.fixture(scope="module")
def dlib_resnet() -> DlibResNet:
    return DlibResNet()


@pytest.fixture(scope="module")
def embeddings(sface, dlib_resnet, detected_photos) -> dict[str, tuple[list[str], torch.Tensor]]:
    result = {}
    for recognizer in (sface, dlib_resnet):
        names, batch = aligned_crops(recognizer, detected_photos)
        with torch.no_grad():
            result[recognizer.name] = (names, recognizer.embed(batch))
    return result


def test_sface_matches_opencv(sface, detected_photos):
    reference_net = cv2.FaceRecognizerSF.create(str(sface_model_path()), "")
    names, batch = aligned_crops(sface, detected_photos)
    with torch.no_grad():
        ours = sface.embed(batch).numpy()
    crops = (batch.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    reference = np.stack([reference_net.feature(np.ascontiguousarray(c[:, :, ::-1])).ravel() for c in crops])
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    cosines = (ours * reference).sum(axis=1)
    assert cosines.min() >= 0.999, dict(zip(names, cosines.round(5)))


@pytest.mark.parametrize("backend", ["sface", "dlib"])
def test_every_genuine_pair_beats_every_impostor_pair(embeddings, backend, sface, dlib_resnet):
    names, emb = embeddings[backend]
    threshold = {"sface": sface, "dlib": dlib_resnet}[backend].threshold
    assert torch.allclose(emb.norm(dim=1), torch.ones(len(names)), atol=1e-5)
    identities = [n.rsplit("_", 1)[0] for n in names]
    similarity = (emb @ emb.T).numpy()
    genuine, impostor = [], []
    for i, j in itertools.combinations(range(len(names)), 2):
        (genuine if identities[i] == identities[j] else impostor).append(similarity[i, j])
    assert len(genuine) == 6 + 1 + 1  # Obama x4, Macron pair, Ardern pair
    assert min(genuine) > max(impostor)
    # The backend's own threshold separates them too.
    assert min(genuine) >= threshold > max(impostor)


def test_sface_gradients_reach_pixels_and_fgsm_lowers_similarity(sface, detected_photos):
    image, face = detected_photos["macron_1"]
    aligner = FaceAligner([face.landmarks], image.shape[:2], sface.template, sface.input_size)
    clean = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    with torch.no_grad():
        anchor = sface.embed(aligner(clean))
    eps, alpha = 8 / 255, 2 / 255
    delta = torch.zeros_like(clean, requires_grad=True)
    for step in range(5):
        cosine = (sface.embed(aligner(clean + delta)) * anchor).sum()
        (grad,) = torch.autograd.grad(cosine, delta)
        if step == 0:
            assert cosine.item() == pytest.approx(1.0, abs=1e-5)
            assert grad.abs().sum() > 0 and torch.isfinite(grad).all()
        with torch.no_grad():
            delta -= alpha * grad.sign()
            delta.clamp_(-eps, eps)
            delta.copy_((clean + delta).clamp(0, 1) - clean)
    assert delta.abs().max() <= eps + 1e-6
    with torch.no_grad():
        attacked = (sface.embed(aligner(clean + delta)) * anchor).sum().item()
    assert attacked < 0.8
    # The model itself stays frozen.
    assert all(not p.requires_grad for p in sface.model.parameters())


def test_sface_kernels_sit_channels_last(sface):
    # iddm.faces.base.place; test_sface_matches_opencv checks the embeddings in this layout.
    kernels = [p for p in sface.model.parameters() if p.ndim == 4 and p.shape[-1] > 1]
    assert kernels and all(p.is_contiguous(memory_format=torch.channels_last) for p in kernels)


def test_sface_rejects_unaligned_input(sface):
    with pytest.raises(ValueError, match="112"):
        sface.embed(torch.rand(1, 3, 64, 64))


def test_sface_conversion_cache(tmp_path, sface):
    fresh = SFace(cache_dir=tmp_path)
    assert len(list(tmp_path.glob("sface-*.safetensors"))) == 1
    again = SFace(cache_dir=tmp_path)  # loaded from the cache
    x = torch.rand(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(fresh.embed(x), sface.embed(x))
        torch.testing.assert_close(again.embed(x), sface.embed(x))


def test_dlib_agrees_with_dlibs_own_pipeline(dlib_resnet, embeddings, detected_photos):
    """Our YuNet-aligned crops + dlib's shape predictor reproduce dlib's native descriptors (HOG + 5 points)."""
    import dlib

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(dlib_model_file("shape_predictor_5_face_landmarks.dat")))
    net = dlib.face_recognition_model_v1(str(dlib_model_file("dlib_face_recognition_resnet_model_v1.dat")))
    names, ours = embeddings["dlib"]
    cosines, norms = [], []
    for name, embedding in zip(names, ours):
        image, _ = detected_photos[name]
        rects = detector(image, 1)
        assert len(rects) == 1, name
        native = np.asarray(net.compute_face_descriptor(image, predictor(image, rects[0])))
        norms.append(np.linalg.norm(native))
        cosines.append(float(embedding.numpy() @ native / np.linalg.norm(native)))
    assert min(cosines) > 0.99, dict(zip(names, np.round(cosines, 4)))
    # dlib descriptors are not unit-norm; the cosine threshold is derived from their mean squared norm.
    assert 1.3 < min(norms) and max(norms) < 1.6
    assert DLIB_COSINE_THRESHOLD == pytest.approx(1 - 0.6**2 / (2 * np.mean(np.square(norms))), abs=0.01)


def test_dlib_is_not_differentiable(dlib_resnet):
    assert not dlib_resnet.differentiable
    x = torch.rand(1, 3, 200, 200, requires_grad=True)
    assert not dlib_resnet.embed(x).requires_grad
    with pytest.raises(ValueError, match="200"):
        dlib_resnet.embed(torch.rand(1, 3, 150, 150))


def test_registry_builds_both(sface):
    assert isinstance(load_recognizer("SFace"), SFace)
    assert isinstance(load_recognizer("dlib"), DlibResNet)
