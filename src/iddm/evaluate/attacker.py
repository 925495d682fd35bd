"""The attacker's side: FR systems, what the attacker knows (reference photos, a gallery), and linkability per system.

The attacker holds real photos of the user (``reference``, held out from training) and a gallery of
real photos of other people. Each FR system is labelled white-box (a surrogate of the optimizer, read
from the run's ``iddm_run.json``) or black-box. Photo folders are read forgivingly, as training reads
them with ``--skip_bad_photos``: a corrupt file or an empty identity folder is skipped with a warning.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from iddm.evaluate.linkability import FaceSet, concat_facesets, linkability, relabel
from iddm.evaluate.results import BackendLinkability, Role
from iddm.faces import FaceRecognizer, load_recognizer
from iddm.images import PhotoError, list_photos, load_photo
from iddm.run_layout import RunManifest

logger = logging.getLogger(__name__)

USER_LABEL = "user"
"""Label of the user's real photos in the attacker's gallery."""
DEFAULT_BACKENDS = ["sface", "facenet", "dlib"]
FARS = (1e-2, 1e-3)


def load_backends(keys: Sequence[str]) -> dict[str, FaceRecognizer]:
    """Registry key (``sface``, ``facenet``, ``dlib``, ...) -> loaded recognizer, in the given order.

    The key is what ``iddm_run.json`` lists as ``surrogates``; the recognizer's ``.name`` may differ
    (``facenet`` -> ``facenet-casia``), and embeddings are stored under that name.
    """
    if not keys:
        raise ValueError("--backends needs at least one face recognition system (e.g. sface facenet dlib).")
    keys = [k.strip().lower() for k in keys]
    if len(set(keys)) != len(keys):
        raise ValueError(f"--backends lists a system twice: {keys}.")
    return {key: load_recognizer(key) for key in keys}


def load_images(folder: str | Path, what: str = "images") -> tuple[list[np.ndarray], list[Path], list[str]]:
    """The readable images of ``folder`` (sorted by name) as RGB ``uint8`` arrays.

    Returns:
        ``(images, their paths, skipped)``: an unreadable file is skipped with a warning and listed in
        ``skipped`` (``"path: reason"``).

    Raises:
        FileNotFoundError: no such folder. ``ValueError``: not one readable image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"The {what} folder {folder} does not exist.")
    images, paths, skipped = [], [], []
    for path in list_photos(folder, min_photos=0):
        try:
            images.append(load_photo(path))
            paths.append(path)
        except PhotoError as err:
            logger.warning("Skipping %s: %s", what, err)
            skipped.append(str(err))
    if not images:
        raise ValueError(f"The {what} folder {folder} holds no readable image.")
    return images, paths, skipped


def load_gallery_folder(folder: str | Path) -> tuple[dict[str, list[np.ndarray]], list[str]]:
    """Distractor identity (sub-folder name) -> its readable photos, and what was skipped.

    A corrupt photo or a sub-folder without any readable photo is skipped with a warning.

    Raises:
        ValueError: no sub-folder with a readable photo, or one named :data:`USER_LABEL`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"The gallery folder {folder} does not exist.")
    subfolders = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not subfolders:
        raise ValueError(
            f"The gallery {folder} has no sub-folders: put the photos of each distractor identity in its own "
            "sub-folder (gallery/<name>/*.jpg)."
        )
    if USER_LABEL in {d.name for d in subfolders}:
        raise ValueError(f"Gallery identity folder {folder / USER_LABEL}: the name '{USER_LABEL}' is reserved.")
    gallery: dict[str, list[np.ndarray]] = {}
    skipped: list[str] = []
    for sub in subfolders:
        try:
            images, _, bad = load_images(sub, f"gallery identity {sub.name}")
        except ValueError:
            logger.warning("Skipping gallery identity %s: no readable photo in %s.", sub.name, sub)
            skipped.append(f"{sub}: no readable photo")
            continue
        gallery[sub.name] = images
        skipped += bad
    if not gallery:
        raise ValueError(f"The gallery {folder} has no sub-folder with a readable photo.")
    return gallery, skipped


def attacker_knowledge(
    reference: FaceSet, distractors: Mapping[str, FaceSet], extra_user: FaceSet | None = None
) -> tuple[FaceSet, FaceSet]:
    """The attacker's ``(reference, gallery)``: the gallery is the user's reference photos (and ``extra_user``)
    labelled :data:`USER_LABEL` plus each distractor identity's photos under its name.

    Raises:
        ValueError: no face in any reference photo, or no distractor face (identification would be trivial).
    """
    if not reference.detected.any():
        raise ValueError(
            "No face was detected in any reference photo of the user: the attacker has nothing to link with. "
            "Use clear frontal photos."
        )
    if USER_LABEL in distractors:
        raise ValueError(f"A distractor identity may not be named '{USER_LABEL}' (reserved for the user).")
    parts = [relabel(reference, USER_LABEL)]
    if extra_user is not None:
        parts.append(relabel(extra_user, USER_LABEL))
    parts += [relabel(faces, name) for name, faces in distractors.items()]
    gallery = concat_facesets(parts)
    if len(set(gallery.detected_labels.tolist())) < 2:
        raise ValueError("The gallery has no detected face of any distractor identity; add photos of other people.")
    return reference, gallery


def mismatched_reference_pairs(
    reference: FaceSet, recognizers: Mapping[str, FaceRecognizer], names: Sequence[str]
) -> list[str]:
    """Pairs of reference photos that most FR systems say are different people (below each system's threshold).

    Args:
        reference: the user's reference photos, embedded.
        names: one name per reference image (for the message).

    Returns:
        One ``"a vs b (sface 0.05, ...)"`` entry per suspicious pair; empty when they agree or there is one face.
    """
    detected = [name for name, found in zip(names, reference.detected) if found]
    suspicious = []
    for i, j in itertools.combinations(range(len(detected)), 2):
        scores = {
            key: float(reference.embeddings[r.name][i] @ reference.embeddings[r.name][j])
            for key, r in recognizers.items()
        }
        below = [key for key, r in recognizers.items() if scores[key] < r.threshold]
        if 2 * len(below) > len(recognizers) or (len(recognizers) == 1 and below):
            detail = ", ".join(f"{key} {scores[key]:.2f} < {recognizers[key].threshold:.2f}" for key in below)
            suspicious.append(f"{detected[i]} vs {detected[j]} ({detail})")
    return suspicious


def roles(run_dir: str | Path | None, recognizers: Mapping[str, FaceRecognizer]) -> dict[str, Role]:
    """Registry key -> ``white-box`` (a surrogate of the run's optimizer), ``black-box``, or ``unknown`` (no run)."""
    if run_dir is None:
        return dict.fromkeys(recognizers, "unknown")
    surrogates = {str(s).strip().lower() for s in RunManifest.load(run_dir).white_box}
    return {
        key: "white-box" if key in surrogates or r.name in surrogates else "black-box"
        for key, r in recognizers.items()
    }


def linkability_by_backend(
    probes: FaceSet,
    reference: FaceSet,
    gallery: FaceSet,
    recognizers: Mapping[str, FaceRecognizer],
    roles_by_key: Mapping[str, Role],
) -> dict[str, BackendLinkability]:
    """Registry key -> :func:`iddm.evaluate.linkability.linkability` of that FR system."""
    return {
        key: linkability(probes, reference, gallery, USER_LABEL, recognizer, roles_by_key[key], fars=FARS)
        for key, recognizer in recognizers.items()
    }
