"""Resumable ``checkpoint-N`` folders (diffusers' layout and ``--resume_from_checkpoint latest``).

A checkpoint holds exactly what is needed to continue bit for bit: the trainable weights
(safetensors), the optimizer and learning-rate scheduler states (``torch.save``, read back with
``weights_only=True``), the random generators' states and IDDM's photo perturbation δ (safetensors),
the step, and — for LoRA runs — a ``pytorch_lora_weights.safetensors`` that diffusers loads as is.

Writing, verifying and resolving the folders themselves is :mod:`iddm.checkpoints`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from iddm.checkpoints import (
    CheckpointError,
    list_checkpoints,
    resolve_checkpoint,
    verify_checkpoint,
    write_checkpoint,
)
from iddm.images import atomic_write_json, atomic_write_safetensors

__all__ = [
    "CheckpointError",
    "list_checkpoints",
    "load_checkpoint",
    "resolve_checkpoint",
    "save_checkpoint",
    "verify_checkpoint",
]


def _trainable_state(modules: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    state = {}
    for prefix, module in modules.items():
        for name, parameter in module.named_parameters():
            if parameter.requires_grad:
                state[f"{prefix}.{name}"] = parameter.detach().cpu().contiguous()
    return state


def save_checkpoint(
    output_dir: Path,
    step: int,
    modules: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    lr_scheduler,
    tensors: dict[str, torch.Tensor],
    info: dict,
    total_limit: int | None,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``output_dir/checkpoint-{step}`` (see :func:`iddm.checkpoints.write_checkpoint`).

    ``extra(folder)`` may write further files (e.g. loadable LoRA weights); they are covered by the manifest.
    """

    def write(folder: Path) -> None:
        atomic_write_safetensors(folder / "trainable.safetensors", _trainable_state(modules))
        torch.save(optimizer.state_dict(), folder / "optimizer.pt")
        torch.save(lr_scheduler.state_dict(), folder / "lr_scheduler.pt")
        atomic_write_safetensors(folder / "state.safetensors", tensors)
        atomic_write_json(folder / "state.json", {"step": step, **info})
        if extra is not None:
            extra(folder)

    return write_checkpoint(output_dir, step, write, total_limit)


def load_checkpoint(
    path: Path, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer, lr_scheduler
) -> tuple[int, dict[str, torch.Tensor], dict]:
    """Restore weights, optimizer and scheduler in place; return ``(step, tensors, info)``.

    Raises:
        CheckpointError: the checkpoint does not match this run's trainable weights, or cannot be read.
    """
    try:
        weights = load_file(path / "trainable.safetensors")
        optimizer_state = torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu")
        scheduler_state = torch.load(path / "lr_scheduler.pt", weights_only=True)
        tensors = load_file(path / "state.safetensors")
        info = json.loads((path / "state.json").read_text())
    except (OSError, RuntimeError, SafetensorError, json.JSONDecodeError, EOFError) as err:
        raise CheckpointError(f"{path} cannot be read ({type(err).__name__}); delete it to start over") from None
    expected = set(_trainable_state(modules))
    if set(weights) != expected:
        missing, extra = sorted(expected - set(weights))[:5], sorted(set(weights) - expected)[:5]
        raise CheckpointError(
            f"Checkpoint {path} does not match this run's trainable weights (missing {missing}, unexpected "
            f"{extra}); resume with the same model, method and LoRA settings"
        )
    for prefix, module in modules.items():
        own = {k[len(prefix) + 1 :]: v for k, v in weights.items() if k.startswith(prefix + ".")}
        with torch.no_grad():
            for name, parameter in module.named_parameters():
                if name in own:
                    parameter.copy_(own[name].to(parameter.device, parameter.dtype))
    optimizer.load_state_dict(optimizer_state)
    lr_scheduler.load_state_dict(scheduler_state)
    return int(info["step"]), tensors, info
