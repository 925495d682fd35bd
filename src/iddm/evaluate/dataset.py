"""The benchmark's dataset: identities, and the role of each photo (trained on, held out, gallery only).

Layouts of ``--dataset ROOT``:

* **A folder per identity** (``ROOT/<id>/*.jpg``): photos sorted by file name; the *last* one is held
  out as the attacker's reference, the others are trained on. Identities with one photo are
  distractors only.
* **Anti-DreamBooth** (``ROOT/<id>/set_A|set_B|set_C``): train on ``set_A``, hold out ``set_B`` as the
  reference, and add ``set_C`` to the gallery as more photos of the user.

As a distractor, an identity contributes all its photos to the other identities' galleries. An
identity folder without any photo is skipped with a warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from iddm.evaluate.attacker import USER_LABEL
from iddm.images import list_photos

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Identity:
    """One identity of the dataset and the role of each of its photos.

    Attributes:
        name: folder name.
        photos: every photo, in order ``train + reference + extra``.
        num_train, num_reference: how many of ``photos`` are trained on / held out as the reference;
            the rest are extra gallery photos of the user. ``num_train == 0``: a distractor only.
    """

    name: str
    photos: tuple[Path, ...]
    num_train: int = 0
    num_reference: int = 0

    @property
    def is_user(self) -> bool:
        return self.num_train > 0 and self.num_reference > 0

    @property
    def train(self) -> tuple[Path, ...]:
        return self.photos[: self.num_train]

    @property
    def reference(self) -> tuple[Path, ...]:
        return self.photos[self.num_train : self.num_train + self.num_reference]

    @property
    def extra(self) -> tuple[Path, ...]:
        return self.photos[self.num_train + self.num_reference :]

    def summary(self) -> dict:
        """The split, by file name, for ``results.json``."""
        return {
            "name": self.name,
            "role": "user and distractor" if self.is_user else "distractor",
            "train": [p.name for p in self.train],
            "reference": [p.name for p in self.reference],
            "extra_gallery": [p.name for p in self.extra],
        }


def _photos_in(folder: Path) -> tuple[Path, ...]:
    return tuple(list_photos(folder, min_photos=0)) if folder.is_dir() else ()


def discover_dataset(root: str | Path) -> list[Identity]:
    """The identities of ``root`` with their train / reference / gallery split (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--dataset {root} does not exist or is not a folder.")
    folders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not folders:
        raise ValueError(f"--dataset {root} has no identity sub-folders (expected ROOT/<identity>/*.jpg).")
    anti_dreambooth = any((d / "set_A").is_dir() for d in folders)
    identities = []
    for folder in folders:
        if folder.name == USER_LABEL:
            raise ValueError(f"{folder}: the identity name '{USER_LABEL}' is reserved; rename the folder.")
        if anti_dreambooth:
            train, reference, extra = (_photos_in(folder / s) for s in ("set_A", "set_B", "set_C"))
            identity = Identity(folder.name, train + reference + extra, len(train), len(reference))
            if not identity.is_user:
                identity = Identity(folder.name, identity.photos)
        else:
            photos = _photos_in(folder)
            split = (len(photos) - 1, 1) if len(photos) >= 2 else (0, 0)
            identity = Identity(folder.name, photos, *split)
        if not identity.photos:
            logger.warning("Skipping identity %s: no photos in %s.", folder.name, folder)
            continue
        identities.append(identity)
    if not any(i.is_user for i in identities):
        raise ValueError(
            f"--dataset {root}: no identity has both photos to train on and a photo to hold out "
            "(a folder of >= 2 photos, or set_A and set_B)."
        )
    if len(identities) < 2:
        raise ValueError(f"--dataset {root}: at least two identities are needed (the others are the gallery).")
    return identities
