"""``iddm evaluate``: attack a set of generated images with several face recognition systems (DESIGN.md §3).

The attacker holds real photos of the user (``reference``, held out from training) and a gallery of
real photos of other people. Each generated image is a probe; every metric is computed per FR
system, and each system is labelled white-box (a surrogate of the optimizer, read from the run's
``iddm_run.json``) or black-box. Utility (BRISQUE, face detection, imperceptibility of the training
perturbation, CLIP score) and robustness to platform degradations are reported beside it.

Outputs in ``output_dir``: ``metrics.json``, ``report.md`` and a self-contained ``report.html``
(see ``docs/evaluation.md`` for every key).
"""

from __future__ import annotations

import html
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from iddm.config import field
from iddm.evaluate import quality
from iddm.evaluate.linkability import FaceSet, embed_images, linkability
from iddm.evaluate.report import fmt, html_document, html_image, html_table, json_safe, markdown_table
from iddm.evaluate.robustness import ROBUSTNESS_CONDITIONS
from iddm.faces import FaceRecognizer, load_recognizer
from iddm.images import atomic_write_json, atomic_write_text, list_photos, load_photo, make_grid
from iddm.run_layout import DECOUPLED_DIR, PRIVATE_DIR, RunManifest

logger = logging.getLogger(__name__)

USER_LABEL = "user"
"""Label of the user's real photos in the attacker's gallery."""
DEFAULT_BACKENDS = ["sface", "facenet", "dlib"]
DEFAULT_PROMPTS = [
    "a photo of sks person",
    "a dslr portrait of sks person",
    "a close-up photo of sks person smiling",
]
FARS = (1e-2, 1e-3)


@dataclass
class EvaluateConfig:
    images: Path | None = field(None, help="Folder of generated images to attack (or generate them with --model).")
    reference: Path = field(None, help="Folder of the user's real photos held out from training (the attacker's).")
    gallery: Path = field(None, help="Folder holding one sub-folder of real photos per distractor identity.")
    output_dir: Path = field(None, help="Where metrics.json, report.md and report.html are written.")
    run_dir: Path | None = field(
        None, help="Output folder of the `iddm personalize` run: labels white-box FR systems, measures PSNR/SSIM."
    )
    backends: list[str] = field(DEFAULT_BACKENDS, help="Face recognition systems of the attacker.")
    robustness: bool = field(False, help="Also attack after JPEG 90/75/50, resize x0.5 and blur.")
    model: str | None = field(None, help="Generate the images first from this model (a run folder or SD folder).")
    lora: Path | None = field(None, help="LoRA folder loaded onto --model for generation.")
    prompt: list[str] | None = field(
        None, help="Prompts (generation: default the 3 standard prompts; with --images: enables the CLIP score)."
    )
    num_images: int = field(8, help="Images to generate with --model.")
    seed: int = field(0, help="Generation seed (image i uses seed + i).")
    num_inference_steps: int = field(25, help="DDIM steps for generation.")
    guidance_scale: float | None = field(None, help="Classifier-free guidance (default: 7.5 for SD, 1 micro).")
    resolution: int | None = field(None, help="Generation resolution (SD; default: the model's).")
    clip_model: Path | None = field(None, help="Local folder of CLIP weights (transformers format) for CLIP score.")
    vanilla_images: Path | None = field(
        None, help="Generations of the vanilla model with the same prompts and seeds: adds ssim_to_vanilla."
    )
    device: str | None = field(None, help="torch device for generation (default: cuda if available).")


# ----------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------


def load_backends(keys: Sequence[str]) -> dict[str, FaceRecognizer]:
    """Registry key (``sface``, ``facenet``, ``dlib``, ...) -> loaded recognizer, in the given order.

    The key is what ``iddm_run.json`` lists as ``surrogates``; the recognizer's ``.name`` may differ
    (``facenet`` -> ``facenet-casia``), and embeddings are stored under that name.
    """
    if not keys:
        raise ValueError("--backends needs at least one face recognition system (e.g. sface facenet dlib).")
    keys = [k.strip().lower() for k in keys]
    if len(set(keys)) != len(keys):
        raise ValueError(f"--backends lists a system twice: {keys}.")
    return {key: load_recognizer(key) for key in keys}


def load_images(folder: str | Path, what: str = "images") -> tuple[list[np.ndarray], list[Path]]:
    """Every image of ``folder`` (sorted by name) as RGB ``uint8`` arrays, with their paths."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"The {what} folder {folder} does not exist.")
    paths = list_photos(folder, min_photos=1)
    return [load_photo(p) for p in paths], paths


def load_gallery_folder(folder: str | Path) -> dict[str, list[np.ndarray]]:
    """Distractor identity (sub-folder name) -> its photos."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"The gallery folder {folder} does not exist.")
    subfolders = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not subfolders:
        raise ValueError(
            f"The gallery {folder} has no sub-folders: put the photos of each distractor identity in its own "
            "sub-folder (gallery/<name>/*.jpg)."
        )
    if USER_LABEL in {d.name for d in subfolders}:
        raise ValueError(f"Gallery identity folder {folder / USER_LABEL}: the name '{USER_LABEL}' is reserved.")
    return {d.name: load_images(d, f"gallery identity {d.name}")[0] for d in subfolders}


def concat_facesets(sets: Sequence[FaceSet]) -> FaceSet:
    """One :class:`FaceSet` holding the images of ``sets`` in order (labels kept; all or none labelled)."""
    if not sets:
        raise ValueError("Nothing to concatenate.")
    names = set(sets[0].embeddings)
    if any(set(s.embeddings) != names for s in sets):
        raise ValueError("FaceSets were embedded with different recognizers.")
    labelled = [s.labels is not None for s in sets]
    if any(labelled) and not all(labelled):
        raise ValueError("Either every FaceSet has labels or none has.")
    return FaceSet(
        detected=np.concatenate([s.detected for s in sets]),
        embeddings={n: np.concatenate([s.embeddings[n] for s in sets]) for n in names},
        labels=np.concatenate([s.labels for s in sets]) if all(labelled) else None,
    )


def relabel(faces: FaceSet, label: str) -> FaceSet:
    """``faces`` with every image labelled ``label``."""
    return FaceSet(faces.detected, faces.embeddings, np.full(len(faces.detected), label, dtype=object))


def attacker_knowledge(
    reference: FaceSet, distractors: Mapping[str, FaceSet], extra_user: FaceSet | None = None
) -> tuple[FaceSet, FaceSet]:
    """The attacker's ``(reference, gallery)``: the gallery is the user's reference photos (and ``extra_user``)
    labelled :data:`USER_LABEL` plus each distractor identity's photos under its name.

    Raises:
        ValueError: no face in any reference photo, or no distractor face (identification would be trivial).
    """
    if not reference.detected.any():
        raise ValueError(
            "No face was detected in any reference photo of the user: the attacker has nothing to link with. "
            "Use clear frontal photos."
        )
    if USER_LABEL in distractors:
        raise ValueError(f"A distractor identity may not be named '{USER_LABEL}' (reserved for the user).")
    parts = [relabel(reference, USER_LABEL)]
    if extra_user is not None:
        parts.append(relabel(extra_user, USER_LABEL))
    parts += [relabel(faces, name) for name, faces in distractors.items()]
    gallery = concat_facesets(parts)
    if len(set(gallery.detected_labels.tolist())) < 2:
        raise ValueError("The gallery has no detected face of any distractor identity; add photos of other people.")
    return reference, gallery


def white_box_keys(run_dir: str | Path | None) -> set[str] | None:
    """The registry keys of the FR systems the run's optimizer saw, or ``None`` when unknown (no run)."""
    if run_dir is None:
        return None
    return {str(s).strip().lower() for s in RunManifest.load(run_dir).white_box}


# ----------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------


def linkability_by_backend(
    probes: FaceSet,
    reference: FaceSet,
    gallery: FaceSet,
    recognizers: Mapping[str, FaceRecognizer],
    white_box: set[str] | None,
) -> dict[str, dict]:
    """Registry key -> :func:`iddm.evaluate.linkability.linkability` result, plus ``recognizer`` and ``role``."""
    results = {}
    for key, recognizer in recognizers.items():
        is_white = None if white_box is None else (key in white_box or recognizer.name in white_box)
        result = linkability(probes, reference, gallery, USER_LABEL, recognizer, bool(is_white), fars=FARS)
        result["white_box"] = is_white
        role = "unknown" if is_white is None else ("white-box" if is_white else "black-box")
        results[key] = {"recognizer": recognizer.name, "role": role, **result}
    return results


def brisque_mean(images: Sequence[np.ndarray]) -> tuple[float | None, str | None]:
    """Mean BRISQUE of the images, or ``(None, reason)`` when they are too small to score reliably."""
    side = min(min(image.shape[:2]) for image in images)
    if side < quality.BRISQUE_MIN_SIDE:
        return None, f"images are {side} px, below BRISQUE's reliable minimum of {quality.BRISQUE_MIN_SIDE} px"
    scores = np.array([quality.brisque_score(image) for image in images], dtype=np.float64)
    if not np.isfinite(scores).any():
        return None, "every image is flat (no texture to score)"
    return float(np.nanmean(scores)), None


def perturbation_quality(run_dir: str | Path) -> dict:
    """Imperceptibility of the run's training perturbation: PSNR/SSIM of ``decoupled_photos/`` vs the clean crops.

    The clean crops are made again from the run's photo folder with :func:`iddm.diffusion.prepare_photos`
    at the run's resolution and crop mode, i.e. exactly the images the perturbation was added to.

    Returns:
        ``psnr_db`` (mean per photo; ``None`` when identical), ``ssim``, ``linf_255`` (largest change in
        0..255 units), ``num_photos``, and ``note`` explaining a ``None``.
    """
    from iddm.diffusion import prepare_photos

    run_dir = Path(run_dir)
    empty = {"psnr_db": None, "ssim": None, "linf_255": None, "num_photos": 0}
    decoupled_dir = run_dir / PRIVATE_DIR / DECOUPLED_DIR
    if not decoupled_dir.is_dir():
        return {**empty, "note": "the run trained on unperturbed photos (no decoupled photos)"}
    run = RunManifest.load(run_dir)
    photos_dir = Path(run.photos)
    if not photos_dir.is_dir():
        return {**empty, "note": f"the run's photo folder {photos_dir} is gone: cannot compare with the clean crops"}
    perturbed = {p.stem: load_photo(p) for p in sorted(decoupled_dir.glob("*.png"))}
    if not perturbed:
        return {**empty, "note": "decoupled_photos/ is empty"}
    resolution = next(iter(perturbed.values())).shape[0]
    clean = prepare_photos(photos_dir, resolution, crop=run.crop, min_photos=1, skip_bad_photos=True)
    pairs = [
        (image, perturbed[path.stem]) for path, image in zip(clean.paths, clean.as_uint8()) if path.stem in perturbed
    ]
    if not pairs:
        return {**empty, "note": f"no decoupled photo matches a photo of {photos_dir}"}
    psnr, ssim = quality.mean_psnr_ssim([a for a, _ in pairs], [b for _, b in pairs])
    linf = max(int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()) for a, b in pairs)
    note = "the decoupled photos equal the clean crops (delta = 0)" if linf == 0 else None
    return {"psnr_db": psnr, "ssim": ssim, "linf_255": linf, "num_photos": len(pairs), "note": note}


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
    image_features = _as_tensor(image_features)
    text_features = _as_tensor(text_features)
    cosine = torch.nn.functional.cosine_similarity(image_features, text_features, dim=-1)
    return float((100.0 * cosine.clamp(min=0)).mean())


def _as_tensor(value: Any):
    import torch

    if torch.is_tensor(value):
        return value
    pooled = getattr(value, "pooler_output", None)
    return pooled if pooled is not None else value[0]


def utility_metrics(
    images: Sequence[np.ndarray],
    probes: FaceSet,
    run_dir: str | Path | None = None,
    prompts: Sequence[str] | None = None,
    clip_model: str | Path | None = None,
    vanilla_images: Sequence[np.ndarray] | None = None,
) -> dict:
    """Utility of the generations (and of the run's perturbation): see ``docs/evaluation.md``."""
    fdfr = 1.0 - probes.detection_rate
    brisque, brisque_note = brisque_mean(images)
    result: dict[str, Any] = {
        "num_images": len(images),
        "resolution": [int(images[0].shape[0]), int(images[0].shape[1])],
        "fdfr": fdfr,
        "face_detection_rate": probes.detection_rate,
        "brisque_mean": brisque,
        "brisque_note": brisque_note,
    }
    if run_dir is None:
        result["perturbation"] = {"psnr_db": None, "ssim": None, "note": "no --run_dir given"}
    else:
        result["perturbation"] = perturbation_quality(run_dir)
    if clip_model is None:
        result["clip_score"], result["clip_note"] = None, "no --clip_model given (local CLIP weights needed)"
    elif not prompts:
        result["clip_score"], result["clip_note"] = None, "no --prompt given for the images"
    else:
        result["clip_score"], result["clip_note"] = clip_score(images, prompts, clip_model), None
    if vanilla_images is None:
        result["ssim_to_vanilla"], result["ssim_to_vanilla_note"] = None, "no vanilla generations to compare with"
    else:
        pairs = [(a, b) for a, b in zip(images, vanilla_images) if a.shape == b.shape]
        if pairs:
            result["ssim_to_vanilla"] = float(np.mean([quality.ssim(a, b) for a, b in pairs]))
            result["ssim_to_vanilla_note"] = None
        else:
            result["ssim_to_vanilla"], result["ssim_to_vanilla_note"] = None, "vanilla images differ in size"
    return result


def evaluate_images(
    images: Sequence[np.ndarray],
    reference: FaceSet,
    gallery: FaceSet,
    recognizers: Mapping[str, FaceRecognizer],
    white_box: set[str] | None = None,
    robustness: bool = False,
    run_dir: str | Path | None = None,
    prompts: Sequence[str] | None = None,
    clip_model: str | Path | None = None,
    vanilla_images: Sequence[np.ndarray] | None = None,
) -> dict:
    """Every metric of the protocol for one set of generated images.

    Args:
        images: the probes, RGB ``uint8`` ``(H, W, 3)``.
        reference, gallery: from :func:`attacker_knowledge`, embedded with ``recognizers``.
        recognizers: registry key -> recognizer.
        white_box: keys of the optimizer's surrogates (``None``: unknown).
        robustness: also attack after each of :data:`ROBUSTNESS_CONDITIONS`.

    Returns:
        ``{"backends": {key: metrics}, "utility": {...}, "robustness": {condition: {key: metrics}} | None}``.
    """
    if not images:
        raise ValueError("No images to evaluate.")
    images = list(images)
    probes = embed_images(images, list(recognizers.values()))
    result = {
        "backends": linkability_by_backend(probes, reference, gallery, recognizers, white_box),
        "utility": utility_metrics(images, probes, run_dir, prompts, clip_model, vanilla_images),
        "robustness": None,
    }
    if robustness:
        result["robustness"] = {}
        for condition, degrade in ROBUSTNESS_CONDITIONS.items():
            degraded = (
                probes
                if condition == "clean"
                else embed_images([degrade(i) for i in images], list(recognizers.values()))
            )
            result["robustness"][condition] = linkability_by_backend(
                degraded, reference, gallery, recognizers, white_box
            )
    return result


# ----------------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------------


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

    is_micro = _is_micro(model, lora)
    config = GenerateConfig(
        pretrained_model_name_or_path=str(model),
        lora=lora,
        output_dir=Path(output_dir),
        prompt=list(prompts),
        num_images=num_images,
        seed=seed,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale if guidance_scale is not None else (1.0 if is_micro else 7.5),
        resolution=resolution,
        device=device,
    )
    return [load_photo(p) for p in run_generate(config)]


def _is_micro(model: str | Path, lora: Path | None) -> bool:
    """Whether ``model`` is a micro pixel-space run or model folder (it ignores prompts)."""
    from iddm.diffusion.pixel import PIXEL_BACKBONE_FILE
    from iddm.run_layout import resolve_model_dir

    return lora is None and (resolve_model_dir(model) / PIXEL_BACKBONE_FILE).is_file()


def run_evaluate(config: EvaluateConfig) -> dict:
    """The ``iddm evaluate`` command: load or generate the images, attack them, write the reports."""
    from iddm.images import ensure_writable_dir

    for name in ("reference", "gallery", "output_dir"):
        if getattr(config, name) is None:
            raise ValueError(f"--{name} is required.")
    if (config.images is None) == (config.model is None):
        raise ValueError("Give exactly one of --images (a folder of generated images) or --model (generate them).")
    output_dir = ensure_writable_dir(config.output_dir)
    white_box = white_box_keys(config.run_dir)
    recognizers = load_backends(config.backends)

    prompts = config.prompt
    if config.model is not None:
        prompts = list(config.prompt or DEFAULT_PROMPTS)
        if _is_micro(config.model, config.lora):
            prompts = prompts[:1]  # the micro backbone is not text-conditioned
        images = generate_probe_images(
            config.model,
            output_dir / "images",
            prompts,
            config.num_images,
            config.seed,
            config.num_inference_steps,
            config.guidance_scale,
            config.lora,
            config.resolution,
            config.device,
        )
        images_dir = output_dir / "images"
    else:
        images, _ = load_images(config.images)
        images_dir = config.images
    vanilla = load_images(config.vanilla_images, "vanilla images")[0] if config.vanilla_images else None

    reference_images, _ = load_images(config.reference, "reference")
    distractor_images = load_gallery_folder(config.gallery)
    rec = list(recognizers.values())
    distractors = {name: embed_images(imgs, rec) for name, imgs in distractor_images.items()}
    reference, gallery = attacker_knowledge(embed_images(reference_images, rec), distractors)

    result = evaluate_images(
        images,
        reference,
        gallery,
        recognizers,
        white_box,
        config.robustness,
        config.run_dir,
        prompts,
        config.clip_model,
        vanilla,
    )
    metrics = {
        "images": str(images_dir),
        "num_images": len(images),
        "reference": {
            "folder": str(config.reference),
            "num_photos": len(reference_images),
            "num_faces": int(reference.detected.sum()),
        },
        "gallery": {
            "folder": str(config.gallery),
            "identities": [USER_LABEL, *distractor_images],
            "num_photos": len(gallery.detected),
            "num_faces": int(gallery.detected.sum()),
        },
        "run": run_summary(config.run_dir),
        "prompts": prompts,
        **result,
    }
    metrics = json_safe(metrics)
    atomic_write_json(output_dir / "metrics.json", metrics)
    atomic_write_text(output_dir / "report.md", evaluate_markdown(metrics))
    atomic_write_text(output_dir / "report.html", evaluate_html(metrics, images, reference_images))
    return metrics


def run_summary(run_dir: str | Path | None) -> dict | None:
    """What the evaluation needs to know about the run: folder, defense, privacy level, surrogates, steps."""
    if run_dir is None:
        return None
    run = RunManifest.load(run_dir)
    return {
        "dir": str(run_dir),
        "defense": run.model.defense,
        "privacy": run.model.privacy.get("label"),
        "surrogates": run.white_box,
        "steps": run.steps,
        "backbone": run.model.backbone,
    }


# ----------------------------------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------------------------------

LINK_HEADER = [
    "FR system",
    "role",
    "ISM",
    "R1-U (chance)",
    "R1-T (chance)",
    "match @thr",
    "M@FAR 1e-2",
    "M@FAR 1e-3",
    "FDFR",
]


def link_row(key: str, m: Mapping[str, Any]) -> list[str]:
    """One formatted row of :data:`LINK_HEADER` from a :func:`linkability_by_backend` entry."""
    far = m.get("match_at_far") or {}

    def at(name: str) -> str:
        entry = far.get(name)
        if not entry:
            return "–"
        mark = "" if entry.get("reliable") else "†"
        return f"{fmt(entry.get('match_rate'))}{mark} (t={fmt(entry.get('threshold'), 3)})"

    return [
        f"{key} ({m.get('recognizer', key)})",
        m.get("role", "unknown"),
        fmt(m.get("ism"), 3),
        f"{fmt(m.get('rank1'))} ({fmt(m.get('chance_rank1'))})",
        f"{fmt(m.get('rank1_targeted'))} ({fmt(m.get('chance_rank1_targeted'))})",
        f"{fmt(m.get('match_rate'))} (t={fmt(m.get('threshold'), 3)})",
        at("0.01"),
        at("0.001"),
        fmt(m.get("fdfr")),
    ]


def utility_rows(utility: Mapping[str, Any]) -> list[list[str]]:
    pert = utility.get("perturbation") or {}
    return [
        ["face detection rate", fmt(utility.get("face_detection_rate")), ""],
        ["FDFR", fmt(utility.get("fdfr")), ""],
        ["BRISQUE (mean, lower = better)", fmt(utility.get("brisque_mean"), 1), utility.get("brisque_note") or ""],
        ["PSNR of X+δ vs X (dB)", fmt(pert.get("psnr_db"), 1), pert.get("note") or ""],
        ["SSIM of X+δ vs X", fmt(pert.get("ssim"), 3), ""],
        ["L∞ of δ (0..255)", fmt(pert.get("linf_255")), ""],
        ["CLIP score", fmt(utility.get("clip_score"), 1), utility.get("clip_note") or ""],
        [
            "SSIM to vanilla generations",
            fmt(utility.get("ssim_to_vanilla"), 3),
            utility.get("ssim_to_vanilla_note") or "",
        ],
    ]


def robustness_table(robustness: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    keys = list(next(iter(robustness.values())))
    header = ["condition"] + [f"{k} R1-U / ISM / match" for k in keys]
    rows = [
        [cond]
        + [f"{fmt(r[k].get('rank1'))} / {fmt(r[k].get('ism'), 3)} / {fmt(r[k].get('match_rate'))}" for k in keys]
        for cond, r in robustness.items()
    ]
    return header, rows


FOOTNOTE = (
    "R1-U: fraction of detected generated faces whose nearest gallery identity is the user (chance = "
    "1/#identities). R1-T: fraction of the user's real photos whose top-ranked image in a pool of generations and "
    "other people's photos is a generation. match @thr: verified as the user at the system's own threshold t. "
    "M@FAR: at thresholds calibrated on the gallery's impostor comparisons (†: too few impostor scores for that "
    "FAR; the threshold is too strict and the rate understates linkability). Lower linkability = more private; "
    "black-box systems are the transfer test that matters."
)


def evaluate_markdown(metrics: Mapping[str, Any]) -> str:
    lines = [f"# iddm evaluate: {metrics['num_images']} images from {metrics['images']}", ""]
    run = metrics.get("run")
    if run:
        lines.append(
            f"Run `{run['dir']}`: defense {run['defense']}, privacy {run['privacy']}, white-box surrogates "
            f"{', '.join(run['surrogates']) or 'none'}, {run['steps']} steps.\n"
        )
    gallery = metrics["gallery"]
    lines.append(
        f"Attacker: {metrics['reference']['num_faces']} reference face(s) of the user; gallery of "
        f"{len(gallery['identities'])} identities, {gallery['num_faces']} faces.\n"
    )
    lines.append("## Linkability\n")
    lines.append(markdown_table(LINK_HEADER, [link_row(k, m) for k, m in metrics["backends"].items()]))
    lines.append(FOOTNOTE + "\n")
    lines.append("## Utility\n")
    lines.append(markdown_table(["metric", "value", "note"], utility_rows(metrics["utility"])))
    if metrics.get("robustness"):
        lines.append("## Robustness (linkability after platform degradations)\n")
        lines.append(markdown_table(*robustness_table(metrics["robustness"])))
    return "\n".join(lines)


def evaluate_html(metrics: Mapping[str, Any], images: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> str:
    thumbs = [thumbnail(i) for i in images[:32]]
    refs = [thumbnail(i) for i in reference[:8]]
    body = [
        '<p class="note">' + html.escape(f"{metrics['num_images']} images from {metrics['images']}.") + "</p>",
        html_image(make_grid(thumbs, columns=8), f"generated images (first {len(thumbs)})", min_width=512),
        html_image(make_grid(refs, columns=8), "the user's reference photos (attacker's knowledge)"),
        "<h2>Linkability</h2>",
        html_table(LINK_HEADER, [link_row(k, m) for k, m in metrics["backends"].items()]),
        f'<p class="note">{html.escape(FOOTNOTE)}</p>',
        "<h2>Utility</h2>",
        html_table(["metric", "value", "note"], utility_rows(metrics["utility"])),
    ]
    if metrics.get("robustness"):
        body += ["<h2>Robustness</h2>", html_table(*robustness_table(metrics["robustness"]))]
    return html_document("iddm evaluate", "\n".join(body))


def thumbnail(image: np.ndarray, side: int = 128) -> np.ndarray:
    """A square ``side`` px thumbnail (center crop) for grids of mixed-size images."""
    from PIL import Image

    h, w = image.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = Image.fromarray(np.ascontiguousarray(image[top : top + s, left : left + s]))
    return np.asarray(crop.resize((side, side), Image.Resampling.LANCZOS if s > side else Image.Resampling.NEAREST))
