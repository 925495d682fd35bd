"""Stable Diffusion 1.x/2.x (``StableDiffusionPipeline`` components) as an iddm backbone, in latent space.

* ``lora``: peft LoRA adapters on the UNet (and optionally the text encoder), trainable parameters in
  fp32 beside frozen weights in the mixed-precision dtype (diffusers' ``cast_training_params``); written
  as ``pytorch_lora_weights.safetensors`` with its adapter metadata (rank, alpha, targets), which
  ``pipe.load_lora_weights`` reads.
* ``dreambooth``: the full UNet (and optionally the text encoder) trains; written as a complete
  ``save_pretrained`` pipeline folder whose frozen parts keep the dtype they were loaded in.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, ClassVar

import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline
from diffusers.training_utils import cast_training_params
from peft import LoraConfig, inject_adapter_in_model
from peft.utils import get_peft_model_state_dict
from torch import nn

from iddm.diffusion.backbone import Backbone, Conditioning, LatentDistribution, MethodSettings
from iddm.weights import PRIOR_FILE

logger = logging.getLogger(__name__)

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def _drop_harmless_diffusers_warnings(record: logging.LogRecord) -> bool:
    """False for two diffusers warnings every built-in prior run printed and no user can act on: a ``.to(dtype)``
    with no module to keep in float32 (``[]``), and the 128-px prior's TAEF2 autoencoder, which is not an
    ``AutoencoderKL`` by design."""
    message = record.getMessage()
    return not ("should be kept in float32: []" in message or message.endswith("TinyFluxAutoencoder'>."))


logging.getLogger("diffusers.models.modeling_utils").addFilter(_drop_harmless_diffusers_warnings)
logging.getLogger("diffusers.pipelines.pipeline_utils").addFilter(_drop_harmless_diffusers_warnings)


def lora_config(settings: MethodSettings, target_modules: tuple[str, ...] | list[str]) -> LoraConfig:
    """The peft adapter config of ``settings`` on ``target_modules``."""
    return LoraConfig(
        r=settings.lora_rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.lora_dropout,
        init_lora_weights="gaussian",
        target_modules=list(target_modules),
    )


def adapter_metadata(module: nn.Module) -> dict[str, Any] | None:
    """The adapter config diffusers stores beside LoRA weights, so loading restores alpha, not just rank."""
    config = getattr(module, "peft_config", {}).get("default")
    if config is None:
        return None
    keep = ("r", "lora_alpha", "target_modules", "lora_dropout", "use_dora", "rank_pattern", "alpha_pattern")
    return {k: v for k, v in config.to_dict().items() if k in keep}


def lora_layers(module: nn.Module) -> dict[str, torch.Tensor]:
    """PEFT-format LoRA tensors of ``module`` (``<layer>.lora_A.weight``, ``lora_B``; fp32 CPU copies).

    Kept in PEFT's naming, which ``load_lora_weights`` reads as is: ``convert_state_dict_to_diffusers`` renames
    only attention layers (``to_k.lora.down``), and a file that mixes both namings loses its attention LoRA on load
    as soon as other layers (convolutions, feed-forward) are adapted too.
    """
    state = get_peft_model_state_dict(module)
    return {k: v.detach().float().cpu().contiguous() for k, v in state.items()}


class StableDiffusionBackbone(Backbone):
    """Stable Diffusion 1.x/2.x: VAE latents, one CLIP text encoder."""

    kind = "sd"
    pipeline_classes = ("StableDiffusionPipeline",)
    pipeline_class: ClassVar[type] = StableDiffusionPipeline
    text_encoder_names: ClassVar[tuple[str, ...]] = ("text_encoder",)

    def __init__(self, pipeline, resolution: int | None = None, model_defaults: dict[str, Any] | None = None):
        self.pipeline = pipeline
        self.unet = pipeline.unet
        self.vae = pipeline.vae
        self.noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.resolution = resolution or int(self.unet.config.sample_size) * self.vae_scale
        self.model_defaults = dict(model_defaults or {})
        self.loaded_dtypes = {name: module.dtype for name, module in self.components().items()}
        self._trainable: dict[str, nn.Module] = {}
        self._method = "lora"
        self._checked_prompts: set[str] = set()

    # -- loading --------------------------------------------------------------------------------------
    @classmethod
    def from_folder(
        cls,
        path: str | Path,
        resolution: int | None = None,
        revision: str | None = None,
        variant: str | None = None,
        local_files_only: bool = True,
    ) -> StableDiffusionBackbone:
        """Load a diffusers folder (``local_files_only``) or a hub id (when online)."""
        kwargs = {"revision": revision, "variant": variant, "local_files_only": local_files_only}
        pipeline = cls.pipeline_class.from_pretrained(str(path), **{k: v for k, v in kwargs.items() if v is not None})
        pipeline.set_progress_bar_config(disable=True)
        defaults_file = Path(path) / PRIOR_FILE  # written by `iddm pretrain`: the options that suit the model
        defaults = json.loads(defaults_file.read_text()) if defaults_file.is_file() else None
        return cls(pipeline, resolution=resolution, model_defaults=defaults)

    def components(self) -> dict[str, nn.Module]:
        """The pipeline's torch modules by name (UNet, VAE, text encoders)."""
        names = ("unet", "vae", *self.text_encoder_names)
        return {name: getattr(self.pipeline, name) for name in names}

    def text_encoders(self) -> list[nn.Module]:
        return [getattr(self.pipeline, name) for name in self.text_encoder_names]

    def recommended(self, method: str) -> dict[str, Any]:
        values = super().recommended(method)
        values["resolution_default"] = self.resolution
        defaults = self.model_defaults.get("personalization", self.model_defaults)  # iddm_prior.json's block
        if defaults.get("method", method) == method:  # measured for one method (a LoRA rate would wreck DreamBooth)
            values.update({k: v for k, v in defaults.items() if k in values})
        return values

    # -- spaces and conditioning ------------------------------------------------------------------
    @property
    def latent_shape(self) -> tuple[int, int, int]:
        side = self.resolution // self.vae_scale
        return (self.unet.config.in_channels, side, side)

    def encode(self, images):
        distribution = self.vae.encode(images.to(self.vae.dtype) * 2 - 1).latent_dist
        scale = self.vae.config.scaling_factor
        return LatentDistribution(
            (distribution.mean * scale).to(self.unet.dtype), (distribution.std * scale).to(self.unet.dtype)
        )

    def to_image_space(self, latents):
        decoded = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        return ((decoded + 1) / 2).clamp(0, 1)

    def _tokens(self, tokenizer, prompts: list[str], device: torch.device) -> torch.Tensor:
        """Token ids ``(B, L)`` padded to the tokenizer's length ``L``; a longer prompt is cut to ``L`` with a warning
        (once per prompt), as diffusers' pipelines do."""
        limit = tokenizer.model_max_length
        for prompt in set(prompts) - self._checked_prompts:  # each prompt is measured once, off the training hot path
            self._checked_prompts.add(prompt)
            length = len(tokenizer(prompt, truncation=False).input_ids)
            if length > limit:
                logger.warning("Prompt of %d tokens cut to the text encoder's %d: %r", length, limit, prompt)
        ids = tokenizer(prompts, padding="max_length", max_length=limit, truncation=True, return_tensors="pt")
        return ids.input_ids.to(device)

    def encode_prompts(self, prompts):
        encoder = self.pipeline.text_encoder
        states = encoder(self._tokens(self.pipeline.tokenizer, prompts, encoder.device))[0]
        return Conditioning(states.to(self.unet.dtype))

    # -- training -----------------------------------------------------------------------------------
    def to(self, device, weight_dtype=torch.float32):
        trained = set(self._trainable)
        for name, module in self.components().items():
            # Frozen parts run in the mixed-precision dtype; what trains in full stays fp32.
            dtype = torch.float32 if (name in trained and self._method == "dreambooth") else weight_dtype
            module.to(device, dtype=dtype)
        if self._method == "lora" and trained:
            cast_training_params([self._trainable[name] for name in trained], dtype=torch.float32)
        return self

    def prepare_for_training(self, settings: MethodSettings) -> str:
        method = self.check_method(settings.method)
        self._method = method
        self.vae.requires_grad_(False)
        self.unet.requires_grad_(method == "dreambooth")
        for encoder in self.text_encoders():
            encoder.requires_grad_(method == "dreambooth" and settings.train_text_encoder)
        trainable: dict[str, nn.Module] = {"unet": self.unet}
        if method == "lora":
            self.unet.add_adapter(lora_config(settings, settings.lora_target_modules))
            if settings.train_text_encoder:
                for encoder in self.text_encoders():
                    # peft directly: transformers' own `add_adapter` demands a newer peft than is released.
                    inject_adapter_in_model(lora_config(settings, settings.text_encoder_target_modules), encoder)
        if settings.train_text_encoder:
            trainable.update({name: getattr(self.pipeline, name) for name in self.text_encoder_names})
        if settings.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            if settings.train_text_encoder:
                for encoder in self.text_encoders():
                    encoder.gradient_checkpointing_enable()
        self._trainable = trainable
        return method

    def trainable_modules(self):
        return self._trainable

    def save(self, output_dir: Path, method: str) -> None:
        """LoRA: ``pytorch_lora_weights.safetensors`` with adapter metadata; DreamBooth: a pipeline folder."""
        if method == "lora":
            self.pipeline_class.save_lora_weights(output_dir, weight_name=LORA_WEIGHT_NAME, **self.lora_state())
            return
        for name, module in self.components().items():
            if name not in self._trainable:
                module.to(dtype=self.loaded_dtypes[name])  # saved as loaded, so that plain diffusers runs it
        self.pipeline.save_pretrained(output_dir, safe_serialization=True)

    def lora_state(self) -> dict[str, Any]:
        """``save_lora_weights`` keyword arguments: the layers and adapter metadata of every LoRA module."""
        kwargs: dict[str, Any] = {
            "unet_lora_layers": lora_layers(self.unet),
            "unet_lora_adapter_metadata": adapter_metadata(self.unet),
        }
        for name in self.text_encoder_names:
            if name in self._trainable:
                encoder = getattr(self.pipeline, name)
                kwargs[f"{name}_lora_layers"] = lora_layers(encoder)
                kwargs[f"{name}_lora_adapter_metadata"] = adapter_metadata(encoder)
        return kwargs

    def load_lora(self, folder: Path) -> None:
        folder = Path(folder)
        if not (folder / LORA_WEIGHT_NAME).is_file():
            raise FileNotFoundError(f"{folder} has no {LORA_WEIGHT_NAME}; pass the model folder of a LoRA run.")
        self.pipeline.load_lora_weights(folder, weight_name=LORA_WEIGHT_NAME)
