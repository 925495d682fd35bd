"""Resumable ``checkpoint-N`` folders (diffusers' layout and ``--resume_from_checkpoint latest``).

A checkpoint holds exactly what is needed to continue bit for bit: the trainable weights
(safetensors), the optimizer and learning-rate scheduler states (``torch.save``, read back with
``weights_only=True``), the random generators' states and IDDM's photo perturbation δ (safetensors),
the step, and — for LoRA runs — a ``pytorch_lora_weights.safetensors`` that diffusers loads as is.

It is written to a temporary folder and renamed, and ``manifest.json`` (size and SHA-256 of every
file) is written last: ``latest`` takes the newest checkpoint whose files match their manifest and
falls back, with a warning, past any that were truncated or corrupted.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from iddm.images import atomic_write_json, atomic_write_safetensors, file_sha256, normalize_permissions

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
MANIFEST = "manifest.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from (incomplete, corrupt or from another configuration)."""


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Checkpoint folders of ``output_dir``, oldest first."""
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and CHECKPOINT_PATTERN.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT_PATTERN.match(p.name).group(1)))


def verify_checkpoint(path: Path) -> None:
    """Raise :class:`CheckpointError` unless every file of ``path`` matches its manifest."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise CheckpointError(f"{path} is incomplete (no {MANIFEST}: the run stopped while saving it)")
    try:
        files = json.loads(manifest.read_text())["files"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise CheckpointError(f"{path}/{MANIFEST} is corrupt") from None
    for name, entry in files.items():
        file = path / name
        if not file.is_file() or file.stat().st_size != entry["size"] or file_sha256(file) != entry["sha256"]:
            raise CheckpointError(f"{file} is missing or corrupt (size or SHA-256 differs from {MANIFEST})")


def resolve_checkpoint(output_dir: Path, value: str | None) -> Path | None:
    """``None`` -> ``None``; ``"latest"`` -> the newest verified checkpoint (or ``None``); a name or path -> it.

    Raises:
        CheckpointError: a named checkpoint that does not verify; or checkpoints exist but none verifies.
    """
    if value is None:
        return None
    if value == "latest":
        found = list_checkpoints(output_dir)
        for path in reversed(found):
            try:
                verify_checkpoint(path)
            except CheckpointError as err:
                logger.warning("Skipping %s: %s. Falling back to an older checkpoint.", path.name, err)
                continue
            return path
        if found:
            raise CheckpointError(f"No usable checkpoint in {output_dir}: every one is incomplete or corrupt")
        return None
    path = Path(value)
    if not path.is_absolute():
        path = output_dir / path
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint folder; use 'latest' or checkpoint-N")
    verify_checkpoint(path)
    return path


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
    """Write ``output_dir/checkpoint-{step}`` atomically and prune old ones beyond ``total_limit``.

    ``extra(folder)`` may write further files (e.g. loadable LoRA weights); they are covered by the manifest.
    """
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f".checkpoint-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    atomic_write_safetensors(tmp / "trainable.safetensors", _trainable_state(modules))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(lr_scheduler.state_dict(), tmp / "lr_scheduler.pt")
    atomic_write_safetensors(tmp / "state.safetensors", tensors)
    atomic_write_json(tmp / "state.json", {"step": step, **info})
    if extra is not None:
        extra(tmp)
    files = {
        str(p.relative_to(tmp)): {"size": p.stat().st_size, "sha256": file_sha256(p)}
        for p in sorted(tmp.rglob("*"))
        if p.is_file()
    }
    atomic_write_json(tmp / MANIFEST, {"step": step, "files": files})
    normalize_permissions(tmp)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    if total_limit is not None and total_limit > 0:
        for old in list_checkpoints(output_dir)[:-total_limit]:
            shutil.rmtree(old, ignore_errors=True)
    return final


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
