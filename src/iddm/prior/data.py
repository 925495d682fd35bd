"""The pretraining corpus: identities found in a folder, face-aligned crops, captions and augmentation.

Every photo goes through exactly the crop that personalization applies to a user's photos on this
prior (:func:`iddm.diffusion.data.prepare_photos` with ``crop="aligned"``): YuNet's five landmarks,
a similarity transform onto the ArcFace template zoomed out by ``margin``, ``warp_crop``.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from iddm.diffusion.data import aligned_template, crop_coverage, to_tensor, warp_crop
from iddm.diffusion.objectives import latent_keep_mask
from iddm.faces import detect_faces, select_single_face, similarity_transform
from iddm.images import IMAGE_EXTENSIONS, PhotoError, file_sha256, load_photo
from iddm.prior.captions import labels_from_path
from iddm.progress import progress_bar

logger = logging.getLogger(__name__)

CORPUS_EXTENSIONS = IMAGE_EXTENSIONS | {".pgm", ".ppm", ".pnm"}
"""Photo file types of a corpus (ORL ships PGM)."""
GRAY_TOLERANCE = 6
"""A photo whose RGB channels differ by at most this (0..255) at every pixel counts as greyscale."""
CFP_PREFIX = re.compile(r"^\d+_")
"""CFP's identity folders are ``NNN_Name``; exclusion by name ignores the number."""


@dataclass
class Corpus:
    """Face-aligned crops of the pretraining identities.

    Attributes:
        images: ``(N, R, R, 3)`` uint8 RGB crops (grey photos replicated to 3 channels).
        gray: ``(N,)`` bool, the photo is greyscale (captioned as black and white).
        labels: what the corpus says of each crop (:func:`iddm.prior.captions.labels_from_path`).
        identities: identity name of each crop (its folder relative to the corpus root).
        paths: source file of each crop.
        skipped: ``"path: reason"`` for every file that was not used.
        excluded: identities found but left out (held out).
        fingerprint: SHA-256 over the used files' contents and order (keys caches of their latents).
        coverage: ``(N, R, R)`` bool, the crop's pixel lies inside its photo (elsewhere the crop is the photo's
            mirrored border; :func:`iddm.diffusion.data.crop_coverage`); ``None`` when not computed.
        gray_copies: how many of the crops (the last ones) are black-and-white copies of colour crops
            (:func:`with_gray_copies`), not photos of their own.
    """

    images: np.ndarray
    gray: np.ndarray
    labels: list[dict[str, str]]
    identities: list[str]
    paths: list[Path]
    skipped: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    fingerprint: str = ""
    coverage: np.ndarray | None = None
    gray_copies: int = 0

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_identities(self) -> int:
        return len(set(self.identities))

    def summary(self) -> dict:
        """JSON-friendly counts: photos, identities, colour/grey, grey copies, detection rate, skipped files, held
        out. Photo counts and labels are of the photos; the grey copies are counted apart."""
        photos = len(self.paths) - self.gray_copies
        attempted = photos + len(self.skipped)
        return {
            "photos_used": photos,
            "photos_skipped": len(self.skipped),
            "face_detection_rate": photos / attempted if attempted else float("nan"),
            "identities": self.num_identities,
            "color_photos": int((~self.gray[:photos]).sum()),
            "gray_photos": int(self.gray[:photos].sum()),
            "gray_copies": self.gray_copies,
            "labels": label_counts(self.labels[:photos]),
            "held_out_identities": self.excluded,
            "skipped": self.skipped,
        }

    def training_tensors(self, flip: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``(M, 3, R, R)`` float32 in ``[0, 1]`` and gray flags ``(M,)``; ``M = 2N`` with horizontal flips
        (image ``2i + 1`` is the mirror of image ``2i``)."""
        images = torch.stack([to_tensor(image) for image in self.images])
        gray = torch.from_numpy(self.gray.copy())
        if not flip:
            return images, gray
        both = torch.stack([images, images.flip(-1)], dim=1).flatten(0, 1)
        return both, gray.repeat_interleave(2)

    def latent_masks(self, grid: int, flip: bool = False) -> torch.Tensor:
        """Loss masks ``(M, 1, grid, grid)`` float32 on the latent grid: 1 where a latent cell's whole pixel block
        lies inside the photo, else 0; ``M = 2N`` with mirrors interleaved as in :meth:`training_tensors`.

        Raises:
            ValueError: the corpus has no coverage, or ``grid`` does not divide the crop size.
        """
        if self.coverage is None:
            raise ValueError("This corpus was built without crop coverage; load it with load_corpus.")
        coverage = torch.from_numpy(self.coverage).unsqueeze(1)
        masks = latent_keep_mask(coverage, (grid, grid))
        return torch.stack([masks, masks.flip(-1)], dim=1).flatten(0, 1) if flip else masks


def with_gray_copies(corpus: Corpus, share: float, seed: int = 0) -> Corpus:
    """``corpus`` with black-and-white copies of a seeded ``share`` (0..1) of its colour crops appended.

    A copy is its crop's ITU-R BT.601 luma in all three channels, labelled ``gray="yes"`` (so captioned "a black
    and white photo of ...") and otherwise as its crop (identity, labels, coverage). A corpus' own grey photos are
    few (ORL and a few LFW and CFP photos); the copies teach the black-and-white prompt every corpus' faces. The
    fingerprint covers the copies, so their latents are cached apart from the plain corpus'.

    Raises:
        ValueError: ``share`` outside ``[0, 1]``, or ``corpus`` already has copies.
    """
    if not 0 <= share <= 1:
        raise ValueError(f"--gray_copies must be in [0, 1], got {share}.")
    if corpus.gray_copies:
        raise ValueError("This corpus already has grey copies.")
    colour = np.flatnonzero(~corpus.gray)
    count = round(share * len(colour))
    if count == 0:
        return corpus
    chosen = np.sort(np.random.default_rng(seed).choice(colour, size=count, replace=False))
    luma = corpus.images[chosen].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    copies = np.repeat(np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None], 3, axis=-1)
    digest = hashlib.sha256(f"{corpus.fingerprint}|gray_copies:{share}:{seed}".encode()).hexdigest()
    return Corpus(
        images=np.concatenate([corpus.images, copies]),
        gray=np.concatenate([corpus.gray, np.ones(count, dtype=bool)]),
        labels=corpus.labels + [{**corpus.labels[i], "gray": "yes"} for i in chosen],
        identities=corpus.identities + [corpus.identities[i] for i in chosen],
        paths=corpus.paths + [corpus.paths[i] for i in chosen],
        skipped=corpus.skipped,
        excluded=corpus.excluded,
        fingerprint=digest,
        coverage=None if corpus.coverage is None else np.concatenate([corpus.coverage, corpus.coverage[chosen]]),
        gray_copies=count,
    )


def label_counts(labels: list[dict[str, str]]) -> dict[str, dict[str, int]]:
    """``{label: {value: photos}}`` over ``labels``, sorted."""
    counts: dict[str, dict[str, int]] = {}
    for entry in labels:
        for key, value in entry.items():
            counts.setdefault(key, {}).setdefault(value, 0)
            counts[key][value] += 1
    return {key: dict(sorted(values.items())) for key, values in sorted(counts.items())}


def find_identities(data_dir: Path) -> dict[str, list[Path]]:
    """Identity (folder path relative to ``data_dir``, ``/``-separated) -> its photo files, sorted.

    Raises:
        PhotoError: ``data_dir`` is not a folder or holds no photo file at any depth.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise PhotoError(f"{data_dir}: face corpus folder does not exist or is not a folder.")
    found: dict[str, list[Path]] = {}
    for path in sorted(data_dir.rglob("*")):
        if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in CORPUS_EXTENSIONS:
            found.setdefault(path.parent.relative_to(data_dir).as_posix(), []).append(path)
    if not found:
        raise PhotoError(
            f"{data_dir}: no photo files ({', '.join(sorted(CORPUS_EXTENSIONS))}) in it or its sub-folders; "
            "put one sub-folder of photos per identity there."
        )
    return found


def is_excluded(identity: str, exclude: list[str]) -> bool:
    """``identity`` (``a/b/Name``) matches an entry of ``exclude`` by relative path, folder name, or folder name
    without CFP's number (``cfp/123_Name`` matches ``Name``)."""
    name = identity.split("/")[-1]
    return any(entry.strip("/") in (identity, name, CFP_PREFIX.sub("", name)) for entry in exclude)


def split_cfp(identities: list[str], count: int, seed: int = 0) -> list[str]:
    """The CFP identities held out for evaluation: ``count`` of the folders under a ``cfp`` folder, drawn with
    ``random.Random(seed)`` from their sorted names; returned sorted. The same rule gives the same people on any
    copy of the corpus (``benchmarks/make_eval_set.py --cfp`` writes their evaluation set)."""
    cfp = sorted(identity for identity in identities if "cfp" in identity.split("/")[:-1])
    if count > len(cfp):
        raise ValueError(f"--held_out_cfp {count}: only {len(cfp)} CFP identities in the corpus.")
    return sorted(random.Random(seed).sample(cfp, count))


def is_gray_file(path: Path, pixels: np.ndarray) -> bool:
    """The photo is greyscale: a single-channel file, or RGB whose channels agree within ``GRAY_TOLERANCE``."""
    with Image.open(path) as image:
        if image.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"):
            return True
    spread = pixels.max(axis=2).astype(np.int16) - pixels.min(axis=2).astype(np.int16)
    return bool(spread.max() <= GRAY_TOLERANCE)


def aligned_crop(photo: np.ndarray, source: str, resolution: int, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """The ``(R, R, 3)`` uint8 5-point aligned crop personalization makes of ``photo`` (its largest face), and its
    ``(R, R)`` bool coverage (:func:`iddm.diffusion.data.crop_coverage`).

    Raises:
        iddm.faces.FaceNotFoundError: no face (or a face under 20 px).
    """
    face = select_single_face(detect_faces(photo), source=source)
    matrix = similarity_transform(face.landmarks, aligned_template(resolution, margin))
    return warp_crop(photo, matrix, resolution), crop_coverage(photo.shape, matrix, resolution)


def load_corpus(
    data_dir: Path,
    exclude: list[str],
    resolution: int,
    margin: float,
    min_identities: int = 2,
    skip_bad_photos: bool = True,
    held_out_cfp: int = 0,
) -> Corpus:
    """Scan, read, detect and crop every photo of the non-excluded identities of ``data_dir``.

    Left out: identities matching ``exclude`` (:func:`is_excluded`) and, if the corpus has CFP identities, the
    ``held_out_cfp`` of :func:`split_cfp`.

    Byte-identical files are used once. Unreadable photos and photos without a face are skipped with a
    warning (``skip_bad_photos``) or stop the run with one error listing all of them.

    Raises:
        PhotoError: no usable photo, bad photos with ``skip_bad_photos=False``, or fewer than
            ``min_identities`` identities with a usable photo.
    """
    found = find_identities(data_dir)
    has_cfp = any("cfp" in identity.split("/")[:-1] for identity in found)
    held_out = split_cfp(list(found), held_out_cfp) if held_out_cfp and has_cfp else []
    excluded = sorted(identity for identity in found if is_excluded(identity, exclude) or identity in held_out)
    kept = {identity: paths for identity, paths in found.items() if identity not in excluded}
    if not kept:
        raise PhotoError(f"{data_dir}: every identity is excluded ({excluded}); nothing left to pretrain on.")
    images, coverage, gray, labels, identities, used, skipped, seen = [], [], [], [], [], [], [], {}
    fingerprint = hashlib.sha256()
    files = [(identity, path) for identity, paths in kept.items() for path in paths]
    for identity, path in progress_bar(files, desc="detect + crop", unit="photo", leave=False):
        digest = file_sha256(path)
        if digest in seen:
            logger.warning("Skipping %s: same bytes as %s.", path, seen[digest])
            continue
        seen[digest] = path
        try:
            photo = load_photo(path)
            crop, inside = aligned_crop(photo, str(path), resolution, margin)
        except (PhotoError, ValueError) as err:
            skipped.append(str(err))
            continue
        fingerprint.update(f"{path.relative_to(data_dir).as_posix()}:{digest}\n".encode())
        images.append(crop)
        coverage.append(inside)
        gray.append(is_gray_file(path, photo))
        labels.append(labels_from_path(path, gray[-1]))
        identities.append(identity)
        used.append(path)
    if skipped and not skip_bad_photos:
        raise PhotoError(
            f"{len(skipped)} photo(s) of {data_dir} cannot be used (fix or remove them, or pass --skip_bad_photos): "
            + "; ".join(skipped)
        )
    for problem in skipped:
        logger.info("Skipped photo: %s", problem)
    if skipped:
        logger.warning(
            "Skipped %d of %d photo(s) (unreadable, no face or a face too small; listed in the log).",
            len(skipped),
            len(files),
        )
    if not used:
        raise PhotoError(f"{data_dir}: none of {len(files)} photo(s) has a usable face; cannot pretrain a face prior.")
    gray_flags, digest = np.array(gray, dtype=bool), fingerprint.hexdigest()
    corpus = Corpus(
        np.stack(images), gray_flags, labels, identities, used, skipped, excluded, digest, np.stack(coverage)
    )
    if corpus.num_identities < min_identities:
        raise PhotoError(
            f"{data_dir}: {corpus.num_identities} identity with usable photos, at least {min_identities} needed "
            "(one sub-folder of photos per person); a prior of one face is not a face prior."
        )
    return corpus
