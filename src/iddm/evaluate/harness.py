"""``iddm evaluate``: attack a set of generated images with several face recognition systems (DESIGN.md §3).

Each generated image is a probe; every metric is computed per FR system (:mod:`iddm.evaluate.attacker`),
next to the utility of the images (:mod:`iddm.evaluate.utility`) and, optionally, the linkability after
platform degradations. Outputs in ``output_dir``: ``metrics.json`` (an
:class:`iddm.evaluate.results.EvaluateReport`), ``report.md`` and a self-contained ``report.html``; with
``--run_dir``, the run's publishable model card gets the measured linkability (its privacy report card).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from iddm.config import field
from iddm.evaluate.attack_options import AttackerOptions
from iddm.evaluate.attacker import (
    USER_LABEL,
    attacker_knowledge,
    linkability_by_backend,
    load_backends,
    load_gallery_folder,
    load_images,
    mismatched_reference_pairs,
    roles,
)
from iddm.evaluate.face_utility import add_kid_to_real
from iddm.evaluate.linkability import FaceSet, embed_groups, embed_images
from iddm.evaluate.purify import PurifierFn, build_purifiers, default_purifiers, purification_attack
from iddm.evaluate.render import evaluate_html, evaluate_markdown
from iddm.evaluate.results import EvaluateReport, Evaluation, PhotoSetSummary, Role, RunSummary, to_json
from iddm.evaluate.robustness import ROBUSTNESS_CONDITIONS
from iddm.evaluate.utility import utility_metrics
from iddm.faces import FaceRecognizer
from iddm.faces.mobilefacenet import use_model_path
from iddm.images import atomic_write_json, atomic_write_text, load_photo
from iddm.run_layout import RunManifest, is_run_dir

logger = logging.getLogger(__name__)

DEFAULT_PROMPTS = [
    "a photo of sks person",
    "a dslr portrait of sks person",
    "a close-up photo of sks person smiling",
]


@dataclass
class EvaluateConfig(AttackerOptions):
    images: Path | None = field(None, help="Folder of generated images to attack (or generate them with --model).")
    reference: Path | None = field(
        None, help="Folder of the user's real photos held out from training (the attacker's).", required=True
    )
    gallery: Path | None = field(
        None, help="Folder holding one sub-folder of real photos per distractor identity.", required=True
    )
    output_dir: Path | None = field(
        None, help="Where metrics.json, report.md and report.html are written.", required=True
    )
    run_dir: Path | None = field(
        None,
        help="Output folder of the `iddm personalize` run: labels white-box FR systems, measures PSNR/SSIM, and "
        "adds the measured linkability to its model card.",
    )
    model: str | None = field(None, help="Generate the images first from this model (a run folder or SD folder).")
    lora: Path | None = field(None, help="LoRA folder loaded onto --model for generation.")
    prompt: list[str] | None = field(
        None, help="Prompts (generation: default the 3 standard prompts; with --images: enables the CLIP score)."
    )
    num_images: int = field(8, help="Images to generate with --model.", ge=1, le=100_000)
    seed: int = field(0, help="Generation seed (image i uses seed + i).", ge=0)
    num_inference_steps: int = field(25, help="DDIM steps for generation.", ge=1, le=1000)
    guidance_scale: float | None = field(None, help="Classifier-free guidance (default: 7.5 for SD, 1 micro).", ge=0)
    resolution: int | None = field(None, help="Generation resolution (SD; default: the model's).", ge=32, le=4096)
    clip_model: Path | None = field(None, help="Local folder of CLIP weights (transformers format) for CLIP score.")
    vanilla_images: Path | None = field(
        None, help="Generations of the vanilla model with the same prompts and seeds: adds ssim_to_vanilla."
    )
    device: str | None = field(None, help="torch device for generation (default: cuda if available).")

    def problems(self) -> list[str]:
        if (self.images is None) == (self.model is None):
            return ["give exactly one of --images (a folder of generated images) or --model (generate them)"]
        return self.attacker_problems()


def evaluate_images(
    images: Sequence[np.ndarray],
    reference: FaceSet,
    gallery: FaceSet,
    recognizers: Mapping[str, FaceRecognizer],
    roles_by_key: Mapping[str, Role],
    names: Sequence[str] | None = None,
    robustness: bool = False,
    run_dir: str | Path | None = None,
    prompts: Sequence[str] | None = None,
    clip_model: str | Path | None = None,
    vanilla_images: Sequence[np.ndarray] | None = None,
    purifiers: Mapping[str, PurifierFn] | None = None,
) -> tuple[Evaluation, FaceSet]:
    """Every metric of the protocol for one set of generated images.

    Args:
        images: the probes, RGB ``uint8`` ``(H, W, 3)``.
        reference, gallery: from :func:`iddm.evaluate.attacker.attacker_knowledge`, embedded with ``recognizers``.
        recognizers: registry key -> recognizer; ``roles_by_key``: their roles (:func:`iddm.evaluate.attacker.roles`).
        names: one name per image (default ``image_0000``, ...), to name images without a detected face.
        robustness: also attack after each of :data:`ROBUSTNESS_CONDITIONS`.
        purifiers: also attack after each of these (:func:`iddm.evaluate.purify.build_purifiers`) and keep the best.

    Returns:
        The evaluation, and the probes as embedded (the benchmark keeps them for the stalker's cross-cell pool).
    """
    if not images:
        raise ValueError("No images to evaluate.")
    images = list(images)
    names = list(names) if names is not None else [f"image_{i:04d}" for i in range(len(images))]
    rec = list(recognizers.values())
    probes = embed_images(images, rec, progress="attack: embedding generations")
    undetected = [name for name, found in zip(names, probes.detected) if not found]
    if undetected:
        logger.warning(
            "No face detected in %d of %d generated images (%s): they are left out of every linkability metric "
            "and counted in FDFR.",
            len(undetected),
            len(images),
            ", ".join(undetected[:8]) + (", ..." if len(undetected) > 8 else ""),
        )
    evaluation = Evaluation(
        backends=linkability_by_backend(probes, reference, gallery, recognizers, roles_by_key),
        utility=utility_metrics(images, names, probes, run_dir, prompts, clip_model, vanilla_images),
    )
    if robustness:
        evaluation.robustness = {"clean": evaluation.backends}
        for condition, degrade in ROBUSTNESS_CONDITIONS.items():
            if condition == "clean":
                continue
            degraded = embed_images([degrade(i) for i in images], rec, progress=f"attack: {condition}")
            evaluation.robustness[condition] = linkability_by_backend(
                degraded, reference, gallery, recognizers, roles_by_key
            )
    if purifiers:
        evaluation.purification = purification_attack(
            images,
            evaluation.backends,
            purifiers,
            lambda purified, name: linkability_by_backend(
                embed_images(purified, rec, progress=f"attack: {name}"), reference, gallery, recognizers, roles_by_key
            ),
        )
    return evaluation, probes


def generate_probe_images(
    model: str,
    output_dir: Path,
    prompts: Sequence[str],
    num_images: int,
    seed: int,
    num_inference_steps: int = 25,
    guidance_scale: float | None = None,
    lora: Path | None = None,
    resolution: int | None = None,
    device: str | None = None,
) -> list[np.ndarray]:
    """Generate with :func:`iddm.diffusion.generate.run_generate` into ``output_dir`` and return the images."""
    from iddm.diffusion.generate import GenerateConfig, run_generate

    config = GenerateConfig(
        pretrained_model_name_or_path=str(model),
        lora=lora,
        output_dir=Path(output_dir),
        prompt=list(prompts),
        num_images=num_images,
        seed=seed,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,  # None: the model's recommendation
        resolution=resolution,
        device=device,
    )
    return [load_photo(p) for p in run_generate(config)]


def knows_one_prompt(model: str | Path, lora: Path | None) -> bool:
    """Whether ``model`` is, or was personalized from, a built-in model that knows no prompt but the instance
    prompt (``iddm:face-prior-64``, ``iddm:micro``)."""
    from iddm.diffusion.generate import generation_source
    from iddm.diffusion.loading import ONE_PROMPT_MODELS
    from iddm.diffusion.pixel import PIXEL_BACKBONE_FILE
    from iddm.run_layout import resolve_model_dir

    if str(model) in ONE_PROMPT_MODELS or (
        lora is None and (resolve_model_dir(model) / PIXEL_BACKBONE_FILE).is_file()
    ):
        return True
    try:
        base, _ = generation_source(model, lora)
    except (ValueError, OSError):
        return False
    return base in ONE_PROMPT_MODELS


def default_probe_prompts(model: str | Path, lora: Path | None) -> list[str]:
    """The prompts ``model`` is probed with when none are given: the instance prompt for a built-in model that knows
    no other, a face prior's own ``probe_prompts`` (its ``iddm_prior.json``), else Stable Diffusion's three."""
    import json

    from iddm.diffusion.generate import generation_source
    from iddm.run_layout import resolve_model_dir
    from iddm.weights import PRIOR_FILE, PRIOR_NAMES, prior_path

    if knows_one_prompt(model, lora):
        return DEFAULT_PROMPTS[:1]
    try:
        base, _ = generation_source(model, lora)
        folder = prior_path(base) if base in PRIOR_NAMES else resolve_model_dir(base)
    except (ValueError, OSError, TypeError):
        return list(DEFAULT_PROMPTS)
    info = folder / PRIOR_FILE
    if not info.is_file():
        return list(DEFAULT_PROMPTS)
    return list(json.loads(info.read_text()).get("probe_prompts", DEFAULT_PROMPTS))


def purify_base_model(config: EvaluateConfig) -> str | None:
    """The base model SDEdit purifies with: ``--purify_model``, else the base of ``--model`` or of ``--run_dir``."""
    from iddm.diffusion.generate import generation_source

    if config.purify_model is not None:
        return config.purify_model
    if config.model is not None:
        return generation_source(config.model, config.lora)[0]
    if config.run_dir is not None:
        base = RunManifest.load(config.run_dir).config.get("pretrained_model_name_or_path")
        return str(base) if base else None
    return None


def run_summary(run_dir: str | Path | None) -> RunSummary | None:
    """What the evaluation needs to know about the run: folder, defense, privacy level, surrogates, steps."""
    if run_dir is None:
        return None
    run = RunManifest.load(run_dir)
    return RunSummary(
        dir=str(run_dir),
        defense=run.model.defense,
        privacy=run.model.privacy.get("label"),
        surrogates=run.white_box,
        steps=run.steps,
        backbone=run.model.backbone,
    )


def _probe_images(config: EvaluateConfig, output_dir: Path) -> tuple[list, Path, list[str], list[str] | None]:
    """The images to attack: generated from ``--model`` into ``output_dir/images`` or read from ``--images``.

    Returns:
        ``(images, their folder, their file names, the prompts they were drawn with or None)``.
    """
    if config.model is None:
        images, paths, _ = load_images(config.images, "generated images")
        return images, config.images, [p.name for p in paths], config.prompt
    prompts = list(config.prompt or default_probe_prompts(config.model, config.lora))
    if knows_one_prompt(config.model, config.lora):
        prompts = prompts[:1]
    images_dir = output_dir / "images"
    images = generate_probe_images(
        config.model,
        images_dir,
        prompts,
        config.num_images,
        config.seed,
        config.num_inference_steps,
        config.guidance_scale,
        config.lora,
        config.resolution,
        config.device,
    )
    return images, images_dir, [f"image_{i:04d}.png" for i in range(len(images))], prompts


def _reference_warning(reference_faces, recognizers, reference_paths: list[Path]) -> list[str]:
    """A warning when the reference photos do not all match each other (they may not all show the user)."""
    mismatched = mismatched_reference_pairs(reference_faces, recognizers, [p.name for p in reference_paths])
    if not mismatched:
        return []
    message = "the reference photos may not all show the user: " + "; ".join(mismatched)
    logger.warning("Warning: %s. Linkability is measured against their mean; check --reference.", message)
    return [message]


def _run_crop(run_dir: str | Path | None) -> str:
    """How the run cropped its training photos (real faces are cropped the same way for KID to real faces)."""
    return (RunManifest.load(run_dir).crop if run_dir is not None and is_run_dir(run_dir) else None) or "aligned"


def run_evaluate(config: EvaluateConfig) -> EvaluateReport:
    """The ``iddm evaluate`` command: load or generate the images, attack them, write the reports."""
    from iddm.images import ensure_writable_dir
    from iddm.schedule.model_card import update_privacy_report

    run = run_summary(config.run_dir)  # a bad --run_dir fails before any work
    use_model_path(config.mobilefacenet)
    reference_images, reference_paths, reference_skipped = load_images(config.reference, "reference")
    distractor_images, gallery_skipped = load_gallery_folder(config.gallery)
    output_dir = ensure_writable_dir(config.output_dir)
    recognizers = load_backends(config.backends)
    purifiers = None
    if config.purify:
        base = purify_base_model(config)
        specs = config.purifiers if config.purifiers is not None else default_purifiers(base)
        purifiers = build_purifiers(specs, base, config.device, config.seed, config.num_inference_steps)
    images, images_dir, names, prompts = _probe_images(config, output_dir)
    vanilla = load_images(config.vanilla_images, "vanilla images")[0] if config.vanilla_images else None

    rec = list(recognizers.values())
    distractors = embed_groups(distractor_images, rec, progress="gallery photos")
    reference_faces = embed_images(reference_images, rec, progress="reference photos")
    warnings = [f"skipped {s}" for s in reference_skipped + gallery_skipped]
    warnings += _reference_warning(reference_faces, recognizers, reference_paths)
    reference, gallery = attacker_knowledge(reference_faces, distractors)
    evaluation, probes = evaluate_images(
        images, reference, gallery, recognizers, roles(config.run_dir, recognizers), names, config.robustness,
        config.run_dir, prompts, config.clip_model, vanilla, purifiers,
    )  # fmt: skip
    if evaluation.utility.face is not None:
        real = reference_images + [photo for photos in distractor_images.values() for photo in photos]
        add_kid_to_real(evaluation.utility.face, images, vanilla, real, _run_crop(config.run_dir))
    if evaluation.utility.undetected_images:
        warnings.append(f"no face detected in {', '.join(evaluation.utility.undetected_images)}")
    report = EvaluateReport(
        images=str(images_dir),
        num_images=len(images),
        reference=PhotoSetSummary(
            folder=str(config.reference),
            num_photos=len(reference_images),
            num_faces=int(reference.detected.sum()),
            skipped=reference_skipped,
        ),
        gallery=PhotoSetSummary(
            folder=str(config.gallery),
            num_photos=len(gallery.detected),
            num_faces=int(gallery.detected.sum()),
            identities=[USER_LABEL, *distractor_images],
            skipped=gallery_skipped,
        ),
        run=run,
        prompts=prompts,
        backends=evaluation.backends,
        utility=evaluation.utility,
        robustness=evaluation.robustness,
        warnings=warnings,
        purification=evaluation.purification,
    )
    atomic_write_json(output_dir / "metrics.json", to_json(report))
    atomic_write_text(output_dir / "report.md", evaluate_markdown(report))
    atomic_write_text(output_dir / "report.html", evaluate_html(report, images, reference_images))
    if config.run_dir is not None:
        update_privacy_report(Path(config.run_dir), report.privacy_report())
    return report
