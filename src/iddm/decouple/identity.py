"""The identity loss over an ensemble of differentiable face recognition surrogates (``docs/design.md`` §2).

Unbounded (the original reading)::

    L_id(x) = Σ_k w_k · mean_i cos(f_k(A_i(x_i)), e_k)

Calibrated (the default)::

    L_id(x) = Σ_k w_k · mean_i max(cos(f_k(A_i(x_i)), e_k) − m_k, 0)

``m_k`` is the mean cosine between a face and the anchor of *another* person under surrogate ``k``
(its impostor mean, measured once on the face corpus: ``iddm/faces/impostor_statistics.json``). Below
``m_k`` the user already looks like a random stranger to ``f_k``; pushing further buys no privacy, spends
perturbation budget, and makes the user *least* similar to their own generations, which an attacker
who ranks the gallery backwards can see. With a decoy (targeted variant) both forms also subtract
``Σ_k w_k · mean_i cos(f_k(A_i(x_i)), d_k)``: pulling toward the decoy's embedding ``d_k``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from iddm.faces import FaceAligner, FaceRecognizer, impostor_statistics


def load_margins(recognizers: Sequence[FaceRecognizer]) -> dict[str, float]:
    """Each surrogate's impostor mean cosine (the calibrated loss's margin ``m_k``), by recognizer name."""
    return {r.name: impostor_statistics(r.name)["anchor_impostor_mean"] for r in recognizers}


def identity_terms(cosines: torch.Tensor, margin: float | None) -> torch.Tensor:
    """Per-image identity loss ``(B,)`` from cosines to the user ``(B,)``: ``cos`` or ``max(cos − margin, 0)``."""
    return cosines if margin is None else F.relu(cosines - margin)


class IdentityLoss:
    """``L_id`` over the surrogates for the N training photos (see the module docstring).

    ``A_i`` crops photo ``i`` with a matrix fixed from the landmarks of the clean photo; ``e_k`` is
    the user's anchor, ``normalize(mean_i f_k(A_i(clean_i)))``.

    Args:
        recognizers: differentiable surrogates.
        weights: one weight per surrogate.
        clean: ``(N, 3, R, R)`` clean training images in ``[0, 1]``.
        landmarks: ``(N, 5, 2)`` landmarks in the pixel coordinates of ``clean``.
        decoys: optional ``{name: (D,)}`` unit embeddings of a decoy identity.
        margins: ``{name: m_k}`` for the calibrated loss; ``None``: unbounded.
    """

    def __init__(
        self,
        recognizers: Sequence[FaceRecognizer],
        weights: Sequence[float],
        clean: torch.Tensor,
        landmarks: torch.Tensor,
        decoys: dict[str, torch.Tensor] | None = None,
        margins: dict[str, float] | None = None,
    ):
        for recognizer in recognizers:
            if not recognizer.differentiable:
                raise ValueError(f"Surrogate {recognizer.name!r} is not differentiable; choose e.g. sface or facenet.")
        self.recognizers = list(recognizers)
        self.weights = list(weights)
        self.margins = margins
        size = tuple(clean.shape[-2:])
        self.aligners = {
            r.name: FaceAligner(landmarks.cpu().numpy(), size, r.template, r.input_size, antialias=True)
            for r in self.recognizers
        }
        self.decoys = decoys or {}
        with torch.no_grad():
            self.anchors = {
                r.name: F.normalize(self.embed(r, clean, torch.arange(len(clean))).mean(0), dim=0)
                for r in self.recognizers
            }

    def embed(self, recognizer: FaceRecognizer, images: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` embeddings of ``images`` ``(B, 3, R, R)``, which are versions of photos ``indices``."""
        crops = self.aligners[recognizer.name](images, indices)
        return recognizer.embed(crops)

    def cosines(self, images: torch.Tensor, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per surrogate, ``(B,)`` cosine of each image's face to the user's anchor."""
        return {r.name: self.embed(r, images, indices) @ self.anchors[r.name].to(images) for r in self.recognizers}

    def __call__(self, images: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss and the per-surrogate mean cosines to the user (for logging)."""
        loss = images.new_zeros(())
        logged = {}
        for recognizer, weight in zip(self.recognizers, self.weights):
            embedding = self.embed(recognizer, images, indices)
            cosine = embedding @ self.anchors[recognizer.name].to(images)
            margin = None if self.margins is None else self.margins[recognizer.name]
            loss = loss + weight * identity_terms(cosine, margin).mean()
            logged[recognizer.name] = float(cosine.detach().mean())
            if recognizer.name in self.decoys:
                loss = loss - weight * (embedding @ self.decoys[recognizer.name].to(images)).mean()
        return loss, logged
