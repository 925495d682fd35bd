"""Benchmark cells: planning, running one cell, and the files that make cells resumable.

A *cell* is one identity x method x privacy level x personalization seed. Its folder
``OUT/cells/<id>/<method>-<level>-seed<N>/``
holds ``run/`` (and ``aspl_perturbation/``), ``images/``, ``cell.log`` (everything the cell logged)
and, when it ends, either ``cell.json`` (a :class:`iddm.evaluate.results.CellRecord`: finished, never
recomputed) with ``probes.npz`` (the attacker's embeddings of its generations and of the user's
reference photos, for the stalker's cross-cell pool), or ``error.json`` (a
:class:`iddm.evaluate.results.CellFailure`: retried by the next run).

:func:`execute_cell` is the unit of work of both the sequential loop and a Ray task: it takes only
picklable arguments and never raises for a failure of the cell itself.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from iddm.config import build_config
from iddm.evaluate.attacker import attacker_knowledge, load_backends, roles
from iddm.evaluate.dataset import Identity
from iddm.evaluate.embedding_cache import load_embedding_cache, photos_key, save_embedding_cache
from iddm.evaluate.linkability import FaceSet, embed_images, subset
from iddm.evaluate.results import CellFailure, CellRecord, WallSeconds, cell_name, from_json, to_json
from iddm.evaluate.utility import ssim_to_vanilla
from iddm.faces import FaceRecognizer
from iddm.faces.mobilefacenet import use_model_path
from iddm.images import PhotoError, atomic_write_bytes, atomic_write_json, load_photo
from iddm.run_layout import LOG_FILE, RunManifest, is_run_dir, private_dir

logger = logging.getLogger(__name__)

METHODS = ["vanilla", "iddm", "noise", "cloak", "aspl"]
"""``vanilla``: no defense (privacy off, one cell per identity). ``iddm``: alternating identity
decoupling. ``noise``: uniform ±ε (control). ``cloak``: one-shot FR cloak, then ordinary training.
``aspl``: an Anti-DreamBooth-style perturbation made by a ``defense='aspl'`` run, then ordinary
personalization on those frozen photos (``perturbation_from``). Not run by default:
``iddm-unbounded``: IDDM with the unbounded identity loss (push the cosine as low as it goes), the
over-decoupling ablation of the calibrated default."""
EXTRA_METHODS = ["iddm-unbounded"]
Method = Literal["vanilla", "iddm", "noise", "cloak", "aspl", "iddm-unbounded"]
METHOD_OPTIONS = {"iddm-unbounded": {"defense": "iddm", "identity_loss": "unbounded"}}
"""Personalization options of methods that are not a defense of their own name."""
CELL_FILE = "cell.json"
ERROR_FILE = "error.json"
PROBES_FILE = "probes.npz"
LOG_NAME = "cell.log"
CellStatus = Literal["done", "failed", "missing"]


@dataclass(frozen=True)
class Cell:
    identity: str
    method: str
    level: str
    seed: int = 0

    @classmethod
    def of(cls, record: CellRecord | CellFailure) -> Cell:
        """The cell a finished or failed record belongs to."""
        return cls(record.identity, record.method, record.level, record.seed)

    @property
    def name(self) -> str:
        return cell_name(self)

    @property
    def vanilla(self) -> Cell:
        """The vanilla cell this cell is compared with: same identity and seed."""
        return Cell(self.identity, "vanilla", "off", self.seed)

    def compared_with(self, output_dir: Path) -> Cell | None:
        """The vanilla cell whose generations this cell's are compared with (SSIM, Fréchet distance, KID, ×vanilla).

        A defense cell: its :attr:`vanilla`. A vanilla cell: the same identity's finished vanilla cell of the
        lowest smaller seed, so that with several seeds vanilla's own row reads its seed-to-seed spread (the
        yardstick of a defense's distance to vanilla); ``None`` for the first seed.
        """
        if self.method != "vanilla":
            return self.vanilla
        prefix = "vanilla-off-seed"  # cell_name of a vanilla cell, less its seed
        folders = (Path(output_dir) / "cells" / self.identity).glob(prefix + "*")
        seeds = sorted(int(seed) for f in folders if (seed := f.name.removeprefix(prefix)).isdigit())
        earlier = (replace(self, seed=seed) for seed in seeds if seed < self.seed)
        return next((cell for cell in earlier if cell.status(output_dir) == "done"), None)

    @property
    def label(self) -> str:
        return f"{self.identity}/{self.name}"

    def folder(self, output_dir: Path) -> Path:
        return Path(output_dir) / "cells" / self.identity / self.name

    def status(self, output_dir: Path) -> CellStatus:
        folder = self.folder(output_dir)
        if (folder / CELL_FILE).is_file():
            return "done"
        return "failed" if (folder / ERROR_FILE).is_file() else "missing"


def plan_cells(
    identities: Sequence[Identity],
    methods: Sequence[str],
    levels: Sequence[str],
    seeds: Sequence[int] = (0,),
    users: Sequence[str] = (),
) -> list[Cell]:
    """Every (identity, method, level, seed) to run: vanilla once per identity and seed (level ``off``), the
    others per level and seed; only for ``users`` when given (names of user identities)."""
    from iddm.decouple.privacy import parse_level

    not_users = sorted(set(users) - {i.name for i in identities if i.is_user})
    if not_users:
        raise ValueError(f"--users {not_users}: no user identity of that name in the dataset.")
    unknown = sorted(set(methods) - set(METHODS) - set(EXTRA_METHODS))
    if unknown:
        raise ValueError(f"Unknown --methods {unknown}; choose from {METHODS + EXTRA_METHODS}.")
    for level in levels:
        if parse_level(level)[0] == 0:
            raise ValueError(f"--levels {level!r} is privacy off: that is the 'vanilla' method.")
    cells = []
    for identity in identities:
        if not identity.is_user or (users and identity.name not in users):
            continue
        for seed in dict.fromkeys(seeds):
            for method in dict.fromkeys(methods):
                for level in ["off"] if method == "vanilla" else dict.fromkeys(levels):
                    cells.append(Cell(identity.name, method, level, seed))
    return cells


@dataclass(frozen=True)
class CellPlan:
    """Everything a cell needs besides its identity's photos, the same for every cell of one benchmark (picklable).

    Attributes:
        personalize: options of every ``iddm personalize`` run (the benchmark's and ``--personalize_config``'s).
        prompts: generation prompts; ``num_images``, ``generation_seed``, ... as ``iddm benchmark``'s flags.
        mobilefacenet: the MobileFaceNet file (``--mobilefacenet``), made the cell process's default.
        torch_threads: torch intra-op threads of the cell (``None``: leave torch's default).
    """

    output_dir: Path
    personalize: Mapping[str, Any]
    prompts: tuple[str, ...]
    backends: tuple[str, ...]
    num_images: int
    generation_seed: int
    num_inference_steps: int
    guidance_scale: float | None
    resolution: int | None
    robustness: bool
    clip_model: Path | None
    mobilefacenet: Path | None = None
    torch_threads: int | None = None


# ----------------------------------------------------------------------------------------------------
# The attacker's knowledge of every identity
# ----------------------------------------------------------------------------------------------------


@functools.cache
def cached_backends(keys: tuple[str, ...]) -> dict[str, FaceRecognizer]:
    """:func:`iddm.evaluate.attacker.load_backends`, loaded once per process (a Ray worker runs many cells)."""
    return load_backends(keys)


def embed_identities(
    identities: Sequence[Identity],
    recognizers: Mapping[str, FaceRecognizer],
    cache: Path | None = None,
    weights: Sequence[str] = (),
) -> dict[str, FaceSet]:
    """Identity -> every photo of it embedded (in ``photos`` order); an unreadable photo counts as no face.

    With ``cache`` (an ``.npz`` file), identities whose photos and recognizers are unchanged since it was written
    are read from it (a benchmark restarted on 50 identities would otherwise embed them all again), and the file is
    rewritten when any identity had to be embedded. ``weights`` names what else the recognizers depend on (a
    model file's path) for the cache's key.
    """
    from iddm.progress import progress_bar

    rec = list(recognizers.values())
    cached = load_embedding_cache(cache) if cache is not None else {}
    keys = {identity.name: photos_key(identity, [*recognizers, *weights]) for identity in identities}
    faces = {name: entry[1] for name, entry in cached.items() if keys.get(name) == entry[0]}
    missing = [identity for identity in identities if identity.name not in faces]
    for identity in progress_bar(missing, desc="attacker: embedding the dataset", unit="identity", leave=False):
        images, readable = [], []
        for path in identity.photos:
            try:
                images.append(load_photo(path))
                readable.append(True)
            except PhotoError as err:
                logger.warning("Skipping dataset photo: %s", err)
                readable.append(False)
        embedded = embed_images(images, rec)
        detected = np.zeros(len(identity.photos), dtype=bool)
        detected[np.flatnonzero(readable)] = embedded.detected
        faces[identity.name] = FaceSet(detected, embedded.embeddings)
    if cache is not None and missing:
        save_embedding_cache(cache, faces, keys)
    return {identity.name: faces[identity.name] for identity in identities}


def identity_knowledge(identity: Identity, faces: Mapping[str, FaceSet]) -> tuple[FaceSet, FaceSet]:
    """The attacker's ``(reference, gallery)`` for a user identity (:func:`attacker_knowledge`): its reference
    photos, and a gallery of its extra photos plus every other identity's photos (``faces``: :func:`embed_identities`).
    """
    own = faces[identity.name]
    n_train, n_ref = identity.num_train, identity.num_reference
    reference = subset(own, range(n_train, n_train + n_ref))
    extra_user = subset(own, range(n_train + n_ref, len(identity.photos))) if identity.extra else None
    distractors = {name: f for name, f in faces.items() if name != identity.name}
    return attacker_knowledge(reference, distractors, extra_user)


# ----------------------------------------------------------------------------------------------------
# One cell
# ----------------------------------------------------------------------------------------------------


def _personalize(values: dict) -> float:
    """Run :func:`iddm.schedule.personalize` unless the folder holds a finished run; returns its wall seconds."""
    from iddm.schedule import PersonalizeConfig, personalize

    output_dir = Path(values["output_dir"])
    if is_run_dir(output_dir):
        logger.info("Reusing the finished run %s.", output_dir)
        log = private_dir(output_dir) / LOG_FILE
        return float(json.loads(log.read_text()).get("wall_seconds", 0.0)) if log.is_file() else 0.0
    started = time.perf_counter()
    personalize(build_config(PersonalizeConfig, values))
    return time.perf_counter() - started


def train_cell(cell: Cell, plan: CellPlan, photos: Path, folder: Path) -> tuple[Path, float]:
    """Personalize for one cell; returns the run folder to generate from and the training wall seconds.

    A run reused from an interrupted invocation reports the training-loop seconds of its log.
    """
    run_dir = folder / "run"
    base = {**plan.personalize, "photos": photos, "seed": cell.seed}
    if cell.method == "vanilla":
        return run_dir, _personalize({**base, "output_dir": run_dir, "privacy": "off"})
    if cell.method == "aspl":
        perturbation = folder / "aspl_perturbation"
        seconds = _personalize({**base, "output_dir": perturbation, "privacy": cell.level, "defense": "aspl"})
        seconds += _personalize({**base, "output_dir": run_dir, "privacy": "off", "perturbation_from": perturbation})
        return run_dir, seconds
    options = METHOD_OPTIONS.get(cell.method, {"defense": cell.method})
    return run_dir, _personalize({**base, "output_dir": run_dir, "privacy": cell.level, **options})


def _load_generations(folder: Path) -> list[np.ndarray] | None:
    paths = sorted(folder.glob("image_*.png")) if folder.is_dir() else []
    return [load_photo(p) for p in paths] or None


def with_ssim_to_vanilla(record: CellRecord, output_dir: Path) -> CellRecord:
    """``record`` with SSIM→vanilla (and ``utility.face``'s vanilla comparison) filled in when its cell finished
    before the identity's vanilla cell did.

    Cells run in parallel (on Ray, identity by identity, longest first within one), so the vanilla generations may
    not have existed when the cell was evaluated; they do once every cell is done.
    """
    face = record.utility.face
    needs_face = face is not None and face.vanilla is None
    compared = Cell.of(record).compared_with(output_dir)
    if compared is None or (record.utility.ssim_to_vanilla is not None and not needs_face):
        return record
    vanilla_folder = compared.folder(output_dir)
    vanilla = _load_generations(vanilla_folder / "images")
    images = _load_generations(Path(output_dir) / record.images_dir)  # relative to the benchmark's folder
    if vanilla is None or images is None:
        return record
    utility = record.utility
    if utility.ssim_to_vanilla is None:
        value, note = ssim_to_vanilla(images, vanilla)
        utility = replace(utility, ssim_to_vanilla=value, ssim_to_vanilla_note=note)
    if needs_face and (vanilla_folder / CELL_FILE).is_file():
        from iddm.evaluate.face_utility import realism_to_vanilla

        frechet, kid, notes = realism_to_vanilla(images, vanilla)
        base = load_cell(vanilla_folder).utility.face
        face = replace(face, vanilla=base, frechet_to_vanilla=frechet, kid_to_vanilla=kid, notes=face.notes + notes)
        utility = replace(utility, face=face)
    return replace(record, utility=utility)


def save_probes(path: Path, probes: FaceSet, reference: FaceSet) -> None:
    """``probes.npz``: ``detected`` and, per recognizer name, ``probe/<name>`` and ``reference/<name>`` rows."""
    arrays = {"detected": probes.detected}
    arrays |= {f"probe/{name}": e for name, e in probes.embeddings.items()}
    arrays |= {f"reference/{name}": e for name, e in reference.embeddings.items()}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def load_probes(path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(recognizer name -> generation embeddings, name -> the user's reference embeddings)`` of ``probes.npz``."""
    with np.load(path) as data:
        probe = {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith("probe/")}
        reference = {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith("reference/")}
    return probe, reference


def mirror_training_photos(identity: Identity, folder: Path) -> Path:
    """``folder`` holding exactly the identity's training photos (as the dataset holds them now), and only them.

    Writes are atomic and idempotent: cells of one identity may run at once.
    """
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {path.name: path for path in identity.train}
    for name, path in wanted.items():
        data = path.read_bytes()
        target = folder / name
        if not target.is_file() or target.read_bytes() != data:
            atomic_write_bytes(target, data)
    for stale in folder.iterdir():
        if stale.name not in wanted and not stale.name.startswith("."):
            stale.unlink(missing_ok=True)
    return folder


def run_cell(cell: Cell, identity: Identity, faces: Mapping[str, FaceSet], plan: CellPlan) -> CellRecord:
    """Personalize, generate and attack one cell; writes ``probes.npz`` and returns the record (not yet saved)."""
    from iddm.diffusion.generate import generation_source
    from iddm.evaluate.harness import evaluate_images, generate_probe_images

    output_dir = plan.output_dir
    folder = cell.folder(output_dir)
    photos_dir = mirror_training_photos(identity, output_dir / "data" / identity.name / "train")

    run_dir, train_seconds = train_cell(cell, plan, photos_dir, folder)
    trained = time.perf_counter()
    model, lora = generation_source(run_dir)
    images = generate_probe_images(
        model,
        folder / "images",
        plan.prompts,
        plan.num_images,
        plan.generation_seed,
        plan.num_inference_steps,
        plan.guidance_scale,
        lora,
        plan.resolution,
    )
    generated = time.perf_counter()

    recognizers = cached_backends(plan.backends)
    reference, gallery = identity_knowledge(identity, faces)
    compared = cell.compared_with(output_dir)
    vanilla = None if compared is None else _load_generations(compared.folder(output_dir) / "images")
    evaluation, probes = evaluate_images(
        images,
        reference,
        gallery,
        recognizers,
        roles(run_dir, recognizers),
        [f"image_{i:04d}.png" for i in range(len(images))],
        plan.robustness,
        run_dir,
        plan.prompts,
        plan.clip_model,
        vanilla,
    )
    save_probes(folder / PROBES_FILE, probes, reference)
    run = RunManifest.load(run_dir)
    return CellRecord(
        identity=cell.identity,
        method=cell.method,
        level=cell.level,
        seed=cell.seed,
        defense=run.model.defense if cell.method != "aspl" else "aspl",
        white_box=sorted(k for k, role in roles(run_dir, recognizers).items() if role == "white-box"),
        run_dir=str(run_dir.relative_to(output_dir)),
        images_dir=str((folder / "images").relative_to(output_dir)),
        prompts=list(plan.prompts),
        wall_s=WallSeconds(train_seconds, generated - trained, time.perf_counter() - generated),
        backends=evaluation.backends,
        utility=evaluation.utility,
        robustness=evaluation.robustness,
    )


@contextlib.contextmanager
def _cell_log(path: Path, capture_output: bool):
    """Send the ``iddm`` loggers (and with ``capture_output``, stdout/stderr: progress bars) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("iddm")
    previous_level = root.level
    root.addHandler(handler)
    if root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)
    try:
        if capture_output:
            with open(path, "a", encoding="utf-8", buffering=1) as stream, _redirected_output(stream):
                yield
        else:
            yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)
        handler.close()


def _stream_handlers() -> list[logging.StreamHandler]:
    loggers = [
        logging.getLogger(),
        *(v for v in logging.root.manager.loggerDict.values() if isinstance(v, logging.Logger)),
    ]
    return [h for logger in loggers for h in logger.handlers if type(h) is logging.StreamHandler]


@contextlib.contextmanager
def _redirected_output(stream):
    """stdout and stderr into ``stream``, and with them the libraries' console log handlers (diffusers and
    transformers bind theirs to ``sys.stderr`` once): a Ray worker runs several cells, and a handler left on one
    cell's closed log file would fail on every later warning."""
    original = sys.stderr
    for handler in _stream_handlers():
        if handler.stream is original:
            _retarget(handler, stream)
    try:
        with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
            yield
    finally:
        for handler in _stream_handlers():
            if handler.stream is stream:
                _retarget(handler, original)


def _retarget(handler: logging.StreamHandler, stream) -> None:
    """``handler.setStream`` without its flush of the old stream, which may be closed (a Ray worker's stderr was).
    diffusers and transformers also bind the handler's ``flush`` to the stderr of the moment: rebound too."""
    handler.acquire()
    try:
        handler.stream = stream
        if "flush" in vars(handler):
            handler.flush = stream.flush
    finally:
        handler.release()


def record_failure(cell: Cell, output_dir: Path, error: str, seconds: float = 0.0) -> CellFailure:
    """Write the cell's ``error.json`` (a later run retries the cell) and return it."""
    folder = cell.folder(output_dir)
    log = str((folder / LOG_NAME).relative_to(output_dir))
    failure = CellFailure(cell.identity, cell.method, cell.level, error, log, seconds, cell.seed)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / ERROR_FILE, to_json(failure))
    return failure


def execute_cell(
    cell: Cell,
    identity: Identity,
    faces: Mapping[str, FaceSet],
    plan: CellPlan,
    capture_output: bool = False,
) -> CellRecord | CellFailure:
    """Run one cell and write ``cell.json``, or record why it failed in ``error.json``; never raises for the cell.

    A finished cell (``cell.json`` exists) is returned as it is. ``KeyboardInterrupt`` still propagates.
    """
    folder = cell.folder(plan.output_dir)
    if cell.status(plan.output_dir) == "done":
        return load_cell(folder)
    (folder / ERROR_FILE).unlink(missing_ok=True)
    if plan.torch_threads is not None:
        import torch

        torch.set_num_threads(plan.torch_threads)
    use_model_path(plan.mobilefacenet)  # a Ray worker is a fresh process
    started = time.perf_counter()
    with _cell_log(folder / LOG_NAME, capture_output):
        logger.info("Cell %s started in process %d.", cell.label, os.getpid())  # which Ray worker, to inspect it
        try:
            record = run_cell(cell, identity, faces, plan)
        except (Exception, MemoryError) as err:  # noqa: BLE001 - a failing cell must not stop the others
            logger.error("Cell %s failed:\n%s", cell.label, traceback.format_exc())
            message = " ".join(f"{type(err).__name__}: {err}".split())
            return record_failure(cell, plan.output_dir, message, time.perf_counter() - started)
        atomic_write_json(folder / CELL_FILE, to_json(record))
        logger.info("Cell %s finished in %.1f s.", cell.label, time.perf_counter() - started)
    return record


def load_cell(folder: Path) -> CellRecord:
    return from_json(CellRecord, json.loads((Path(folder) / CELL_FILE).read_text()))


def load_failure(folder: Path) -> CellFailure:
    return from_json(CellFailure, json.loads((Path(folder) / ERROR_FILE).read_text()))
