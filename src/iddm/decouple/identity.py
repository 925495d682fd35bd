"""The identity loss over an ensemble of differentiable face recognition surrogates (``docs/design.md`` §2).

Unbounded (the original reading)::

    L_id(x) = Σ_k w_k · mean_i cos(f_k(A_i(x_i)), e_k)

Calibrated (the default), a dead zone at the level of a random other person::

    L_id(x) = Σ_k w_k · mean_i [ max(c_ik − m_k, 0) + max(m_k − s_k − c_ik, 0) ],   c_ik = cos(f_k(A_i(x_i)), e_k)

``m_k`` and ``s_k`` are the mean and standard deviation of the cosine between a face and the anchor of
*another* person under surrogate ``k`` (its impostor statistics, measured once on the face corpus:
``iddm/faces/impostor_statistics.json``). Inside ``[m_k − s_k, m_k]`` the user looks like a typical
stranger to ``f_k`` and nothing is rewarded; pushing below it buys no privacy, spends perturbation
budget, and makes the user *least* similar to their own generations, which an attacker who ranks the
gallery backwards can see, so the loss pulls back up there (signed steps overshoot a one-sided hinge).
With a decoy (targeted variant) both forms also subtract ``Σ_k w_k · mean_i cos(f_k(A_i(x_i)), d_k)``:
pulling toward ``d_k``, the part of the decoy's embedding orthogonal to the user's anchor ``e_k``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from iddm.faces import FaceAligner, FaceRecognizer, impostor_statistics

Band = tuple[float, float]


def load_margins(recognizers: Sequence[FaceRecognizer]) -> dict[str, Band]:
    """Each surrogate's stranger band ``(m_k − s_k, m_k)`` for the calibrated loss, by recognizer name."""
    bands = {}
    for recognizer in recognizers:
        statistics = impostor_statistics(recognizer.name)
        mean, std = statistics["anchor_impostor_mean"], statistics["anchor_impostor_std"]
        bands[recognizer.name] = (mean - std, mean)
    return bands


def identity_terms(cosines: torch.Tensor, band: Band | None) -> torch.Tensor:
    """Per-image identity loss ``(B,)`` from cosines to the user ``(B,)``: ``cos`` (unbounded), or the distance
    to the stranger band ``[low, high]`` (calibrated: zero inside it)."""
    if band is None:
        return cosines
    low, high = band
    return F.relu(cosines - high) + F.relu(low - cosines)


class IdentityLoss:
    """``L_id`` over the surrogates for the N training photos (see the module docstring).

    ``A_i`` crops photo ``i`` with a matrix fixed from the landmarks of the clean photo; ``e_k`` is
    the user's anchor, ``normalize(mean_i f_k(A_i(clean_i)))``.

    Args:
        recognizers: differentiable surrogates.
        weights: one weight per surrogate.
        clean: ``(N, 3, R, R)`` clean training images in ``[0, 1]``.
        landmarks: ``(N, 5, 2)`` landmarks in the pixel coordinates of ``clean``.
        decoys: optional ``{name: (D,)}`` unit embeddings of a decoy identity (made orthogonal to the anchors).
        margins: ``{name: (m_k − s_k, m_k)}`` stranger bands for the calibrated loss; ``None``: unbounded.
        precision: ``"fp32"``, or ``"bf16"`` to run the surrogates under bfloat16 autocast (embeddings
            returned in float32).
    """

    def __init__(
        self,
        recognizers: Sequence[FaceRecognizer],
        weights: Sequence[float],
        clean: torch.Tensor,
        landmarks: torch.Tensor,
        decoys: dict[str, torch.Tensor] | None = None,
        margins: dict[str, Band] | None = None,
        precision: str = "fp32",
    ):
        for recognizer in recognizers:
            if not recognizer.differentiable:
                raise ValueError(f"Surrogate {recognizer.name!r} is not differentiable; choose e.g. sface or facenet.")
        self.recognizers = list(recognizers)
        self.weights = list(weights)
        self.margins = margins
        self.autocast = precision == "bf16"
        size = tuple(clean.shape[-2:])
        self.aligners = {
            r.name: FaceAligner(landmarks.cpu().numpy(), size, r.template, r.input_size, antialias=True)
            for r in self.recognizers
        }
        with torch.no_grad():
            self.anchors = {
                r.name: F.normalize(self.embed(r, clean, torch.arange(len(clean))).mean(0), dim=0)
                for r in self.recognizers
            }
        # The part of each decoy orthogonal to the user: pulling toward the decoy itself also pulls toward
        # whatever it shares with the user (every face shares the "average face"), against the stranger band.
        self.decoys = {
            name: F.normalize(d - (d @ self.anchors[name].to(d)) * self.anchors[name].to(d), dim=0)
            for name, d in (decoys or {}).items()
        }

    def embed(self, recognizer: FaceRecognizer, images: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` embeddings of ``images`` ``(B, 3, R, R)``, which are versions of photos ``indices``."""
        crops = self.aligners[recognizer.name](images, indices)
        with torch.autocast(crops.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return recognizer.embed(crops).float()

    def cosines(self, images: torch.Tensor, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per surrogate, ``(B,)`` cosine of each image's face to the user's anchor."""
        return {r.name: self.embed(r, images, indices) @ self.anchors[r.name].to(images) for r in self.recognizers}

    def __call__(
        self, images: torch.Tensor, indices: torch.Tensor, only: Sequence[int] | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss and the per-surrogate mean cosines to the user (for logging).

        ``only``: positions of the surrogates to evaluate (default all); their weights are rescaled to the
        full ensemble's sum, so a step on a subset moves the loss on the same scale.
        """
        chosen = range(len(self.recognizers)) if only is None else list(only)
        scale = sum(self.weights) / max(sum(self.weights[i] for i in chosen), 1e-12)
        loss = images.new_zeros(())
        logged = {}
        for i in chosen:
            recognizer, weight = self.recognizers[i], self.weights[i] * scale
            embedding = self.embed(recognizer, images, indices)
            cosine = embedding @ self.anchors[recognizer.name].to(images)
            margin = None if self.margins is None else self.margins[recognizer.name]
            loss = loss + weight * identity_terms(cosine, margin).mean()
            logged[recognizer.name] = float(cosine.detach().mean())
            if recognizer.name in self.decoys:
                loss = loss - weight * (embedding @ self.decoys[recognizer.name].to(images)).mean()
        return loss, logged
