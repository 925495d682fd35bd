"""What personalization on the face prior should default to (measured; see docs/prior.md)."""

from __future__ import annotations

from iddm.prior.config import PretrainConfig

RECOMMENDED_LORA = {
    "method": "lora",
    "lora_rank": 8,
    # LoRA on the ResNet convolutions and transformer projections too (LoCon), not attention alone: in this small
    # UNet the attention layers hold ~12% of the weights, and attention-only LoRA left vanilla dlib rank-1 / match
    # at 0.76 / 0.74 on three held-out people; with these targets 0.90 / 0.89 (README Results).
    "lora_target_modules": [
        "to_k",
        "to_q",
        "to_v",
        "to_out.0",
        "proj_in",
        "proj_out",
        "ff.net.0.proj",
        "ff.net.2",
        "conv1",
        "conv2",
    ],
    "learning_rate": 1e-3,
    "lr_scheduler": "constant",
    # 800 on the 128-px prior: vanilla still learns the 20 held-out CFP users (dlib R1-U 0.89 / match 0.92 at
    # 800 against 0.90 / 0.94 at 1,000: docs/results/cfp20_128_vanilla800.md), and the README's
    # main job (medium, 5 photos, 2 CPU cores) fits in 5 minutes (1,000 steps took 5 min 38 s). The 64-px prior
    # keeps the 1,000 it was measured with (its iddm_prior.json).
    "max_train_steps": 800,
    "train_batch_size": 4,
    "instance_prompt": "a photo of sks person",
    "guidance_scale": 3.0,
    "num_inference_steps": 25,
    # IDDM's K: on this small model one data step costs ~9 personalization steps, the FR surrogates most of it
    # (benchmarks/bench_data_step.py).
    # Rounds of 125 keep IDDM at high near 1.3x the vanilla wall time; rounds of 250 were cheaper but let the
    # black-box attacker link 2 of 3 held-out people (measured, README Results).
    "round_steps": 125,
    # IDDM's realism term (the model's denoising loss on the decoupled photos) and a smooth δ (16 x 16 grid): at high
    # on two held-out CFP people the avatars stayed faces (detection 0.97 vs 0.75, KID to real faces 1.1x vanilla's
    # vs 1.7x) without per-pixel texture, and dlib linked fewer (R1-U 0.03, match 0.00 vs 0.00 / 0.11)
    # (docs/results/frontier_128_cfp.md).
    "lambda_natural": 1.0,
    "delta_grid": 16,
}
"""LoRA settings for ``iddm personalize`` on the prior (measured: README Results, docs/prior.md)."""


def personalization_defaults(config: PretrainConfig) -> dict:
    """The ``personalization`` block of ``iddm_prior.json``: crop, margin, resolution and LoRA settings."""
    return {"crop": "aligned", "margin": config.margin, "resolution": config.resolution, **RECOMMENDED_LORA}
