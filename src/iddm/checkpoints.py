"""``checkpoint-N`` folders: written atomically with a SHA-256 manifest, verified, rotated, resolved.

The layout of diffusers' training scripts (``--resume_from_checkpoint latest``), shared by ``iddm personalize``
(:mod:`iddm.schedule.checkpoint` decides what goes in) and ``iddm pretrain``. A checkpoint is written to a
temporary folder and renamed, and ``manifest.json`` (size and SHA-256 of every file) is written last: ``latest``
takes the newest checkpoint whose files match their manifest and falls back, with a warning, past any that were
truncated or corrupted.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from iddm.images import atomic_write_json, file_sha256, normalize_permissions

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


def write_checkpoint(output_dir: Path, step: int, write: Callable[[Path], None], total_limit: int | None) -> Path:
    """Write ``output_dir/checkpoint-{step}`` atomically and prune old ones beyond ``total_limit``.

    ``write(folder)`` writes the checkpoint's files into a temporary folder; the manifest covering them is
    added, and the folder renamed into place, only once it returns (a kill never leaves half a checkpoint).
    """
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f".checkpoint-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
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
