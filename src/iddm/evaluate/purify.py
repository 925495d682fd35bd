"""The attacker's purifiers: transforms that strip protective perturbations from generations before linking them.

Purification removed many image protections in the literature (JPEG at low quality, blur, noisy upscaling:
Hönig et al., ICLR 2025; regeneration by a diffusion model: GrIDPure, IMPRESS). The attacker applies each
purifier to every generated image, embeds the purified images and links them as in the plain attack; for
each FR system it keeps the purifier that links best (:func:`best_purifiers`), an oracle choice (the
maximum over the sweep, measured with the ground truth), so the best-purifier numbers are an upper bound
on an attacker who must pick one purifier blind.

Purifiers by spec ``KIND:STRENGTH`` (:func:`parse_purifier`):

* ``jpeg:Q``: JPEG at quality ``Q`` in ``1..100`` (:func:`iddm.evaluate.robustness.jpeg`);
* ``blur:S``: Gaussian blur of ``S`` px per 64 px of image side, ``S`` in ``(0, 8]``;
* ``noisy_upscale:F``: down-scale by ``F`` in ``(0, 1]``, add Gaussian noise of std 0.05, up-scale back;
* ``sdedit:T``: SDEdit (Meng et al., ICLR 2022) with the base model: re-noise the image to strength ``T`` in
  ``(0, 1]`` (the fraction of the DDIM schedule) and denoise it with the base model (:func:`sdedit`).

Every strength is checked when the spec is parsed, before any image is touched. Each purifier's cost in image
quality is the PSNR and SSIM of the purified images against the unpurified ones.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from iddm.evaluate.results import BackendLinkability, BestPurifier, Purification, PurifierCost
from iddm.evaluate.robustness import jpeg, noisy_upscale, relative_blur

logger = logging.getLogger(__name__)

PurifierFn = Callable[[Sequence[np.ndarray]], list[np.ndarray]]
"""A purifier: RGB ``uint8`` ``(H, W, 3)`` images in, as many purified images of the same shapes out."""

RANGES: dict[str, tuple[float, float, bool, str]] = {
    "jpeg": (1, 100, True, "JPEG quality, an integer in 1..100"),
    "blur": (0, 8, False, "blur sigma in px per 64 px, in (0, 8]"),
    "noisy_upscale": (0, 1, False, "down-scaling factor in (0, 1]"),
    "sdedit": (0, 1, False, "SDEdit strength in (0, 1]"),
}
"""Kind -> ``(low, high, low inclusive, what)``; the high end is inclusive for every kind."""
IMAGE_PURIFIERS = ("jpeg:30", "blur:1", "blur:2", "blur:3", "noisy_upscale:0.5", "noisy_upscale:0.25")
"""The default purifiers that need no model."""
SDEDIT_STRENGTHS = (0.1, 0.2, 0.3, 0.5)
"""The default SDEdit strengths (with a base model)."""
NO_PURIFIER = "none"
"""The plain attack's name among the candidates of :func:`best_purifiers`."""
SDEDIT_PROMPT = "a photo of a person"
NO_PRETRAINED_BASE = ("iddm:micro",)
"""Base models with no pretrained weights (drawn at random): SDEdit with them would only add noise."""


@dataclass(frozen=True)
class PurifierSpec:
    """One purifier: its kind and strength (see the module docstring for the ranges)."""

    kind: str
    strength: float

    @property
    def name(self) -> str:
        """``jpeg30``, ``blur2``, ``noisy_upscale0.5``, ``sdedit0.3``: its column name."""
        return f"{self.kind}{self.strength:g}"


def parse_purifier(spec: str | PurifierSpec) -> PurifierSpec:
    """``"KIND:STRENGTH"`` (or ``KINDSTRENGTH``, e.g. ``jpeg30``) -> :class:`PurifierSpec`, checked.

    Raises:
        ValueError: an unknown kind or a strength outside its range (one line naming the range).
    """
    if isinstance(spec, PurifierSpec):
        kind, value = spec.kind, spec.strength
    else:
        match = re.fullmatch(r"\s*([a-z_]+)\s*:?\s*([-+0-9.eE]+)\s*", str(spec))
        if match is None or match.group(1) not in RANGES:
            raise ValueError(f"Unknown purifier {spec!r}; use KIND:STRENGTH with KIND one of {', '.join(RANGES)}.")
        kind = match.group(1)
        try:
            value = float(match.group(2))
        except ValueError:
            raise ValueError(f"Purifier {spec!r}: {match.group(2)!r} is not a number.") from None
    low, high, low_inclusive, what = RANGES[kind]
    inside = (value >= low if low_inclusive else value > low) and value <= high
    if not inside or (kind == "jpeg" and value != int(value)):
        raise ValueError(f"Purifier {kind}:{value:g} is out of range: {what}.")
    return PurifierSpec(kind, value)


def parse_purifiers(specs: Sequence[str | PurifierSpec]) -> list[PurifierSpec]:
    """Every spec parsed and checked (before any work); a purifier listed twice is refused."""
    parsed = [parse_purifier(s) for s in specs]
    names = [p.name for p in parsed]
    if len(set(names)) != len(names):
        raise ValueError(f"A purifier is listed twice: {names}.")
    return parsed


def default_purifiers(base_model: str | None) -> list[PurifierSpec]:
    """:data:`IMAGE_PURIFIERS`, and SDEdit at :data:`SDEDIT_STRENGTHS` when there is a pretrained base model."""
    specs = list(IMAGE_PURIFIERS)
    if base_model is not None and str(base_model) not in NO_PRETRAINED_BASE:
        specs += [f"sdedit:{s}" for s in SDEDIT_STRENGTHS]
    return parse_purifiers(specs)


# ----------------------------------------------------------------------------------------------------
# SDEdit with the base model
# ----------------------------------------------------------------------------------------------------


@torch.no_grad()
def sdedit(
    backbone,
    images: torch.Tensor,
    strength: float,
    generator: torch.Generator,
    prompt: str = SDEDIT_PROMPT,
    num_inference_steps: int = 25,
    guidance_scale: float = 1.0,
) -> torch.Tensor:
    """SDEdit: noise ``images`` to ``strength`` of the DDIM schedule and denoise them with ``backbone``.

    As diffusers' ``StableDiffusionImg2ImgPipeline`` does, the last ``round(strength * num_inference_steps)``
    DDIM steps run (at least one), starting from the images' diffusion-space encoding noised to the first of
    them; ``strength == 1`` starts from (almost) pure noise.

    Args:
        backbone: an :class:`iddm.diffusion.backbone.Backbone` (the base model).
        images: ``(N, 3, H, W)`` float RGB in ``[0, 1]`` at the backbone's resolution.
        strength: in ``(0, 1]``.
        generator: CPU generator of the encoding's sampling and the added noise.

    Returns:
        ``(N, 3, H, W)`` float32 in ``[0, 1]`` on the CPU.
    """
    from diffusers import DDIMScheduler

    from iddm.diffusion.sampling import denoise

    parse_purifier(PurifierSpec("sdedit", strength))
    was_training = backbone.unet.training
    backbone.train(False)
    scheduler = DDIMScheduler.from_config(backbone.noise_scheduler.config)
    scheduler.set_timesteps(num_inference_steps)
    run = min(num_inference_steps, max(1, round(strength * num_inference_steps)))
    timesteps = scheduler.timesteps[num_inference_steps - run :]
    dtype = backbone.unet.dtype
    latents = backbone.to_diffusion_space(images.to(backbone.device, dtype), generator=generator)
    noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
    latents = scheduler.add_noise(latents, noise, timesteps[:1].repeat(len(latents)))
    latents = denoise(backbone, scheduler, latents, timesteps, [prompt] * len(latents), guidance_scale)
    result = backbone.to_image_space(latents).float().clamp(0, 1).cpu()
    backbone.train(was_training)
    return result


class SDEditPurifier:
    """SDEdit with a base model, loaded once: ``purifier(images, strength)`` -> purified ``uint8`` images.

    Images whose size differs from the model's resolution are resized (bicubic) to it and back.

    Args:
        base_model: what :func:`iddm.diffusion.loading.load_backbone` loads (e.g. ``iddm:face-prior``, an SD folder).
        device: torch device (default: CUDA if available).
        seed: image ``i`` of a call is purified with seed ``seed + i``, so purification is reproducible.
        num_inference_steps: DDIM steps of the full schedule (a strength ``s`` runs ``s`` of them).
        batch_size: images per denoising pass.
    """

    def __init__(
        self,
        base_model: str | Path,
        device: str | None = None,
        seed: int = 0,
        num_inference_steps: int = 25,
        guidance_scale: float = 1.0,
        prompt: str = SDEDIT_PROMPT,
        batch_size: int = 8,
    ) -> None:
        from iddm.diffusion.loading import load_backbone

        if str(base_model) in NO_PRETRAINED_BASE:
            raise ValueError(
                f"{base_model} has no pretrained weights (it starts at random): SDEdit cannot purify with it."
            )
        self.backbone = load_backbone(base_model)
        self.backbone.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.seed, self.steps, self.guidance, self.prompt = seed, num_inference_steps, guidance_scale, prompt
        self.batch_size = batch_size

    def __call__(self, images: Sequence[np.ndarray], strength: float) -> list[np.ndarray]:
        from PIL import Image

        parse_purifier(PurifierSpec("sdedit", strength))
        side = self.backbone.resolution
        outputs: list[np.ndarray] = []
        for start in range(0, len(images), self.batch_size):
            chunk = list(images[start : start + self.batch_size])
            resized = [
                np.asarray(Image.fromarray(i).resize((side, side), Image.Resampling.BICUBIC))
                if i.shape[:2] != (side, side)
                else i
                for i in chunk
            ]
            batch = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).float() / 255.0
            purified = []
            for offset in range(len(chunk)):  # one generator per image: the result does not depend on batching
                generator = torch.Generator().manual_seed(self.seed + start + offset)
                purified.append(
                    sdedit(
                        self.backbone, batch[offset : offset + 1], strength, generator, self.prompt, self.steps,
                        self.guidance,
                    )[0]
                )  # fmt: skip
            for original, image in zip(chunk, purified):
                array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                if original.shape[:2] != (side, side):
                    size = (original.shape[1], original.shape[0])
                    array = np.asarray(Image.fromarray(array).resize(size, Image.Resampling.BICUBIC))
                outputs.append(array)
        return outputs


# ----------------------------------------------------------------------------------------------------
# Building purifiers and attacking with them
# ----------------------------------------------------------------------------------------------------


def _each(transform: Callable[[np.ndarray], np.ndarray]) -> PurifierFn:
    return lambda images: [transform(i) for i in images]


def build_purifiers(
    specs: Sequence[str | PurifierSpec],
    base_model: str | Path | None = None,
    device: str | None = None,
    seed: int = 0,
    num_inference_steps: int = 25,
) -> dict[str, PurifierFn]:
    """Purifier name -> function, in the given order; checks every spec first.

    Raises:
        ValueError: a bad spec, or an ``sdedit`` purifier without a (pretrained) ``base_model``.
    """
    parsed = parse_purifiers(specs)
    needs_model = any(p.kind == "sdedit" for p in parsed)
    if needs_model and base_model is None:
        raise ValueError("SDEdit purifiers need the base model: pass --purify_model (a model name or folder).")
    regenerate = SDEditPurifier(base_model, device, seed, num_inference_steps) if needs_model else None
    purifiers: dict[str, PurifierFn] = {}
    for p in parsed:
        if p.kind == "jpeg":
            purifiers[p.name] = _each(functools.partial(jpeg, quality=int(p.strength)))
        elif p.kind == "blur":
            purifiers[p.name] = _each(functools.partial(relative_blur, sigma=p.strength))
        elif p.kind == "noisy_upscale":
            purifiers[p.name] = lambda images, s=p.strength: [
                noisy_upscale(image, s, seed=seed + i) for i, image in enumerate(images)
            ]
        else:
            purifiers[p.name] = functools.partial(regenerate, strength=p.strength)
    return purifiers


def purification_cost(original: Sequence[np.ndarray], purified: Sequence[np.ndarray]) -> PurifierCost:
    """Mean PSNR (dB; identical pairs count as 100 dB) and SSIM of purified vs unpurified images."""
    from iddm.fidelity import psnr, ssim

    psnrs = [min(psnr(a, b), 100.0) for a, b in zip(original, purified)]
    ssims = [ssim(a, b) for a, b in zip(original, purified)]
    return PurifierCost(psnr_db=float(np.mean(psnrs)), ssim=float(np.mean(ssims)))


def _score(m: BackendLinkability) -> tuple[float, float]:
    return (m.rank1 if m.rank1 is not None else -1.0, m.match_rate if m.match_rate is not None else -1.0)


def best_purifiers(
    plain: Mapping[str, BackendLinkability],
    linkability: Mapping[str, Mapping[str, BackendLinkability]],
    cost: Mapping[str, PurifierCost],
) -> dict[str, BestPurifier]:
    """FR key -> the purifier that links best: highest R1-U, then highest match rate; ties keep the earlier one.

    The plain attack (:data:`NO_PURIFIER`) is a candidate and comes first, so a purifier is kept only when it
    links strictly better than no purification; the best-purifier R1-U is never below the plain one.
    """
    best = {}
    for key, m in plain.items():
        name, choice = NO_PURIFIER, m
        for purifier, by_key in linkability.items():
            if _score(by_key[key]) > _score(choice):
                name, choice = purifier, by_key[key]
        price = cost.get(name)
        best[key] = BestPurifier(
            purifier=name,
            rank1=choice.rank1,
            chance_rank1=choice.chance_rank1,
            match_rate=choice.match_rate,
            user_z=choice.user_z,
            psnr_db=price.psnr_db if price else None,
            ssim=price.ssim if price else None,
        )
    return best


def purification_attack(
    images: Sequence[np.ndarray],
    plain: Mapping[str, BackendLinkability],
    purifiers: Mapping[str, PurifierFn],
    attack: Callable[[list[np.ndarray], str], Mapping[str, BackendLinkability]],
) -> Purification:
    """Purify ``images`` with each purifier, attack the result, and keep the best purifier per FR system.

    Args:
        images: the generations, RGB ``uint8`` ``(H, W, 3)``.
        plain: FR key -> the plain (unpurified) attack's metrics.
        purifiers: name -> purifier (:func:`build_purifiers`).
        attack: ``(purified images, purifier name) -> FR key -> metrics``: embeds and links like the plain attack.
    """
    linkability, cost = {}, {}
    for name, purify in purifiers.items():
        purified = purify(list(images))
        cost[name] = purification_cost(images, purified)
        linkability[name] = dict(attack(purified, name))
        logger.info("Purifier %s: PSNR %.1f dB, SSIM %.3f.", name, cost[name].psnr_db, cost[name].ssim)
    return Purification(linkability=linkability, cost=cost, best=best_purifiers(plain, linkability, cost))


# ----------------------------------------------------------------------------------------------------
# The benchmark's cells
# ----------------------------------------------------------------------------------------------------

PURIFICATION_FILE = "purification.json"
"""In a cell's folder: its :class:`Purification`, with the purifiers and FR systems it was made with."""
