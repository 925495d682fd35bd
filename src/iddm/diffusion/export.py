"""Export LoRA weights for tools that do not read diffusers' keys (kohya-ss, AUTOMATIC1111, ComfyUI).

The kohya format names each adapted layer ``lora_unet_<path_with_underscores>`` (``lora_te1_`` /
``lora_te2_`` for text encoders) with ``.lora_down.weight``, ``.lora_up.weight`` and an ``.alpha``
scalar. Conversion goes through diffusers' own converters (diffusers -> PEFT -> kohya); the ``.alpha``
tensors are then set from the adapter metadata, since the converter assumes alpha = rank.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers.utils import convert_all_state_dict_to_peft, convert_state_dict_to_kohya
from safetensors import safe_open

from iddm.diffusion.stable_diffusion import LORA_WEIGHT_NAME
from iddm.images import atomic_write_safetensors

KOHYA_WEIGHT_NAME = "pytorch_lora_weights_kohya.safetensors"
ADAPTER_METADATA_KEY = "lora_adapter_metadata"


def _alphas(metadata: dict[str, str] | None) -> dict[str, float]:
    """Module prefix (``unet``, ``text_encoder``, ...) -> LoRA alpha, from the file's adapter metadata."""
    if not metadata or ADAPTER_METADATA_KEY not in metadata:
        return {}
    packed = json.loads(metadata[ADAPTER_METADATA_KEY])
    return {key.split(".")[0]: float(value) for key, value in packed.items() if key.endswith("lora_alpha")}


def to_kohya(path: Path) -> dict[str, torch.Tensor]:
    """The kohya-format tensors of the diffusers LoRA file at ``path``."""
    with safe_open(str(path), framework="pt") as handle:
        state = {key: handle.get_tensor(key) for key in handle.keys()}
        metadata = handle.metadata()
    alphas = _alphas(metadata)
    converted: dict[str, torch.Tensor] = {}
    for prefix in sorted({key.split(".")[0] for key in state}):
        own = {key[len(prefix) + 1 :]: value for key, value in state.items() if key.startswith(prefix + ".")}
        peft = {f"{prefix}.{key}": value for key, value in convert_all_state_dict_to_peft(own).items()}
        kohya = convert_state_dict_to_kohya(peft)
        if prefix in alphas:
            kohya = {k: (torch.tensor(alphas[prefix]) if k.endswith(".alpha") else v) for k, v in kohya.items()}
        converted.update(kohya)
    return converted


def export_kohya(model_dir: Path, output: Path | None = None) -> Path:
    """Write ``model_dir``'s LoRA in kohya format (default: ``model_dir/pytorch_lora_weights_kohya.safetensors``).

    Raises:
        FileNotFoundError: ``model_dir`` holds no LoRA weights (DreamBooth and micro runs have none to export).
    """
    source = Path(model_dir) / LORA_WEIGHT_NAME
    if not source.is_file():
        raise FileNotFoundError(f"{model_dir} holds no {LORA_WEIGHT_NAME}: only LoRA runs can be exported to kohya.")
    output = Path(output) if output is not None else Path(model_dir) / KOHYA_WEIGHT_NAME
    atomic_write_safetensors(output, to_kohya(source))
    return output
