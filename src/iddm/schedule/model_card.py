"""The model card (``model/README.md``): what a published model says, and never where the photos were.

It records the settings (without any local path), the privacy level, which FR systems the optimizer
saw (white-box) and, once ``iddm evaluate --run_dir`` has run, the measured linkability of the model's
generations (a privacy report card, also in ``model/iddm_privacy.json``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from iddm.config import config_to_dict
from iddm.images import atomic_write_json, atomic_write_text
from iddm.run_layout import EVALUATION_FILE, MODEL_CARD, MODEL_FILE, ModelManifest, model_dir
from iddm.schedule.plan import StagePlan
from iddm.weights import FACE_PRIOR, PRIOR_DATA_TERMS, PRIOR_FILE, PRIOR_FOLDERS, PRIOR_NAMES, prior_name

PRIVATE_OPTIONS = {"photos", "output_dir", "class_data_dir", "perturbation_from", "decoy", "resume_from_checkpoint"}
"""Options that name local files: left out of anything publishable."""

THREAT_MODEL = """\
iddm lowers how well today's face recognition (FR) systems link this model's generations to the
person it was trained on: the FR models it optimized against (white-box, listed above), other FR
systems (black-box transfer, measured with dlib), and images degraded by platforms (JPEG, resizing,
blur). It does **not** protect against people who know the person, against future FR systems trained
without regard to iddm (the "oblivious" attacker of Radiya-Dixit et al., ICLR 2022: unmeasured), or
against attackers who adapt FR to iddm's own outputs (unmeasured). iddm is open source: assume an
attacker knows its defaults. See the project's docs/threat_model.md for the measurements behind this."""


def public_model_name(value: str | None) -> str | None:
    """The base model's public name: a hub id or an ``iddm:`` name; ``None`` for a local folder (never a path)."""
    if value is None or str(value) in PRIOR_NAMES:
        return prior_name(str(value or FACE_PRIOR))  # the prior's own name: the default alias may move on
    text = str(value)
    if text.startswith("iddm:"):
        return text
    path = Path(text)
    if path.exists():
        prior = path / PRIOR_FILE
        if prior.is_file():
            return json.loads(prior.read_text()).get("name")
        return None
    return text if text.count("/") == 1 else None


def _usage(manifest: ModelManifest) -> str:
    base = manifest.base_model or "PATH/TO/THE/BASE/MODEL"
    if manifest.backbone == "pixel":
        return "iddm generate --pretrained_model_name_or_path THIS_FOLDER --num_images 8 --output_dir avatars/\n"
    pipeline = "StableDiffusionXLPipeline" if manifest.backbone == "sdxl" else "StableDiffusionPipeline"
    load = f"{pipeline}.from_pretrained({base!r})"
    if base in PRIOR_FOLDERS:  # shipped inside the iddm package
        load = f"{pipeline}.from_pretrained(prior_path({base!r}))"
        pipeline = f"{pipeline}\n\nimport iddm.diffusion  # registers the prior's autoencoder class with diffusers\n"
        pipeline += "from iddm.weights import prior_path"
    if manifest.method == "lora":
        return (
            f"from diffusers import {pipeline}\n"
            f"pipe = {load}\n"
            'pipe.load_lora_weights("THIS_FOLDER")\n'
            f"image = pipe({manifest.instance_prompt!r}).images[0]\n"
        )
    return (
        f"from diffusers import {pipeline}\n"
        f'pipe = {pipeline}.from_pretrained("THIS_FOLDER")\n'
        f"image = pipe({manifest.instance_prompt!r}).images[0]\n"
    )


def _requirements(manifest: ModelManifest) -> str:
    """What a reader needs before the snippet: for iddm's own priors, iddm itself, said plainly."""
    if manifest.base_model not in PRIOR_FOLDERS:
        return ""
    return (
        f"This LoRA adapts **`{manifest.base_model}`, iddm's own small offline face prior, not Stable Diffusion**: "
        "it loads onto that model only, and generates small face images. The prior ships inside the iddm Python "
        "package, so install iddm first (`pip install -e .` in a clone of its repository; it brings diffusers), "
        "then:\n\n"
    )


def _privacy_text(manifest: ModelManifest, plan) -> str:
    privacy = manifest.privacy
    if manifest.defense == "none":
        return "Privacy off: vanilla personalization (no identity decoupling)."
    budget = f"epsilon {privacy['epsilon'] * 255:.1f}/255"
    if privacy.get("warp"):
        budget += f", faces reshaped by up to {privacy['warp']:.2g} px per 64 px"
        if privacy.get("shape_limit"):
            budget += f" within a face shape of {privacy['shape_limit']:.2g} (1 = a typical real face)"
    if manifest.defense != "iddm":
        return f"Baseline defense **{manifest.defense}** at privacy level {privacy['label']} ({budget}). Not IDDM."
    level = (
        f"**{privacy['label']}** (value {privacy['level']:.2f}, {budget}, {privacy['identity_loss']} identity loss)"
    )
    rounds = f"{plan.rounds} rounds x ({plan.round_steps} personalization + {plan.data_steps} data steps)"
    return (
        f"IDDM privacy level {level}: Stage 1 = {rounds}, Stage 2 = {plan.stage2_steps} steps.\n\n"
        f"White-box face recognition surrogates (seen by the optimizer): **{', '.join(manifest.surrogates)}**."
    )


def _report_text(report: dict[str, Any] | None) -> str:
    if not report:
        return "Not measured yet: run `iddm evaluate --run_dir RUN ...` to add the measured linkability here."
    rows = [
        f"| {key} | {m.get('role', '?')} | {_fmt(m.get('rank1'))} ({_fmt(m.get('chance_rank1'))}) | "
        f"{_fmt(m.get('match_rate'))} | {_fmt(m.get('ism'), 3)} |"
        for key, m in report.get("backends", {}).items()
    ]
    return (
        f"Measured by `iddm evaluate` on {report.get('num_images', '?')} generations against "
        f"{report.get('num_identities', '?')} identities:\n\n"
        "| FR system | role | rank-1 (chance) | match rate | ISM |\n|---|---|---|---|---|\n" + "\n".join(rows)
    )


def _fmt(value: Any, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _terms_line(manifest: ModelManifest) -> str:
    terms = PRIOR_DATA_TERMS.get(manifest.base_model or "")
    return f"\n* Terms: **{terms}**" if terms else ""


def render_model_card(manifest: ModelManifest, settings: dict[str, Any], plan, report: dict | None) -> str:
    rows = "\n".join(f"| `{k}` | `{v}` |" for k, v in settings.items())
    privacy_rows = "\n".join(f"| `{k}` | `{v}` |" for k, v in manifest.privacy.items() if k != "decoy")
    base = manifest.base_model or "a local base model (path withheld)"
    return f"""---
library_name: diffusers
tags: [iddm, text-to-image, {manifest.method}, identity-decoupled]
base_model: {manifest.base_model or "null"}
---

# iddm personalized model

* Base model: `{base}` ({manifest.backbone} backbone)
* Method: `{manifest.method}`, resolution {manifest.resolution} px
* Instance prompt: `{manifest.instance_prompt}`{_terms_line(manifest)}

## Privacy

{_privacy_text(manifest, plan)}

### Measured linkability (privacy report card)

{_report_text(report)}

### What this protects against, and what it does not

{THREAT_MODEL}

## How to use

{_requirements(manifest)}```
{_usage(manifest)}```

## Resolved privacy settings

| setting | value |
|---|---|
{privacy_rows}

## Training settings

| setting | value |
|---|---|
{rows}
"""


def publishable_settings(config) -> dict[str, Any]:
    values = {k: v for k, v in config_to_dict(config).items() if k not in PRIVATE_OPTIONS}
    values["pretrained_model_name_or_path"] = public_model_name(config.pretrained_model_name_or_path)
    return values


def write_model_card(folder: Path, manifest: ModelManifest, config, plan, num_photos: int) -> None:
    settings = {**publishable_settings(config), "num_photos": num_photos}
    atomic_write_json(folder / "iddm_settings.json", {"settings": settings, "plan": plan.__dict__})
    atomic_write_text(folder / MODEL_CARD, render_model_card(manifest, settings, plan, None))


def update_privacy_report(run_dir: Path, report: dict[str, Any]) -> None:
    """Add measured linkability to a run's model card and ``model/iddm_privacy.json``.

    Args:
        report: ``{"num_images": int, "num_identities": int, "backends": {key: {"role", "rank1",
            "chance_rank1", "match_rate", "ism", ...}}}`` as measured by ``iddm evaluate``.
    """
    folder = model_dir(run_dir)
    manifest = ModelManifest(**json.loads((folder / MODEL_FILE).read_text()))
    saved = json.loads((folder / "iddm_settings.json").read_text())
    atomic_write_json(folder / EVALUATION_FILE, report)
    card = render_model_card(manifest, saved["settings"], StagePlan(**saved["plan"]), report)
    atomic_write_text(folder / MODEL_CARD, card)
