"""The configuration of ``iddm pretrain``: corpus, architecture, both training stages, run management."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from iddm.config import field

HELD_OUT_LFW = ["Gerhard_Schroeder", "Hugo_Chavez", "Tony_Blair"]
"""The LFW evaluation people (the last three of ``lfw7``'s seven, alphabetically, chosen before any training)."""
HELD_OUT_IDENTITIES = [
    *HELD_OUT_LFW,
    "Barack_Obama",
    "Joe_Biden",
    "Emmanuel_Macron",
    "Jacinda_Ardern",
    "Rishi_Sunak",
]
"""People never seen in pretraining: the LFW evaluation people and iddm's test-fixture people, wherever a corpus
holds them (matched by folder name, ignoring CFP's ``NNN_`` prefix). The CFP evaluation identities are held out by
a rule: ``held_out_cfp``."""


@dataclass
class PretrainConfig:
    # -- corpus -------------------------------------------------------------------------------------
    data_dir: Path = field(
        None,
        help="Folder of face photos, one sub-folder per identity (any depth: every folder holding images is one "
        "identity, named by its path; UTKFace's flat folder is one). The shipped prior read the corpora of "
        "data/faces/SOURCES.md (cfp/, glint20/, lfw7/, orl/, utkface/). Read only.",
    )
    output_dir: Path = field(None, help="Where checkpoints and the final diffusers pipeline folder are written.")
    exclude: list[str] = field(
        HELD_OUT_IDENTITIES,
        help="Identities left out of pretraining (held out for evaluation): a folder name or a path relative to "
        "data_dir.",
    )
    held_out_cfp: int = field(
        64,
        help="CFP identities (folders under a 'cfp' folder) held out for evaluation: a seeded draw of this many "
        "(iddm.prior.data.split_cfp, seed 0), the same that benchmarks/make_eval_set.py --cfp writes.",
    )
    resolution: int = field(
        128, help="Training crop size in px (a multiple of the autoencoder's downsampling factor)."
    )
    margin: float = field(0.25, help="Zoom-out of iddm's 5-point 'aligned' crop (the crop personalization uses).")
    captions: str = field(
        "labels",
        help="'labels': captions from the labels the corpora carry (UTKFace age, gender, ethnicity; CFP profile; "
        "black and white), see iddm.prior.captions; 'color_gray': only color_caption / gray_caption.",
        choices=["labels", "color_gray"],
    )
    label_dropout: float = field(
        0.3,
        help="With captions 'labels': probability in [0, 1) of leaving out each of age, ethnicity and gender, so "
        "that shorter prompts work too.",
    )
    color_caption: str = field("a photo of a person", help="Caption of colour photos.")
    gray_caption: str = field("a black and white photo of a person", help="Caption of greyscale photos.")
    caption_dropout: float = field(
        0.1, help="Probability in [0, 1) of an empty caption (for classifier-free guidance)."
    )
    gray_copies: float = field(
        0.0,
        help="Share in [0, 1] of the colour crops also trained as a black-and-white copy (luma in all three "
        "channels, captioned 'a black and white photo of ...'; a seeded choice). The corpora hold few grey photos "
        "(845 of 18,239), so the black-and-white prompt otherwise learns faces from few people.",
    )
    min_identities: int = field(2, help="Fewest identities to accept: a prior of one face is not a face prior.")
    skip_bad_photos: bool = field(
        True,
        help="Skip unreadable photos and photos without a face (each logged, all listed in corpus.json) instead of "
        "stopping at the first.",
    )
    flip: bool = field(
        False,
        help="Also train on the mirror image of every crop. With autoencoder 'taef2' each mirror is encoded too "
        "(TAEF2's latents are not mirror-symmetric), doubling the encoding time.",
    )
    mask_padding: bool = field(
        True,
        help="Leave the parts of each crop that lie outside its photo (filled by mirroring the photo, so they repeat "
        "eyes and chins along the frame's edges) out of the UNet's loss. The prior then learns a frame's edges only "
        "from photos that show them.",
    )
    # -- architecture -------------------------------------------------------------------------------
    autoencoder: str = field(
        "taef2",
        help="'taef2': the shipped pretrained TAEF2 (frozen; 8x, 32 latent channels; the corpus is encoded once and "
        "cached); 'train': an AutoencoderKL of vae_channels trained in a first stage (the 64-px prior's recipe).",
        choices=["taef2", "train"],
    )
    latent_normalization: str = field(
        "per_channel",
        help="With autoencoder 'taef2': 'scalar' scales all latents by 1 / their std (SD's scaling_factor); "
        "'per_channel' centres and scales each of TAEF2's 32 channels (stored in the prior's vae config). "
        "A trained autoencoder's latents (autoencoder 'train') are always scaled by a scalar.",
        choices=["scalar", "per_channel"],
    )
    prediction_type: str = field(
        "v_prediction",
        help="What the UNet learns to predict: 'epsilon' (SD 1.x) or 'v_prediction' (SD 2.x; its x0 estimate stays "
        "usable at the noisiest steps, where sampling starts).",
        choices=["epsilon", "v_prediction"],
    )
    vae_channels: list[int] = field(
        [32, 64, 128], help="AutoencoderKL block widths; each block after the first halves the resolution."
    )
    vae_layers_per_block: int = field(1, help="ResNet layers per VAE block (the decoder has one more).")
    latent_channels: int = field(4, help="Latent channels (4, as Stable Diffusion).")
    unet_channels: list[int] = field([96, 192, 192], help="UNet block widths on the latent grid.")
    unet_layers_per_block: int = field(1, help="ResNet layers per UNet block.")
    unet_attention_levels: list[int] = field(
        [1, 2], help="UNet levels (0 = full latent resolution) with self- and cross-attention blocks."
    )
    unet_attention_head_dim: int = field(32, help="Attention head dimension of the UNet transformer blocks.")
    text_hidden_size: int = field(64, help="Width of the frozen random CLIP text encoder (= UNet cross-attention).")
    text_layers: int = field(2, help="Transformer layers of the frozen random CLIP text encoder.")
    # -- autoencoder stage --------------------------------------------------------------------------
    vae_steps: int = field(1200, help="Autoencoder training steps (autoencoder 'train' only).")
    vae_batch_size: int = field(16, help="Images per autoencoder step.")
    vae_learning_rate: float = field(1e-3, help="AdamW learning rate of the autoencoder (cosine decay).")
    vae_kl_weight: float = field(1e-6, help="Weight of the KL term of the autoencoder loss (SD uses 1e-6).")
    vae_mse_weight: float = field(1.0, help="Weight of the MSE term beside the L1 reconstruction term.")
    # -- diffusion stage ----------------------------------------------------------------------------
    unet_steps: int = field(4000, help="UNet training steps on the frozen autoencoder's latents.")
    unet_batch_size: int = field(32, help="Latents per UNet step.")
    unet_learning_rate: float = field(6e-4, help="AdamW learning rate of the UNet (cosine decay).")
    init_from: str | None = field(
        None,
        help="Start the UNet from this prior's weights (a shipped name such as 'iddm:face-prior-128' or a prior "
        "folder) instead of a random init: fine-tuning, with autoencoder 'taef2' (frozen, so the latents match). "
        "Its UNet architecture must match these options; its frozen text encoder is taken as it is.",
    )
    snr_gamma: float | None = field(
        5.0,
        help="Min-SNR-gamma loss weighting (diffusers' --snr_gamma; 5.0 recommended by Hang et al. 2023, who report "
        "about 3x faster convergence). Empty: plain MSE.",
    )
    ema_decay: float = field(0.999, help="Decay of the UNet's exponential moving average (the shipped weights).")
    # -- optimization, precision, device --------------------------------------------------------------
    lr_warmup_steps: int = field(100, help="Linear learning-rate warmup steps at the start of each stage.")
    adam_weight_decay: float = field(1e-2, help="AdamW weight decay.")
    max_grad_norm: float = field(1.0, help="Gradient clipping norm (0: off).")
    mixed_precision: str = field(
        "no",
        help="accelerate autocast: 'bf16' (faster on CPUs with AVX512-BF16, 1.3-2x slower on CPUs without), 'fp16' "
        "(CUDA only) or 'no'. "
        "Weights and optimizer states stay float32.",
        choices=["no", "fp16", "bf16"],
    )
    cpu: bool = field(False, help="Train on the CPU even when a GPU is available.")
    num_threads: int | None = field(
        2,
        help="torch CPU threads. The same count gives the same weights; another count changes the last bits of "
        "floats. Empty: torch's choice.",
    )
    seed: int = field(
        0,
        help="Seed of model init, batches, caption dropout, noise and timesteps: same seed, same weights (on the same "
        "device and thread count).",
    )
    weights_dtype: str = field(
        "fp16", help="Dtype the final weights are stored in (loaded as float32).", choices=["fp16", "fp32"]
    )
    # -- run management -----------------------------------------------------------------------------
    checkpointing_steps: int = field(500, help="Save a resumable checkpoint-N folder every N steps (0: never).")
    checkpoints_total_limit: int | None = field(2, help="Keep at most this many checkpoints (oldest deleted).")
    resume_from_checkpoint: str | None = field(None, help="'latest' or a checkpoint-N folder name or path.")
    keep_checkpoints: bool = field(False, help="Keep the checkpoint-N folders after a finished run.")
    overwrite: bool = field(False, help="Allow writing into an output folder that holds a finished prior.")
    num_sample_images: int = field(16, help="Samples in the samples.png grid of the output folder (0: none).")
    sample_prompts: list[str] = field(
        [
            "a photo of a person",
            "a photo of an old woman",
            "a black and white photo of a man",
            "a profile photo of a person",
            "a photo of a young Black man",
            "a photo of a young Asian woman",
            "a photo of a child",
            "a photo of a middle-aged White man",
        ],
        help="Prompts of the samples.png grid, in turn (with captions 'color_gray': the two captions).",
    )
    probe_prompts: list[str] = field(
        ["a photo of sks person", "a black and white photo of sks person", "a profile photo of sks person"],
        help="Prompts iddm evaluate / benchmark draw a model personalized from this prior with (its iddm_prior.json; "
        "with captions 'color_gray' only the first is used).",
    )
    sample_guidance_scale: float = field(3.0, help="Classifier-free guidance of the samples.png grid.")
    sample_steps: int = field(25, help="DDIM steps of the samples.png grid.")
