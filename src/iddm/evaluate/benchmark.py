"""``iddm benchmark``: IDDM and baselines on many identities, attacked by several FR systems (DESIGN.md §3).

For every identity with photos to train on and photos to hold out, and every method x privacy level
(a *cell*), the benchmark personalizes with :func:`iddm.schedule.personalize`, generates avatars
with a fixed prompt set and seed, and evaluates them with :func:`iddm.evaluate.harness.evaluate_images`
against the held-out photos and a gallery of every other identity's photos.

Dataset layouts (``--dataset ROOT``):

* **A folder per identity** (``ROOT/<id>/*.jpg``): photos sorted by file name; the *last* one is
  held out as the attacker's reference, the others are trained on. Identities with one photo are
  distractors only.
* **Anti-DreamBooth** (``ROOT/<id>/set_A|set_B|set_C``): train on ``set_A``, hold out ``set_B`` as the
  reference, and add ``set_C`` to the gallery as more photos of the user.

As a distractor, an identity contributes all its photos to the other identities' galleries.

Outputs in ``--output_dir``: ``cells/<id>/<method>-<level>/`` (``run/``, ``images/``, ``cell.json``),
``results.csv`` (one row per cell), ``results.json``, ``results.md``, ``privacy_utility.png`` and a
self-contained ``report.html``. A cell whose ``cell.json`` exists is not computed again.
"""

from __future__ import annotations

import csv
import html
import io
import json
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any

import numpy as np

from iddm.config import build_config, config_to_dict, field, load_yaml
from iddm.evaluate.harness import (
    DEFAULT_BACKENDS,
    DEFAULT_PROMPTS,
    LINK_HEADER,
    USER_LABEL,
    attacker_knowledge,
    evaluate_images,
    generate_probe_images,
    link_row,
    load_backends,
    thumbnail,
    white_box_keys,
)
from iddm.evaluate.linkability import FaceSet, embed_images
from iddm.evaluate.report import fmt, html_document, html_image, html_table, json_safe, markdown_table
from iddm.images import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    ensure_writable_dir,
    list_photos,
    load_photo,
    make_grid,
)
from iddm.run_layout import PRIVATE_DIR, TRAINING_PHOTOS_DIR, RunManifest

logger = logging.getLogger(__name__)

METHODS = ["vanilla", "iddm", "noise", "cloak", "aspl"]
"""``vanilla``: no defense (privacy off, one cell per identity). ``iddm``: alternating identity
decoupling. ``noise``: uniform ±ε (control). ``cloak``: one-shot FR cloak, then ordinary training.
``aspl``: an Anti-DreamBooth-style perturbation made by a ``defense='aspl'`` run, then ordinary
personalization on those frozen photos (``perturbation_from``)."""
CELL_FILE = "cell.json"
SETTINGS_FILE = "benchmark.json"


@dataclass
class BenchmarkConfig:
    dataset: Path = field(None, help="Folder with one sub-folder per identity (or the Anti-DreamBooth layout).")
    output_dir: Path = field(None, help="Where cells/, results.*, privacy_utility.png and report.html go.")
    methods: list[str] = field(METHODS, help=f"Methods to run, from {METHODS}.")
    levels: list[str] = field(["low", "medium", "high"], help="Privacy levels (presets or numbers in [0, 1]).")
    model: str | None = field(None, help="Base model to personalize (SD folder or hub id); empty: micro backbone.")
    max_train_steps: int = field(
        300, help="Personalization steps per run (micro backbone: ~1500 are needed for meaningful linkability)."
    )
    resolution: int | None = field(None, help="Training/generation resolution (default: 64 micro, model's own SD).")
    surrogates: list[str] = field(["sface", "facenet"], help="FR surrogates of the optimizer (white-box systems).")
    backends: list[str] = field(DEFAULT_BACKENDS, help="FR systems of the attacker.")
    num_images: int = field(8, help="Images generated per cell.")
    prompts: list[str] = field([], help="Prompts added to the 3 standard ones (ignored by the micro backbone).")
    seed: int = field(0, help="Personalization seed, shared by every cell.")
    generation_seed: int = field(1000, help="Generation seed, shared by every cell (image i uses seed + i).")
    num_inference_steps: int = field(25, help="DDIM steps for generation and validation grids.")
    guidance_scale: float | None = field(None, help="Classifier-free guidance (default: 7.5 for SD, 1 micro).")
    robustness: bool = field(False, help="Also attack after JPEG 90/75/50, resize x0.5 and blur.")
    clip_model: Path | None = field(None, help="Local folder of CLIP weights for the CLIP score (else null).")
    personalize_config: Path | None = field(
        None, help="YAML of further `iddm personalize` options for every run (e.g. round_steps, learning_rate)."
    )


# ----------------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------------


@dataclass
class Identity:
    """One identity of the dataset and the role of each of its photos.

    Attributes:
        name: folder name.
        photos: every photo, in order ``train + reference + extra``.
        num_train, num_reference: how many of ``photos`` are trained on / held out as the reference;
            the rest are extra gallery photos of the user. ``num_train == 0``: a distractor only.
    """

    name: str
    photos: list[Path]
    num_train: int = 0
    num_reference: int = 0
    faces: FaceSet | None = dataclass_field(default=None, repr=False)

    @property
    def is_user(self) -> bool:
        return self.num_train > 0 and self.num_reference > 0

    @property
    def train(self) -> list[Path]:
        return self.photos[: self.num_train]

    @property
    def reference(self) -> list[Path]:
        return self.photos[self.num_train : self.num_train + self.num_reference]


def _photos_in(folder: Path) -> list[Path]:
    return list_photos(folder, min_photos=0) if folder.is_dir() else []


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
            identity = (
                Identity(folder.name, photos, len(photos) - 1, 1)
                if len(photos) >= 2
                else Identity(folder.name, photos)
            )
        if not identity.photos:
            logger.warning("Skipping %s: no photos.", folder)
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


def subset(faces: FaceSet, indices: Sequence[int]) -> FaceSet:
    """The images ``indices`` of ``faces`` (embeddings of the detected ones, in order)."""
    idx = np.asarray(indices, dtype=int)
    row_of = np.cumsum(faces.detected) - 1
    rows = [int(row_of[i]) for i in idx if faces.detected[i]]
    return FaceSet(
        detected=faces.detected[idx],
        embeddings={name: emb[rows] for name, emb in faces.embeddings.items()},
        labels=None if faces.labels is None else faces.labels[idx],
    )


# ----------------------------------------------------------------------------------------------------
# Cells
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    identity: str
    method: str
    level: str

    @property
    def name(self) -> str:
        return f"{self.method}-{self.level}"

    def folder(self, output_dir: Path) -> Path:
        return output_dir / "cells" / self.identity / self.name


def plan_cells(identities: Sequence[Identity], methods: Sequence[str], levels: Sequence[str]) -> list[Cell]:
    """Every (identity, method, level) to run: vanilla once per identity (level ``off``), the others per level."""
    from iddm.decouple.privacy import parse_level

    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"Unknown --methods {unknown}; choose from {METHODS}.")
    for level in levels:
        if parse_level(level)[0] == 0:
            raise ValueError(f"--levels {level!r} is privacy off: that is the 'vanilla' method.")
    cells = []
    for identity in identities:
        if not identity.is_user:
            continue
        for method in dict.fromkeys(methods):
            cells += (
                [Cell(identity.name, method, "off")]
                if method == "vanilla"
                else [Cell(identity.name, method, level) for level in dict.fromkeys(levels)]
            )
    return cells


def _settings(config: BenchmarkConfig, extra: dict) -> dict:
    """What every cell depends on (methods and levels excluded: adding some later reuses finished cells)."""
    keys = (
        "dataset model max_train_steps resolution surrogates backends num_images prompts seed generation_seed "
        "num_inference_steps guidance_scale robustness clip_model"
    ).split()
    values = config_to_dict(config)
    values["dataset"] = str(Path(config.dataset).resolve())
    return {**{k: values[k] for k in keys}, "personalize_options": extra}


def _personalize_values(config: BenchmarkConfig, extra: dict, photos: Path, output_dir: Path) -> dict:
    values = {
        "photos": photos,
        "output_dir": output_dir,
        "pretrained_model_name_or_path": config.model,
        "max_train_steps": config.max_train_steps,
        "resolution": config.resolution,
        "surrogates": config.surrogates,
        "seed": config.seed,
        "min_photos": 1,
        "skip_bad_photos": True,
        "validation_steps": 0,
        "num_inference_steps": config.num_inference_steps,
        "resume_from_checkpoint": "latest",
    }
    return {**values, **extra}


def _personalize(values: dict) -> float:
    """Run :func:`iddm.schedule.personalize` unless the folder holds a finished run; returns its wall seconds."""
    from iddm.run_layout import LOG_FILE, PRIVATE_DIR, is_run_dir
    from iddm.schedule import PersonalizeConfig, personalize

    output_dir = Path(values["output_dir"])
    if is_run_dir(output_dir):
        logger.info("Reusing the finished run %s.", output_dir)
        log = output_dir / PRIVATE_DIR / LOG_FILE
        return float(json.loads(log.read_text()).get("wall_seconds", 0.0)) if log.is_file() else 0.0
    started = time.perf_counter()
    personalize(build_config(PersonalizeConfig, values))
    return time.perf_counter() - started


def train_cell(cell: Cell, config: BenchmarkConfig, extra: dict, photos: Path, folder: Path) -> tuple[Path, float]:
    """Personalize for one cell; returns the run folder to generate from and the training wall seconds.

    A run reused from an interrupted invocation reports the training-loop seconds of its log.
    """
    run_dir = folder / "run"
    seconds = 0.0
    if cell.method == "vanilla":
        seconds += _personalize({**_personalize_values(config, extra, photos, run_dir), "privacy": "off"})
    elif cell.method == "aspl":
        perturbation = folder / "aspl_perturbation"
        seconds += _personalize(
            {**_personalize_values(config, extra, photos, perturbation), "privacy": cell.level, "defense": "aspl"}
        )
        seconds += _personalize(
            {
                **_personalize_values(config, extra, photos, run_dir),
                "privacy": "off",
                "perturbation_from": perturbation,
            }
        )
    else:
        seconds += _personalize(
            {**_personalize_values(config, extra, photos, run_dir), "privacy": cell.level, "defense": cell.method}
        )
    return run_dir, seconds


def _load_dir_images(folder: Path) -> list[np.ndarray] | None:
    paths = sorted(folder.glob("image_*.png")) if folder.is_dir() else []
    return [load_photo(p) for p in paths] or None


def run_benchmark(config: BenchmarkConfig) -> dict:
    """Run (or resume) every cell, then write the tables, the curve and the report. Returns ``results.json``."""
    from tqdm.auto import tqdm

    for name in ("dataset", "output_dir"):
        if getattr(config, name) is None:
            raise ValueError(f"--{name} is required.")
    output_dir = ensure_writable_dir(config.output_dir)
    extra = load_yaml(config.personalize_config) if config.personalize_config else {}
    reserved = {"photos", "output_dir", "privacy", "defense", "perturbation_from", "overwrite"}
    if reserved & set(extra):
        raise ValueError(f"--personalize_config may not set {sorted(reserved & set(extra))}: the benchmark sets them.")
    identities = discover_dataset(config.dataset)
    cells = plan_cells(identities, config.methods, config.levels)
    settings = json_safe(_settings(config, extra))
    settings_path = output_dir / SETTINGS_FILE
    if settings_path.is_file():
        previous = json.loads(settings_path.read_text())
        changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
        if changed and (output_dir / "cells").exists():
            raise ValueError(
                f"{output_dir} holds cells computed with other settings ({', '.join(changed)}); use another "
                "--output_dir, or delete its cells/ folder to start over."
            )
    atomic_write_json(settings_path, settings)
    is_micro = config.model is None
    prompts = DEFAULT_PROMPTS[:1] if is_micro else [*DEFAULT_PROMPTS, *config.prompts]
    if is_micro and (config.prompts or config.clip_model):
        logger.warning("The micro backbone is not text-conditioned: it generates from the instance prompt only.")

    by_name = {i.name: i for i in identities}
    recognizers = None
    progress = tqdm(cells, desc="benchmark cells", unit="cell")
    for cell in progress:
        progress.set_postfix_str(f"{cell.identity}/{cell.name}", refresh=False)
        folder = cell.folder(output_dir)
        if (folder / CELL_FILE).is_file():
            logger.info("Skipping finished cell %s/%s (%s exists).", cell.identity, cell.name, CELL_FILE)
            continue
        if recognizers is None:  # only when some cell needs computing
            recognizers = load_backends(config.backends)
            _embed_identities(identities, recognizers)
        identity = by_name[cell.identity]
        try:
            record = _run_cell(cell, identity, identities, config, extra, prompts, recognizers, output_dir)
        except Exception as err:
            err.add_note(f"(in benchmark cell {cell.identity}/{cell.name}; finished cells are kept)")
            raise
        atomic_write_json(folder / CELL_FILE, json_safe(record))
    progress.close()

    records = [json.loads((c.folder(output_dir) / CELL_FILE).read_text()) for c in cells]
    results = {"settings": settings, "identities": _identity_summary(identities), "cells": records}
    atomic_write_json(output_dir / "results.json", json_safe(results))
    write_results(records, config, identities, output_dir)
    return results


def _embed_identities(identities: Sequence[Identity], recognizers: Mapping) -> None:
    for identity in identities:
        if identity.faces is None:
            identity.faces = embed_images([load_photo(p) for p in identity.photos], list(recognizers.values()))


def _identity_summary(identities: Sequence[Identity]) -> list[dict]:
    return [
        {
            "name": i.name,
            "role": "user and distractor" if i.is_user else "distractor",
            "train": [p.name for p in i.train],
            "reference": [p.name for p in i.reference],
            "extra_gallery": [p.name for p in i.photos[i.num_train + i.num_reference :]],
        }
        for i in identities
    ]


def _run_cell(
    cell: Cell,
    identity: Identity,
    identities: Sequence[Identity],
    config: BenchmarkConfig,
    extra: dict,
    prompts: list[str],
    recognizers: Mapping,
    output_dir: Path,
) -> dict:
    folder = cell.folder(output_dir)
    photos_dir = output_dir / "data" / identity.name / "train"
    photos_dir.mkdir(parents=True, exist_ok=True)
    for path in identity.train:
        if not (photos_dir / path.name).is_file():
            shutil.copy2(path, photos_dir / path.name)

    run_dir, train_seconds = train_cell(cell, config, extra, photos_dir, folder)
    trained = time.perf_counter()
    from iddm.diffusion.generate import generation_source

    model, lora = generation_source(run_dir)
    images = generate_probe_images(
        model,
        folder / "images",
        prompts,
        config.num_images,
        config.generation_seed,
        config.num_inference_steps,
        config.guidance_scale,
        lora,
        config.resolution,
    )
    generated = time.perf_counter()

    faces = identity.faces
    n_train, n_ref = identity.num_train, identity.num_reference
    reference = subset(faces, range(n_train, n_train + n_ref))
    extra_user = (
        subset(faces, range(n_train + n_ref, len(identity.photos))) if len(identity.photos) > n_train + n_ref else None
    )
    distractors = {other.name: other.faces for other in identities if other.name != identity.name}
    reference, gallery = attacker_knowledge(reference, distractors, extra_user)
    vanilla = (
        None
        if cell.method == "vanilla"
        else _load_dir_images(Cell(cell.identity, "vanilla", "off").folder(output_dir) / "images")
    )
    metrics = evaluate_images(
        images,
        reference,
        gallery,
        recognizers,
        white_box_keys(run_dir),
        config.robustness,
        run_dir,
        prompts,
        config.clip_model,
        vanilla,
    )
    finished = time.perf_counter()
    run = RunManifest.load(run_dir)
    return {
        "identity": cell.identity,
        "method": cell.method,
        "level": cell.level,
        "defense": run.model.defense if cell.method != "aspl" else "aspl",
        "white_box": sorted(white_box_keys(run_dir) or []),
        "run_dir": str(run_dir.relative_to(output_dir)),
        "images_dir": str((folder / "images").relative_to(output_dir)),
        "prompts": prompts,
        "wall_s": {
            "personalize": train_seconds,
            "generate": generated - trained,
            "evaluate": finished - generated,
        },
        **metrics,
    }


# ----------------------------------------------------------------------------------------------------
# Tables, curve, report
# ----------------------------------------------------------------------------------------------------


def flat_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """One ``results.csv`` row of a cell record (column names in ``docs/evaluation.md``)."""
    utility = record["utility"]
    pert = utility.get("perturbation") or {}
    row: dict[str, Any] = {
        "identity": record["identity"],
        "method": record["method"],
        "level": record["level"],
        "defense": record["defense"],
        "white_box": " ".join(record["white_box"]),
        "num_images": utility["num_images"],
        "face_detection_rate": utility["face_detection_rate"],
        "fdfr": utility["fdfr"],
        "brisque_mean": utility["brisque_mean"],
        "psnr_db": pert.get("psnr_db"),
        "ssim": pert.get("ssim"),
        "linf_255": pert.get("linf_255"),
        "ssim_to_vanilla": utility.get("ssim_to_vanilla"),
        "clip_score": utility.get("clip_score"),
        "wall_s": sum(record["wall_s"].values()),
    }
    for key, m in record["backends"].items():
        far = m.get("match_at_far") or {}
        row.update(
            {
                f"{key}_role": m["role"],
                f"{key}_ism": m.get("ism"),
                f"{key}_r1u": m.get("rank1"),
                f"{key}_r1u_chance": m.get("chance_rank1"),
                f"{key}_r1t": m.get("rank1_targeted"),
                f"{key}_r1t_chance": m.get("chance_rank1_targeted"),
                f"{key}_match_rate": m.get("match_rate"),
                f"{key}_threshold": m.get("threshold"),
            }
        )
        for name, label in (("0.01", "1e-2"), ("0.001", "1e-3")):
            entry = far.get(name) or {}
            row[f"{key}_match_far{label}"] = entry.get("match_rate")
            row[f"{key}_threshold_far{label}"] = entry.get("threshold")
    for condition, by_key in (record.get("robustness") or {}).items():
        for key, m in by_key.items():
            row[f"{key}_r1u_{condition}"] = m.get("rank1")
            row[f"{key}_ism_{condition}"] = m.get("ism")
            row[f"{key}_match_rate_{condition}"] = m.get("match_rate")
    return row


def _mean(values: Sequence[Any]) -> float | None:
    numbers = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v]
    return float(np.mean(numbers)) if numbers else None


def aggregate(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean of every numeric column over identities, per (method, level), in first-seen order."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["level"]), []).append(row)
    means = []
    for (method, level), group in groups.items():
        mean: dict[str, Any] = {"method": method, "level": level, "identities": len(group)}
        for column in group[0]:
            if column.endswith("_role"):
                roles = {r[column] for r in group}
                mean[column] = roles.pop() if len(roles) == 1 else "mixed"
            elif column not in ("identity", "method", "level", "defense", "white_box"):
                mean[column] = _mean([r.get(column) for r in group])
        means.append(mean)
    return means


def headline_backend(rows: Sequence[Mapping[str, Any]], backends: Sequence[str]) -> str:
    """The linkability number the curve shows: dlib if attacked with, else a system black-box in every cell."""
    keys = [k.strip().lower() for k in backends]
    if "dlib" in keys:
        return "dlib"
    for key in keys:
        if all(r.get(f"{key}_role") == "black-box" for r in rows):
            return key
    return keys[0]


def _table(rows: Sequence[Mapping[str, Any]], keys: Sequence[str], with_identity: bool) -> tuple[list, list]:
    header = (["identity"] if with_identity else []) + ["method", "level"] + ([] if with_identity else ["n"])
    header += [f"{k} R1-U / ISM / match" for k in keys]
    header += ["R1-U chance", "face det.", "BRISQUE", "PSNR dB", "SSIM", "SSIM→vanilla", "wall s"]
    body = []
    for row in rows:
        cells = ([row["identity"]] if with_identity else []) + [row["method"], row["level"]]
        cells += [] if with_identity else [str(row["identities"])]
        for key in keys:
            mark = " (wb)" if row.get(f"{key}_role") == "white-box" else ""
            cells.append(
                f"{fmt(row.get(f'{key}_r1u'))} / {fmt(row.get(f'{key}_ism'), 3)} / "
                f"{fmt(row.get(f'{key}_match_rate'))}{mark}"
            )
        chance = _mean([row.get(f"{k}_r1u_chance") for k in keys])
        cells += [
            fmt(chance),
            fmt(row.get("face_detection_rate")),
            fmt(row.get("brisque_mean"), 1),
            fmt(row.get("psnr_db"), 1),
            fmt(row.get("ssim"), 3),
            fmt(row.get("ssim_to_vanilla"), 3),
            fmt(row.get("wall_s"), 0),
        ]
        body.append(cells)
    return header, body


def _notes(config: BenchmarkConfig, headline: str) -> list[str]:
    notes = [
        f"{config.max_train_steps} personalization steps, {config.num_images} images per cell (generation seed "
        f"{config.generation_seed}); attacked by {', '.join(config.backends)}; optimizer surrogates "
        f"{', '.join(config.surrogates)}.",
        "Each FR column: R1-U (nearest gallery identity is the user) / ISM (mean cosine to the user's held-out "
        "photos) / match rate at the system's own threshold; (wb) = white-box for that method (a surrogate of the "
        f"optimizer), otherwise black-box. Lower = more private. Headline transfer number: {headline} R1-U.",
        "face det. = 1 - FDFR of the generations; BRISQUE: lower = better; PSNR/SSIM: training photos X+δ vs X; "
        "SSIM→vanilla: generations vs the vanilla model's with the same seeds.",
    ]
    if config.model is None and config.max_train_steps < 1000:
        notes.append(
            f"Micro backbone at {config.max_train_steps} steps: the vanilla model does not yet reproduce the "
            "identity, so linkability differences between methods are NOT meaningful; use ~1500 steps."
        )
    return notes


def write_results(
    records: Sequence[Mapping[str, Any]], config: BenchmarkConfig, identities: Sequence[Identity], output_dir: Path
) -> None:
    """``results.csv``, ``results.md``, ``privacy_utility.png`` and ``report.html`` from the cell records."""
    rows = [flat_row(r) for r in records]
    columns = list(dict.fromkeys(c for row in rows for c in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({c: ("" if row.get(c) is None else row.get(c)) for c in columns} for row in rows)
    atomic_write_text(output_dir / "results.csv", buffer.getvalue())

    keys = [k.strip().lower() for k in config.backends]
    headline = headline_backend(rows, keys)
    means = aggregate(rows)
    notes = _notes(config, headline)
    md = ["# iddm benchmark", ""]
    md += ["## Mean over identities", "", markdown_table(*_table(means, keys, with_identity=False))]
    md += ["## Per identity", "", markdown_table(*_table(rows, keys, with_identity=True))]
    md += [f"- {note}" for note in notes]
    atomic_write_text(output_dir / "results.md", "\n".join(md) + "\n")

    plot = privacy_utility_plot(means, headline)
    atomic_write_bytes(output_dir / "privacy_utility.png", plot)
    atomic_write_text(
        output_dir / "report.html", report_html(records, rows, means, keys, notes, plot, identities, output_dir)
    )


def privacy_utility_plot(means: Sequence[Mapping[str, Any]], headline: str) -> bytes:
    """PNG bytes: linkability (``headline`` R1-U) vs face detection rate and vs BRISQUE, one line per method."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.2), dpi=100)
    axes = figure.subplots(1, 2)
    utilities = [
        ("face_detection_rate", "face detection rate of generations (higher = better)"),
        ("brisque_mean", "BRISQUE of generations (lower = better)"),
    ]
    methods = list(dict.fromkeys(m["method"] for m in means))
    chance = _mean([m.get(f"{headline}_r1u_chance") for m in means])
    for ax, (column, label) in zip(axes, utilities):
        plotted = False
        for method in methods:
            points = [m for m in means if m["method"] == method]
            x = [np.nan if p.get(column) is None else p[column] for p in points]
            y = [np.nan if p.get(f"{headline}_r1u") is None else p[f"{headline}_r1u"] for p in points]
            if method == "vanilla":
                ax.plot(x, y, "k*", markersize=14, label="vanilla (no defense)")
            else:
                ax.plot(x, y, "o-", label=method)
                for xi, yi, p in zip(x, y, points):
                    if np.isfinite(xi) and np.isfinite(yi):
                        ax.annotate(p["level"], (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
            plotted |= bool((np.isfinite(np.array(x, dtype=float)) & np.isfinite(np.array(y, dtype=float))).any())
        if chance is not None:
            ax.axhline(chance, color="gray", linestyle="--", linewidth=1, label="chance")
        if not plotted:
            if all(m.get(f"{headline}_r1u") is None for m in means):
                reason = "R1-U undefined: no face detected in any generation"
            else:
                reason = "BRISQUE undefined: images below 64 px"
            ax.text(
                0.5,
                0.5,
                f"nothing to plot\n({reason})",
                ha="center",
                va="center",
                transform=ax.transAxes,
                color="gray",
            )
        ax.set_xlabel(label)
        ax.set_ylabel(f"{headline} R1-U (lower = more private)")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=max(1, len(labels)), fontsize=8, frameon=False)
    figure.suptitle("privacy-utility (mean over identities; one point per privacy level)")
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _png_array(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def _image_file(path: Path) -> np.ndarray | None:
    return load_photo(path) if path.is_file() else None


def _figure_or_note(image: np.ndarray | None, caption: str, missing: str) -> str:
    if image is None:
        return f'<span class="note">{html.escape(missing)}</span>'
    return html_image(image, caption, min_width=192, max_side=640)


def report_html(
    records: Sequence[Mapping[str, Any]],
    rows: Sequence[Mapping[str, Any]],
    means: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
    notes: Sequence[str],
    plot: bytes,
    identities: Sequence[Identity],
    output_dir: Path,
) -> str:
    """A single self-contained HTML page: curve, tables and, per identity, the photos and every cell's images."""
    body = ["<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>"]
    body.append(html_image(_png_array(plot), "privacy-utility curve", min_width=1000, max_side=1100))
    body += ["<h2>Mean over identities</h2>", html_table(*_table(means, keys, with_identity=False))]
    body += ["<h2>Per identity</h2>", html_table(*_table(rows, keys, with_identity=True))]
    by_identity: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        by_identity.setdefault(record["identity"], []).append(record)
    known = {i.name: i for i in identities}
    for name, cell_records in by_identity.items():
        identity = known[name]
        body.append(f"<h2>{html.escape(name)}</h2>")
        photos = [thumbnail(load_photo(p)) for p in identity.train[:8]]
        body.append(html_image(make_grid(photos, columns=8), f"training photos ({identity.num_train})"))
        held = [thumbnail(load_photo(p)) for p in identity.reference[:8]]
        body.append(html_image(make_grid(held, columns=8), "held-out reference (attacker's)"))
        first_run = output_dir / cell_records[0]["run_dir"]
        crops = _image_file(first_run / PRIVATE_DIR / TRAINING_PHOTOS_DIR / "clean_grid.png")
        if crops is not None:
            body.append(html_image(crops, "clean training crops"))
        body.append("<h3>Per method and level: training photos X+δ and generations</h3>")
        table = [
            "<table><thead><tr><th>cell</th><th>training photos X+δ</th><th>generations</th>"
            "<th>linkability</th></tr></thead><tbody>"
        ]
        for record in cell_records:
            run_dir = output_dir / record["run_dir"]
            decoupled = _image_file(run_dir / PRIVATE_DIR / TRAINING_PHOTOS_DIR / "decoupled_grid.png")
            generations = _image_file(output_dir / record["images_dir"] / "grid.png")
            link = "<br>".join(
                html.escape(f"{k} ({m['role']}): R1-U {fmt(m.get('rank1'))}, ISM {fmt(m.get('ism'), 3)}")
                for k, m in record["backends"].items()
            )
            table.append(
                f"<tr><td>{html.escape(record['method'])}-{html.escape(record['level'])}</td>"
                f"<td>{_figure_or_note(decoupled, 'X+δ', 'clean photos (no perturbation)')}</td>"
                f"<td>{_figure_or_note(generations, 'generations', 'missing')}</td><td>{link}</td></tr>"
            )
        body.append("".join(table) + "</tbody></table>")
        body.append("<h3>Linkability per cell</h3>")
        body.append(
            html_table(
                ["cell", *LINK_HEADER],
                [[f"{r['method']}-{r['level']}", *link_row(k, r["backends"][k])] for r in cell_records for k in keys],
            )
        )
    return html_document("iddm benchmark", "\n".join(body))
