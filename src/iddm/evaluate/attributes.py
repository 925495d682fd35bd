"""What an avatar should keep that is not identity: gender, age band, ethnicity (UTKFace) and colour.

The attribute model is a small network (one hidden layer) on a HOG and an 8 x 8 colour thumbnail of 64-px face
crops aligned by YuNet's five landmarks (:func:`attribute_crop`: the ArcFace template with a 0.25 margin, so hair
and chin show). It is not any FR system's identity embedding: it was trained from scratch on the labels of
UTKFace (Zhang, Song and Qi, "Age Progression/Regression by Conditional Adversarial Autoencoder", CVPR 2017;
**non-commercial research only**, and so are these weights) by ``benchmarks/train_attributes.py``; its accuracy
on held-out UTKFace faces is in ``iddm/weights/attributes/metrics.json``. UTKFace has no expression labels, so
expression is not measured. Colour is read from the pixels: an image is grey when its colourfulness (Hasler and
Süsstrunk) is below :data:`iddm.evaluate.quality.GRAY_COLOURFULNESS`.

Per cell, :func:`attribute_agreement` compares the user's photos with the avatars: for each attribute, the
fraction of avatars whose predicted class equals the majority class predicted for the user's photos.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from iddm.evaluate.quality import GRAY_COLOURFULNESS, colourfulness
from iddm.faces import ARCFACE_TEMPLATE_112, DetectedFace, align_crop, scaled_template
from iddm.weights import attributes_path

CROP = 64
"""Side of the aligned crop the attribute model reads."""
CROP_TEMPLATE = scaled_template(ARCFACE_TEMPLATE_112, 112, CROP, margin=0.25)
AGE_BANDS = (13, 20, 40, 60)
"""Upper bounds (exclusive) of the age bands 0-12, 13-19, 20-39, 40-59; the last band is 60+."""
AGE_LABELS = ("0-12", "13-19", "20-39", "40-59", "60+")
GENDER_LABELS = ("male", "female")
ETHNICITY_LABELS = ("white", "black", "asian", "indian", "other")
HEADS = {"gender": GENDER_LABELS, "age": AGE_LABELS, "ethnicity": ETHNICITY_LABELS}
"""Attribute -> class names, in the order of the model's output heads (UTKFace's label codes)."""
WEIGHTS_FILE = "attributes.safetensors"
METRICS_FILE = "metrics.json"


def age_band(age: int) -> int:
    """Index into :data:`AGE_LABELS` of an age in years."""
    return int(np.searchsorted(AGE_BANDS, age, side="right"))


def attribute_crop(image: np.ndarray, face: DetectedFace) -> np.ndarray:
    """The ``(64, 64, 3)`` ``uint8`` crop the attribute model reads, aligned by the face's five landmarks."""
    return align_crop(image, face.landmarks, CROP_TEMPLATE, CROP)


_HOG = None


def crop_features(crops: np.ndarray) -> np.ndarray:
    """``(N, 1956)`` float32 features of ``(N, 64, 64, 3)`` ``uint8`` aligned crops: a HOG of the grey crop
    (8-px cells, 16-px blocks, 9 orientations: 1764 values; shape, wrinkles, hair outline) and the crop reduced
    to 8 x 8 RGB (192 values in ``[0, 1]``: skin tone, hair colour)."""
    import cv2

    global _HOG
    if _HOG is None:
        _HOG = cv2.HOGDescriptor((CROP, CROP), (16, 16), (8, 8), (8, 8), 9)
    rows = []
    for crop in crops:
        grey = cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2GRAY)
        thumb = cv2.resize(crop, (8, 8), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
        rows.append(np.concatenate([_HOG.compute(grey).ravel(), thumb.ravel()]))
    return np.stack(rows).astype(np.float32) if rows else np.zeros((0, 1956), np.float32)


class AttributeNet(nn.Module):
    """``(N, 1956)`` :func:`crop_features` -> one logit vector per attribute of :data:`HEADS` (concatenated): the
    features standardized (``mean``, ``std`` buffers, from the training set), one hidden layer of 256, a linear
    output. Training a CNN did not fit the minutes of CPU a shared machine gave it; these features compute in
    about 0.1 ms per face."""

    def __init__(self, features: int = 1956, hidden: int = 256) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("std", torch.ones(features))
        self.net = nn.Sequential(
            nn.Dropout(0.2),
            nn.Linear(features, hidden),
            nn.ReLU(),
            nn.Dropout(0.3),
            nn.Linear(hidden, sum(len(labels) for labels in HEADS.values())),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def split_logits(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """The model's concatenated output as one ``(N, classes)`` logit block per attribute."""
    blocks, start = {}, 0
    for name, labels in HEADS.items():
        blocks[name] = logits[:, start : start + len(labels)]
        start += len(labels)
    return blocks


@functools.cache
def load_attribute_model() -> AttributeNet:
    """The shipped attribute model (float32, eval mode)."""
    from safetensors.torch import load_file

    model = AttributeNet()
    weights = load_file(attributes_path() / WEIGHTS_FILE)
    state = {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)


def held_out_accuracy() -> dict:
    """The shipped model's accuracy on held-out UTKFace faces (``metrics.json`` of the training script)."""
    return json.loads((attributes_path() / METRICS_FILE).read_text())


def predict_crops(crops: np.ndarray, model: AttributeNet | None = None) -> dict[str, np.ndarray]:
    """Attribute -> ``(N,)`` predicted class index of ``(N, 64, 64, 3)`` ``uint8`` aligned crops."""
    model = model or load_attribute_model()
    if len(crops) == 0:
        return {name: np.zeros(0, dtype=np.int64) for name in HEADS}
    crops = np.asarray(crops)
    features = [torch.from_numpy(crop_features(c)) for c in (crops, crops[:, :, ::-1])]
    with torch.no_grad():
        logits = model(features[0]) + model(features[1])  # a face and its mirror image have the same attributes
    return {name: block.argmax(1).numpy() for name, block in split_logits(logits).items()}


def predict_faces(images: Sequence[np.ndarray], faces: Sequence[DetectedFace | None]) -> dict[str, np.ndarray]:
    """:func:`predict_crops` of the images that have a face (in image order)."""
    crops = [attribute_crop(image, face) for image, face in zip(images, faces) if face is not None]
    return predict_crops(np.stack(crops) if crops else np.zeros((0, CROP, CROP, 3), np.uint8))


def is_colour(image: np.ndarray) -> bool:
    """Whether an RGB image reads as colour (colourfulness at least :data:`GRAY_COLOURFULNESS`)."""
    return colourfulness(image) >= GRAY_COLOURFULNESS


@dataclass
class Agreement:
    """Per attribute: the user's photos' majority class and the fraction of avatars that share it."""

    photos: dict[str, str]
    agreement: dict[str, float]


def attribute_agreement(photos: dict[str, np.ndarray], avatars: dict[str, np.ndarray]) -> Agreement | None:
    """Compare :func:`predict_faces` of the user's photos with that of the avatars; ``None`` when either has no
    face (an undefined agreement, never 0)."""
    if not len(next(iter(photos.values()))) or not len(next(iter(avatars.values()))):
        return None
    majority = {name: int(np.bincount(photos[name], minlength=len(labels)).argmax()) for name, labels in HEADS.items()}
    return Agreement(
        photos={name: HEADS[name][index] for name, index in majority.items()},
        agreement={name: float(np.mean(avatars[name] == index)) for name, index in majority.items()},
    )
