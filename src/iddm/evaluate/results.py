"""Typed results of ``iddm evaluate`` and ``iddm benchmark``, and their one JSON and CSV serialization.

Every metric travels as a dataclass from where it is computed to where it is rendered; JSON
(``metrics.json``, ``cell.json``, ``results.json``) is written by :func:`to_json` and read back by
:func:`from_json`, and the flat ``results.csv`` row of a cell is made by :func:`csv_row` only. An
undefined value (a rate over zero detected faces) is ``None`` in every format (``null`` in JSON, an
empty CSV field), never 0. ``docs/evaluation.md`` documents every key and column.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar, get_args, get_origin

from iddm.evaluate.report import json_safe

T = TypeVar("T")

Role = Literal["white-box", "black-box", "unknown"]
TargetedPool = Literal["generations", "real photos"]
"""What the stalker's pool (R1-T) mixes the user's generations with: other identities' generations of the
same method and level (benchmark), or other identities' real gallery photos (no other cells to draw from)."""
Attack = Literal["rank1", "rank_last", "user_z"]
SIGNIFICANCE_SE = 2.0
"""An attack beats chance when it exceeds chance by more than this many standard errors."""


@dataclass
class FarMatch:
    """Verification at a false accept rate calibrated on the gallery's impostor comparisons."""

    threshold: float
    match_rate: float | None
    reliable: bool


@dataclass
class BackendLinkability:
    """Every linkability metric of one FR system for one set of generated images (``backends.<key>``).

    Rates are over the detected probes (``num_faces``) and ``None`` when there is none.
    ``flags`` names the attacks that beat chance by more than :data:`SIGNIFICANCE_SE` standard errors:
    ``rank1`` and ``user_z`` above chance mean linkable, ``rank_last`` and a negative ``user_z`` mean
    over-decoupled (the user stands out as the *least* similar identity, which links too).
    """

    recognizer: str
    role: Role
    white_box: bool | None
    num_probes: int
    num_faces: int
    fdfr: float | None
    threshold: float
    num_identities: int
    ism: float | None = None
    impostor_mean: float | None = None
    match_rate: float | None = None
    rank1: float | None = None
    chance_rank1: float | None = None
    rank_last: float | None = None
    rank_standard_error: float | None = None
    mean_user_rank: float | None = None
    chance_mean_user_rank: float | None = None
    user_z: float | None = None
    user_z_standard_error: float | None = None
    rank1_targeted: float | None = None
    chance_rank1_targeted: float | None = None
    rank1_targeted_pool: TargetedPool | None = None
    match_at_far: dict[str, FarMatch] = field(default_factory=dict)
    flags: list[Attack] = field(default_factory=list)

    @property
    def over_decoupled(self) -> bool:
        return "rank_last" in self.flags or ("user_z" in self.flags and (self.user_z or 0) < 0)

    @property
    def linkable(self) -> bool:
        return "rank1" in self.flags or ("user_z" in self.flags and (self.user_z or 0) > 0)


@dataclass
class PerturbationQuality:
    """Imperceptibility of the run's training perturbation: ``private/decoupled_photos`` vs the clean crops."""

    psnr_db: float | None = None
    ssim: float | None = None
    linf_255: int | None = None
    num_photos: int = 0
    note: str | None = None


@dataclass
class FaceUtility:
    """Whether the avatars stay good faces of one consistent person (docs/evaluation.md, ``utility.face``).

    ``serfiq``: mean SER-FIQ (SFace with dropout; higher is better). ``consistency``: mean pairwise SFace cosine
    among the avatars. ``attributes_photos``: the user's photos' majority gender, age band and ethnicity (the
    UTKFace attribute model); ``attribute_agreement``: per attribute, the fraction of avatars that share it.
    ``colour_photos`` / ``colour_avatars``: the fraction in colour. ``shape_distance``: the avatars' mean
    landmark-shape distance to the mean real face (1.0 = a typical real face). ``landmark_displacement``:
    decoupled vs clean training crops, px per 64 px. ``frechet_to_vanilla`` / ``kid_to_vanilla``: TAEF2-feature
    distances to the vanilla model's generations (``None`` when too few). ``kid_to_real``: TAEF2-feature KID to
    real faces of the benchmark's dataset (painterly or broken avatars move it where SER-FIQ does not).
    ``vanilla``: the same measures of the vanilla generations, to read this one relative to them. Every undefined
    value is ``None``, never 0.
    """

    num_faces: int
    serfiq: float | None = None
    consistency: float | None = None
    attributes_photos: dict[str, str] = field(default_factory=dict)
    attribute_agreement: dict[str, float] = field(default_factory=dict)
    colour_photos: float | None = None
    colour_avatars: float | None = None
    shape_distance: float | None = None
    landmark_displacement: float | None = None
    landmark_pairs: int = 0
    frechet_to_vanilla: float | None = None
    kid_to_vanilla: float | None = None
    kid_to_real: float | None = None
    vanilla: FaceUtility | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def agreement_mean(self) -> float | None:
        values = list(self.attribute_agreement.values())
        return sum(values) / len(values) if values else None

    def relative(self) -> dict[str, float | None]:
        """This cell's SER-FIQ, consistency, attribute agreement, colour, shape distance and KID to real faces over
        vanilla's."""
        base = self.vanilla
        pairs = {
            "serfiq": (self.serfiq, base and base.serfiq),
            "consistency": (self.consistency, base and base.consistency),
            "attribute_agreement": (self.agreement_mean, base and base.agreement_mean),
            "colour": (self.colour_avatars, base and base.colour_avatars),
            "shape_distance": (self.shape_distance, base and base.shape_distance),
            "kid_to_real": (self.kid_to_real, base and base.kid_to_real),
        }
        return {k: (a / b if a is not None and b else None) for k, (a, b) in pairs.items()}


@dataclass
class Utility:
    """What the defense costs: face detection, quality, imperceptibility, prompt fidelity, change vs vanilla."""

    num_images: int
    resolution: list[int]
    fdfr: float | None
    face_detection_rate: float | None
    undetected_images: list[str]
    brisque_mean: float | None
    brisque_note: str | None
    perturbation: PerturbationQuality
    clip_score: float | None
    clip_note: str | None
    ssim_to_vanilla: float | None
    ssim_to_vanilla_note: str | None
    face: FaceUtility | None = None


@dataclass
class PurifierCost:
    """What a purifier costs in image quality: mean PSNR (dB, capped at 100) and SSIM of purified vs unpurified."""

    psnr_db: float | None = None
    ssim: float | None = None


@dataclass
class BestPurifier:
    """The purifier that links best for one FR system (``none``: no purifier beat the plain attack), its
    metrics and its cost (``None`` for ``none``)."""

    purifier: str
    rank1: float | None = None
    chance_rank1: float | None = None
    match_rate: float | None = None
    user_z: float | None = None
    psnr_db: float | None = None
    ssim: float | None = None


@dataclass
class Purification:
    """The purifying attacker (:mod:`iddm.evaluate.purify`): metrics after each purifier, each purifier's cost,
    and per FR system the purifier that links best (an oracle choice over the sweep: an upper bound)."""

    linkability: dict[str, dict[str, BackendLinkability]]
    cost: dict[str, PurifierCost]
    best: dict[str, BestPurifier]


@dataclass
class Evaluation:
    """The attack on one set of generated images: per FR system, utility, and robustness per degradation."""

    backends: dict[str, BackendLinkability]
    utility: Utility
    robustness: dict[str, dict[str, BackendLinkability]] | None = None
    purification: Purification | None = None


@dataclass
class PhotoSetSummary:
    """The attacker's photos: where from, how many, how many faces, and what was skipped."""

    folder: str
    num_photos: int
    num_faces: int
    identities: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


@dataclass
class RunSummary:
    """What the evaluation knows about the run behind the images (from its ``iddm_run.json``)."""

    dir: str
    defense: str
    privacy: str | None
    surrogates: list[str]
    steps: int
    backbone: str


@dataclass
class EvaluateReport:
    """``metrics.json`` of ``iddm evaluate``."""

    images: str
    num_images: int
    reference: PhotoSetSummary
    gallery: PhotoSetSummary
    run: RunSummary | None
    prompts: list[str] | None
    backends: dict[str, BackendLinkability]
    utility: Utility
    robustness: dict[str, dict[str, BackendLinkability]] | None
    warnings: list[str] = field(default_factory=list)
    purification: Purification | None = None

    def privacy_report(self) -> dict[str, Any]:
        """The dict :func:`iddm.schedule.model_card.update_privacy_report` publishes (no paths, no photos)."""
        keep = ("role", "rank1", "chance_rank1", "rank_last", "mean_user_rank", "user_z", "match_rate", "ism")
        return json_safe(
            {
                "num_images": self.num_images,
                "num_identities": len(self.gallery.identities),
                "backends": {
                    key: {**{k: getattr(m, k) for k in keep}, "recognizer": m.recognizer, "flags": list(m.flags)}
                    for key, m in self.backends.items()
                },
            }
        )


@dataclass
class WallSeconds:
    personalize: float = 0.0
    generate: float = 0.0
    evaluate: float = 0.0

    @property
    def total(self) -> float:
        return self.personalize + self.generate + self.evaluate


@dataclass
class CellRecord:
    """``cell.json``: one finished benchmark cell (identity x method x level x personalization seed)."""

    identity: str
    method: str
    level: str
    defense: str
    white_box: list[str]
    run_dir: str
    images_dir: str
    prompts: list[str]
    wall_s: WallSeconds
    backends: dict[str, BackendLinkability]
    utility: Utility
    robustness: dict[str, dict[str, BackendLinkability]] | None = None
    seed: int = 0
    purification: Purification | None = None


@dataclass
class CellFailure:
    """``error.json``: a benchmark cell that failed; a rerun retries it."""

    identity: str
    method: str
    level: str
    error: str
    log: str
    wall_s: float = 0.0
    seed: int = 0


class CellKey(Protocol):
    method: str
    level: str
    seed: int


def cell_name(cell: CellKey) -> str:
    """``<method>-<level>-seed<N>`` of a cell, its record or its failure: its folder under ``cells/<identity>/``."""
    return f"{cell.method}-{cell.level}-seed{cell.seed}"


# ----------------------------------------------------------------------------------------------------
# JSON
# ----------------------------------------------------------------------------------------------------


def to_json(obj: Any) -> Any:
    """A dataclass (or containers of them) as JSON-ready data: ``nan``/``inf`` become ``None``."""
    return json_safe(dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj)


def from_json(cls: type[T], data: Any) -> T:
    """Rebuild ``cls`` (a dataclass of this module, or any type hint over them) from :func:`to_json` output.

    Unknown keys are refused, so a file from an incompatible version fails loudly (``ValueError``).
    """
    return _decode(cls, data, cls.__name__ if isinstance(cls, type) else str(cls))


def _decode(tp: Any, value: Any, where: str) -> Any:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _decode(args[0], value, where)
    if origin is Literal or tp is Any:
        return value
    if origin is dict:
        _, value_type = get_args(tp)
        return {str(k): _decode(value_type, v, f"{where}.{k}") for k, v in value.items()}
    if origin is list:
        (item_type,) = get_args(tp)
        return [_decode(item_type, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object for {tp.__name__}, got {type(value).__name__}.")
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        unknown = set(value) - names
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)} for {tp.__name__} (another iddm version?).")
        return tp(**{k: _decode(hints[k], v, f"{where}.{k}") for k, v in value.items()})
    if tp is float and isinstance(value, int):
        return float(value)
    return value


# ----------------------------------------------------------------------------------------------------
# results.csv
# ----------------------------------------------------------------------------------------------------

FAR_COLUMNS = {"0.01": "1e-2", "0.001": "1e-3"}


def backend_columns(key: str, m: BackendLinkability) -> dict[str, Any]:
    """The ``<key>_*`` columns of one FR system (see docs/evaluation.md)."""
    row: dict[str, Any] = {
        f"{key}_role": m.role,
        f"{key}_ism": m.ism,
        f"{key}_r1u": m.rank1,
        f"{key}_r1u_chance": m.chance_rank1,
        f"{key}_rank_last": m.rank_last,
        f"{key}_mean_rank": m.mean_user_rank,
        f"{key}_mean_rank_chance": m.chance_mean_user_rank,
        f"{key}_user_z": m.user_z,
        f"{key}_r1t": m.rank1_targeted,
        f"{key}_r1t_chance": m.chance_rank1_targeted,
        f"{key}_r1t_pool": m.rank1_targeted_pool,
        f"{key}_match_rate": m.match_rate,
        f"{key}_threshold": m.threshold,
    }
    for far, label in FAR_COLUMNS.items():
        entry = m.match_at_far.get(far)
        row[f"{key}_match_far{label}"] = entry.match_rate if entry else None
        row[f"{key}_threshold_far{label}"] = entry.threshold if entry else None
    row[f"{key}_flags"] = " ".join(m.flags)
    return row


def face_columns(face: FaceUtility | None) -> dict[str, Any]:
    """The ``face_*`` columns of ``utility.face`` (``*_rel``: over the vanilla cell's value; docs/evaluation.md)."""
    if face is None:
        return {}
    row: dict[str, Any] = {
        "face_serfiq": face.serfiq,
        "face_consistency": face.consistency,
        "face_attribute_agreement": face.agreement_mean,
        **{f"face_agreement_{name}": value for name, value in face.attribute_agreement.items()},
        "face_colour_photos": face.colour_photos,
        "face_colour_avatars": face.colour_avatars,
        "face_shape_distance": face.shape_distance,
        "face_landmark_displacement": face.landmark_displacement,
        "face_frechet_to_vanilla": face.frechet_to_vanilla,
        "face_kid_to_vanilla": face.kid_to_vanilla,
        "face_kid_to_real": face.kid_to_real,
    }
    row.update({f"face_{name}_rel": value for name, value in face.relative().items()})
    return row


def csv_row(record: CellRecord | CellFailure) -> dict[str, Any]:
    """One ``results.csv`` row; a failed cell has its ``status``, ``error`` and identifying columns only."""
    row: dict[str, Any] = {
        "identity": record.identity,
        "method": record.method,
        "level": record.level,
        "seed": record.seed,
        "status": "failed" if isinstance(record, CellFailure) else "done",
        "error": record.error if isinstance(record, CellFailure) else "",
    }
    if isinstance(record, CellFailure):
        return row
    utility, perturbation = record.utility, record.utility.perturbation
    row.update(
        {
            "defense": record.defense,
            "white_box": " ".join(record.white_box),
            "num_images": utility.num_images,
            "face_detection_rate": utility.face_detection_rate,
            "fdfr": utility.fdfr,
            "brisque_mean": utility.brisque_mean,
            "psnr_db": perturbation.psnr_db,
            "ssim": perturbation.ssim,
            "linf_255": perturbation.linf_255,
            "ssim_to_vanilla": utility.ssim_to_vanilla,
            "clip_score": utility.clip_score,
            "wall_s": record.wall_s.total,
            **face_columns(utility.face),
        }
    )
    for key, m in record.backends.items():
        row.update(backend_columns(key, m))
    for condition, by_key in (record.robustness or {}).items():
        for key, m in by_key.items():
            row[f"{key}_r1u_{condition}"] = m.rank1
            row[f"{key}_ism_{condition}"] = m.ism
            row[f"{key}_match_rate_{condition}"] = m.match_rate
    if record.purification is not None:
        for key, best in record.purification.best.items():
            row[f"{key}_best_purifier"] = best.purifier
            row[f"{key}_best_purifier_r1u"] = best.rank1
            row[f"{key}_best_purifier_match_rate"] = best.match_rate
        for name, cost in record.purification.cost.items():
            row[f"purify_{name}_psnr_db"] = cost.psnr_db
            row[f"purify_{name}_ssim"] = cost.ssim
    return json_safe(row)
