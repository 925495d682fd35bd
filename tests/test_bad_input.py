"""The bad-input catalogue (GitHub issue 10): every way a user can get the input wrong, through the real CLI.

Each failing case runs ``iddm.cli.main`` in-process and asserts: exit code 2; the last line of stderr is one
``iddm COMMAND: error: ...`` line holding the expected words; no traceback; every input (photos, YAML,
models, runs) byte-identical with the same modification time; and no output folder (or, for one that
existed, nothing new in it). A few cases also run as a subprocess, to prove no traceback reaches stderr.

Odd but usable input (CMYK, 16-bit, RGBA, grayscale, EXIF-rotated, 12,000 px, several faces, non-image
files, a symlink loop, 200 copies) must train, with what the README promises checked on the crops the run
used. Checkpoints: corrupt ones are skipped with a warning, and the resumed run ends with the weights of an
uninterrupted one. Finally the publishable ``model/`` of a ``--privacy high`` run must hold nothing from
which a training photo can be rebuilt.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import ExifTags, Image, UnidentifiedImageError
from safetensors.torch import load_file

from iddm.cli import main

PHOTOS = Path(__file__).parent / "fixtures" / "photos"
REPO = Path(__file__).resolve().parents[1]
FAST = (
    "--pretrained_model_name_or_path iddm:micro --resolution 32 --validation_steps 0 --num_validation_images 1 "
    "--num_inference_steps 1 --checkpointing_steps 0 "
    "--train_batch_size 2"
).split()
CHECKPOINTED = "--max_train_steps 3 --checkpointing_steps 1 --checkpoints_total_limit 5".split()
"""The finished run's schedule: 3 steps, checkpoint-1 and checkpoint-2 kept; a resumed run repeats it."""
UMASK = os.umask(0)
os.umask(UMASK)


# -- helpers ------------------------------------------------------------------------------------------------------
def snapshot(paths: list[Path]) -> dict[str, tuple]:
    """Every entry under ``paths`` (links not followed): files as ``(sha256, mtime_ns)``, folders and links by kind."""
    entries: dict[str, tuple] = {}

    def add(path: Path) -> None:
        if not os.path.lexists(path):
            entries[str(path)] = ("missing",)
            return
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            entries[str(path)] = ("link", os.readlink(path))
        elif stat.S_ISDIR(info.st_mode):
            entries[str(path)] = ("dir",)
        else:
            entries[str(path)] = (hashlib.sha256(path.read_bytes()).hexdigest(), info.st_mtime_ns)

    for root in paths:
        if not root.is_dir() or root.is_symlink():
            add(root)
            continue
        for folder, dirs, files in os.walk(root):
            for name in [*dirs, *files]:
                add(Path(folder) / name)
        add(root)
    return entries


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """``iddm ARGV`` in this process: ``(exit code, stdout, stderr)`` (argparse's own exits included)."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, command: str, fragments: list[str]) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    assert "Traceback" not in err, err
    last = lines[-1]
    assert last.startswith(f"iddm {command}: error: "), err
    for fragment in fragments:
        assert fragment in last, f"{fragment!r} not in {last!r}"


@contextmanager
def iddm_log(level: int = logging.INFO) -> Iterator[list[str]]:
    """Messages logged by ``iddm`` (at ``level`` and above) while the block runs (module fixtures have no caplog)."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logger, handler = logging.getLogger("iddm"), Collect(level)
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def copy_photos(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(PHOTOS / f"{name}.jpg", folder / f"{name}.jpg")
    return folder


def rgb(name: str) -> np.ndarray:
    with Image.open(PHOTOS / f"{name}.jpg") as image:
        return np.asarray(image.convert("RGB"))


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that claims ``width x height`` pixels (a decompression bomb: refused before decoding)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def unet_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model" / "unet" / "diffusion_pytorch_model.safetensors")


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = unet_weights(a), unet_weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def grid_cells(grid_png: Path, count: int, size: int, columns: int = 4, pad: int = 2) -> list[np.ndarray]:
    """The ``count`` tiles of an ``iddm.images.make_grid`` image, in order."""
    grid = np.asarray(Image.open(grid_png).convert("RGB"))
    cells = []
    for i in range(count):
        r, c = divmod(i, columns)
        y, x = pad + r * (size + pad), pad + c * (size + pad)
        cells.append(grid[y : y + size, x : x + size])
    return cells


def gray_correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = (np.asarray(Image.fromarray(x).convert("L"), dtype=np.float64).ravel() for x in (a, b))
    return float(np.corrcoef(a, b)[0, 1])


# -- shared runs --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_photos(tmp_path_factory) -> Path:
    """Two photos of one person: the smallest folder a run accepts."""
    return copy_photos(tmp_path_factory.mktemp("two") / "photos", "obama_1", "obama_2")


@pytest.fixture(scope="module")
def finished_run(two_photos: Path, tmp_path_factory) -> Path:
    """A finished vanilla micro run of 3 steps with checkpoint-1 and checkpoint-2 (its base and resume source)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    argv = ["personalize", "--photos", two_photos, "--output_dir", out, *FAST, *CHECKPOINTED]
    assert main([str(a) for a in argv]) == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    return out


def interrupted_copy(run: Path, destination: Path) -> Path:
    """``run`` as a run killed after its last checkpoint: no final outputs."""
    shutil.copytree(run, destination, symlinks=True)
    (destination / "iddm_run.json").unlink()
    for name in ("model", "private", "validation"):
        shutil.rmtree(destination / name)
    return destination


# -- the catalogue of failing input -------------------------------------------------------------------------------
@dataclass
class Invocation:
    """One command line, the inputs it must leave untouched and the output folder it must not create."""

    argv: list
    inputs: list[Path]
    out: Path | None
    never_created: list[Path] = field(default_factory=list)


class Workspace:
    """A case's own temporary folder, with builders for its inputs (shared runs are made once, on first use)."""

    def __init__(self, tmp: Path, request: pytest.FixtureRequest):
        self.tmp, self.request = tmp, request
        self.out = tmp / "out"

    def photos(self, *names: str, folder: str = "photos") -> Path:
        return copy_photos(self.tmp / folder, *names)

    def folder(self, name: str) -> Path:
        (self.tmp / name).mkdir(parents=True, exist_ok=True)
        return self.tmp / name

    def yaml(self, text: str) -> Path:
        path = self.tmp / "options.yaml"
        path.write_text(text)
        return path

    @property
    def finished_run(self) -> Path:
        return self.request.getfixturevalue("finished_run")

    @property
    def high_run(self) -> Path:
        return self.request.getfixturevalue("high_run")

    def personalize(self, photos: Path, *extra, out: Path | None = None, steps: bool = True) -> Invocation:
        out = self.out if out is None else out
        argv = ["personalize", "--photos", photos, "--output_dir", out, *FAST, *(["--max_train_steps", "1"] * steps)]
        return Invocation([*argv, *extra], [photos], out)


@dataclass
class Case:
    id: str
    build: Callable[[Workspace], Invocation]
    fragments: list[str]
    command: str = "personalize"
    marks: tuple = ()


CASES: list[Case] = []
SHARED_RUN = (pytest.mark.slow,)
"""Marks of a case that needs a shared run (made once per module, by the first case that asks for it)."""


def case(id: str, *fragments: str, command: str = "personalize", marks: tuple = ()):
    def register(build: Callable[[Workspace], Invocation]) -> Callable[[Workspace], Invocation]:
        CASES.append(Case(id, build, list(fragments), command, marks))
        return build

    return register


# Photos ----------------------------------------------------------------------------------------------------------
@case("empty_folder", "found 0 usable photo(s), need at least 2")
def _(ws):
    return ws.personalize(ws.folder("photos"))


@case("one_photo", "found 1 usable photo(s), need at least 2")
def _(ws):
    return ws.personalize(ws.photos("obama_1"))


@case("min_photos_0", "--min_photos must be >= 1, got 0")
def _(ws):
    return ws.personalize(ws.photos("obama_1", "obama_2"), "--min_photos", "0")


@case("only_non_image_files", "found 0 usable photo(s)")
def _(ws):
    folder = ws.folder("photos")
    (folder / "notes.txt").write_text("my photos")
    (folder / "photo.heic.zip").write_bytes(b"PK\x03\x04")
    return ws.personalize(folder)


@case("no_face", "coffee.jpg: no face found", "--skip_bad_photos")
def _(ws):
    folder = ws.photos("obama_1", "obama_2")
    Image.fromarray(skimage.data.coffee()).save(folder / "coffee.jpg", quality=90)
    return ws.personalize(folder)


@case("two_people_across_the_folder", "show someone else than the others: biden_1.jpg", "--allow_mixed_identities")
def _(ws):
    return ws.personalize(ws.photos("obama_1", "obama_2", "obama_3", "biden_1"))


@case("corrupt_jpeg", "bad.jpg: not an image file")
def _(ws):
    folder = ws.photos("obama_1", "obama_2")
    (folder / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 40)
    return ws.personalize(folder)


@case("truncated_jpeg", "obama_3.jpg: cannot decode the image", "truncated")
def _(ws):
    folder = ws.photos("obama_1", "obama_2")
    data = (PHOTOS / "obama_3.jpg").read_bytes()
    (folder / "obama_3.jpg").write_bytes(data[: len(data) // 2])
    return ws.personalize(folder)


@case("tiny_16px", "tiny.png: image is 16x16 px; at least 32 px")
def _(ws):
    folder = ws.photos("obama_1", "obama_2")
    Image.fromarray(rgb("obama_3")).resize((16, 16)).save(folder / "tiny.png")
    return ws.personalize(folder)


@case("over_250_megapixels", "bomb.png: image is larger than 250,000,000 pixels")
def _(ws):
    folder = ws.photos("obama_1", "obama_2")
    png_header_only(folder / "bomb.png", 17_000, 17_000)
    return ws.personalize(folder)


@case("photos_is_a_file", "obama_1.jpg: is a file, not a folder")
def _(ws):
    photo = ws.photos("obama_1") / "obama_1.jpg"
    return ws.personalize(photo)


@case("photos_folder_missing", "no_such_folder: photo folder does not exist")
def _(ws):
    return ws.personalize(ws.tmp / "no_such_folder")


# Options and config ----------------------------------------------------------------------------------------------
def option_case(id: str, args: list[str], *fragments: str, marks: tuple = ()) -> None:
    case(id, *fragments, marks=marks)(lambda ws: ws.personalize(ws.photos("obama_1", "obama_2"), *args))


option_case("max_train_steps_0", ["--max_train_steps", "0"], "--max_train_steps must be >= 1, got 0")
option_case("max_train_steps_negative", ["--max_train_steps", "-5"], "--max_train_steps must be >= 1, got -5")
option_case("train_batch_size_0", ["--train_batch_size", "0"], "--train_batch_size must be >= 1, got 0")
option_case("resolution_7", ["--resolution", "7"], "--resolution must be >= 32, got 7")
option_case("resolution_100", ["--resolution", "100"], "--resolution must be a multiple of 8, got 100")
option_case("resolution_100000", ["--resolution", "100000"], "--resolution must be <= 2048, got 100000")
option_case("lora_rank_0", ["--lora_rank", "0"], "--lora_rank must be >= 1, got 0")
option_case("learning_rate_nan", ["--learning_rate", "nan"], "--learning_rate must be a finite number, got nan")
option_case("eot_unknown", ["--eot", "unknown"], "argument --eot: invalid choice: 'unknown'")
option_case("privacy_extreme", ["--privacy", "extreme"], "--privacy must be one of ['off', 'low', 'medium', 'high']")
option_case("low_frequency_0", ["--low_frequency", "0"], "--low_frequency must be >= 1, got 0")
option_case("jitter_1", ["--jitter", "1"], "--jitter must be < 1, got 1.0")
option_case("delta_grid_1", ["--delta_grid", "1"], "--delta_grid must be 0 (per pixel) or at least 2, got 1")
option_case("delta_chroma_2", ["--delta_chroma", "2"], "--delta_chroma must be <= 1, got 2.0")
option_case("warp_grid_1", ["--warp_grid", "1"], "--warp_grid must be >= 2, got 1")
option_case(
    "surrogates_per_step_3", ["--surrogates_per_step", "3"], "--surrogates_per_step is 3 but only 2 surrogates are set"
)
option_case("epsilon_2", ["--epsilon", "2"], "--epsilon must be <= 1, got 2.0")
option_case(
    "epsilon_0_with_privacy",
    ["--privacy", "high", "--epsilon", "0"],
    "--epsilon 0 at --privacy high would train without any defense",
)
option_case(
    "data_steps_0_with_privacy",
    ["--privacy", "medium", "--data_steps", "0"],
    "--data_steps 0 at --privacy medium would train without any defense",
)
option_case("surrogates_dlib", ["--surrogates", "dlib"], "argument --surrogates: invalid choice: 'dlib'", "sface")
option_case(
    "surrogate_weights_count", ["--surrogate_weights", "1", "2", "3"], "--surrogate_weights has 3 values for 2"
)
option_case(
    "unknown_flag",
    ["--max_train_step", "3"],
    "unrecognized arguments: --max_train_step",
    "(did you mean --max_train_steps?)",
)
option_case(
    "mixed_precision_fp16_on_cpu",
    ["--mixed_precision", "fp16"],
    "--mixed_precision fp16 needs a CUDA GPU",
    marks=(pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is fine on a GPU"),),
)
option_case(
    "prior_preservation_on_micro",
    ["--with_prior_preservation"],
    "--with_prior_preservation needs a pretrained text-to-image model",
)
option_case(
    "several_problems_in_one_error",
    "--max_train_steps 0 --train_batch_size 0 --resolution 7 --privacy extreme --surrogate_weights 1 2 3".split(),
    "--max_train_steps must be >= 1",
    "--train_batch_size must be >= 1",
    "--resolution must be >= 32",
    "--privacy must be one of",
    "--surrogate_weights has 3 values",
)
option_case("decoy_missing", ["--privacy", "low", "--decoy", "no_such_decoy.jpg"], "--decoy no_such_decoy.jpg is not")
case("decoy_folder_without_photos", "is a folder without photos")(
    lambda ws: ws.personalize(ws.photos("obama_1", "obama_2"), "--privacy", "low", "--decoy", ws.folder("empty"))
)
option_case(
    "report_to_wandb_not_installed",
    ["--report_to", "wandb"],
    "--report_to wandb needs the wandb package",
    marks=(pytest.mark.skipif(__import__("importlib").util.find_spec("wandb") is not None, reason="wandb installed"),),
)


@case("output_dir_is_the_photos_folder", "is the --photos folder")
def _(ws):
    photos = ws.photos("obama_1", "obama_2")
    return ws.personalize(photos, out=photos)


@case("output_dir_inside_photos", "is inside --photos")
def _(ws):
    photos = ws.photos("obama_1", "obama_2")
    return ws.personalize(photos, out=photos / "run")


@case("yaml_malformed", "options.yaml is not valid YAML at line 2")
def _(ws):
    config = ws.yaml("max_train_steps: [1, 2\nseed: : 3\n")
    call = ws.personalize(ws.photos("obama_1", "obama_2"), "--config", config)
    call.inputs.append(config)
    return call


@case("yaml_python_tag_not_executed", "options.yaml is not valid YAML", "python/object/apply")
def _(ws):
    marker = ws.tmp / "executed"
    config = ws.yaml(f"seed: !!python/object/apply:os.system ['touch {marker}']\n")
    call = ws.personalize(ws.photos("obama_1", "obama_2"), "--config", config)
    call.inputs.append(config)
    call.never_created.append(marker)
    return call


@case("yaml_wrong_type", "--max_train_steps must be an integer, got 'two'")
def _(ws):
    config = ws.yaml('max_train_steps: "two"\n')
    call = ws.personalize(ws.photos("obama_1", "obama_2"), "--config", config, steps=False)
    call.inputs.append(config)
    return call


@case("yaml_unknown_key", "unknown option(s) 'max_train_step' (did you mean 'max_train_steps'?)")
def _(ws):
    config = ws.yaml("max_train_step: 2\n")
    call = ws.personalize(ws.photos("obama_1", "obama_2"), "--config", config)
    call.inputs.append(config)
    return call


@case("yaml_not_a_mapping", "must hold a mapping of option names to values, got list")
def _(ws):
    config = ws.yaml("- seed\n- 3\n")
    call = ws.personalize(ws.photos("obama_1", "obama_2"), "--config", config)
    call.inputs.append(config)
    return call


@case("yaml_file_missing", "Config file", "does not exist")
def _(ws):
    return ws.personalize(ws.photos("obama_1", "obama_2"), "--config", ws.tmp / "missing.yaml")


# Paths and models ------------------------------------------------------------------------------------------------
@case("output_under_a_file", "is a file, not a folder")
def _(ws):
    blocker = ws.tmp / "file.txt"
    blocker.write_text("not a folder")
    call = ws.personalize(ws.photos("obama_1", "obama_2"), out=blocker / "run")
    call.inputs.append(blocker)
    return call


@case("finished_run_without_overwrite", "already holds a finished iddm run", "--overwrite", marks=SHARED_RUN)
def _(ws):
    run = ws.tmp / "run"
    shutil.copytree(ws.finished_run, run)
    return ws.personalize(ws.photos("obama_1", "obama_2"), out=run)


@case("model_path_missing", "Model path", "does not exist")
def _(ws):
    return ws.personalize(ws.photos("obama_1", "obama_2"), "--pretrained_model_name_or_path", ws.tmp / "no_model")


@case("model_folder_not_a_pipeline", "is not a diffusers pipeline folder (no model_index.json)")
def _(ws):
    model = ws.folder("model")
    (model / "weights.bin").write_bytes(b"\0" * 64)
    call = ws.personalize(ws.photos("obama_1", "obama_2"), "--pretrained_model_name_or_path", model)
    call.inputs.append(model)
    return call


@case("hub_id_while_offline", "Cannot load 'some-org/some-model'", "HF_HUB_OFFLINE=1")
def _(ws):
    return ws.personalize(ws.photos("obama_1", "obama_2"), "--pretrained_model_name_or_path", "some-org/some-model")


@case(
    "perturbation_from_a_run_without_one",
    "--perturbation_from",
    "no private/decoupled_delta.safetensors",
    marks=SHARED_RUN,
)
def _(ws):
    call = ws.personalize(ws.photos("obama_1", "obama_2"), "--perturbation_from", ws.finished_run)
    call.inputs.append(ws.finished_run)
    return call


@case("perturbation_of_other_photos", "its perturbation has shape (2, 3, 32, 32)", "(3, 3, 32, 32)", marks=SHARED_RUN)
def _(ws):
    call = ws.personalize(ws.photos("obama_1", "obama_2", "obama_3"), "--perturbation_from", ws.high_run)
    call.inputs.append(ws.high_run)
    return call


@case("resume_missing_checkpoint", "checkpoint-99 is not a checkpoint folder")
def _(ws):
    return ws.personalize(ws.photos("obama_1", "obama_2"), "--resume_from_checkpoint", "checkpoint-99")


@case(
    "resume_when_every_checkpoint_is_corrupt",
    "No usable checkpoint",
    "every one is incomplete or corrupt",
    marks=SHARED_RUN,
)
def _(ws):
    run = interrupted_copy(ws.finished_run, ws.tmp / "run")
    for checkpoint in run.glob("checkpoint-*"):
        weights = checkpoint / "trainable.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    return ws.personalize(ws.photos("obama_1", "obama_2"), "--resume_from_checkpoint", "latest", out=run)


@case(
    "generate_lora_without_weights",
    "--lora",
    "holds no pytorch_lora_weights.safetensors",
    command="generate",
    marks=SHARED_RUN,
)
def _(ws):
    lora = ws.folder("not_lora")
    argv = ["generate", "--pretrained_model_name_or_path", ws.finished_run, "--lora", lora, "--output_dir", ws.out,
            "--num_images", "1", "--num_inference_steps", "1"]  # fmt: skip
    return Invocation(argv, [ws.finished_run, lora], ws.out)


@case("generate_model_missing", "Model path", "does not exist", command="generate")
def _(ws):
    argv = ["generate", "--pretrained_model_name_or_path", ws.tmp / "no_model", "--output_dir", ws.out]
    return Invocation(argv, [], ws.out)


@case("generate_output_under_a_file", "is a file, not a folder", command="generate", marks=SHARED_RUN)
def _(ws):
    blocker = ws.tmp / "file.txt"
    blocker.write_text("not a folder")
    argv = ["generate", "--pretrained_model_name_or_path", ws.finished_run, "--output_dir", blocker / "images",
            "--num_images", "1", "--num_inference_steps", "1"]  # fmt: skip
    return Invocation(argv, [ws.finished_run, blocker], blocker / "images")


@case(
    "export_a_run_without_lora",
    "holds no pytorch_lora_weights.safetensors",
    "only LoRA runs",
    command="export",
    marks=SHARED_RUN,
)
def _(ws):
    return Invocation(["export", ws.finished_run], [ws.finished_run], None)


@case("faces_without_a_usable_face", "no usable face in any of the photos", command="faces")
def _(ws):
    coffee = ws.folder("photos") / "coffee.jpg"
    Image.fromarray(skimage.data.coffee()).save(coffee, quality=90)
    missing = ws.tmp / "photos" / "missing.jpg"
    return Invocation(["faces", coffee, missing, "--backends", "sface"], [coffee], None)


@pytest.mark.parametrize("bad", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input_is_one_line_error_and_changes_nothing(bad: Case, tmp_path, request, capsys):
    call = bad.build(Workspace(tmp_path, request))
    out_existed = call.out is not None and call.out.exists()
    watched = [*call.inputs, *([call.out] if out_existed else [])]
    before = snapshot(watched)

    code, _, err = run_cli(call.argv, capsys)

    assert code == 2, err
    assert_one_line_error(err, bad.command, bad.fragments)
    assert snapshot(watched) == before, "an input (or the existing output folder) changed"
    if call.out is not None and not out_existed:
        assert not call.out.exists(), "a failed run left an output folder"
    for path in call.never_created:
        assert not path.exists(), path


def test_the_catalogue_has_at_least_40_cases():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 40


@pytest.mark.slow
@pytest.mark.parametrize("case_id", ["unknown_flag", "yaml_python_tag_not_executed", "hub_id_while_offline"])
def test_no_traceback_reaches_stderr_of_the_command(case_id, tmp_path, request):
    bad = next(c for c in CASES if c.id == case_id)
    call = bad.build(Workspace(tmp_path, request))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "iddm.cli", *map(str, call.argv)], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 2, result.stderr
    assert_one_line_error(result.stderr, bad.command, bad.fragments)
    assert result.stdout == ""
    assert not call.out.exists()
    for path in call.never_created:
        assert not path.exists(), path


# -- odd but usable photos ----------------------------------------------------------------------------------------
def write_messy_folder(folder: Path) -> dict[str, str]:
    """Four plain Obama photos, converted, rotated, huge and group versions of them, and things to skip.

    Returns the derived photo's file name -> the plain photo it was made from.
    """
    copy_photos(folder, "obama_1", "obama_2", "obama_3", "obama_4")
    Image.fromarray(rgb("obama_1")).convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    gray16 = np.asarray(Image.fromarray(rgb("obama_2")).convert("L"), dtype=np.uint16) * 257
    Image.fromarray(gray16).save(folder / "gray_16bit.png")  # mode I;16
    rgba = np.dstack([rgb("obama_3"), np.full(rgb("obama_3").shape[:2], 255, np.uint8)])
    rgba[:12, :12, 3] = 0  # a transparent corner, composited on white
    Image.fromarray(rgba, mode="RGBA").save(folder / "rgba.png")
    Image.fromarray(rgb("obama_4")).convert("L").save(folder / "grayscale.jpg", quality=95)
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # stored sideways, as phones do; turned upright on load
    Image.fromarray(rgb("obama_1")).transpose(Image.Transpose.ROTATE_90).save(folder / "exif_rotated.jpg", exif=exif)
    height, width = rgb("obama_2").shape[:2]
    huge = Image.fromarray(rgb("obama_2")).resize((12_000 * width // height, 12_000), Image.Resampling.BILINEAR)
    huge.save(folder / "huge.jpg", quality=80)
    obama, biden = rgb("obama_1"), rgb("biden_1")
    Image.fromarray(np.concatenate([biden, obama], axis=1)).save(folder / "group.jpg", quality=95)
    (folder / "notes.txt").write_text("not a photo")
    os.symlink("loop_b.jpg", folder / "loop_a.jpg")
    os.symlink("loop_a.jpg", folder / "loop_b.jpg")
    for i in range(200):
        shutil.copy(folder / "obama_3.jpg", folder / f"obama_3_copy_{i:03d}.jpg")
    return {
        "cmyk.jpg": "obama_1.jpg",
        "gray_16bit.png": "obama_2.jpg",
        "rgba.png": "obama_3.jpg",
        "grayscale.jpg": "obama_4.jpg",
        "exif_rotated.jpg": "obama_1.jpg",
        "huge.jpg": "obama_2.jpg",
        "group.jpg": "obama_1.jpg",
    }


@dataclass
class MessyRun:
    folder: Path
    out: Path
    code: int
    stderr: str
    log: list[str]
    derived_from: dict[str, str]
    crops: dict[str, np.ndarray]


@pytest.fixture(scope="module")
def messy_run(tmp_path_factory) -> MessyRun:
    """One run on a folder of every odd-but-usable kind of photo."""
    root = tmp_path_factory.mktemp("messy")
    folder = root / "photos"
    derived_from = write_messy_folder(folder)
    before = snapshot([folder])
    out = root / "run"
    argv = ["personalize", "--photos", folder, "--output_dir", out, *FAST, "--max_train_steps", "1"]
    stderr = io.StringIO()
    with iddm_log(logging.WARNING) as log, redirect_stderr(stderr):
        code = main([str(a) for a in argv])
    assert snapshot([folder]) == before, "the run modified the photos folder"
    crops = {}
    if code == 0:
        used = [Path(p).name for p in json.loads((out / "private" / "iddm_log.json").read_text())["photos"]]
        cells = grid_cells(out / "private" / "training_photos" / "clean_grid.png", len(used), 32)
        crops = dict(zip(used, cells))
    return MessyRun(folder, out, code, stderr.getvalue(), log, derived_from, crops)


@pytest.mark.slow  # the first to ask makes the messy run (about 10 s)
def test_odd_photos_train(messy_run: MessyRun):
    assert messy_run.code == 0, messy_run.stderr[-3000:]
    assert "Traceback" not in messy_run.stderr
    expected = {"obama_1.jpg", "obama_2.jpg", "obama_3.jpg", "obama_4.jpg", *messy_run.derived_from}
    assert set(messy_run.crops) == expected


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["cmyk.jpg", "gray_16bit.png", "rgba.png", "grayscale.jpg", "exif_rotated.jpg", "huge.jpg", "group.jpg"]
)
def test_odd_photo_is_converted_to_the_same_crop(messy_run: MessyRun, name: str):
    """CMYK, 16-bit, RGBA, grayscale, EXIF-rotated (rotation applied) and 12,000-px photos, and the largest face of
    a group photo, give the crop of the plain photo they were made from."""
    assert messy_run.code == 0, messy_run.stderr[-3000:]
    source = messy_run.derived_from[name]
    crop, plain = messy_run.crops[name], messy_run.crops[source]
    assert gray_correlation(crop, plain) > 0.8  # measured 0.88 (huge) to 1.00 (lossless)
    others = [f"obama_{i}.jpg" for i in range(1, 5) if f"obama_{i}.jpg" != source]
    assert all(gray_correlation(crop, messy_run.crops[o]) < gray_correlation(crop, plain) for o in others)


@pytest.mark.slow
def test_exif_rotation_is_applied_not_aligned_away(messy_run: MessyRun):
    from iddm.faces import detect_faces

    # The stored (sideways) pixels show no face to the detector: the run could use the photo only upright.
    with Image.open(messy_run.folder / "exif_rotated.jpg") as stored:
        assert stored.size[::-1] == rgb("obama_1").shape[1::-1]
        assert detect_faces(np.asarray(stored.convert("RGB"))) == []
    assert messy_run.code == 0 and "exif_rotated.jpg" in messy_run.crops


@pytest.mark.slow
def test_group_photo_uses_the_largest_face_with_a_warning(messy_run: MessyRun):
    assert any("group.jpg: 2 faces found; using the largest" in m for m in messy_run.log), messy_run.log


@pytest.mark.slow
def test_non_image_files_and_symlink_loops_are_skipped_with_a_warning(messy_run: MessyRun):
    folder = messy_run.folder
    assert any(f"Skipping {folder / 'notes.txt'}: not an image file" in m for m in messy_run.log)
    for link in ("loop_a.jpg", "loop_b.jpg"):
        assert any(f"Skipping {folder / link}: a symbolic link to nothing" in m for m in messy_run.log), link


@pytest.mark.slow
def test_200_duplicates_give_one_summarized_warning(messy_run: MessyRun):
    duplicates = [m for m in messy_run.log if "same bytes" in m]
    assert len(duplicates) == 1, duplicates
    assert f"Skipping 200 files with the same bytes as {messy_run.folder / 'obama_3.jpg'}" in duplicates[0]
    assert "and 197 more" in duplicates[0]


@pytest.mark.slow
def test_two_people_go_on_with_allow_mixed_identities(tmp_path, caplog, capsys):
    photos = copy_photos(tmp_path / "photos", "obama_1", "obama_2", "obama_3", "biden_1")
    caplog.set_level(logging.WARNING, logger="iddm")
    argv = ["personalize", "--photos", photos, "--output_dir", tmp_path / "run", *FAST, "--max_train_steps", "1",
            "--allow_mixed_identities"]  # fmt: skip
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "show someone else than the others: biden_1.jpg (going on: --allow_mixed_identities)" in caplog.text


def test_one_person_at_64_px_portrait_crops_is_not_called_two(tmp_path):
    """Tony Blair's 0004/0010/0014: SFace on the 64-px portrait training crops put 0004 and 0014 below its threshold
    (0.31), so the set was refused as two people; full-resolution alignments and two FR models agree it is one."""
    from iddm.diffusion.data import identity_outliers, prepare_photos

    folder = tmp_path / "blair"
    folder.mkdir()
    for name in ("set_A/Tony_Blair_0004.jpg", "set_B/Tony_Blair_0010.jpg", "set_B/Tony_Blair_0014.jpg"):
        shutil.copy(REPO / "data" / "eval" / "Tony_Blair" / name, folder)
    assert identity_outliers(prepare_photos(folder, 64, crop="portrait")) == []
    shutil.copy(PHOTOS / "biden_1.jpg", folder)
    assert [p.name for p in identity_outliers(prepare_photos(folder, 64, crop="portrait"))] == ["biden_1.jpg"]


# -- checkpoints --------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("damaged", ["trainable.safetensors", "optimizer.pt"])
def test_resume_skips_a_truncated_checkpoint_and_ends_with_the_same_weights(
    damaged, finished_run, two_photos, tmp_path, caplog, capsys
):
    run = interrupted_copy(finished_run, tmp_path / "run")
    file = run / "checkpoint-2" / damaged
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])  # as a full disk leaves it
    caplog.set_level(logging.INFO, logger="iddm")
    argv = ["personalize", "--photos", two_photos, "--output_dir", run, *FAST, *CHECKPOINTED]
    code, _, err = run_cli([*argv, "--resume_from_checkpoint", "latest"], capsys)
    assert code == 0, err
    assert f"Skipping checkpoint-2: {file} is missing or corrupt" in caplog.text and "Falling back" in caplog.text
    assert f"Resumed from {run / 'checkpoint-1'} at step 1" in caplog.text
    assert same_weights(run, finished_run)


@pytest.mark.slow
def test_a_checkpoint_left_half_saved_is_ignored(finished_run, two_photos, tmp_path, caplog, capsys):
    run = interrupted_copy(finished_run, tmp_path / "run")
    # Killed while saving checkpoint-2: it never got its final name.
    (run / "checkpoint-2").rename(run / ".checkpoint-2.tmp")
    (run / ".checkpoint-2.tmp" / "manifest.json").unlink()
    caplog.set_level(logging.INFO, logger="iddm")
    argv = ["personalize", "--photos", two_photos, "--output_dir", run, *FAST, *CHECKPOINTED]
    code, _, err = run_cli([*argv, "--resume_from_checkpoint", "latest"], capsys)
    assert code == 0, err
    assert f"Resumed from {run / 'checkpoint-1'} at step 1" in caplog.text
    assert "Skipping" not in caplog.text  # not even looked at
    assert same_weights(run, finished_run)
    assert not (run / ".checkpoint-2.tmp").exists()  # replaced by the new checkpoint-2


# -- the publishable folder ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def high_run(two_photos: Path, finished_run: Path, tmp_path_factory) -> Path:
    """A ``--privacy high`` run (one data round) from a local base model (``finished_run``), with a decoy photo."""
    root = tmp_path_factory.mktemp("high")
    decoy = copy_photos(root / "decoy", "biden_1") / "biden_1.jpg"
    out = root / "run"
    argv = ["personalize", "--photos", two_photos, "--output_dir", out, *FAST, "--max_train_steps", "2",
            "--pretrained_model_name_or_path", finished_run, "--privacy", "high", "--round_steps", "1",
            "--data_steps", "1", "--surrogates", "sface", "--decoy", decoy]  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    return out


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


@pytest.mark.slow
def test_publishable_folder_holds_nothing_that_rebuilds_a_training_photo(high_run, two_photos, finished_run):
    from iddm.faces import detect_single_face, embed_photos, load_recognizer
    from iddm.images import load_photo

    model, private = high_run / "model", high_run / "private"
    # What can rebuild the photos is all in private/.
    delta = load_file(private / "decoupled_delta.safetensors")["delta"]
    assert delta.shape == (2, 3, 32, 32) and float(delta.abs().max()) > 0
    grids = ["training_photos/clean_grid.png", "training_photos/decoupled_grid.png"]
    for name in [*grids, "decoupled_photos/obama_1.png", "decoupled_photos/obama_2.png", "iddm_log.json"]:
        assert (private / name).is_file(), name
    assert "surrogate_cos_x0" in (private / "iddm_log.json").read_text()
    outside = {str(p.relative_to(high_run)) for p in _files(high_run) if not p.is_relative_to(private)}
    assert {p for p in outside if not p.startswith("model/")} == {"iddm_run.json", "validation/final.png"}

    # No images, no δ, no user embeddings in model/.
    images = [load_photo(p) for p in sorted(two_photos.iterdir())]
    user = torch.stack(embed_photos(load_recognizer("sface"), images, [detect_single_face(i) for i in images]))
    for path in _files(model):
        with pytest.raises(UnidentifiedImageError):
            Image.open(path)
        if path.suffix != ".safetensors":
            continue
        for key, tensor in load_file(path).items():
            assert "delta" not in key.lower() and "perturb" not in key.lower(), (path, key)
            assert tuple(tensor.shape[-3:]) != tuple(delta.shape[-3:]), (path, key)
            if tensor.shape[-1] == user.shape[-1] and tensor.is_floating_point():
                rows = torch.nn.functional.normalize(tensor.reshape(-1, user.shape[-1]).float(), dim=-1)
                assert float((rows @ user.T).abs().max()) < 0.9, (path, key)

    # No local path (photos, output, base model, decoy: all under the test's temporary root) nor photo name.
    base = str(two_photos.parent.parent)
    forbidden = [base, str(Path(base).resolve()), str(finished_run), "obama_1", "obama_2", "biden_1"]
    for path in _files(model):
        data = path.read_bytes()
        for text in forbidden:
            assert text.encode() not in data, f"{path} contains {text!r}"
    card = (model / "README.md").read_text()
    assert "high" in card and "sface" in card
    assert json.loads((model / "iddm_model.json").read_text())["privacy"]["decoy"] is True


@pytest.mark.slow
def test_output_files_have_the_usual_permissions(high_run):
    files = _files(high_run)
    assert any(p.suffix == ".safetensors" for p in files)
    modes = {str(p.relative_to(high_run)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {oct(0o666 & ~UMASK)}, modes
    folders = {oct(stat.S_IMODE(p.stat().st_mode)) for p in high_run.rglob("*") if p.is_dir()}
    assert folders == {oct(0o777 & ~UMASK)}
