"""What a defense costs: face detection, BRISQUE, imperceptibility of the training perturbation (PSNR/SSIM via
:mod:`iddm.fidelity`), CLIP score, SSIM to the vanilla model's generations, and whether the avatars stay good faces
of one person (:mod:`iddm.evaluate.face_utility`) (docs/evaluation.md, ``utility``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from iddm.evaluate import quality
from iddm.evaluate.face_utility import face_utility
from iddm.evaluate.linkability import FaceSet
from iddm.evaluate.results import PerturbationQuality, Utility
from iddm.fidelity import mean_psnr_ssim, ssim
from iddm.images import load_photo
from iddm.run_layout import DECOUPLED_DIR, RunManifest, private_dir


def brisque_mean(images: Sequence[np.ndarray]) -> tuple[float | None, str | None]:
    """Mean BRISQUE of the images, or ``(None, reason)`` when they are too small to score reliably."""
    side = min(min(image.shape[:2]) for image in images)
    if side < quality.BRISQUE_MIN_SIDE:
        return None, f"images are {side} px, below BRISQUE's reliable minimum of {quality.BRISQUE_MIN_SIDE} px"
    scores = np.array([quality.brisque_score(image) for image in images], dtype=np.float64)
    if not np.isfinite(scores).any():
        return None, "every image is flat (no texture to score)"
    return float(np.nanmean(scores)), None


def perturbation_pairs(run_dir: str | Path) -> tuple[list[tuple[np.ndarray, np.ndarray]], str | None]:
    """``(clean crop, decoupled photo)`` uint8 ``(R, R, 3)`` pairs of a run, or ``([], why not)``.

    The clean crops are made again from the run's photo folder with :func:`iddm.diffusion.prepare_photos`
    at the run's resolution and crop mode, i.e. exactly the images the perturbation was added to.
    """
    from iddm.diffusion import prepare_photos

    decoupled_dir = private_dir(run_dir) / DECOUPLED_DIR
    if not decoupled_dir.is_dir():
        return [], "the run trained on unperturbed photos (no decoupled photos)"
    run = RunManifest.load(run_dir)
    photos_dir = Path(run.photos)
    if not photos_dir.is_dir():
        return [], f"the run's photo folder {photos_dir} is gone: cannot compare with the clean crops"
    perturbed = {p.stem: load_photo(p) for p in sorted(decoupled_dir.glob("*.png"))}
    if not perturbed:
        return [], "decoupled_photos/ is empty"
    resolution = next(iter(perturbed.values())).shape[0]
    clean = prepare_photos(photos_dir, resolution, crop=run.crop, min_photos=1, skip_bad_photos=True)
    pairs = [
        (image, perturbed[path.stem]) for path, image in zip(clean.paths, clean.as_uint8()) if path.stem in perturbed
    ]
    return pairs, None if pairs else f"no decoupled photo matches a photo of {photos_dir}"


def perturbation_quality(run_dir: str | Path) -> PerturbationQuality:
    """Imperceptibility of the run's training perturbation: ``private/decoupled_photos/`` vs the clean crops.

    PSNR is the mean per photo (``None`` when identical), ``linf_255`` the largest change in 0..255 units.
    """
    pairs, note = perturbation_pairs(run_dir)
    if not pairs:
        return PerturbationQuality(note=note)
    psnr, mean_ssim = mean_psnr_ssim([a for a, _ in pairs], [b for _, b in pairs])
    linf = max(int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()) for a, b in pairs)
    note = "the decoupled photos equal the clean crops (delta = 0)" if linf == 0 else None
    return PerturbationQuality(psnr_db=psnr, ssim=mean_ssim, linf_255=linf, num_photos=len(pairs), note=note)


def clip_score(images: Sequence[np.ndarray], prompts: Sequence[str], model_dir: str | Path) -> float:
    """Mean CLIP score ``100 * max(cos(image, prompt), 0)`` (as torchmetrics; Hessel et al., EMNLP 2021).

    Args:
        images: RGB ``uint8`` images; image ``i`` was generated from ``prompts[i % len(prompts)]``.
        model_dir: a local transformers CLIP folder (``CLIPModel`` weights, tokenizer, image processor);
            never downloaded.
    """
    import torch
    from transformers import CLIPModel, CLIPProcessor

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"--clip_model {model_dir} is not a folder of local CLIP weights.")
    model = CLIPModel.from_pretrained(model_dir, local_files_only=True).eval()
    processor = CLIPProcessor.from_pretrained(model_dir, local_files_only=True)
    texts = [prompts[i % len(prompts)] for i in range(len(images))]
    inputs = processor(text=texts, images=list(images), return_tensors="pt", padding=True, truncation=True)
    with torch.no_grad():
        image_features = model.get_image_features(pixel_values=inputs["pixel_values"])
        text_features = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    cosine = torch.nn.functional.cosine_similarity(_as_tensor(image_features), _as_tensor(text_features), dim=-1)
    return float((100.0 * cosine.clamp(min=0)).mean())


def _as_tensor(value: Any):
    """transformers 5 may return a model output instead of a tensor of features."""
    import torch

    if torch.is_tensor(value):
        return value
    pooled = getattr(value, "pooler_output", None)
    return pooled if pooled is not None else value[0]


def ssim_to_vanilla(
    images: Sequence[np.ndarray], vanilla_images: Sequence[np.ndarray] | None
) -> tuple[float | None, str | None]:
    """Mean SSIM between each generation and the vanilla model's with the same seed and prompt, or ``(None, why)``."""
    if vanilla_images is None:
        return None, "no vanilla generations to compare with"
    pairs = [(a, b) for a, b in zip(images, vanilla_images) if a.shape == b.shape]
    if not pairs:
        return None, "vanilla images differ in size"
    return float(np.mean([ssim(a, b) for a, b in pairs])), None


def utility_metrics(
    images: Sequence[np.ndarray],
    names: Sequence[str],
    probes: FaceSet,
    run_dir: str | Path | None = None,
    prompts: Sequence[str] | None = None,
    clip_model: str | Path | None = None,
    vanilla_images: Sequence[np.ndarray] | None = None,
) -> Utility:
    """Utility of the generations (and of the run's perturbation).

    Args:
        images: the generations, RGB ``uint8`` ``(H, W, 3)``.
        names: one name per image (file names), to list those without a detected face.
        probes: the generations as embedded by the attacker.
    """
    brisque, brisque_note = brisque_mean(images)
    if clip_model is None:
        clip, clip_note = None, "no --clip_model given (local CLIP weights needed)"
    elif not prompts:
        clip, clip_note = None, "no --prompt given for the images"
    else:
        clip, clip_note = clip_score(images, prompts, clip_model), None
    to_vanilla, to_vanilla_note = ssim_to_vanilla(images, vanilla_images)
    pairs = perturbation_pairs(run_dir)[0] if run_dir is not None else []
    face = face_utility(images, run_dir, vanilla_images, pairs)
    detection = probes.detection_rate
    return Utility(
        num_images=len(images),
        resolution=[int(images[0].shape[0]), int(images[0].shape[1])],
        fdfr=1.0 - detection,
        face_detection_rate=detection,
        undetected_images=[name for name, found in zip(names, probes.detected) if not found],
        brisque_mean=brisque,
        brisque_note=brisque_note,
        perturbation=PerturbationQuality(note="no --run_dir given")
        if run_dir is None
        else perturbation_quality(run_dir),
        clip_score=clip,
        clip_note=clip_note,
        ssim_to_vanilla=to_vanilla,
        ssim_to_vanilla_note=to_vanilla_note,
        face=face,
    )
