"""Weights shipped with iddm, and SHA-256 manifests of weight folders.

``face_prior/`` is the offline face prior (a diffusers ``StableDiffusionPipeline`` folder, ~25 MB) that
``iddm pretrain`` trained on ``data/faces`` (credits: ``data/faces/SOURCES.md``); :func:`default_prior_path`
returns it after checking every file against its ``SHA256SUMS``. This module sits at the bottom of the layer
map (it imports only :mod:`iddm.images`) so that :mod:`iddm.diffusion` can load the prior by name.
"""

from __future__ import annotations

import re
from pathlib import Path

from iddm.images import atomic_write_text, file_sha256

MANIFEST_FILE = "SHA256SUMS"
"""One ``<sha256>  <relative path>`` line per file (``sha256sum -c SHA256SUMS`` checks it too)."""
FACE_PRIOR = "iddm:face-prior"
"""The shipped face prior's name for ``--pretrained_model_name_or_path`` (the default base model)."""
PRIOR_FILE = "iddm_prior.json"
"""What personalization on the prior should default to, and how the prior was made."""


_RUN_STATE = re.compile(r"^(\..*|checkpoint-\d+)$")
"""Top-level entries that are not part of a weight folder: hidden files, a run's kept checkpoint-N folders."""


def _files(folder: Path) -> list[str]:
    names = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if path.is_file() and path.name != MANIFEST_FILE and not _RUN_STATE.match(relative.parts[0]):
            names.append(relative.as_posix())
    return sorted(names)


def write_manifest(folder: str | Path) -> Path:
    """Write ``folder/SHA256SUMS`` covering every file of ``folder`` (but hidden and checkpoint-N), atomically."""
    folder = Path(folder)
    lines = [f"{file_sha256(folder / name)}  {name}\n" for name in _files(folder)]
    atomic_write_text(folder / MANIFEST_FILE, "".join(lines))
    return folder / MANIFEST_FILE


def verify_manifest(folder: str | Path) -> None:
    """Check every file of ``folder`` against its ``SHA256SUMS``.

    Raises:
        FileNotFoundError: no manifest, or a listed file is missing.
        ValueError: a file's SHA-256 differs from the manifest, or a file is not listed in it.
    """
    folder = Path(folder)
    manifest = folder / MANIFEST_FILE
    if not manifest.is_file():
        raise FileNotFoundError(f"{folder} has no {MANIFEST_FILE}: not a verified iddm weight folder.")
    expected = {}
    for line in manifest.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            expected[name.strip().lstrip("*")] = digest
    missing = sorted(name for name in expected if not (folder / name).is_file())
    if missing:
        raise FileNotFoundError(f"{folder}: file(s) listed in {MANIFEST_FILE} are missing: {missing}. Reinstall iddm.")
    unlisted = sorted(set(_files(folder)) - set(expected))
    if unlisted:
        raise ValueError(f"{folder}: file(s) not in {MANIFEST_FILE}: {unlisted}. Remove them or reinstall iddm.")
    changed = sorted(name for name, digest in expected.items() if file_sha256(folder / name) != digest)
    if changed:
        raise ValueError(
            f"{folder}: SHA-256 mismatch for {changed} (modified or corrupt weights); refusing to load them. "
            "Reinstall iddm or rebuild the prior with `iddm pretrain`."
        )


def _shipped_folder(name: str, what: str) -> Path:
    folder = Path(__file__).resolve().parent / name
    if not folder.is_dir():
        raise FileNotFoundError(
            f"The shipped {what} {folder} is missing (an install without package data?). Reinstall iddm."
        )
    verify_manifest(folder)
    return folder


def taef2_path() -> Path:
    """TAEF2, the pretrained tiny autoencoder (MIT, ``taef2/LICENSE``) as a diffusers model folder of
    :class:`iddm.diffusion.taef2.TinyFluxAutoencoder`, verified against its SHA-256 manifest."""
    return _shipped_folder("taef2", "TAEF2 autoencoder")


def default_prior_path() -> Path:
    """The face prior shipped with iddm (``iddm/weights/face_prior``), verified against its SHA-256 manifest.

    Returns:
        The folder: a diffusers ``StableDiffusionPipeline`` (``from_pretrained(path, local_files_only=True)``)
        plus ``iddm_prior.json`` and ``SHA256SUMS``.

    Raises:
        FileNotFoundError: the folder or a file of it is missing (an install without package data).
        ValueError: a file does not match the manifest.
    """
    folder = Path(__file__).resolve().parent / "face_prior"
    if not folder.is_dir():
        raise FileNotFoundError(
            f"The shipped face prior {folder} is missing (an install without package data?). Reinstall iddm or "
            "build one with `iddm pretrain --output_dir DIR`."
        )
    verify_manifest(folder)
    return folder
