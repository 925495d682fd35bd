"""The configuration of ``iddm personalize``: personalization and run-management knobs, with IDDM's composed in.

Options left empty (``None``) that have a per-model default (learning rate, steps, schedule, crop,
LoRA shape, guidance) take the base model's recommendation (``Backbone.recommended``), recorded in the
run manifest once resolved.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from iddm.config import field
from iddm.decouple.privacy import PrivacyConfig
from iddm.diffusion.backbone import INSTANCE_PROMPT
from iddm.diffusion.loading import DEFAULT_MODEL, MICRO

MethodName = Literal["lora", "dreambooth", "full"]
CropName = Literal["aligned", "portrait"]
LR_SCHEDULERS = ["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"]
MAX_RESOLUTION = 2048


@dataclass
class PersonalizeConfig:
    # -- inputs and outputs -------------------------------------------------------------------------
    photos: Path | None = field(
        None,
        help="Folder of photos of one person (only read, never modified).",
        required=True,
        aliases=("--instance_data_dir",),
    )
    output_dir: Path | None = field(
        None, help="Run folder: model/ (publishable), private/, checkpoints, validation images.", required=True
    )
    pretrained_model_name_or_path: str = field(
        DEFAULT_MODEL,
        help="Base model: 'iddm:face-prior' (the shipped offline face prior, a latent model in SD 1.x's shape: "
        "now 'iddm:face-prior-128', 128 px, colour; 'iddm:face-prior-64' is the earlier 64-px one), 'iddm:micro' "
        "(a pixel-space UNet trained from scratch, for comparison), a local diffusers folder (SD 1.x/2.x, SDXL) or "
        "a hub id when online.",
    )
    revision: str | None = field(None, help="Hub revision (branch, tag or commit) of the base model.")
    variant: str | None = field(None, help="Weights variant of the base model, e.g. 'fp16'.")
    overwrite: bool = field(False, help="Allow writing into an output folder that holds a finished run.")
    skip_bad_photos: bool = field(False, help="Skip photos without a usable face instead of stopping.")
    min_photos: int = field(2, help="Fewest usable photos to accept.", ge=1)
    allow_mixed_identities: bool = field(
        False, help="Go on when face recognition finds photos of different people among the photos (not advised)."
    )
    # -- personalization ----------------------------------------------------------------------------
    method: MethodName = field(
        "lora", help="'lora' or 'dreambooth' (Stable Diffusion); the micro backbone always trains fully ('full')."
    )
    instance_prompt: str = field(INSTANCE_PROMPT, help="Prompt that names the person.")
    class_prompt: str = field("a photo of a person", help="Prompt of the class, for prior preservation.")
    with_prior_preservation: bool = field(False, help="Add the prior-preservation loss on class images (SD only).")
    prior_loss_weight: float = field(1.0, help="Weight of the prior-preservation loss.", ge=0)
    num_class_images: int = field(50, help="Class images to generate with the base model (cached).", ge=1)
    class_data_dir: Path | None = field(
        None, help="Cache folder of class images (default: OUTPUT/private/class_images)."
    )
    resolution: int | None = field(
        None, help="Training resolution in px, a multiple of 8 (default: the model's own).", ge=32, le=MAX_RESOLUTION
    )
    crop: CropName | None = field(
        None,
        help="'aligned' (5-point face alignment) or 'portrait' (square around the face). Default: the model's "
        "(aligned for the micro backbone and the face prior, portrait for SD).",
    )
    center_crop: bool = field(
        True, help="diffusers' flag, accepted for compatibility: iddm's crops are always centred on the detected face."
    )
    random_flip: bool = field(False, help="Flip training images horizontally at random (augmentation).")
    mask_padding: bool = field(
        True,
        help="Leave the latent cells that touch a crop's mirrored border (pixels from outside a tight photo) out of "
        "the denoising loss, so the model does not learn to draw the mirrored features (a second row of eyes).",
    )
    train_batch_size: int = field(4, help="Images per personalization step (per device).", ge=1, le=1024)
    gradient_accumulation_steps: int = field(1, help="Micro-batches accumulated per optimizer step.", ge=1)
    max_train_steps: int | None = field(
        None, help="Optimizer steps in total (both IDDM stages). Default: the model's (micro 1,500).", ge=1
    )
    learning_rate: float | None = field(
        None, help="AdamW learning rate. Default: the model's (micro 1e-3, SD LoRA 1e-4, DreamBooth 5e-6).", gt=0
    )
    lr_scheduler: str | None = field(
        None,
        help="diffusers scheduler name. Default: the model's (cosine for the micro backbone: SFace match 0.88 vs "
        "0.30 at 1,500 steps; constant for SD).",
        choices=LR_SCHEDULERS,
    )
    lr_warmup_steps: int = field(0, help="Learning-rate warmup steps.", ge=0)
    adam_weight_decay: float = field(1e-2, help="AdamW weight decay.", ge=0)
    max_grad_norm: float = field(1.0, help="Gradient clipping norm (0: no clipping).", ge=0)
    use_8bit_adam: bool = field(False, help="bitsandbytes 8-bit AdamW (CUDA; pip install 'iddm[bnb]').")
    lora_rank: int | None = field(None, help="LoRA rank (default: the model's, 4 for SD).", ge=1, aliases=("--rank",))
    lora_alpha: float | None = field(None, help="LoRA alpha (default: the rank).", gt=0)
    lora_dropout: float = field(0.0, help="LoRA dropout.", ge=0, lt=1)
    lora_target_modules: list[str] | None = field(
        None, help="UNet modules that get LoRA adapters (default: the model's; SD: to_k to_q to_v to_out.0)."
    )
    train_text_encoder: bool = field(False, help="Also personalize the text encoder(s) (LoRA or full).")
    gradient_checkpointing: bool = field(False, help="Trade compute for memory in the UNet / text encoder.")
    mixed_precision: Literal["no", "fp16", "bf16"] = field(
        "no", help="accelerate mixed precision: frozen weights in this dtype, trained parameters in fp32."
    )
    allow_tf32: bool = field(False, help="Allow TF32 matmuls on Ampere+ GPUs (faster, slightly less exact).")
    snr_gamma: float | None = field(None, help="Min-SNR-gamma loss weighting (5.0 is usual; empty: off).", gt=0)
    noise_offset: float = field(0.0, help="Offset-noise scale (0.05-0.1 brightens/darkens range; 0: off).", ge=0)
    seed: int = field(0, help="Seed of model init, batches, noise and timesteps: same seed, same weights.", ge=0)
    # -- checkpoints, validation, tracking, export ----------------------------------------------------
    checkpointing_steps: int = field(500, help="Save a resumable checkpoint-N folder every N steps (0: never).", ge=0)
    checkpoints_total_limit: int | None = field(2, help="Keep at most this many checkpoints (oldest deleted).", ge=1)
    resume_from_checkpoint: str | None = field(None, help="'latest' or a checkpoint-N folder name or path.")
    validation_steps: int = field(500, help="Write a validation grid every N steps (0: only at the end).", ge=0)
    num_validation_images: int = field(4, help="Images in each validation grid.", ge=1, le=64)
    validation_prompt: str | None = field(None, help="Validation prompt (default: the instance prompt).")
    num_inference_steps: int = field(25, help="DDIM steps for validation and class images.", ge=1, le=1000)
    guidance_scale: float | None = field(
        None, help="Classifier-free guidance for validation (default: the model's; 7.5 for SD).", ge=0
    )
    report_to: Literal["none", "tensorboard", "wandb"] = field(
        "none", help="Track losses, identity cosines, PSNR and validation images (logs under OUTPUT/private/logs)."
    )
    output_kohya_format: bool = field(
        False,
        help="Also write the LoRA in kohya / A1111 / ComfyUI format (model/pytorch_lora_weights_kohya.safetensors).",
    )
    # -- IDDM -----------------------------------------------------------------------------------------
    privacy_config: PrivacyConfig = field(PrivacyConfig(), help="identity decoupling (IDDM)")
    perturbation_from: Path | None = field(
        None, help="Train on the frozen decoupled photos of an earlier run (its output_dir), e.g. after 'aspl'."
    )

    def problems(self) -> list[str]:
        """Cross-field rules, checked before any work (with every per-field type and range)."""
        problems = []
        if self.resolution is not None and self.resolution % 8:
            problems.append(f"--resolution must be a multiple of 8, got {self.resolution}")
        if self.photos is not None and self.output_dir is not None:
            photos, output = Path(self.photos).resolve(), Path(self.output_dir).resolve()
            if output == photos:
                problems.append(f"--output_dir {self.output_dir} is the --photos folder; choose another")
            elif photos in output.parents:
                problems.append(f"--output_dir {self.output_dir} is inside --photos {self.photos}; choose another")
        if self.method == "full" and self.pretrained_model_name_or_path != MICRO:
            problems.append("--method full is the micro backbone's; use lora or dreambooth for a pretrained model")
        return problems
