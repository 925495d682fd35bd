"""Weights shipped with iddm, and SHA-256 manifests of weight folders.

The offline face priors are diffusers ``StableDiffusionPipeline`` folders that ``iddm pretrain`` trained
(credits: ``data/faces/SOURCES.md``): ``face_prior/`` (``iddm:face-prior-64``, 64 px, grey and colour, 44 people)
and ``face_prior_128/`` (``iddm:face-prior-128``, 128 px, colour, caption-conditioned, hundreds of people; its
data is for non-commercial research only: :data:`PRIOR_DATA_TERMS`). ``taef2/`` is TAEF2 (MIT), the
128-px prior's autoencoder.
:func:`prior_path` returns a prior by name after checking every file against its ``SHA256SUMS``. This module
sits at the bottom of the layer map (it imports only :mod:`iddm.images`) so that :mod:`iddm.diffusion` can load
the priors by name.
"""

from __future__ import annotations

import re
from pathlib import Path

from iddm.images import atomic_write_text, file_sha256

MANIFEST_FILE = "SHA256SUMS"
"""One ``<sha256>  <relative path>`` line per file (``sha256sum -c SHA256SUMS`` checks it too)."""
FACE_PRIOR = "iddm:face-prior"
"""The default base model's name for ``--pretrained_model_name_or_path``: an alias of one shipped prior."""
FACE_PRIOR_64 = "iddm:face-prior-64"
FACE_PRIOR_128 = "iddm:face-prior-128"
PRIOR_FOLDERS = {FACE_PRIOR_64: "face_prior", FACE_PRIOR_128: "face_prior_128"}
"""Each shipped prior's own name and its folder here. Runs and model cards record these names, never the alias."""
PRIOR_DATA_TERMS = {
    FACE_PRIOR_128: "Its pretraining photos (CFP, the Glint360K sample and UTKFace among them; credits in the "
    "repository's data/faces/SOURCES.md) are licensed for non-commercial research only, and so are this prior and "
    "every model personalized from it."
}
"""The terms a prior inherits from its pretraining data, repeated in the model card of every model made from it."""
PRIOR_ALIASES = {FACE_PRIOR: FACE_PRIOR_128}
"""What the alias stands for now."""
PRIOR_NAMES = (FACE_PRIOR, *PRIOR_FOLDERS)
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


def attributes_path() -> Path:
    """The attribute model and the statistical face-shape model of real faces (trained by iddm on UTKFace:
    non-commercial research only), verified against their SHA-256 manifest."""
    return _shipped_folder("attributes", "attribute and face-shape models")


def taef2_path() -> Path:
    """TAEF2, the pretrained tiny autoencoder (MIT, ``taef2/LICENSE``) as a diffusers model folder of
    :class:`iddm.diffusion.taef2.TinyFluxAutoencoder`, verified against its SHA-256 manifest."""
    return _shipped_folder("taef2", "TAEF2 autoencoder")


def prior_name(name: str) -> str:
    """The shipped prior's own name for ``name`` (an alias resolved), or ``ValueError`` naming the known ones."""
    name = PRIOR_ALIASES.get(name, name)
    if name not in PRIOR_FOLDERS:
        raise ValueError(f"Unknown built-in prior {name!r}; iddm ships {', '.join(PRIOR_NAMES)}.")
    return name


def prior_path(name: str = FACE_PRIOR) -> Path:
    """A face prior shipped with iddm, verified against its SHA-256 manifest.

    Returns:
        The folder: a diffusers ``StableDiffusionPipeline`` (``from_pretrained(path, local_files_only=True)``;
        import :mod:`iddm.diffusion` first, which makes the 128-px prior's autoencoder class known to diffusers)
        plus ``iddm_prior.json`` and ``SHA256SUMS``.

    Raises:
        ValueError: an unknown name, or a file that does not match the manifest.
        FileNotFoundError: the folder or a file of it is missing (an install without package data).
    """
    return _shipped_folder(PRIOR_FOLDERS[prior_name(name)], f"face prior {name}")


def default_prior_path() -> Path:
    """The default base model's folder: :func:`prior_path` of ``iddm:face-prior``."""
    return prior_path(FACE_PRIOR)
