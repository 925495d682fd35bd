"""Resumable ``checkpoint-N`` folders (diffusers' layout and ``--resume_from_checkpoint latest``).

A checkpoint holds exactly what is needed to continue bit for bit: the trainable weights
(safetensors), the optimizer and learning-rate scheduler states (``torch.save``, read back with
``weights_only=True``), the random generators' states and IDDM's photo perturbation δ
(safetensors), and the step. It is written to a temporary folder and renamed, so a run killed
while saving never leaves a half checkpoint that ``latest`` would pick.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Finished checkpoint folders of ``output_dir``, oldest first."""
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and CHECKPOINT_PATTERN.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT_PATTERN.match(p.name).group(1)))


def resolve_checkpoint(output_dir: Path, value: str | None) -> Path | None:
    """``None`` -> ``None``; ``"latest"`` -> newest checkpoint or ``None``; a name or path -> that folder."""
    if value is None:
        return None
    if value == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(value)
    if not path.is_absolute():
        path = output_dir / path
    if not (path / "state.json").is_file():
        raise FileNotFoundError(f"{path} is not an iddm checkpoint (no state.json). Use 'latest' or checkpoint-N.")
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
) -> Path:
    """Write ``output_dir/checkpoint-{step}`` atomically and prune old ones beyond ``total_limit``."""
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f".checkpoint-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_trainable_state(modules), tmp / "trainable.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(lr_scheduler.state_dict(), tmp / "lr_scheduler.pt")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp / "state.safetensors")
    (tmp / "state.json").write_text(json.dumps({"step": step, **info}, indent=2) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    if total_limit is not None and total_limit > 0:
        for old in list_checkpoints(output_dir)[:-total_limit]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(
    path: Path, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer, lr_scheduler
) -> tuple[int, dict[str, torch.Tensor], dict]:
    """Restore weights, optimizer and scheduler in place; return ``(step, tensors, info)``."""
    weights = load_file(path / "trainable.safetensors")
    expected = set(_trainable_state(modules))
    if set(weights) != expected:
        missing, extra = sorted(expected - set(weights))[:5], sorted(set(weights) - expected)[:5]
        raise ValueError(
            f"Checkpoint {path} does not match this run's trainable weights (missing {missing}, unexpected {extra}). "
            "Resume with the same model, method and LoRA settings."
        )
    for prefix, module in modules.items():
        own = {k[len(prefix) + 1 :]: v for k, v in weights.items() if k.startswith(prefix + ".")}
        with torch.no_grad():
            for name, parameter in module.named_parameters():
                if name in own:
                    parameter.copy_(own[name].to(parameter.device, parameter.dtype))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu"))
    lr_scheduler.load_state_dict(torch.load(path / "lr_scheduler.pt", weights_only=True))
    info = json.loads((path / "state.json").read_text())
    return int(info["step"]), load_file(path / "state.safetensors"), info
