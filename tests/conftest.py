"""Shared fixtures (the real test photos of tests/fixtures/photos, see CREDITS.md there) and helpers."""

from __future__ import annotations

import os

# Tests never reach a model hub: huggingface_hub reads this once, when it is first imported.
os.environ["HF_HUB_OFFLINE"] = "1"

import importlib.util  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

PHOTOS_DIR = Path(__file__).parent / "fixtures" / "photos"


@pytest.fixture(scope="session")
def photos_dir() -> Path:
    """The folder of real face photos (one face each; ``<identity>_<n>.jpg``)."""
    return PHOTOS_DIR


@pytest.fixture(scope="session")
def identity_photos(photos_dir: Path) -> dict[str, list[Path]]:
    """Identity name (``obama``, ``macron``, ...) -> its photo paths, sorted."""
    groups: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(photos_dir.glob("*.jpg")):
        groups[path.stem.rsplit("_", 1)[0]].append(path)
    return dict(groups)


@pytest.fixture(scope="session")
def photo_paths(photos_dir: Path) -> list[Path]:
    """All fixture photos, sorted by name."""
    return sorted(photos_dir.glob("*.jpg"))


@pytest.fixture(scope="session")
def detected_photos(photo_paths: list[Path]) -> dict:
    """Photo stem -> ``(image uint8 (H, W, 3), DetectedFace)`` for every fixture photo (detected once)."""
    from iddm.faces.detect import detect_single_face
    from iddm.images import load_photo

    result = {}
    for path in photo_paths:
        image = load_photo(path)
        result[path.stem] = (image, detect_single_face(image, source=str(path)))
    return result


@pytest.fixture(scope="session")
def train_dir(tmp_path_factory, identity_photos: dict[str, list[Path]]) -> Path:
    """A folder holding copies of the first three Obama photos: a user's training photos."""
    import shutil

    folder = tmp_path_factory.mktemp("obama_train")
    for path in identity_photos["obama"][:3]:
        shutil.copy(path, folder / path.name)
    return folder


TINY_BENCHMARK = (
    "--model iddm:micro --max_train_steps 4 --resolution 32 --num_images 2 --num_inference_steps 2".split()
)
"""``iddm benchmark`` flags for a benchmark that runs in seconds (micro backbone, 4 steps, 2 images per cell)."""


TINY_SD_OPTIONS = dict(
    max_train_steps=3,
    train_batch_size=2,
    checkpointing_steps=0,
    validation_steps=0,
    num_validation_images=1,
    num_inference_steps=2,
    learning_rate=5e-2,
)
"""``iddm personalize`` options for seconds-long runs on the tiny random SD/SDXL pipelines."""


def benchmark_script(name: str):
    """The module of ``benchmarks/NAME.py`` (scripts, not a package), loaded for its functions."""
    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))  # as when the script runs: it may import its siblings
    path = folder / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sigkill_when(argv: list[str], marker: Path, timeout: float) -> None:
    """Run ``iddm ARGV`` in its own process group; SIGKILL it once ``marker`` exists (or it ends, or time is up)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "iddm.cli", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")},
    )
    deadline = time.time() + timeout
    while not marker.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def aligned_crops(recognizer, detected_photos: dict) -> tuple:
    """``(names, crops)``: each photo of ``{name: (image, face)}`` aligned for ``recognizer``, sorted by name;
    crops ``(N, 3, S, S)`` float in ``[0, 1]``."""
    import numpy as np
    import torch

    from iddm.faces import align_crop

    names = sorted(detected_photos)
    crops = [
        align_crop(image, face.landmarks, recognizer.template, recognizer.input_size)
        for image, face in (detected_photos[n] for n in names)
    ]
    return names, torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0
