"""The interfaces every face detector and face recognizer of iddm implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class DetectedFace:
    """One detected face, in pixel coordinates of the image it was detected on.

    Attributes:
        box: ``(4,)`` float array ``x, y, width, height``.
        landmarks: ``(5, 2)`` float array of ``(x, y)``: right eye, left eye, nose tip, right mouth
            corner, left mouth corner (the subject's right/left, i.e. image left first: YuNet's order).
        score: detector confidence in ``[0, 1]``.
    """

    box: np.ndarray
    landmarks: np.ndarray
    score: float

    @property
    def size(self) -> float:
        """Face size in pixels: the shorter side of the box."""
        return float(min(self.box[2], self.box[3]))


class FaceRecognizer(ABC):
    """A face recognition (FR) model: aligned face crops in, L2-normalized embeddings out.

    Subclasses set the class attributes below. ``template`` gives where the five landmarks of
    :class:`DetectedFace` land in the model's ``input_size`` crop, so any caller can align photos
    (or differentiable tensors) for this model with :mod:`iddm.faces.align`.
    """

    name: str
    input_size: tuple[int, int]
    """``(height, width)`` of the aligned crop the model takes."""
    embedding_dim: int
    differentiable: bool
    """Whether gradients flow from :meth:`embed` to the input pixels (usable as an optimization surrogate)."""
    threshold: float
    """Cosine similarity above which two faces are called the same person (the model's usual operating point)."""
    template: np.ndarray
    """``(5, 2)`` landmark positions in the ``input_size`` crop."""

    @abstractmethod
    def embed(self, faces: torch.Tensor) -> torch.Tensor:
        """Embed aligned face crops.

        Args:
            faces: ``(N, 3, H, W)`` float RGB in ``[0, 1]``, ``(H, W) == input_size``.

        Returns:
            ``(N, embedding_dim)`` float32, L2-normalized rows.
        """

    def similarity(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Cosine similarity matrix ``(N, M)`` of two embedding batches (higher = more alike)."""
        return a @ b.T

    def to(self, device: torch.device | str) -> FaceRecognizer:
        """Move the model to ``device``; backends without torch weights ignore it."""
        return self

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, input_size={self.input_size}, dim={self.embedding_dim}, "
            f"differentiable={self.differentiable}, threshold={self.threshold})"
        )


def place(model: nn.Module, device: torch.device | str) -> nn.Module:
    """Move an FR network to ``device`` with its convolution weights in channels-last memory format.

    Why: on the CPU, PyTorch sends 1x1 convolutions of small batches on one thread to its slow reference kernel
    unless the weights are channels-last, which routes them to oneDNN; FaceNet's forward and backward pass (a
    surrogate of every data step) then runs ~1.4x faster, SFace's about as fast, for the same embeddings to 1e-6
    (``benchmarks/bench_data_step.py``). cuDNN favours the layout too under mixed precision.
    """
    return model.to(device, memory_format=torch.channels_last)
