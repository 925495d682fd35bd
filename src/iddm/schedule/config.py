"""The configuration of ``iddm personalize``: personalization, IDDM and run-management knobs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from iddm.config import field


@dataclass
class PersonalizeConfig:
    # -- inputs and outputs -------------------------------------------------------------------------
    photos: Path = field(None, help="Folder of photos of one person (only read, never modified).")
    output_dir: Path = field(None, help="Where weights, checkpoints, decoupled photos, logs and the model card go.")
    pretrained_model_name_or_path: str | None = field(
        None,
        help="Stable Diffusion: a local diffusers folder, or a hub id when online. Empty: the offline micro "
        "pixel-space backbone (64x64 faces, for trying iddm and measuring privacy on a CPU).",
    )
    overwrite: bool = field(False, help="Allow writing into an output folder that holds a finished run.")
    skip_bad_photos: bool = field(False, help="Skip photos without a usable face instead of stopping.")
    min_photos: int = field(2, help="Fewest usable photos to accept.")
    # -- personalization ----------------------------------------------------------------------------
    method: str = field("lora", help="Stable Diffusion: 'lora' or 'dreambooth'. The micro backbone trains fully.")
    instance_prompt: str = field("a photo of sks person", help="Prompt that names the person.")
    class_prompt: str = field("a photo of a person", help="Prompt of the class, for prior preservation.")
    with_prior_preservation: bool = field(False, help="Add the prior-preservation loss on class images (SD only).")
    prior_loss_weight: float = field(1.0, help="Weight of the prior-preservation loss.")
    num_class_images: int = field(50, help="Class images to generate with the base model (cached).")
    class_data_dir: Path | None = field(None, help="Cache folder of class images (default: OUTPUT/class_images).")
    resolution: int | None = field(None, help="Training resolution in px (default: 64 micro, model's own for SD).")
    crop: str | None = field(
        None,
        help="'aligned' (5-point face alignment) or 'portrait' (square around the face). Default: "
        "aligned for the micro backbone, portrait for SD.",
        choices=["aligned", "portrait"],
    )
    train_batch_size: int = field(4, help="Images per personalization step.")
    max_train_steps: int = field(1500, help="Personalization steps in total (both IDDM stages together).")
    learning_rate: float = field(1e-3, help="AdamW learning rate (1e-4 is usual for LoRA on SD, 5e-6 DreamBooth).")
    lr_scheduler: str | None = field(
        None,
        help="diffusers scheduler name: constant, cosine, linear, ... Default: cosine for the micro backbone (its "
        "samples are far cleaner with a decayed rate: SFace match 0.88 vs 0.30 at 1,500 steps), constant for SD.",
    )
    lr_warmup_steps: int = field(0, help="Learning-rate warmup steps.")
    adam_weight_decay: float = field(1e-2, help="AdamW weight decay.")
    max_grad_norm: float = field(1.0, help="Gradient clipping norm.")
    use_8bit_adam: bool = field(False, help="bitsandbytes 8-bit AdamW (CUDA; pip install bitsandbytes).")
    lora_rank: int = field(4, help="LoRA rank.")
    lora_alpha: float | None = field(None, help="LoRA alpha (default: the rank).")
    lora_dropout: float = field(0.0, help="LoRA dropout.")
    lora_target_modules: list[str] = field(
        ["to_k", "to_q", "to_v", "to_out.0"], help="UNet modules that get LoRA adapters."
    )
    train_text_encoder: bool = field(False, help="Also personalize the text encoder (LoRA or full).")
    gradient_checkpointing: bool = field(False, help="Trade compute for memory in UNet/text encoder.")
    mixed_precision: str = field("no", help="accelerate mixed precision.", choices=["no", "fp16", "bf16"])
    seed: int = field(0, help="Seed of model init, batches, noise and timesteps: same seed, same weights.")
    # -- checkpoints, validation --------------------------------------------------------------------
    checkpointing_steps: int = field(500, help="Save a resumable checkpoint-N folder every N steps.")
    checkpoints_total_limit: int | None = field(2, help="Keep at most this many checkpoints (oldest deleted).")
    resume_from_checkpoint: str | None = field(None, help="'latest' or a checkpoint-N folder name or path.")
    validation_steps: int = field(500, help="Write a validation grid every N steps (0: only at the end).")
    num_validation_images: int = field(4, help="Images in each validation grid.")
    validation_prompt: str | None = field(None, help="Validation prompt (default: the instance prompt).")
    num_inference_steps: int = field(25, help="DDIM steps for validation and class images.")
    guidance_scale: float = field(1.0, help="Classifier-free guidance scale for validation (SD: 7.5 is usual).")
    # -- IDDM ---------------------------------------------------------------------------------------
    privacy: str = field(
        "off",
        help="Privacy level: off|low|medium|high or a number in [0, 1]. Sets epsilon, loss weights, the stage "
        "split and data steps (see README); any value below overrides its part.",
    )
    epsilon: float | None = field(None, help="L-inf budget of the photo perturbation, in [0, 1] units (16/255=0.063).")
    step_size: float | None = field(None, help="Signed-gradient step on the perturbation (default epsilon/8).")
    data_steps: int | None = field(None, help="M: data steps on the perturbation per Stage-1 round.")
    round_steps: int | None = field(None, help="K: personalization steps per Stage-1 round.")
    stage1_fraction: float | None = field(None, help="Fraction of max_train_steps spent in Stage 1 (decoupling).")
    lambda_gen: float | None = field(None, help="Weight of the identity loss on the model's denoised estimate.")
    lambda_data: float | None = field(None, help="Weight of the identity loss on the perturbed photos themselves.")
    lambda_fid: float | None = field(None, help="Weight of the MSE fidelity penalty between perturbed and clean.")
    lambda_model: float | None = field(None, help="Stage 2: weight of a model-side identity term on x̂0 (0: off).")
    surrogates: list[str] = field(["sface", "facenet"], help="Differentiable FR models the optimizer attacks.")
    surrogate_weights: list[float] | None = field(None, help="Weight per surrogate (default: equal).")
    eot: list[str] = field(
        ["jpeg", "resize", "blur"], help="Robustness transforms drawn per data step (expectation over transforms)."
    )
    decoy: Path | None = field(None, help="Targeted variant: a photo of a decoy identity to pull toward.")
    defense: str = field(
        "iddm",
        help="'iddm' (alternating identity decoupling); baselines at the same epsilon: 'noise' (uniform random "
        "±epsilon, frozen), 'cloak' (one-shot FR cloak of the photos, then ordinary training), 'aspl' "
        "(Anti-DreamBooth-style: data steps maximize the personalization loss).",
        choices=["iddm", "noise", "cloak", "aspl"],
    )
    cloak_steps: int = field(60, help="Data steps of the 'cloak' baseline, all before training.")
    perturbation_from: Path | None = field(
        None, help="Train on the frozen decoupled photos of an earlier run (its output_dir), e.g. after 'aspl'."
    )
    max_denoise_timestep: int = field(500, help="x̂0 proxy: timesteps drawn below this (less noise = sharper faces).")
