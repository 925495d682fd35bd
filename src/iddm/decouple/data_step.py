"""The state IDDM optimizes (the photo perturbation δ) and the rounds of data steps that update it.

:class:`Perturbation` holds δ and knows nothing of objectives (applying, summarizing, saving);
:class:`DataOptimizer` runs the defense's objective from :mod:`iddm.decouple.objective` on it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from iddm.decouple.identity import IdentityLoss, load_margins
from iddm.decouple.memory import low_memory_data_step
from iddm.decouple.objective import (
    OBJECTIVES,
    ObjectiveInputs,
    apply,
    expand,
    low_frequency,
    signed_gradient_step,
    uniform_noise,
    warp,
)
from iddm.decouple.privacy import PrivacySettings
from iddm.decouple.shape_limit import ShapeLimit
from iddm.decouple.transforms import sample_transform
from iddm.diffusion import Backbone, TrainingPhotos
from iddm.faces import detect_single_face, embed_photos, load_recognizer
from iddm.fidelity import mean_psnr_ssim
from iddm.images import atomic_write_safetensors, list_photos, load_photo


class Perturbation:
    """δ for the N training photos ``(N, 3, R, R)`` (0 at the start), or with ``delta_grid = g`` a smooth δ held on a
    ``(N, 3, g, g)`` grid (:func:`iddm.decouple.objective.expand`), and, with ``warp_grid = g' > 0``, the smooth
    displacement field ``flow`` ``(N, 2, g', g')`` in pixels (:func:`iddm.decouple.objective.warp`; 0 at the start).
    With ``shared`` both hold one row (``N = 1``) that every photo gets: the photos are aligned crops, so that is the
    same change of face in each."""

    def __init__(
        self, shape: torch.Size, device: torch.device, warp_grid: int = 0, delta_grid: int = 0, shared: bool = False
    ):
        rows = 1 if shared else shape[0]
        size = tuple(shape[2:]) if delta_grid == 0 else (delta_grid, delta_grid)
        self.delta = torch.zeros(rows, shape[1], *size, device=device)
        self.flow = torch.zeros(rows, 2, warp_grid, warp_grid, device=device) if warp_grid else None
        self._perturbed: tuple[tuple, torch.Tensor] | None = None

    def full(self, delta: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        """``delta`` (this perturbation's or a copy being stepped) at the resolution of ``clean``."""
        return expand(delta, clean.shape[-2:])

    def base(self, clean: torch.Tensor) -> torch.Tensor:
        """The photos δ is added to: ``clean`` warped by ``flow`` (``clean`` itself without a warp)."""
        return clean if self.flow is None else warp(clean, self.flow)

    def perturbed(self, clean: torch.Tensor) -> torch.Tensor:
        """``X̃ = clamp(W(X) + δ, 0, 1)`` ``(N, 3, R, R)`` (no gradient; do not modify it in place).

        Personalization asks for it every step but δ and the warp only change in data rounds, which replace
        those tensors: the result is kept until one of them (or ``clean``) is another object.
        """
        key = (clean, self.delta, self.flow)
        if self._perturbed is None or any(a is not b for a, b in zip(self._perturbed[0], key)):
            self._perturbed = (key, apply(self.base(clean), self.full(self.delta, clean)).detach())
        return self._perturbed[1]

    def summary(self, clean: torch.Tensor) -> dict:
        """‖δ‖∞, the largest warp displacement (px), mean PSNR (dB; inf unchanged) and SSIM of the decoupled
        photos against the clean ones."""
        psnr, ssim = mean_psnr_ssim(list(self.perturbed(clean)), list(clean))
        linf = float(self.full(self.delta, clean).abs().max())
        warp_px = 0.0 if self.flow is None else float(self.flow.abs().max())
        return {"linf": linf, "linf_255": linf * 255, "warp_px": warp_px, "psnr_db": psnr, "ssim": ssim}

    def state(self) -> dict[str, torch.Tensor]:
        """``{"delta": δ}`` and, when warped, ``"flow"``: what checkpoints and ``decoupled_delta.safetensors`` hold."""
        return {"delta": self.delta} | ({} if self.flow is None else {"flow": self.flow})

    def load_state(self, tensors: dict[str, torch.Tensor], source: Path | str) -> None:
        """Replace δ (and the warp, when ``tensors`` holds one) with saved ones of the same photos and resolution."""
        delta, flow = tensors["delta"], tensors.get("flow")
        if delta.shape != self.delta.shape or (flow is not None and flow.shape[0] != delta.shape[0]):
            raise ValueError(
                f"{source}: its perturbation has shape {tuple(delta.shape)}, this run's photos "
                f"{tuple(self.delta.shape)}. Use the same photos, resolution and --shared_perturbation."
            )
        self.delta = delta.to(self.delta.device)
        if flow is not None:
            self.flow = flow.to(self.delta.device)

    def save(self, path: Path) -> None:
        atomic_write_safetensors(path, self.state())

    def load(self, path: Path) -> None:
        """Replace δ (and the warp) with the ones saved at ``path`` (same photos and resolution required)."""
        self.load_state(load_file(path), path)


class DataOptimizer:
    """Runs the defense's data objective on a :class:`Perturbation` against the current model."""

    def __init__(
        self,
        settings: PrivacySettings,
        identity: IdentityLoss,
        perturbation: Perturbation,
        shape_limit: ShapeLimit | None = None,
    ):
        self.settings = settings
        self.identity = identity
        self.perturbation = perturbation
        self.shape_limit = shape_limit

    def initialize(self, backbone: Backbone, clean: torch.Tensor, prompt: str, generator: torch.Generator) -> dict:
        """δ before training: random for ``noise``, a one-shot FR cloak for ``cloak``; else δ stays 0."""
        s = self.settings
        if s.defense == "noise":
            self.perturbation.delta = uniform_noise(clean, s.epsilon, generator)
        elif s.defense == "cloak":
            return self.run_round(backbone, clean, prompt, s.cloak_steps, generator)
        return self.perturbation.summary(clean)

    def step(self, inputs: ObjectiveInputs) -> dict:
        """One projected signed-gradient step on δ (and the warp); returns the surrogate cosines measured before it."""
        s, perturbation = self.settings, self.perturbation
        delta = perturbation.delta.clone().requires_grad_(True)
        flow = None if perturbation.flow is None else perturbation.flow.clone().requires_grad_(True)
        base = inputs.clean if flow is None else warp(inputs.clean, flow)
        loss, logged = OBJECTIVES[s.defense](inputs, base, perturbation.full(delta, inputs.clean))
        gradients = torch.autograd.grad(loss, [delta] + ([flow] if flow is not None else []), allow_unused=True)
        gradients = [torch.zeros_like(p) if g is None else g for p, g in zip((delta, flow), gradients)]
        if flow is not None:
            perturbation.flow = self._step_warp(flow.detach(), gradients[1], tuple(inputs.clean.shape[-2:]))
        with torch.no_grad():
            base = perturbation.base(inputs.clean)
            gradient = low_frequency(gradients[0], s.low_frequency)
            perturbation.delta = signed_gradient_step(
                perturbation.delta, gradient, s.step_size, base, s.epsilon, s.delta_chroma
            )
        logged["loss"] = float(loss.detach())
        return logged

    def _step_warp(self, flow: torch.Tensor, gradient: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """One signed-gradient step on the warp's flow within its budget, then back within the shape limit."""
        bound = self.settings.warp * min(size) / 64  # the budget is per 64 px of image side
        flow = (flow - bound / 8 * gradient.sign()).clamp(-bound, bound)
        return flow if self.shape_limit is None else self.shape_limit.project(flow, bound, size)

    def run_round(
        self, backbone: Backbone, clean: torch.Tensor, prompt: str, steps: int, generator: torch.Generator
    ) -> dict:
        """``steps`` data steps against the current model; returns a log record."""
        backbone.train(False)
        with torch.no_grad():
            conditioning = backbone.encode_prompts([prompt] * len(clean)).detach()
        inputs = ObjectiveInputs(clean, backbone, conditioning, self.identity, self.settings, generator)
        with low_memory_data_step(backbone, self.settings.data_step_checkpointing):
            logs = [self.step(inputs) for _ in range(steps)]
        names = [r.name for r in self.identity.recognizers]
        with torch.no_grad():
            indices = torch.arange(len(clean), device=clean.device)
            cosines = self.identity.cosines(self.perturbation.perturbed(clean), indices)
        # The last cosine logged per surrogate (a step may evaluate only some of them).
        x0_cos = {n: float("nan") for n in names} | {n: c for log in logs for n, c in log.get("x0", {}).items()}
        return {
            "surrogate_cos_x0": x0_cos,
            "surrogate_cos_x0_mean": sum(x0_cos.values()) / len(x0_cos),
            "surrogate_cos_data": {k: float(v.mean()) for k, v in cosines.items()},
            "data_loss": logs[-1]["loss"],
            **self.perturbation.summary(clean),
            **self._shape_summary(clean),
        }

    def _shape_summary(self, clean: torch.Tensor) -> dict:
        """The warped faces' mean 68-point shape distance (1 = a typical real face), when a shape limit holds it."""
        if self.shape_limit is None or self.perturbation.flow is None:
            return {}
        with torch.no_grad():
            distances = self.shape_limit.distances(self.perturbation.flow, tuple(clean.shape[-2:]))
        return {"warped_shape_distance": float(distances.mean())}

    def model_side_loss(
        self,
        backbone: Backbone,
        images: torch.Tensor,
        indices: torch.Tensor,
        conditioning,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Stage 2's optional term on θ: identity loss of the model's x̂0 of a batch of photos ``indices``."""
        x0 = backbone.denoised_estimate(images, conditioning, generator, self.settings.max_denoise_timestep)
        transform = sample_transform(self.settings.eot, generator, self.settings.jitter)
        loss, _ = self.identity(transform(x0.float()), indices)
        return loss


def _decoy_embeddings(path: str, recognizers) -> dict[str, torch.Tensor]:
    """Unit embeddings of the decoy under each surrogate: of one photo's face, or the normalized mean over a
    folder's photos (photos of several people make a composite that is nobody in particular)."""
    paths = list_photos(path) if Path(path).is_dir() else [Path(path)]
    photos = [load_photo(p) for p in paths]
    faces = [detect_single_face(photo, source=str(p)) for photo, p in zip(photos, paths)]
    return {r.name: F.normalize(torch.stack(embed_photos(r, photos, faces)).mean(0), dim=0) for r in recognizers}


def build_data_optimizer(settings: PrivacySettings, photos: TrainingPhotos, device: torch.device) -> DataOptimizer:
    """Load the surrogates, anchor the identity loss on the clean photos, and start from δ = 0."""
    recognizers = [load_recognizer(name).to(device) for name in settings.surrogates]
    decoys = _decoy_embeddings(settings.decoy, recognizers) if settings.decoy else None
    margins = load_margins(recognizers) if settings.identity_loss == "calibrated" else None
    clean = photos.images.to(device)
    identity = IdentityLoss(
        recognizers, settings.surrogate_weights, clean, photos.landmarks, decoys, margins, settings.surrogate_precision
    )
    warp_grid = settings.warp_grid if settings.warp > 0 else 0
    perturbation = Perturbation(clean.shape, device, warp_grid, settings.delta_grid, settings.shared_perturbation)
    shape_limit = None
    if warp_grid and settings.shape_limit > 0:
        shape_limit = ShapeLimit.of(photos.as_uint8(), photos.landmarks.cpu().numpy(), settings.shape_limit, device)
    return DataOptimizer(settings, identity, perturbation, shape_limit)
