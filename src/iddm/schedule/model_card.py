"""The model card (``README.md``) written next to personalized weights."""

from __future__ import annotations

from pathlib import Path

from iddm.config import config_to_dict
from iddm.images import atomic_write_text


def write_model_card(output_dir: Path, config, backbone, method: str, privacy, plan, photos_used: dict) -> None:
    """Record every setting, the privacy level and which FR models were white-box surrogates."""
    base = config.pretrained_model_name_or_path or "iddm micro pixel-space backbone (trained from scratch)"
    if backbone.kind == "pixel":
        how_to_load = (
            f"iddm generate --pretrained_model_name_or_path {output_dir} --num_images 8 --output_dir avatars/\n"
        )
    elif method == "lora":
        how_to_load = (
            "from diffusers import StableDiffusionPipeline\n"
            f"pipe = StableDiffusionPipeline.from_pretrained({str(base)!r})\n"
            f"pipe.load_lora_weights({str(output_dir)!r})\n"
            f"image = pipe({config.instance_prompt!r}).images[0]\n"
        )
    else:
        how_to_load = (
            "from diffusers import StableDiffusionPipeline\n"
            f"pipe = StableDiffusionPipeline.from_pretrained({str(output_dir)!r})\n"
            f"image = pipe({config.instance_prompt!r}).images[0]\n"
        )
    if privacy.enabled and privacy.defense != "iddm":
        privacy_text = (
            f"Baseline defense **{privacy.defense}** at privacy level {privacy.label} (epsilon "
            f"{privacy.epsilon * 255:.1f}/255). Not IDDM: kept for comparison."
        )
    elif privacy.enabled:
        surrogates = ", ".join(privacy.surrogates)
        privacy_text = (
            f"IDDM privacy level **{privacy.label}** (value {privacy.level:.2f}): epsilon {privacy.epsilon:.4f} "
            f"({privacy.epsilon * 255:.1f}/255), Stage 1 = {plan.rounds} rounds x ({plan.round_steps} "
            f"personalization + {plan.data_steps} data steps), Stage 2 = {plan.stage2_steps} steps.\n\n"
            f"White-box face recognition surrogates (seen by the optimizer): **{surrogates}**. Any other face "
            "recognition system is black-box for this model; evaluate linkability with those."
        )
    else:
        privacy_text = "Privacy off: vanilla personalization (no identity decoupling)."
    rows = "\n".join(f"| `{k}` | `{v}` |" for k, v in config_to_dict(config).items())
    privacy_rows = "\n".join(f"| `{k}` | `{v}` |" for k, v in privacy.as_dict().items())
    text = f"""---
library_name: diffusers
tags: [iddm, text-to-image, {method}, identity-decoupled]
base_model: {base}
---

# iddm personalized model

* Base model: `{base}` ({backbone.kind} backbone)
* Method: `{method}`, {config.max_train_steps} steps, resolution {backbone.resolution} px
* Instance prompt: `{config.instance_prompt}`
* Photos: {len(photos_used["clean"])}

## Privacy

{privacy_text}

## How to use

```
{how_to_load}```

## Resolved privacy settings

| setting | value |
|---|---|
{privacy_rows}

## All settings

| setting | value |
|---|---|
{rows}
"""
    atomic_write_text(output_dir / "README.md", text)
