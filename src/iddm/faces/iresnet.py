"""Bring-your-own ArcFace recognizers: insightface ``arcface_torch`` IResNet weights from a local file.

No package ships ArcFace weights, so iddm cannot download them; a user who has them (e.g. the
``backbone.pth`` of an insightface ``arcface_torch`` run, or a model-zoo ONNX such as ``w600k_r50.onnx``)
passes the file to :class:`IResNetRecognizer`. The torch module reproduces ``arcface_torch``'s
``backbones/iresnet.py`` layer for layer, with the same state-dict key names, so such a checkpoint
loads with ``strict=True``. AdaFace checkpoints trained with ``arcface_torch``'s IResNet load the same way;
AdaFace's own ``net.py`` models (keys ``input_layer.*``, ``body.*``, BGR input) are a different network.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from iddm.faces.align import ARCFACE_TEMPLATE_112
from iddm.faces.base import FaceRecognizer, place

logger = logging.getLogger(__name__)

IRESNET_LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 200: (6, 26, 60, 6)}
"""Residual blocks per stage of ``arcface_torch``'s ``iresnet18`` ... ``iresnet200``."""

INPUT_SIZE = (112, 112)
DEFAULT_THRESHOLD = 0.3
"""Cosine threshold commonly used for ArcFace IResNet models (insightface's examples use 0.2-0.3)."""


class IBasicBlock(nn.Module):
    """``arcface_torch``'s pre-activation residual block: BN, conv3x3, BN, PReLU, conv3x3 (stride), BN, + shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = self.downsample(x) if self.downsample is not None else x
        return out + shortcut


class IResNet(nn.Module):
    """``arcface_torch``'s IResNet: ``(N, 3, 112, 112)`` RGB normalized to ``[-1, 1]`` in, ``(N, num_features)`` out.

    The output is the ``features`` BatchNorm1d of the fc layer, *not* L2-normalized (as in ``arcface_torch``).

    Args:
        layers: residual blocks of the four stages, e.g. :data:`IRESNET_LAYERS` ``[50]``.
        num_features: embedding size.
    """

    fc_scale = 7 * 7

    def __init__(self, layers: tuple[int, int, int, int] | list[int], num_features: int = 512) -> None:
        super().__init__()
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"IResNet needs four stages of at least one block each, got layers={list(layers)}.")
        self.layers = tuple(int(n) for n in layers)
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        self.layer1 = self._make_layer(64, self.layers[0])
        self.layer2 = self._make_layer(128, self.layers[1])
        self.layer3 = self._make_layer(256, self.layers[2])
        self.layer4 = self._make_layer(512, self.layers[3])
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.fc = nn.Linear(512 * self.fc_scale, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False  # as arcface_torch: the feature BN has no learned scale

    def _make_layer(self, planes: int, blocks: int) -> nn.Sequential:
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, planes, 1, stride=2, bias=False), nn.BatchNorm2d(planes, eps=1e-5)
        )
        stage = [IBasicBlock(self.inplanes, planes, stride=2, downsample=downsample)]
        self.inplanes = planes
        stage += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.bn2(x), 1)
        return self.features(self.fc(x))


def iresnet50(num_features: int = 512) -> IResNet:
    """IResNet-50 (``arcface_torch``'s ``iresnet50``), randomly initialized."""
    return IResNet(IRESNET_LAYERS[50], num_features)


def iresnet100(num_features: int = 512) -> IResNet:
    """IResNet-100 (``arcface_torch``'s ``iresnet100``), randomly initialized."""
    return IResNet(IRESNET_LAYERS[100], num_features)


def infer_layers(state: dict[str, torch.Tensor], path: str | Path = "state dict") -> tuple[int, int, int, int]:
    """Residual blocks per stage of the IResNet whose state dict is ``state`` (e.g. ``(3, 4, 14, 3)``: IResNet-50).

    Raises:
        ValueError: ``state`` has no ``layer1.*`` ... ``layer4.*`` keys (not an ``arcface_torch`` IResNet).
    """
    counts = []
    for stage in range(1, 5):
        prefix = f"layer{stage}."
        indices = {int(key.split(".")[1]) for key in state if key.startswith(prefix) and key.split(".")[1].isdigit()}
        if not indices:
            raise ValueError(
                f"{path} is not an insightface arcface_torch IResNet state dict: it has no '{prefix}*' keys "
                f"(first keys: {list(state)[:4]}). AdaFace's own net.py checkpoints ('input_layer.*', 'body.*') "
                "are a different network and are not supported."
            )
        counts.append(max(indices) + 1)
    return tuple(counts)  # type: ignore[return-value]


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an IResNet state dict from ``.pth``/``.pt`` (bare, or under ``'state_dict'``) or ``.safetensors``.

    A ``module.`` prefix (DataParallel) is stripped and half-precision tensors are cast to float32.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise ValueError(
                f"{path} holds pickled Python objects (a whole model?), which iddm does not unpickle. Save the "
                "weights with torch.save(model.state_dict(), path) or as .safetensors."
            ) from err
        except (RuntimeError, EOFError) as err:
            raise ValueError(f"{path} is not a readable torch checkpoint ({err}).") from err
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors (got {type(state).__name__}).")
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module.") :]: value for key, value in state.items()}
    return {key: value.float() if value.is_floating_point() else value for key, value in state.items()}


def build_iresnet_from_state(state: dict[str, torch.Tensor], path: str | Path = "state dict") -> IResNet:
    """An :class:`IResNet` of the depth and embedding size ``state`` implies, with ``state`` loaded strictly.

    Raises:
        ValueError: the keys or shapes are not those of an ``arcface_torch`` IResNet for 112 x 112 input.
    """
    path = Path(path)
    layers = infer_layers(state, path)
    fc = state.get("fc.weight")
    if fc is None or fc.ndim != 2:
        raise ValueError(f"{path} has no 2-D 'fc.weight': not an insightface arcface_torch IResNet state dict.")
    if fc.shape[1] != 512 * IResNet.fc_scale:
        raise ValueError(
            f"{path}: fc.weight takes {fc.shape[1]} inputs, an IResNet for 112 x 112 faces takes "
            f"{512 * IResNet.fc_scale}; the checkpoint was trained for another input size."
        )
    with torch.device("meta"):  # no random init: every tensor comes from the file
        model = IResNet(layers, num_features=fc.shape[0])
    state = dict(state)
    for key in model.state_dict():  # some exports drop the BN step counters
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros((), dtype=torch.long)
    expected, given = set(model.state_dict()), set(state)
    missing, unexpected = sorted(expected - given), sorted(given - expected)
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match insightface arcface_torch's IResNet (layers {list(layers)}): "
            f"{len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}."
        )
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: tensor shapes do not match an arcface_torch IResNet: {err}") from None
    return model


class _OnnxBackend:
    """An ONNX face-recognition model run by onnxruntime (CPU), e.g. insightface's ``w600k_r50.onnx``."""

    def __init__(self, path: Path) -> None:
        try:
            import onnxruntime
        except ImportError as err:
            raise ModuleNotFoundError(
                f"Running the ONNX face model {path} needs onnxruntime: pip install onnxruntime "
                "(or convert the model to a .pth/.safetensors arcface_torch state dict)."
            ) from err
        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise ValueError(f"{path}: expected one (N, 3, 112, 112) input, found {[i.shape for i in inputs]}.")
        self.input_name = inputs[0].name
        self.embedding_dim = int(self.session.get_outputs()[0].shape[-1])
        # insightface's rule: models whose graph starts with Sub and Mul nodes normalize internally.
        self.mean, self.std = 127.5, 127.5
        try:
            import onnx

            names = [node.name for node in onnx.load(str(path), load_external_data=False).graph.node[:8]]
            has_sub = any(n.startswith(("Sub", "_minus")) for n in names)
            if has_sub and any(n.startswith(("Mul", "_mul")) for n in names):
                self.mean, self.std = 0.0, 1.0
        except ImportError:
            logger.info("onnx is not installed; assuming %s takes (x - 127.5) / 127.5 input.", path)

    def __call__(self, faces: torch.Tensor) -> torch.Tensor:
        pixels = faces.detach().float().cpu().numpy() * 255.0
        output = self.session.run(None, {self.input_name: ((pixels - self.mean) / self.std).astype(np.float32)})[0]
        return torch.from_numpy(np.asarray(output, dtype=np.float32))


class IResNetRecognizer(FaceRecognizer):
    """An ArcFace-style IResNet face recognizer loaded from a local weights file.

    Args:
        weights: an ``arcface_torch`` state dict (``.pth``/``.pt`` read with ``weights_only=True``, bare or
            under ``'state_dict'``; or ``.safetensors``), depth (18/34/50/100/200) inferred from the keys;
            or an ``.onnx`` model (needs onnxruntime; then not differentiable).
        threshold: cosine similarity above which two faces are called the same person.
        device: where to run the torch model (ONNX models run on CPU).
        name: display name; defaults to ``iresnet<depth>`` (or the ONNX file's stem).

    Faces are aligned to :data:`~iddm.faces.align.ARCFACE_TEMPLATE_112` at 112 x 112.
    """

    input_size = INPUT_SIZE
    template = ARCFACE_TEMPLATE_112

    def __init__(
        self,
        weights: str | Path,
        threshold: float = DEFAULT_THRESHOLD,
        device: torch.device | str = "cpu",
        name: str | None = None,
    ) -> None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"Face recognition weights {path} do not exist. Pass the path of an arcface_torch backbone "
                "(.pth or .safetensors) or an ArcFace .onnx file."
            )
        if not -1.0 < threshold < 1.0:
            raise ValueError(f"threshold is a cosine similarity in (-1, 1), got {threshold}.")
        self.threshold = float(threshold)
        self.path = path
        self.device = torch.device(device)
        self.model: IResNet | None = None
        self._onnx: _OnnxBackend | None = None
        if path.suffix.lower() == ".onnx":
            self._onnx = _OnnxBackend(path)
            self.embedding_dim = self._onnx.embedding_dim
            self.differentiable = False
            self.name = name or path.stem
        elif path.suffix.lower() in (".pth", ".pt", ".bin", ".safetensors"):
            self.model = build_iresnet_from_state(load_state_dict_file(path), path)
            place(self.model.eval().requires_grad_(False), self.device)
            self.embedding_dim = self.model.fc.out_features
            self.differentiable = True
            depth = {v: k for k, v in IRESNET_LAYERS.items()}.get(self.model.layers)
            self.name = name or (f"iresnet{depth}" if depth else f"iresnet{list(self.model.layers)}")
        else:
            raise ValueError(f"{path}: unknown weights format {path.suffix!r}; use .pth, .safetensors or .onnx.")

    def to(self, device: torch.device | str) -> IResNetRecognizer:
        self.device = torch.device(device)
        if self.model is not None:
            place(self.model, self.device)
        return self

    def embed(self, faces: torch.Tensor) -> torch.Tensor:
        """Embed aligned face crops.

        Args:
            faces: ``(N, 3, 112, 112)`` float RGB in ``[0, 1]``, aligned to :attr:`template`. Gradients flow
                back to ``faces`` for torch weights (not for ONNX models).

        Returns:
            ``(N, embedding_dim)`` float32, L2-normalized rows.
        """
        if faces.ndim != 4 or faces.shape[1] != 3 or tuple(faces.shape[-2:]) != self.input_size:
            raise ValueError(
                f"{self.name} takes aligned RGB crops of shape (N, 3, 112, 112); got {tuple(faces.shape)}. "
                "Align faces with ARCFACE_TEMPLATE_112 at 112 x 112 first."
            )
        if not faces.is_floating_point():
            raise TypeError(f"{self.name} takes float RGB in [0, 1]; got {faces.dtype}. Convert with x.float() / 255.")
        if self._onnx is not None:
            return F.normalize(self._onnx(faces), dim=1).to(faces.device)
        features = self.model((faces.to(self.device, torch.float32) - 0.5) / 0.5)
        return F.normalize(features, dim=1, eps=1e-12)
