"""Reading user photos safely and writing images and files atomically.

Every loader returns RGB ``uint8`` arrays of shape ``(H, W, 3)`` with EXIF orientation applied; the
user's files are only ever opened for reading. Every writer goes through a temporary file in the
destination folder and ``os.replace``, so a killed process never leaves a half-written output, and
written images carry no EXIF/GPS metadata.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".pgm", ".ppm"}
MIN_SIDE = 32
"""Photos with a shorter side (in pixels) cannot hold a recognizable face."""
MAX_SIDE = 4096
"""Larger photos are downscaled on load: detection runs on a downscaled copy anyway."""
MAX_PIXELS = 250_000_000
"""Above this (e.g. 16,000 x 16,000) a file is refused rather than decoded (decompression bombs)."""


class PhotoError(ValueError):
    """A user photo that cannot be used; the message names the file and what to do."""


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode (L, LA, P, RGBA, CMYK, I;16, I, F, 1) to 8-bit RGB."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        high = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(array / high * 255.0 + 0.5, 0, 255).astype(np.uint8)
        image = Image.fromarray(array, mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Composite on white, as photo viewers show transparent regions, rather than dropping alpha to black.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def load_photo(path: str | Path, max_side: int = MAX_SIDE) -> np.ndarray:
    """Load a photo as RGB ``uint8`` ``(H, W, 3)``, EXIF rotation applied, downscaled to ``max_side``.

    Raises:
        PhotoError: the file is missing, not an image, corrupt or truncated, too large to decode, or
            smaller than ``MIN_SIDE`` pixels on its shorter side.
    """
    path = Path(path)
    if not path.is_file():
        raise PhotoError(f"{path}: no such file.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            previous_limit = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = MAX_PIXELS
            try:
                with Image.open(path) as image:
                    if image.format == "JPEG":
                        # Decode big JPEGs at a reduced scale directly: a 12,000 px photo stays cheap.
                        image.draft("RGB", (max_side, max_side))
                    image.load()
                    image = ImageOps.exif_transpose(image)
                    image = _to_rgb(image)
            finally:
                Image.MAX_IMAGE_PIXELS = previous_limit
    except UnidentifiedImageError:
        raise PhotoError(f"{path}: not an image file PIL can read (or the file is corrupt).") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PhotoError(f"{path}: image is larger than {MAX_PIXELS:,} pixels; downscale it first.") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise PhotoError(f"{path}: cannot decode the image ({err}); the file looks corrupt or truncated.") from None
    if min(image.size) < MIN_SIDE:
        raise PhotoError(
            f"{path}: image is {image.size[0]}x{image.size[1]} px; "
            f"at least {MIN_SIDE} px on the shorter side is needed."
        )
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.uint8).copy()


def file_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def list_photos(folder: str | Path, min_photos: int = 1) -> list[Path]:
    """The image files of ``folder`` (sorted, byte-identical duplicates dropped with a warning).

    Non-image files, and links that lead nowhere (broken, or a loop), are skipped with a warning;
    duplicates are summarized in one warning per photo kept. Raises ``PhotoError`` when the folder does
    not exist, is a file, or holds fewer than ``min_photos`` distinct images.
    """
    folder = Path(folder)
    if folder.is_file():
        raise PhotoError(f"{folder}: is a file, not a folder; pass the folder that holds the photos.")
    if not folder.is_dir():
        raise PhotoError(f"{folder}: photo folder does not exist or is not a folder.")
    first_with: dict[str, Path] = {}  # SHA-256 -> the photo kept
    copies: dict[Path, list[Path]] = {}  # photo kept -> files with the same bytes
    for path in sorted(p for p in folder.iterdir() if not p.name.startswith(".")):
        if path.is_symlink() and not path.exists():
            logger.warning("Skipping %s: a symbolic link to nothing (broken, or a loop).", path)
            continue
        if not path.is_file():
            continue
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            logger.warning("Skipping %s: not an image file (extensions read: %s).", path, sorted(IMAGE_EXTENSIONS))
            continue
        kept = first_with.setdefault(file_sha256(path), path)
        copies.setdefault(kept, [])
        if kept != path:
            copies[kept].append(path)
    photos = list(copies)
    for kept, same in copies.items():
        # One line per photo kept, not one per copy: a folder of 200 copies warns once.
        if len(same) == 1:
            logger.warning("Skipping %s: same bytes as %s.", same[0], kept)
        elif same:
            names = ", ".join(p.name for p in same[:3]) + (f" and {len(same) - 3} more" if len(same) > 3 else "")
            logger.warning("Skipping %d files with the same bytes as %s: %s.", len(same), kept, names)
    if len(photos) < min_photos:
        raise PhotoError(
            f"{folder}: found {len(photos)} usable photo(s), need at least {min_photos}. "
            f"Add more photos of the same person ({', '.join(sorted(IMAGE_EXTENSIONS))})."
        )
    return photos


def ensure_writable_dir(folder: str | Path) -> Path:
    """Create ``folder`` if needed and check that files can be written there."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".iddm-write-test-"):
            pass
    except OSError as err:
        raise PermissionError(
            f"Output folder {folder} is not writable ({err.strerror}). Choose another folder."
        ) from None
    return folder


def check_writable_location(folder: str | Path) -> Path:
    """Check, without creating anything, that ``folder`` is or can be made a writable folder.

    Raises:
        PermissionError: its nearest existing ancestor is a file or is not writable.
    """
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise PermissionError(f"Output folder {folder}: {existing} is a file, not a folder. Choose another folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(
            f"Output folder {folder} is not writable ({existing} is read-only). Choose another folder."
        )
    return folder


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs get the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_safetensors(path: str | Path, tensors: dict) -> None:
    """Write ``{name: tensor}`` as safetensors atomically (contiguous CPU copies; no pickle)."""
    from safetensors.torch import save

    atomic_write_bytes(path, save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))


def normalize_permissions(folder: str | Path) -> None:
    """Give every file under ``folder`` the usual permissions (0666 & ~umask), as other outputs have."""
    mode = 0o666 & ~_umask()
    for path in Path(folder).rglob("*"):
        if path.is_file():
            os.chmod(path, mode)


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Build a folder under a temporary name; it replaces ``path`` only when the block succeeds.

    A run killed while writing leaves ``path`` as it was (and a ``.NAME.tmp`` folder that the next
    call removes), never a half-written folder that looks finished.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    normalize_permissions(tmp)
    old = path.parent / f".{path.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: object) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def save_png(path: str | Path, image: np.ndarray | Image.Image) -> None:
    """Write an RGB image as PNG atomically, with no EXIF, GPS or text chunks.

    ``image``: ``uint8`` ``(H, W, 3)`` array in 0..255, or a PIL image.
    """
    import io

    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(f"save_png expects uint8 arrays, got {image.dtype}.")
        image = Image.fromarray(image)
    # A fresh image built from pixels only: metadata of the source cannot leak into the output.
    clean = Image.frombytes(image.mode, image.size, image.tobytes())
    buffer = io.BytesIO()
    clean.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def make_grid(images: Iterable[np.ndarray], columns: int = 4, pad: int = 2) -> np.ndarray:
    """Tile equally sized ``(H, W, 3)`` uint8 images into one grid image (white padding)."""
    images = list(images)
    if not images:
        raise ValueError("make_grid needs at least one image.")
    h, w = images[0].shape[:2]
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        if img.shape[:2] != (h, w):
            img = np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.BICUBIC))
        r, c = divmod(i, columns)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = img
    return grid
