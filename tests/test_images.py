"""The bad-input contract of photo loading and preparation, and the safety of every writer.

Each unusable input must give a ``PhotoError`` that names the file (or a documented handling: skipped
with a warning, converted, downscaled), and the user's files are never modified: their bytes and
modification times are checked after every load and preparation.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import ExifTags, Image, PngImagePlugin

from iddm.images import (
    MAX_SIDE,
    MIN_SIDE,
    PhotoError,
    atomic_write_bytes,
    atomic_write_json,
    ensure_writable_dir,
    list_photos,
    load_photo,
    make_grid,
    save_png,
)


# -- helpers ------------------------------------------------------------------------------------------------------
def snapshot(paths) -> dict[Path, tuple[str, int]]:
    """``path -> (sha256 of the bytes, mtime in ns)`` of files (or of every file of folders)."""
    files = []
    for path in map(Path, paths):
        files.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
    return {p: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in files}


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(np.float64).ravel(), b.astype(np.float64).ravel())[0, 1])


def load_unchanged(path: Path) -> np.ndarray:
    """``load_photo`` that also checks the file was only read."""
    before = snapshot([path])
    try:
        return load_photo(path)
    finally:
        assert snapshot([path]) == before, f"load_photo modified {path}"


def raises_naming(path: Path, match: str | None = None):
    """``pytest.raises(PhotoError)`` whose message must name ``path`` (and match ``match``)."""

    class _Check:
        def __enter__(self):
            self._ctx = pytest.raises(PhotoError, match=match)
            self.info = self._ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            result = self._ctx.__exit__(*exc)
            assert str(path) in str(self.info.value), f"message does not name {path}: {self.info.value}"
            return result

    return _Check()


def warnings_text(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


@pytest.fixture
def obama(photos_dir) -> Path:
    return photos_dir / "obama_1.jpg"


@pytest.fixture
def obama_rgb(obama) -> np.ndarray:
    return np.asarray(Image.open(obama).convert("RGB"))


# -- folders ------------------------------------------------------------------------------------------------------
def test_missing_folder_is_a_photo_error(tmp_path):
    missing = tmp_path / "no_such_folder"
    with raises_naming(missing, match="does not exist"):
        list_photos(missing)


def test_empty_folder_is_a_photo_error(tmp_path):
    with raises_naming(tmp_path, match=r"found 0 usable photo\(s\), need at least 1"):
        list_photos(tmp_path)


def test_one_photo_when_two_are_needed_says_how_many(tmp_path, obama):
    shutil.copy(obama, tmp_path / "a.jpg")
    assert list_photos(tmp_path, min_photos=1) == [tmp_path / "a.jpg"]
    with raises_naming(tmp_path, match=r"found 1 usable photo\(s\), need at least 2"):
        list_photos(tmp_path, min_photos=2)


def test_non_image_files_are_skipped_with_a_warning_and_not_counted(tmp_path, photos_dir, caplog):
    shutil.copy(photos_dir / "obama_1.jpg", tmp_path / "b.jpg")
    shutil.copy(photos_dir / "obama_2.jpg", tmp_path / "a.JPEG")  # extensions are case-insensitive
    (tmp_path / "notes.txt").write_text("not a photo")
    (tmp_path / "meta.json").write_text("{}")
    (tmp_path / ".DS_Store").write_bytes(b"\0" * 16)  # hidden: ignored silently
    (tmp_path / "sub").mkdir()  # sub-folders are not searched
    shutil.copy(photos_dir / "obama_3.jpg", tmp_path / "sub" / "c.jpg")
    before = snapshot([tmp_path])
    caplog.set_level(logging.WARNING, logger="iddm")

    assert list_photos(tmp_path, min_photos=2) == [tmp_path / "a.JPEG", tmp_path / "b.jpg"]
    text = warnings_text(caplog)
    assert str(tmp_path / "notes.txt") in text and str(tmp_path / "meta.json") in text
    assert "not an image file" in text
    assert ".DS_Store" not in text
    with raises_naming(tmp_path, match=r"found 2 usable photo\(s\), need at least 3"):
        list_photos(tmp_path, min_photos=3)
    assert snapshot([tmp_path]) == before


def test_duplicates_are_dropped_with_a_warning(tmp_path, photos_dir, caplog):
    shutil.copy(photos_dir / "obama_1.jpg", tmp_path / "a.jpg")
    shutil.copy(photos_dir / "obama_1.jpg", tmp_path / "copy of a.jpg")
    shutil.copy(photos_dir / "obama_2.jpg", tmp_path / "b.jpg")
    caplog.set_level(logging.WARNING, logger="iddm")

    assert list_photos(tmp_path) == [tmp_path / "a.jpg", tmp_path / "b.jpg"]
    text = warnings_text(caplog)
    assert f"Skipping {tmp_path / 'copy of a.jpg'}: same bytes as {tmp_path / 'a.jpg'}" in text
    with raises_naming(tmp_path, match=r"found 2 usable"):
        list_photos(tmp_path, min_photos=3)


# -- unreadable files ---------------------------------------------------------------------------------------------
def test_missing_file_is_a_photo_error(tmp_path):
    with raises_naming(tmp_path / "gone.jpg", match="no such file"):
        load_photo(tmp_path / "gone.jpg")


def test_random_bytes_named_jpg_is_a_photo_error_naming_the_file(tmp_path):
    path = tmp_path / "corrupt.jpg"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with raises_naming(path, match="not an image file"):
        load_unchanged(path)


def test_truncated_jpeg_is_a_photo_error_naming_the_file(tmp_path, obama):
    data = obama.read_bytes()
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data[: len(data) // 2])
    with raises_naming(path, match="truncated"):
        load_unchanged(path)


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    # A real PNG header claiming 20,000 x 20,000 px (400 Mpx) with a tiny body.
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 20_000, 20_000, 8, 2, 0, 0, 0)
    path = tmp_path / "bomb.png"
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )
    previous = Image.MAX_IMAGE_PIXELS
    with raises_naming(path, match="larger than 250,000,000 pixels"):
        load_unchanged(path)
    assert Image.MAX_IMAGE_PIXELS == previous  # the global PIL limit is restored


@pytest.mark.parametrize("size", [(16, 16), (400, 16), (MIN_SIDE - 1, 300)])
def test_too_small_image_is_a_photo_error_mentioning_the_minimum(tmp_path, size):
    path = tmp_path / "tiny.png"
    Image.new("RGB", size, (120, 80, 60)).save(path)
    with raises_naming(path, match=rf"{size[0]}x{size[1]} px; at least {MIN_SIDE} px on the shorter side"):
        load_unchanged(path)


def test_minimum_size_image_loads(tmp_path):
    path = tmp_path / "small.png"
    Image.new("RGB", (MIN_SIDE, 50), (120, 80, 60)).save(path)
    image = load_unchanged(path)
    assert image.shape == (50, MIN_SIDE, 3)
    assert (image == (120, 80, 60)).all()


# -- colour modes -------------------------------------------------------------------------------------------------
def assert_rgb_uint8(image: np.ndarray, shape: tuple[int, int]) -> None:
    assert isinstance(image, np.ndarray)
    assert image.dtype == np.uint8
    assert image.shape == (*shape, 3)


def test_fixture_photos_load_as_rgb_uint8_and_are_not_modified(photo_paths):
    before = snapshot(photo_paths)
    for path in photo_paths:
        with Image.open(path) as reference:
            size = reference.size
        assert_rgb_uint8(load_photo(path), (size[1], size[0]))
    assert snapshot(photo_paths) == before


def test_cmyk_jpeg_becomes_rgb(tmp_path, obama_rgb):
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(obama_rgb).convert("CMYK").save(path, quality=95)
    with Image.open(path) as check:
        assert check.mode == "CMYK"
    image = load_unchanged(path)
    assert_rgb_uint8(image, obama_rgb.shape[:2])
    assert np.abs(image.astype(int) - obama_rgb).mean() < 6  # colours survive, not inverted
    assert correlation(image, obama_rgb) > 0.98


def test_16_bit_png_is_scaled_to_8_bit(tmp_path):
    values = np.array([0, 257, 1000, 32768, 65535], dtype=np.uint16)
    array = np.repeat(np.tile(values, 8)[None, :], 40, axis=0)  # 40 x 40 px, every value in every row
    path = tmp_path / "deep.png"
    Image.fromarray(array).save(path)
    with Image.open(path) as check:
        assert check.mode == "I;16"
    image = load_unchanged(path)
    assert_rgb_uint8(image, (40, 40))
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 0] == image[..., 2]).all()
    assert image[0, :5, 0].tolist() == [0, 1, 4, 128, 255]


def test_16_bit_png_with_full_range_gradient_keeps_its_contrast(tmp_path):
    ramp = np.linspace(0, 65535, 256).round().astype(np.uint16)
    path = tmp_path / "ramp.png"
    Image.fromarray(np.repeat(ramp[None, :], 40, axis=0)).save(path)
    image = load_unchanged(path)
    assert np.abs(image[0, :, 0].astype(int) - np.arange(256)).max() <= 1


def test_rgba_png_transparent_areas_become_white(tmp_path):
    rgba = np.zeros((40, 60, 4), dtype=np.uint8)
    rgba[..., :3] = (200, 0, 0)  # red everywhere, even under the transparent half
    rgba[:, :30, 3] = 255
    rgba[:, 30:, 3] = 0
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    image = load_unchanged(path)
    assert_rgb_uint8(image, (40, 60))
    assert (image[:, :30] == (200, 0, 0)).all()
    assert (image[:, 30:] == 255).all()


def test_half_transparent_pixels_are_blended_on_white(tmp_path):
    rgba = np.zeros((40, 40, 4), dtype=np.uint8)
    rgba[..., 3] = 128  # black at half opacity
    path = tmp_path / "half.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    assert np.abs(load_unchanged(path).astype(int) - 127).max() <= 1


def test_grayscale_la_and_bilevel_become_rgb(tmp_path, obama_rgb):
    gray = np.asarray(Image.fromarray(obama_rgb).convert("L"))
    Image.fromarray(gray).save(tmp_path / "gray.png")
    image = load_unchanged(tmp_path / "gray.png")
    assert_rgb_uint8(image, gray.shape)
    assert (image == gray[..., None]).all()

    alpha = np.where(np.arange(gray.shape[1]) < 100, 0, 255).astype(np.uint8)
    la = np.stack([gray, np.broadcast_to(alpha, gray.shape)], axis=-1)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    image = load_unchanged(tmp_path / "la.png")
    assert (image[:, :100] == 255).all()
    assert (image[:, 100:] == gray[:, 100:, None]).all()

    Image.fromarray(gray).convert("1").save(tmp_path / "bilevel.png")
    image = load_unchanged(tmp_path / "bilevel.png")
    assert_rgb_uint8(image, gray.shape)
    assert set(np.unique(image).tolist()) == {0, 255}


def test_palette_png_becomes_rgb(tmp_path, obama_rgb):
    palette = Image.fromarray(obama_rgb).quantize(colors=64)
    path = tmp_path / "palette.png"
    palette.save(path)
    with Image.open(path) as check:
        assert check.mode == "P"
    image = load_unchanged(path)
    assert_rgb_uint8(image, obama_rgb.shape[:2])
    assert (image == np.asarray(palette.convert("RGB"))).all()
    assert correlation(image, obama_rgb) > 0.95


def test_palette_transparency_becomes_white(tmp_path):
    image = Image.new("P", (40, 40), 1)
    image.putpalette([0, 0, 0, 0, 0, 200] + [0] * 762)
    image.paste(0, (0, 0, 20, 40))  # left half: index 0, the transparent one (black in the palette)
    path = tmp_path / "palette_alpha.png"
    image.save(path, transparency=0)
    loaded = load_unchanged(path)
    assert (loaded[:, :20] == 255).all()
    assert (loaded[:, 20:] == (0, 0, 200)).all()


def test_float_tiff_becomes_rgb(tmp_path):
    array = np.tile(np.array([0.0, 64.0, 255.0], dtype=np.float32), (40, 14))[:, :40]
    path = tmp_path / "float.tif"
    Image.fromarray(array, mode="F").save(path)
    image = load_unchanged(path)
    assert_rgb_uint8(image, (40, 40))
    assert image[0, :3, 0].tolist() == [0, 64, 255]


# -- orientation and size -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("orientation", "stored_as"), [(6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270)]
)
def test_exif_rotated_photo_loads_upright_with_a_face(tmp_path, obama, obama_rgb, orientation, stored_as):
    from iddm.faces.detect import detect_faces, detect_single_face

    # What a phone writes: the sensor's sideways pixels, plus the tag that says how to turn them upright.
    sideways = Image.fromarray(obama_rgb).transpose(stored_as)
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    path = tmp_path / f"rotated_{orientation}.jpg"
    sideways.save(path, exif=exif, quality=95)
    with Image.open(path) as check:
        assert check.getexif()[ExifTags.Base.Orientation] == orientation
        assert check.size == (obama_rgb.shape[0], obama_rgb.shape[1])  # stored sideways

    image = load_unchanged(path)
    assert image.shape == obama_rgb.shape
    assert correlation(image, obama_rgb) > 0.98
    assert correlation(image, np.ascontiguousarray(obama_rgb[::-1, ::-1])) < 0.8  # not upside down either
    face = detect_single_face(image, source=str(path))
    upright_face = detect_faces(obama_rgb)[0]
    assert np.abs(face.landmarks - upright_face.landmarks).max() < 6
    eyes = face.landmarks[:2]
    assert eyes[0, 0] < eyes[1, 0] and abs(eyes[0, 1] - eyes[1, 1]) < 10  # eyes side by side, level


@pytest.fixture(scope="module")
def huge_jpeg(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("huge") / "huge.jpg"
    with Image.open(Path(__file__).parent / "fixtures" / "photos" / "obama_1.jpg") as small:
        small.convert("RGB").resize((12_000, 9_000), Image.Resampling.NEAREST).save(path, quality=70)
    return path


def test_huge_photo_is_downscaled_to_max_side_quickly(huge_jpeg, obama_rgb):
    start = time.perf_counter()
    image = load_unchanged(huge_jpeg)
    elapsed = time.perf_counter() - start
    assert_rgb_uint8(image, (MAX_SIDE * 9_000 // 12_000, MAX_SIDE))
    assert elapsed < 20, f"loading a 12,000 px JPEG took {elapsed:.1f} s"
    # Downscaled as a whole (not cropped): back at the fixture's size it is the fixture photo.
    back = np.asarray(Image.fromarray(image).resize(obama_rgb.shape[1::-1], Image.Resampling.BOX))
    assert correlation(back, obama_rgb) > 0.97


def test_max_side_argument_bounds_the_longer_side(tmp_path, obama, obama_rgb):
    image = load_photo(obama, max_side=320)
    assert image.shape == (320, 256, 3)
    assert load_photo(obama, max_side=10_000).shape == obama_rgb.shape  # never upscaled


# -- writers ------------------------------------------------------------------------------------------------------
def png_chunk_types(data: bytes) -> list[bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    types, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        types.append(data[offset + 4 : offset + 8])
        offset += 12 + length
    return types


def test_save_png_writes_no_exif_gps_or_text(tmp_path, obama_rgb):
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "PhoneMaker"
    exif[ExifTags.Base.Orientation] = 1
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (48.0, 51.0, 24.0)
    source = tmp_path / "with_gps.jpg"
    Image.fromarray(obama_rgb).save(source, exif=exif, quality=95)
    with Image.open(source) as tagged:
        assert ExifTags.GPS.GPSLatitude in tagged.getexif().get_ifd(ExifTags.IFD.GPSInfo)  # the input has GPS
        tagged.load()
        assert "exif" in tagged.info
        out = tmp_path / "out.png"
        save_png(out, tagged)
        pixels = np.asarray(tagged.convert("RGB"))

    data = out.read_bytes()
    assert b"PhoneMaker" not in data
    assert not {b"eXIf", b"tEXt", b"iTXt", b"zTXt"} & set(png_chunk_types(data))
    with Image.open(out) as written:
        assert len(written.getexif()) == 0
        assert "exif" not in written.info
        assert (np.asarray(written) == pixels).all()


def test_save_png_drops_png_text_chunks_of_a_png_source(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "secret location")
    source = tmp_path / "src.png"
    Image.new("RGB", (40, 40), (1, 2, 3)).save(source, pnginfo=info)
    with Image.open(source) as image:
        assert image.info["Comment"] == "secret location"
        save_png(tmp_path / "out.png", image)
    data = (tmp_path / "out.png").read_bytes()
    assert b"secret location" not in data
    assert png_chunk_types(data) == [b"IHDR", b"IDAT", b"IEND"]


def test_save_png_from_array_round_trips_and_rejects_float(tmp_path):
    array = np.random.default_rng(1).integers(0, 256, (33, 47, 3), dtype=np.uint8)
    path = tmp_path / "nested" / "a.png"  # parent folders are created
    save_png(path, array)
    assert (np.asarray(Image.open(path)) == array).all()
    with pytest.raises(TypeError, match="uint8"):
        save_png(path, array.astype(np.float32) / 255)
    assert (np.asarray(Image.open(path)) == array).all()  # the failed save left the old file intact


def test_save_png_is_atomic(tmp_path):
    path = tmp_path / "image.png"
    old = np.zeros((40, 40, 3), dtype=np.uint8)
    new = np.full((40, 40, 3), 200, dtype=np.uint8)
    save_png(path, old)
    old_bytes = path.read_bytes()
    save_png(path, new)
    assert (np.asarray(Image.open(path)) == new).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.png"]  # no temporary file left behind

    # A write that fails half way (the data cannot be written) leaves the old content and no temp file.
    save_png(path, old)
    with pytest.raises(TypeError):
        atomic_write_bytes(path, "text, not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == old_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.png"]


def test_atomic_write_json_replaces_the_file(tmp_path):
    path = tmp_path / "run.json"
    atomic_write_json(path, {"step": 1})
    atomic_write_json(path, {"step": 2, "path": "é"})
    assert path.read_text(encoding="utf-8") == '{\n  "step": 2,\n  "path": "\\u00e9"\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_ensure_writable_dir_creates_nested_folders_and_leaves_nothing(tmp_path):
    target = tmp_path / "a" / "b" / "c"
    assert ensure_writable_dir(target) == target
    assert target.is_dir()
    assert list(target.iterdir()) == []  # the write test file is removed


def test_ensure_writable_dir_under_a_file_is_a_permission_error(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    target = blocker / "out"
    with pytest.raises(PermissionError, match="not writable") as info:
        ensure_writable_dir(target)
    assert str(target) in str(info.value)
    assert "Choose another folder" in str(info.value)
    assert blocker.read_text() == "a file, not a folder"


def test_ensure_writable_dir_on_a_read_only_folder_is_a_permission_error(tmp_path):
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)  # 0o500
    try:
        try:
            (folder / "probe").write_bytes(b"")
        except PermissionError:
            pass
        else:
            (folder / "probe").unlink()
            pytest.skip("this user (e.g. root) can write into a 0o500 folder; covered by the file-path test")
        with pytest.raises(PermissionError, match="not writable") as info:
            ensure_writable_dir(folder)
        assert str(folder) in str(info.value)
        assert os.listdir(folder) == []
    finally:
        folder.chmod(stat.S_IRWXU)


# -- make_grid ----------------------------------------------------------------------------------------------------
def test_make_grid_shape_placement_and_white_padding():
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 200, (10, 12, 3), dtype=np.uint8) for _ in range(5)]
    grid = make_grid(images, columns=4, pad=2)
    assert grid.shape == (2 * (10 + 2) + 2, 4 * (12 + 2) + 2, 3)
    assert grid.dtype == np.uint8
    for i, image in enumerate(images):
        r, c = divmod(i, 4)
        y, x = 2 + r * 12, 2 + c * 14
        assert (grid[y : y + 10, x : x + 12] == image).all()
    mask = np.ones(grid.shape[:2], dtype=bool)
    for i in range(5):
        r, c = divmod(i, 4)
        mask[2 + r * 12 : 12 + r * 12, 2 + c * 14 : 14 + c * 14] = False
    assert (grid[mask] == 255).all()  # padding and the empty cells are white


@pytest.mark.parametrize(
    ("count", "columns", "pad", "shape"),
    [(1, 4, 2, (14, 14)), (3, 4, 0, (10, 30)), (4, 2, 1, (23, 23)), (3, 0, 2, (38, 14)), (7, 3, 2, (38, 38))],
)
def test_make_grid_shapes(count, columns, pad, shape):
    grid = make_grid([np.zeros((10, 10, 3), dtype=np.uint8)] * count, columns=columns, pad=pad)
    assert grid.shape == (*shape, 3)


def test_make_grid_resizes_odd_sizes_and_rejects_empty():
    grid = make_grid([np.zeros((10, 10, 3), np.uint8), np.full((20, 30, 3), 100, np.uint8)], columns=2, pad=0)
    assert grid.shape == (10, 20, 3)
    assert (grid[:, 10:] == 100).all()
    with pytest.raises(ValueError, match="at least one image"):
        make_grid([])


# -- prepare_photos -----------------------------------------------------------------------------------------------
@pytest.fixture
def obama_folder(tmp_path, photos_dir) -> Path:
    """Three photos of Obama and one without any face (the skimage coffee cup)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in (1, 2, 3):
        shutil.copy(photos_dir / f"obama_{i}.jpg", folder / f"obama_{i}.jpg")
    Image.fromarray(skimage.data.coffee()).save(folder / "coffee.jpg", quality=90)
    return folder


def test_prepare_photos_names_the_photo_without_a_face(obama_folder):
    from iddm.diffusion.data import prepare_photos

    with raises_naming(obama_folder / "coffee.jpg", match="no face found"):
        prepare_photos(obama_folder, resolution=64)


def test_prepare_photos_lists_every_unusable_photo_at_once(obama_folder):
    from iddm.diffusion.data import prepare_photos

    (obama_folder / "broken.png").write_bytes(b"not a png at all" * 64)
    with pytest.raises(PhotoError, match="--skip_bad_photos") as info:
        prepare_photos(obama_folder, resolution=64)
    message = str(info.value)
    assert str(obama_folder / "coffee.jpg") in message and str(obama_folder / "broken.png") in message
    assert "obama_1" not in message


def test_prepare_photos_skips_bad_photos_when_asked(obama_folder, caplog):
    from iddm.diffusion.data import aligned_template, prepare_photos

    before = snapshot([obama_folder])
    caplog.set_level(logging.WARNING, logger="iddm")
    photos = prepare_photos(obama_folder, resolution=64, skip_bad_photos=True)

    assert snapshot([obama_folder]) == before  # only read: same files, same bytes, same mtimes
    assert photos.paths == [obama_folder / f"obama_{i}.jpg" for i in (1, 2, 3)]
    assert len(photos) == 3
    assert photos.images.shape == (3, 3, 64, 64)
    assert photos.images.dtype.is_floating_point
    assert 0.0 <= float(photos.images.min()) and float(photos.images.max()) <= 1.0
    assert float(photos.images.std()) > 0.05  # real image content, not a constant
    assert photos.landmarks.shape == (3, 5, 2)
    landmarks = photos.landmarks.numpy()
    assert ((landmarks >= 0) & (landmarks < 64)).all()
    # Aligned crops put the five landmarks on the template.
    assert np.abs(landmarks - aligned_template(64, 0.25)[None]).max() < 4
    assert str(obama_folder / "coffee.jpg") in warnings_text(caplog)
    assert [image.shape for image in photos.as_uint8()] == [(64, 64, 3)] * 3


def test_prepare_photos_fails_when_too_few_photos_have_a_face(obama_folder):
    from iddm.diffusion.data import prepare_photos

    for i in (2, 3):
        (obama_folder / f"obama_{i}.jpg").unlink()
    with raises_naming(obama_folder, match=r"1 usable photo\(s\) with a face; at least 2 are needed"):
        prepare_photos(obama_folder, resolution=64, skip_bad_photos=True)


def test_prepare_photos_uses_the_largest_of_two_faces_with_a_warning(tmp_path, photos_dir, caplog):
    from iddm.diffusion.data import prepare_photos

    obama = np.asarray(Image.open(photos_dir / "obama_1.jpg").convert("RGB"))
    biden = np.asarray(Image.open(photos_dir / "biden_1.jpg").convert("RGB"))
    assert obama.shape[0] == biden.shape[0]
    montage = tmp_path / "two" / "montage.jpg"
    montage.parent.mkdir()
    Image.fromarray(np.concatenate([biden, obama], axis=1)).save(montage, quality=95)
    singles = {}
    for name in ("obama_1", "biden_1"):
        (tmp_path / name).mkdir()
        shutil.copy(photos_dir / f"{name}.jpg", tmp_path / name / f"{name}.jpg")
        singles[name] = prepare_photos(tmp_path / name, resolution=64, min_photos=1).as_uint8()[0]

    caplog.set_level(logging.WARNING, logger="iddm")
    photos = prepare_photos(montage.parent, resolution=64, min_photos=1)
    assert photos.images.shape == (1, 3, 64, 64)
    assert f"{montage}: 2 faces found; using the largest" in warnings_text(caplog)
    crop = photos.as_uint8()[0]
    # Obama's face (135 px) is larger than Biden's (83 px): the crop is Obama's.
    assert correlation(crop, singles["obama_1"]) > 0.85
    assert correlation(crop, singles["biden_1"]) < 0.6


def test_prepare_photos_portrait_crop(obama_folder):
    from iddm.diffusion.data import prepare_photos

    (obama_folder / "coffee.jpg").unlink()
    photos = prepare_photos(obama_folder, resolution=48, crop="portrait")
    assert photos.images.shape == (3, 3, 48, 48)
    landmarks = photos.landmarks.numpy()
    assert ((landmarks >= 0) & (landmarks < 48)).all()
    # The face sits in the middle of a square 2.2 times its size.
    assert np.abs(landmarks.mean(axis=1) - 24).max() < 8


def test_prepare_photos_marks_the_mirrored_border_of_a_tight_photo(tmp_path, photos_dir):
    from iddm.diffusion.data import crop_coverage, prepare_photos
    from iddm.faces import detect_single_face

    photo = load_photo(photos_dir / "obama_1.jpg")
    face = detect_single_face(photo)
    x, y, w, h = (int(v) for v in face.box)
    tight = photo[max(y - h // 10, 0) : y + h + h // 10, max(x - w // 10, 0) : x + w + w // 10]
    (tmp_path / "tight").mkdir()
    Image.fromarray(tight).save(tmp_path / "tight" / "tight.png")
    photos = prepare_photos(tmp_path / "tight", resolution=64, min_photos=1)
    coverage = photos.coverage[0, 0].bool().numpy()
    # The aligned crop zooms out around the face: a photo cut at the face box leaves its top and sides mirrored.
    assert coverage.shape == (64, 64) and 0.3 < coverage.mean() < 0.95
    assert not coverage[0].any() and coverage[32, 32]
    shutil.copy(photos_dir / "obama_1.jpg", tmp_path / "obama_1.jpg")
    whole = prepare_photos(tmp_path, resolution=64, min_photos=1)
    assert whole.coverage.mean() > coverage.mean()
    np.testing.assert_array_equal(crop_coverage(tight.shape, np.eye(2, 3), 8), np.ones((8, 8), bool))
