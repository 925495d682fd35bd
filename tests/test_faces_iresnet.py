"""Bring-your-own ArcFace IResNet: loading arcface_torch state dicts from .pth / .safetensors files.

No ArcFace weights exist offline, so these tests use a randomly initialized IResNet-50 (with non-trivial
batch-norm statistics) saved the way ``arcface_torch`` saves ``backbone.pth``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from iddm.faces.align import ARCFACE_TEMPLATE_112
from iddm.faces.base import FaceRecognizer
from iddm.faces.iresnet import (
    IRESNET_LAYERS,
    IResNet,
    IResNetRecognizer,
    infer_layers,
    iresnet50,
    iresnet100,
)


@pytest.fixture(scope="module")
def reference() -> IResNet:
    torch.manual_seed(0)
    model = iresnet50().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    return model


@pytest.fixture(scope="module")
def weight_files(reference: IResNet, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("iresnet")
    state = reference.state_dict()
    files = {
        "pth": folder / "backbone.pth",
        "wrapped": folder / "checkpoint.pt",
        "st": folder / "backbone.safetensors",
    }
    torch.save(state, files["pth"])
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, files["wrapped"])
    save_file({k: v.contiguous() for k, v in state.items()}, files["st"])
    return files


@pytest.fixture(scope="module")
def faces() -> torch.Tensor:
    return torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def expected(reference: IResNet, faces: torch.Tensor) -> torch.Tensor:
    """arcface_torch's inference: RGB normalized to [-1, 1], backbone output L2-normalized."""
    with torch.no_grad():
        return torch.nn.functional.normalize(reference((faces - 0.5) / 0.5), dim=1)


def test_state_dict_keys_follow_arcface_torch() -> None:
    keys = list(iresnet50().state_dict())
    assert keys[:3] == ["conv1.weight", "bn1.weight", "bn1.bias"]
    for key in ("prelu.weight", "layer1.0.bn1.weight", "layer1.0.conv1.weight", "layer1.0.prelu.weight",
                "layer1.0.conv2.weight", "layer1.0.bn3.running_var", "layer1.0.downsample.0.weight",
                "layer1.0.downsample.1.running_mean", "layer3.13.conv2.weight", "bn2.weight", "fc.weight", "fc.bias",
                "features.running_var"):  # fmt: skip
        assert key in keys, key
    assert "layer3.14.conv1.weight" not in keys
    assert sum(p.numel() for p in iresnet50().parameters()) == 43_590_848  # arcface_torch's iresnet50


def test_depth_is_inferred_from_keys() -> None:
    with torch.device("meta"):
        state = iresnet100().state_dict()
    assert infer_layers(state) == IRESNET_LAYERS[100]


@pytest.mark.parametrize("kind", ["pth", "wrapped", "st"])
def test_loads_saved_weights(kind: str, weight_files, faces: torch.Tensor, expected: torch.Tensor) -> None:
    recognizer = IResNetRecognizer(weight_files[kind])
    assert isinstance(recognizer, FaceRecognizer)
    assert recognizer.name == "iresnet50" and recognizer.embedding_dim == 512 and recognizer.differentiable
    assert recognizer.input_size == (112, 112) and recognizer.threshold == 0.3
    assert (recognizer.template == ARCFACE_TEMPLATE_112).all()
    with torch.no_grad():
        embeddings = recognizer.embed(faces)
    assert embeddings.shape == (2, 512)
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(2), atol=1e-5)
    assert torch.allclose(embeddings, expected, atol=1e-6)


def test_gradients_reach_input(weight_files, faces: torch.Tensor, expected: torch.Tensor) -> None:
    recognizer = IResNetRecognizer(weight_files["st"], threshold=0.25)
    assert recognizer.threshold == 0.25
    pixels = faces[:1].clone().requires_grad_(True)
    (recognizer.embed(pixels) * expected[1:]).sum().backward()
    assert pixels.grad is not None and torch.isfinite(pixels.grad).all() and pixels.grad.abs().sum() > 0
    assert all(p.grad is None for p in recognizer.model.parameters())  # frozen


def test_wrong_key_is_explained(reference: IResNet, tmp_path: Path) -> None:
    state = dict(reference.state_dict())
    state["layer1.0.bn1.gamma"] = state.pop("layer1.0.bn1.weight")
    torch.save(state, tmp_path / "renamed.pth")
    with pytest.raises(
        ValueError, match=r"missing keys \['layer1.0.bn1.weight'\].*unexpected keys \['layer1.0.bn1.gamma"
    ):
        IResNetRecognizer(tmp_path / "renamed.pth")


def test_other_architectures_are_explained(tmp_path: Path) -> None:
    torch.save({"input_layer.0.weight": torch.zeros(64, 3, 3, 3), "body.0.res_layer.1.weight": torch.zeros(64)},
               tmp_path / "adaface_ir50.ckpt.pth")  # fmt: skip
    with pytest.raises(ValueError, match="AdaFace"):
        IResNetRecognizer(tmp_path / "adaface_ir50.ckpt.pth")
    state = iresnet50().state_dict()
    state["fc.weight"] = torch.zeros(512, 512 * 4 * 4)
    torch.save(state, tmp_path / "small_input.pth")
    with pytest.raises(ValueError, match="another input size"):
        IResNetRecognizer(tmp_path / "small_input.pth")


def test_bad_files_are_explained(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="do not exist"):
        IResNetRecognizer(tmp_path / "missing.pth")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "whole_model.pth")
    with pytest.raises(ValueError, match="state_dict"):
        IResNetRecognizer(tmp_path / "whole_model.pth")
    (tmp_path / "weights.h5").write_bytes(b"\0")
    with pytest.raises(ValueError, match=r"\.pth, \.safetensors or \.onnx"):
        IResNetRecognizer(tmp_path / "weights.h5")


def test_onnx_without_onnxruntime_is_explained(tmp_path: Path) -> None:
    try:
        import onnxruntime  # noqa: F401

        pytest.skip("onnxruntime is installed")
    except ImportError:
        pass
    (tmp_path / "w600k_r50.onnx").write_bytes(b"\0")
    with pytest.raises(ModuleNotFoundError, match="pip install onnxruntime"):
        IResNetRecognizer(tmp_path / "w600k_r50.onnx")


def test_bad_input_is_explained(weight_files) -> None:
    recognizer = IResNetRecognizer(weight_files["pth"])
    with pytest.raises(ValueError, match=r"\(N, 3, 112, 112\)"):
        recognizer.embed(torch.zeros(1, 3, 160, 160))
    with pytest.raises(TypeError, match="float"):
        recognizer.embed(torch.zeros(1, 3, 112, 112, dtype=torch.uint8))
