"""Identity-decoupled data optimization: projected signed-gradient steps on the photo perturbation δ.

One data step (DESIGN §2), against the current personalized model θ::

    g = ∇δ [ λ_gen · L_id(T(x̂0(θ, X+δ, t, n))) + λ_data · L_id(T(X+δ)) + λ_fid · ‖δ‖² ]
    δ ← clip_ε(δ − α · sign(g));  X+δ clipped to [0, 1]

with ``T`` drawn from the robustness transforms (EOT) and ``t, n`` a random timestep and noise.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from iddm.decouple.identity import IdentityLoss
from iddm.decouple.privacy import PrivacySettings
from iddm.decouple.transforms import sample_transform
from iddm.diffusion import Backbone, TrainingPhotos
from iddm.diffusion.data import to_tensor
from iddm.faces import align_crop, detect_single_face, load_recognizer
from iddm.images import load_photo


def psnr_db(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two image batches in ``[0, 1]`` (inf when equal)."""
    mse = F.mse_loss(a.float(), b.float()).item()
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


class DataOptimizer:
    """Holds δ ``(N, 3, R, R)`` for the N training photos and runs rounds of data steps on it."""

    def __init__(self, settings: PrivacySettings, identity: IdentityLoss, shape: torch.Size, device: torch.device):
        self.settings = settings
        self.identity = identity
        self.delta = torch.zeros(shape, device=device)

    def initialize(self, backbone: Backbone, clean: torch.Tensor, prompt: str, generator: torch.Generator) -> dict:
        """Set δ before training: random for ``noise``, a one-shot FR cloak for ``cloak``; else δ stays 0."""
        s = self.settings
        if s.defense == "noise":
            uniform = torch.rand(self.delta.shape, generator=generator).to(self.delta)
            self.delta = (clean + (uniform * 2 - 1) * s.epsilon).clamp(0, 1) - clean
        elif s.defense == "cloak":  # attacks the photos alone: no generation-proxy term
            return self.run_round(backbone, clean, prompt, s.cloak_steps, generator, data_only=True)
        return self.summary(clean)

    def perturbed(self, clean: torch.Tensor) -> torch.Tensor:
        """``X + δ`` ``(N, 3, R, R)`` in ``[0, 1]`` (no gradient)."""
        return (clean + self.delta).clamp(0, 1)

    def objective(
        self,
        backbone: Backbone,
        clean: torch.Tensor,
        delta: torch.Tensor,
        prompt: str,
        generator: torch.Generator,
        data_only: bool = False,
    ) -> tuple[torch.Tensor, dict]:
        s = self.settings
        indices = torch.arange(len(clean), device=clean.device)
        images = (clean + delta).clamp(0, 1)
        loss = images.new_zeros(())
        logged: dict = {}
        if s.defense == "aspl":
            # Anti-personalization: make the photos as hard as possible to learn for the current model.
            loss = -backbone.training_loss(images, [prompt] * len(images), generator).mean()
            with torch.no_grad():
                _, logged["data"] = self.identity(images, indices)
            return loss, logged
        if s.lambda_gen > 0 and not data_only:
            x0 = backbone.denoised_estimate(images, [prompt] * len(images), generator, s.max_denoise_timestep)
            id_loss, logged["x0"] = self.identity(sample_transform(s.eot, generator)(x0.float()), indices)
            loss = loss + s.lambda_gen * id_loss
        if s.lambda_data > 0:
            id_loss, logged["data"] = self.identity(sample_transform(s.eot, generator)(images), indices)
            loss = loss + s.lambda_data * id_loss
        if s.lambda_fid > 0:
            loss = loss + s.lambda_fid * F.mse_loss(images, clean) * 255**2
        return loss, logged

    def step(
        self,
        backbone: Backbone,
        clean: torch.Tensor,
        prompt: str,
        generator: torch.Generator,
        data_only: bool = False,
    ) -> dict:
        """One projected signed-gradient step on δ; returns the surrogate cosines measured before it."""
        delta = self.delta.clone().requires_grad_(True)
        loss, logged = self.objective(backbone, clean, delta, prompt, generator, data_only)
        (gradient,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            eps = self.settings.epsilon
            updated = (self.delta - self.settings.step_size * gradient.sign()).clamp(-eps, eps)
            self.delta = (clean + updated).clamp(0, 1) - clean
        logged["loss"] = float(loss.detach())
        return logged

    def run_round(
        self,
        backbone: Backbone,
        clean: torch.Tensor,
        prompt: str,
        steps: int,
        generator: torch.Generator,
        data_only: bool = False,
    ) -> dict:
        """``steps`` data steps against the current model (or on the photos alone: ``data_only``); a log record."""
        backbone.train(False)
        logs = [self.step(backbone, clean, prompt, generator, data_only) for _ in range(steps)]
        names = [r.name for r in self.identity.recognizers]
        last = logs[-1]
        with torch.no_grad():
            data_cos = {
                k: float(v.mean()) for k, v in self.identity.cosines(self.perturbed(clean), _all(clean)).items()
            }
        x0_cos = last.get("x0", {n: float("nan") for n in names})
        return {
            "surrogate_cos_x0": x0_cos,
            "surrogate_cos_x0_mean": sum(x0_cos.values()) / len(x0_cos),
            "surrogate_cos_data": data_cos,
            "data_loss": last["loss"],
            **self.summary(clean),
        }

    def model_side_loss(
        self,
        backbone: Backbone,
        images: torch.Tensor,
        indices: torch.Tensor,
        prompts: list[str],
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Stage 2's optional term on θ: identity loss of the model's x̂0 of a batch of photos ``indices``."""
        x0 = backbone.denoised_estimate(images, prompts, generator, self.settings.max_denoise_timestep)
        loss, _ = self.identity(sample_transform(self.settings.eot, generator)(x0.float()), indices)
        return loss

    def summary(self, clean: torch.Tensor) -> dict:
        """‖δ‖∞, PSNR (dB) and SSIM of the decoupled photos against the clean ones."""
        from skimage.metrics import structural_similarity

        perturbed = self.perturbed(clean)
        ssim = [
            structural_similarity(
                a.permute(1, 2, 0).cpu().numpy(), b.permute(1, 2, 0).cpu().numpy(), channel_axis=2, data_range=1.0
            )
            for a, b in zip(perturbed, clean)
        ]
        return {
            "linf": float(self.delta.abs().max()),
            "linf_255": float(self.delta.abs().max()) * 255,
            "psnr_db": psnr_db(perturbed, clean),
            "ssim": float(sum(ssim) / len(ssim)),
        }


def _all(images: torch.Tensor) -> torch.Tensor:
    return torch.arange(len(images), device=images.device)


def _decoy_embeddings(path: str, recognizers) -> dict[str, torch.Tensor]:
    """Unit embeddings of the decoy photo's face under each surrogate."""
    photo = load_photo(path)
    face = detect_single_face(photo, source=path)
    out = {}
    for recognizer in recognizers:
        crop = align_crop(photo, face.landmarks, recognizer.template, recognizer.input_size)
        with torch.no_grad():
            out[recognizer.name] = recognizer.embed(to_tensor(crop)[None])[0]
    return out


def build_data_optimizer(settings: PrivacySettings, photos: TrainingPhotos, device: torch.device) -> DataOptimizer:
    """Load the surrogates, compute the user's anchors on the clean photos, and start from δ = 0."""
    recognizers = [load_recognizer(name).to(device) for name in settings.surrogates]
    decoys = _decoy_embeddings(settings.decoy, recognizers) if settings.decoy else None
    clean = photos.images.to(device)
    identity = IdentityLoss(recognizers, settings.surrogate_weights, clean, photos.landmarks, decoys)
    return DataOptimizer(settings, identity, clean.shape, device)
