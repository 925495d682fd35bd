"""What personalization on the face prior should default to (measured; see docs/prior.md)."""

from __future__ import annotations

from iddm.prior.config import PretrainConfig

RECOMMENDED_LORA = {
    "method": "lora",
    "lora_rank": 8,
    "lora_target_modules": ["to_k", "to_q", "to_v", "to_out.0"],
    "learning_rate": 1e-3,
    "lr_scheduler": "constant",
    "max_train_steps": 1000,
    "train_batch_size": 4,
    "instance_prompt": "a photo of sks person",
    "guidance_scale": 3.0,
    "num_inference_steps": 25,
    # IDDM's K: on this small model one data step costs ~15 personalization steps (the FR surrogates dominate), so
    # rounds of 250 keep IDDM at high within ~1.3x the vanilla wall time (measured, README Results).
    "round_steps": 250,
}
"""LoRA settings for ``iddm personalize`` on the prior (measured: README Results, docs/prior.md)."""


def personalization_defaults(config: PretrainConfig) -> dict:
    """The ``personalization`` block of ``iddm_prior.json``: crop, margin, resolution and LoRA settings."""
    return {"crop": "aligned", "margin": config.margin, "resolution": config.resolution, **RECOMMENDED_LORA}
