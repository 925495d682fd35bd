"""``iddm benchmark``: IDDM and baselines on many identities, attacked by several FR systems (DESIGN.md §3).

For every identity with photos to train on and photos to hold out (:mod:`iddm.evaluate.dataset`), and
every method x privacy level, a *cell* (:mod:`iddm.evaluate.cells`) personalizes, generates avatars with
a fixed prompt set and seed, and attacks them against the held-out photos and a gallery of every other
identity's photos. A finished cell is never recomputed; a failed one records its error and is retried
by the next run.

After the cells, the stalker's attack (R1-T) is recomputed without the domain confound: the user's
real photos search a pool of the user's generations and *other identities' generations of the same
method and level*. Only where a cell has no such neighbour does R1-T keep the pool of other people's
real photos, labelled ``real photos`` in every output.

Outputs in ``--output_dir``: ``cells/``, ``results.csv`` (one row per cell), ``results.json``,
``results.md``, ``privacy_utility.png`` and a self-contained ``report.html``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from iddm.config import config_to_dict, field, load_yaml
from iddm.diffusion.loading import DEFAULT_MODEL, MICRO
from iddm.evaluate.attack_options import AttackerOptions
from iddm.evaluate.cell_purification import purify_cells
from iddm.evaluate.cells import (
    METHODS,
    PROBES_FILE,
    Cell,
    CellPlan,
    Method,
    cached_backends,
    embed_identities,
    execute_cell,
    load_cell,
    load_failure,
    load_probes,
    plan_cells,
    with_ssim_to_vanilla,
)
from iddm.evaluate.dataset import Identity, discover_dataset
from iddm.evaluate.harness import default_probe_prompts, knows_one_prompt
from iddm.evaluate.linkability import FaceSet, targeted_search
from iddm.evaluate.plot import privacy_utility_plot
from iddm.evaluate.purify import default_purifiers
from iddm.evaluate.render import aggregate, benchmark_html, benchmark_markdown, headline_backend
from iddm.evaluate.report import json_safe
from iddm.evaluate.results import CellFailure, CellRecord, csv_row, to_json
from iddm.evaluate.side_by_side import describe, side_by_side
from iddm.faces.mobilefacenet import use_model_path
from iddm.images import atomic_write_bytes, atomic_write_json, atomic_write_text, ensure_writable_dir, save_png

logger = logging.getLogger(__name__)

SETTINGS_FILE = "benchmark.json"
SIDE_BY_SIDE_FILE = "side_by_side.png"
RESERVED_OPTIONS = {"photos", "output_dir", "privacy", "defense", "perturbation_from", "overwrite"}
"""``iddm personalize`` options the benchmark sets per cell: not allowed in ``--personalize_config``."""


@dataclass
class BenchmarkConfig(AttackerOptions):
    dataset: Path | None = field(
        None, help="Folder with one sub-folder of photos per identity (or the Anti-DreamBooth layout).", required=True
    )
    output_dir: Path | None = field(
        None, help="Where cells/, results.*, privacy_utility.png and report.html go.", required=True
    )
    methods: list[Method] = field(
        METHODS, help="Methods to run; also 'iddm-unbounded' (IDDM with the unbounded identity loss, an ablation)."
    )
    levels: list[str] = field(["low", "medium", "high"], help="Privacy levels (presets or numbers in (0, 1]).")
    users: list[str] = field(
        [],
        help="Run only these users' cells (identity folder names); every identity stays in the galleries, so the "
        "attack is the full run's. Empty: every user.",
    )
    model: str = field(
        DEFAULT_MODEL,
        help="Base model to personalize: 'iddm:face-prior' (the default shipped offline prior, now "
        "'iddm:face-prior-128': 128 px, colour), 'iddm:face-prior-64' (the earlier 64-px prior), "
        "'iddm:micro' (the pixel "
        "backbone trained from scratch), a diffusers folder or a hub id.",
    )
    max_train_steps: int | None = field(
        None,
        help="Personalization steps per run. Empty: the base model's recommendation (face prior: see its "
        "iddm_prior.json; micro backbone: 1500, the fewest for meaningful linkability).",
        ge=1,
    )
    resolution: int | None = field(
        None, help="Training/generation resolution (default: 64 micro, model's own SD).", ge=16, le=4096
    )
    surrogates: list[str] = field(["sface", "facenet"], help="FR surrogates of the optimizer (white-box systems).")
    num_images: int = field(8, help="Images generated per cell.", ge=1, le=100_000)
    prompts: list[str] = field(
        [],
        help="Prompts added to the model's probe prompts (Stable Diffusion's 3, a face prior's own from its "
        "iddm_prior.json; iddm:face-prior-64 and iddm:micro use the instance prompt only).",
    )
    seeds: list[int] = field(
        [0],
        help="Personalization seeds: every cell runs once per seed. Several seeds separate a method's effect from "
        "run-to-run variation; the mean table averages each identity over its seeds first.",
        ge=0,
    )
    generation_seed: int = field(1000, help="Generation seed, shared by every cell (image i uses seed + i).", ge=0)
    num_inference_steps: int = field(25, help="DDIM steps for generation and validation grids.", ge=1, le=1000)
    guidance_scale: float | None = field(None, help="Classifier-free guidance (default: 7.5 for SD, 1 micro).", ge=0)
    clip_model: Path | None = field(None, help="Local folder of CLIP weights for the CLIP score (else null).")
    personalize_config: Path | None = field(
        None, help="YAML of further `iddm personalize` options for every run (e.g. round_steps, learning_rate)."
    )
    workers: int | None = field(
        None,
        help="Run up to N cells at once as Ray tasks, on a local Ray started for the run (pip install 'iddm[ray]'); "
        "default: one cell after the other in this process, without Ray.",
        ge=1,
    )
    ray_address: str | None = field(
        None, help="Run the cells on an existing Ray cluster (HOST:PORT, ray://HOST:PORT or auto) instead."
    )
    cpus_per_cell: int = field(
        1, help="With Ray: CPU cores each cell declares, and its torch threads (SD cells also take 1 GPU).", ge=1
    )

    def problems(self) -> list[str]:
        problems = [] if self.levels else ["--levels needs at least one privacy level"]
        if not self.seeds:
            problems.append("--seeds needs at least one seed")
        return problems + self.attacker_problems(self.model)

    @property
    def uses_ray(self) -> bool:
        return self.workers is not None or self.ray_address is not None


EMBEDDING_CACHE = "attacker_embeddings.npz"
"""The attacker's embeddings of the dataset, reused by a rerun (see :func:`embed_identities`)."""

RESULT_SETTINGS = (
    "dataset model max_train_steps resolution surrogates backends num_images prompts generation_seed "
    "num_inference_steps guidance_scale robustness clip_model"
).split()
"""What every cell's result depends on (methods, levels, seeds and users excluded: adding some later reuses finished
cells)."""


def _settings(config: BenchmarkConfig, extra: dict) -> dict:
    values = config_to_dict(config)
    values["dataset"] = str(Path(config.dataset).resolve())
    return json_safe({**{k: values[k] for k in RESULT_SETTINGS}, "personalize_options": extra})


def _check_settings(output_dir: Path, settings: dict) -> None:
    path = output_dir / SETTINGS_FILE
    if not path.is_file():
        return
    previous = json.loads(path.read_text())
    changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
    if changed and (output_dir / "cells").exists():
        raise ValueError(
            f"{output_dir} holds cells computed with other settings ({', '.join(changed)}); use another "
            "--output_dir, or delete its cells/ folder to start over."
        )


def cell_plan(config: BenchmarkConfig, extra: dict, output_dir: Path, torch_threads: int | None = None) -> CellPlan:
    """The :class:`CellPlan` shared by every cell of this benchmark."""
    one_prompt = knows_one_prompt(config.model, None)
    personalize = {
        "pretrained_model_name_or_path": config.model,
        "max_train_steps": config.max_train_steps,
        "resolution": config.resolution,
        "surrogates": config.surrogates,
        "min_photos": 1,
        "skip_bad_photos": True,
        "validation_steps": 0,
        "num_inference_steps": config.num_inference_steps,
        "resume_from_checkpoint": "latest",
        **extra,
    }
    return CellPlan(
        output_dir=output_dir,
        personalize=personalize,
        prompts=tuple(default_probe_prompts(config.model, None) + ([] if one_prompt else list(config.prompts))),
        backends=tuple(k.strip().lower() for k in config.backends),
        num_images=config.num_images,
        generation_seed=config.generation_seed,
        num_inference_steps=config.num_inference_steps,
        guidance_scale=config.guidance_scale,
        resolution=config.resolution,
        robustness=config.robustness,
        clip_model=config.clip_model,
        mobilefacenet=config.mobilefacenet,
        torch_threads=torch_threads,
    )


def run_cells_sequentially(
    cells: Sequence[Cell], identities: Sequence[Identity], faces: Mapping[str, FaceSet], plan: CellPlan
) -> list[CellRecord | CellFailure]:
    """Run ``cells`` one after the other in this process, with a progress bar."""
    from iddm.progress import progress_bar

    by_name = {i.name: i for i in identities}
    outcomes: list[CellRecord | CellFailure] = []
    failed = 0
    with progress_bar(total=len(cells), desc="benchmark cells", unit="cell") as bar:
        for cell in cells:
            bar.set_postfix_str(f"done {len(outcomes) - failed}, failed {failed}, running {cell.label}")
            outcome = execute_cell(cell, by_name[cell.identity], faces, plan)
            if isinstance(outcome, CellFailure):
                failed += 1
                logger.error("Cell %s failed: %s (log: %s).", cell.label, outcome.error, outcome.log)
            outcomes.append(outcome)
            bar.update(1)
        bar.set_postfix_str(f"done {len(outcomes) - failed}, failed {failed}")
    return outcomes


def stalker_pools(records: Sequence[CellRecord], output_dir: Path) -> list[CellRecord]:
    """The records with R1-T recomputed on pools of generations (other identities, same method, level and seed).

    A record with no other identity's cell of its method, level and seed keeps R1-T on real photos, and so does a
    record without its ``probes.npz`` (restored from an archive of records, ``benchmarks/archive_cells.py``), which
    is also left out of the others' pools.
    """
    folders = {id(r): Cell.of(r).folder(output_dir) for r in records}
    probes = {
        key: load_probes(folder / PROBES_FILE) for key, folder in folders.items() if (folder / PROBES_FILE).is_file()
    }
    groups: dict[tuple[str, str, int], list[CellRecord]] = {}
    for record in records:
        if id(record) in probes:
            groups.setdefault((record.method, record.level, record.seed), []).append(record)
    for group in groups.values():
        for record in group:
            neighbours = [r for r in group if r.identity != record.identity]
            if not neighbours:
                continue
            own_probes, own_reference = probes[id(record)]
            for m in record.backends.values():
                others = np.concatenate([probes[id(r)][0][m.recognizer] for r in neighbours])
                rate, chance = targeted_search(own_reference[m.recognizer], own_probes[m.recognizer], others)
                if rate is not None:
                    m.rank1_targeted, m.chance_rank1_targeted, m.rank1_targeted_pool = rate, chance, "generations"
    return list(records)


def write_results(
    outcomes: Sequence[CellRecord | CellFailure],
    config: BenchmarkConfig,
    identities: Sequence[Identity],
    settings: dict,
    output_dir: Path,
) -> None:
    """``results.json``, ``results.csv``, ``results.md``, ``privacy_utility.png``, ``side_by_side.png`` and
    ``report.html``."""
    records = [o for o in outcomes if isinstance(o, CellRecord)]
    failures = [o for o in outcomes if isinstance(o, CellFailure)]
    results = {
        "settings": settings,
        "identities": [i.summary() for i in identities],
        "cells": [to_json(r) for r in records],
        "failed_cells": [to_json(f) for f in failures],
    }
    atomic_write_json(output_dir / "results.json", json_safe(results))

    rows = [csv_row(o) for o in outcomes]
    columns = list(dict.fromkeys(c for row in rows for c in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({c: ("" if row.get(c) is None else row.get(c)) for c in columns} for row in rows)
    atomic_write_text(output_dir / "results.csv", buffer.getvalue())

    keys = [k.strip().lower() for k in config.backends]
    headline = headline_backend(rows, keys)
    notes = _notes(config, headline, records)
    atomic_write_text(output_dir / "results.md", benchmark_markdown(rows, records, failures, keys, notes))
    plot = privacy_utility_plot(aggregate(rows), headline)
    atomic_write_bytes(output_dir / "privacy_utility.png", plot)
    figure = side_by_side(records, output_dir)
    if figure is not None:
        save_png(output_dir / SIDE_BY_SIDE_FILE, figure)
    photos = {i.name: (i.train, i.reference) for i in identities}
    atomic_write_text(
        output_dir / "report.html", benchmark_html(records, failures, rows, keys, notes, plot, photos, output_dir)
    )


def _notes(config: BenchmarkConfig, headline: str, records: Sequence[CellRecord]) -> list[str]:
    pools = {m.rank1_targeted_pool for r in records for m in r.backends.values()} - {None}
    notes = [
        f"{config.max_train_steps or 'recommended'} personalization steps (seed{'s' if len(config.seeds) > 1 else ''} "
        f"{', '.join(map(str, config.seeds))}), {config.num_images} images per cell (generation seed "
        f"{config.generation_seed}); attacked by {', '.join(config.backends)}; optimizer surrogates "
        f"{', '.join(config.surrogates)}.",
        "Each FR column: R1-U (nearest gallery identity is the user) / rank-last (the user is the least similar "
        "identity: over-decoupling) / user z (the user's cosine as a z-score against every other identity) / ISM "
        "(mean cosine to the user's held-out photos) / match rate at the system's own threshold; (wb) = white-box "
        f"for that method, otherwise black-box. Headline transfer number: {headline} R1-U.",
        "R1-T (results.csv): the user's real photos search a pool of their generations and other identities' "
        "generations of the same method and level ('generations'); 'real photos' marks cells with no such "
        f"neighbour, where the pool holds other people's real photos (a domain confound). Here: {sorted(pools)}.",
        "face det. = 1 - FDFR of the generations; BRISQUE: lower = better; PSNR/SSIM: training photos X+δ vs X; "
        "SSIM→vanilla: generations vs the vanilla model's with the same seeds.",
        f"{SIDE_BY_SIDE_FILE}: {describe(records)}.",
    ]
    if config.model == MICRO and (config.max_train_steps or 1500) < 1000:
        notes.append(
            f"Micro backbone at {config.max_train_steps} steps: the vanilla model does not yet reproduce the "
            "identity, so linkability differences between methods are NOT meaningful; use ~1500 steps."
        )
    return notes


def prepare(config: BenchmarkConfig) -> tuple[Path, list[Identity], list[Cell], dict, dict]:
    """Check every input before any work: ``(output_dir, identities, cells, personalize extra, settings)``."""
    if config.uses_ray:
        from iddm.evaluate.distributed import check_address, require_ray

        if config.ray_address is not None:
            check_address(config.ray_address)  # before importing Ray, which takes seconds
        require_ray()
    use_model_path(config.mobilefacenet)  # checked before any work; Ray workers get it through the CellPlan
    extra = load_yaml(config.personalize_config) if config.personalize_config else {}
    if RESERVED_OPTIONS & set(extra):
        raise ValueError(
            f"--personalize_config may not set {sorted(RESERVED_OPTIONS & set(extra))}: the benchmark sets them."
        )
    identities = discover_dataset(config.dataset)
    cells = plan_cells(identities, config.methods, config.levels, config.seeds, config.users)
    settings = _settings(config, extra)
    output_dir = Path(config.output_dir)
    _check_settings(output_dir, settings)
    output_dir = ensure_writable_dir(output_dir)
    atomic_write_json(output_dir / SETTINGS_FILE, settings)
    if knows_one_prompt(config.model, None) and (config.prompts or config.clip_model):
        logger.warning("%s knows no prompt but the instance prompt: it generates from that one only.", config.model)
    return output_dir, identities, cells, extra, settings


def collect(cells: Sequence[Cell], output_dir: Path) -> list[CellRecord | CellFailure]:
    """The outcome of every planned cell on disk (a cell never started is left out)."""
    outcomes: list[CellRecord | CellFailure] = []
    for cell in cells:
        status = cell.status(output_dir)
        if status == "done":
            outcomes.append(with_ssim_to_vanilla(load_cell(cell.folder(output_dir)), output_dir))
        elif status == "failed":
            outcomes.append(load_failure(cell.folder(output_dir)))
    return outcomes


def with_kid_to_real(records: Sequence[CellRecord], identities: Sequence[Identity], output_dir: Path) -> list:
    """``records`` with ``utility.face.kid_to_real`` (and their vanilla's) filled in: the KID of each cell's
    generations to every dataset photo that no cell trains on, cropped as the runs cropped their photos. A record
    whose generations are not in ``output_dir`` (restored from an archive of records) is kept as it is."""
    from dataclasses import replace

    from iddm.evaluate.face_utility import kid_to_real, photos_of, real_face_features
    from iddm.images import load_photo
    from iddm.run_layout import RunManifest

    faced = [r for r in records if r.utility.face is not None and (output_dir / r.images_dir).is_dir()]
    if not faced:
        return list(records)
    crop = RunManifest.load(output_dir / faced[0].run_dir).crop or "aligned"
    paths = [path for identity in identities for path in identity.photos[identity.num_train :]]
    reference = real_face_features(photos_of(paths), faced[0].utility.resolution[0], crop)
    kids = {}
    for record in faced:
        images = [load_photo(p) for p in sorted((output_dir / record.images_dir).glob("image_*.png"))]
        kids[Cell.of(record)] = kid_to_real(images, reference)
    out = []
    for record in records:
        if Cell.of(record) not in kids:
            out.append(record)
            continue
        kid, notes = kids[Cell.of(record)]
        face = replace(record.utility.face, kid_to_real=kid, notes=record.utility.face.notes + notes)
        vanilla = kids.get(Cell.of(record).compared_with(output_dir))
        if face.vanilla is not None and vanilla is not None:
            face = replace(face, vanilla=replace(face.vanilla, kid_to_real=vanilla[0]))
        out.append(replace(record, utility=replace(record.utility, face=face)))
    return out


def run_benchmark(config: BenchmarkConfig) -> list[CellRecord | CellFailure]:
    """Run (or resume) every cell, then write the tables, the curve and the report.

    Returns:
        The outcome of every cell (R1-T on generation pools where possible).
    """
    output_dir, identities, cells, extra, settings = prepare(config)
    plan = cell_plan(config, extra, output_dir)
    pending = [c for c in cells if c.status(output_dir) != "done"]
    for cell in cells:
        if cell not in pending:
            logger.info("Skipping finished cell %s (%s exists).", cell.label, "cell.json")
    if pending:
        weights = [] if plan.mobilefacenet is None else [str(Path(plan.mobilefacenet).resolve())]
        faces = embed_identities(identities, cached_backends(plan.backends), output_dir / EMBEDDING_CACHE, weights)
        if config.uses_ray:
            from iddm.evaluate.distributed import run_cells_on_ray

            run_cells_on_ray(
                pending,
                identities,
                faces,
                plan,
                config.workers,
                config.ray_address,
                config.cpus_per_cell,
                gpu_cells=config.model != MICRO,
            )
        else:
            run_cells_sequentially(pending, identities, faces, plan)
    outcomes = collect(cells, output_dir)
    records = stalker_pools([o for o in outcomes if isinstance(o, CellRecord)], output_dir)
    records = with_kid_to_real(records, identities, output_dir)
    if config.purify:
        base = config.purify_model or config.model
        specs = config.purifiers if config.purifiers is not None else default_purifiers(base)
        steps = config.num_inference_steps
        records = purify_cells(records, identities, output_dir, config.backends, specs, base, None, steps)
    by_cell = {Cell.of(r): r for r in records}
    outcomes = [by_cell.get(Cell.of(o), o) for o in outcomes]
    write_results(outcomes, config, identities, settings, output_dir)
    return outcomes
