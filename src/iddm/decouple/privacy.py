"""The one privacy knob: its options (:class:`PrivacyConfig`) and their resolution to every IDDM value.

``privacy = p`` in ``[0, 1]`` (presets ``off`` 0, ``low`` 0.33, ``medium`` 0.66, ``high`` 1.0) sets:

=====================  ==========================  ==========================================
value                  mapping                     low / medium / high
=====================  ==========================  ==========================================
epsilon (L-inf)        16/255 * p                  5.3/255, 10.6/255, 16/255
step size              epsilon / 8                 (signed-gradient step on δ)
data steps M / round   round(2 + 4 p)              3, 5, 6
rounds' length K       50 personalization steps    50, 50, 50
Stage 1 fraction       0.5 + 0.25 p                0.58, 0.67, 0.75 of max_train_steps
lambda_gen, _data      1.0, 1.0                    identity loss on x̂0 and on the photos
lambda_fid             0.01 (1 - p)                0.0067, 0.0034, 0 (MSE penalty, per 8-bit level²)
lambda_model           0.0                         (Stage 2 model-side term, off)
lambda_natural         the model's recommendation  the model's denoising loss on the photos (realism;
                                                   128-px prior 1, others 0)
face jitter            0 (option)                  e.g. 0.2: scale 1±0.2, ±12°, shift ±0.1 (input diversity)
decoy                  none (option)               e.g. iddm:composite: pull toward five strangers' mean
low frequency          1 (option)                  e.g. 4: step δ in 4x4-block structure only
surrogates per step    all (option)                e.g. 1: one surrogate per identity term, at random
surrogate precision    fp32 (option)               bf16: the surrogates under bfloat16 autocast
warp (px per 64 px)    3 p                         0.99, 1.98, 3 (smooth reshaping of the faces)
warp grid              8 (option)                  control points per side of the warp
shape limit            0 (option)                  e.g. 1: the warped faces' 68-point shape stays within a
                                                   typical real face's distance (no caricature)
shared perturbation    off (option)                one δ and warp for all the photos (a consistent change)
delta grid             the model's recommendation  δ held on a g x g grid, upsampled smoothly (128-px
                                                   prior 16, others 0: per pixel)
=====================  ==========================  ==========================================

``p = 0`` disables every data step: exactly vanilla personalization. Every value can be overridden.
The objectives themselves are in :mod:`iddm.decouple.objective` (and ``docs/design.md`` §2).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Literal

from iddm.config import field
from iddm.decouple.transforms import EOT_TRANSFORMS
from iddm.faces import BUILTIN_DECOYS
from iddm.images import IMAGE_EXTENSIONS

PRESETS = {"off": 0.0, "low": 0.33, "medium": 0.66, "high": 1.0}
MAX_EPSILON = 16 / 255
WARP_PER_LEVEL = 3.0
"""The warp at ``high`` (px per 64 px). Measured over three seeds at ``high`` on the face prior (dlib, black-box):
2 left one held-out person linkable (R1-U 0.54), 3 brought the mean to 0.18 with face detection 0.94, 4 cost
face detection (0.83): docs/results/prior_seeds.md."""
DIFFERENTIABLE_SURROGATES = ["sface", "facenet", "arcface"]

DefenseName = Literal["iddm", "noise", "cloak", "aspl"]
IdentityLossName = Literal["calibrated", "unbounded"]


@dataclass
class PrivacyConfig:
    """IDDM's options. Any value left empty follows the ``privacy`` level (see the module docstring)."""

    privacy: str = field(
        "off",
        help="Privacy level: off|low|medium|high or a number in [0, 1]. Sets epsilon, loss weights, the stage "
        "split and data steps (see README); any value below overrides its part.",
    )
    epsilon: float | None = field(
        None, help="L-inf budget of the photo perturbation, in [0, 1] units (16/255=0.063).", ge=0, le=1
    )
    step_size: float | None = field(None, help="Signed-gradient step on the perturbation (default epsilon/8).", gt=0)
    data_steps: int | None = field(None, help="M: data steps on the perturbation per Stage-1 round.", ge=0)
    round_steps: int | None = field(
        None, help="K: personalization steps per Stage-1 round. Empty: the base model's recommendation (SD: 50).", ge=1
    )
    stage1_fraction: float | None = field(
        None, help="Fraction of max_train_steps spent in Stage 1 (decoupling).", ge=0, le=1
    )
    lambda_gen: float | None = field(None, help="Weight of the identity loss on the model's denoised estimate.", ge=0)
    lambda_data: float | None = field(
        None, help="Weight of the identity loss on the perturbed photos themselves.", ge=0
    )
    lambda_fid: float | None = field(
        None, help="Weight of the MSE fidelity penalty between perturbed and clean.", ge=0
    )
    lambda_model: float | None = field(
        None, help="Stage 2: weight of a model-side identity term on x̂0 (0: off).", ge=0
    )
    lambda_natural: float | None = field(
        None,
        help="Weight of the current model's denoising loss on the decoupled photos in each data step (0: off): keeps "
        "them where the model finds faces likely, so the perturbation is drawn as a face rather than as texture. "
        "Empty: the base model's recommendation (128-px face prior: 1; others: 0).",
        ge=0,
    )
    identity_loss: IdentityLossName = field(
        "calibrated",
        help="'calibrated': stop rewarding a surrogate's cosine to the user once it is at the level of a random "
        "other person (a hinge at the surrogate's impostor mean); 'unbounded': push it as low as it goes "
        "(below-chance similarity is itself a signal to an attacker).",
    )
    surrogates: list[str] = field(
        ["sface", "facenet"], help="Differentiable FR models the optimizer attacks.", choices=DIFFERENTIABLE_SURROGATES
    )
    surrogate_weights: list[float] | None = field(None, help="Weight per surrogate (default: equal).", ge=0)
    surrogates_per_step: int | None = field(
        None,
        help="Evaluate only this many surrogates, drawn at random, per identity term of a data step (a "
        "stochastic ensemble: cheaper steps). Empty: all of them.",
        ge=1,
    )
    surrogate_precision: Literal["fp32", "bf16"] = field(
        "fp32",
        help="Precision of the surrogates in data steps: 'bf16' runs them under bfloat16 autocast (faster on GPUs "
        "and on CPUs with AVX512-BF16/AMX, slower on CPUs without).",
    )
    eot: list[str] = field(
        ["jpeg", "resize", "blur"],
        help="Robustness transforms drawn per data step (expectation over transforms).",
        choices=sorted(EOT_TRANSFORMS),
    )
    jitter: float = field(
        0.0,
        help="Input diversity (0: off; e.g. 0.2): each data step moves the faces by a random scale (1±a), "
        "rotation (±60a degrees) and shift (±a/2) before the surrogates, for transfer to FR models that align "
        "faces differently.",
        ge=0,
        lt=1,
    )
    low_frequency: int = field(
        1,
        help="Step the perturbation only in its low spatial frequencies: the data-step gradient is averaged over "
        "blocks of this many pixels (1: off; e.g. 4), for transfer to unseen FR models and the autoencoder.",
        ge=1,
    )
    warp: float | None = field(
        None,
        help="Also reshape the faces: a smooth displacement field (8x8 control points, each moved at most this many "
        "pixels per 64 px of image side; default 3 p: 0.99, 1.98, 3 at low, medium, high; 0: off) optimized with "
        "the perturbation by the identity defenses. Geometry survives a blur and transfers to unseen FR models "
        "better than texture.",
        ge=0,
        le=8,
    )
    warp_grid: int = field(
        8,
        help="Control points per side of the warp's displacement field (fewer: features move more as wholes, "
        "proportions rather than local distortions).",
        ge=2,
        le=64,
    )
    shape_limit: float = field(
        0.0,
        help="Keep the warped faces plausible: after each warp step, pull each photo's face shape (dlib's 68 points "
        "moved by the warp, against a model of real faces' shapes; 1 = as unusual as a typical real face) back within "
        "this distance, or within the clean photo's own if larger (0: no limit; e.g. 1.0).",
        ge=0,
    )
    delta_grid: int | None = field(
        None,
        help="Hold the perturbation on a g x g grid per colour channel, upsampled bicubically to the photos: smooth "
        "shading and colour changes instead of per-pixel texture a LoRA would learn (0: per pixel; e.g. 16). "
        "Empty: the base model's recommendation (128-px face prior: 16; others: 0).",
        ge=0,
        le=1024,
    )
    delta_chroma: float = field(
        1.0,
        help="Hold the colour part of the perturbation (each channel's difference from the grey mean of the three) "
        "within this fraction of epsilon: 0 changes shading only, never hue or skin tone; 1: no extra limit.",
        ge=0,
        le=1,
    )
    shared_perturbation: bool = field(
        False,
        help="One perturbation for all the photos: a single δ and warp, held in the aligned face frame the photos "
        "share, so every photo shows the same change of face (one consistent other person) instead of each its "
        "own, which the LoRA would average into a mixture of changes.",
    )
    decoy: str = field(
        "none",
        help="Also pull the faces toward a decoy (its part orthogonal to the user): a photo, a folder of photos "
        "(their mean embedding), 'iddm:composite' (built in: five ORL faces, nobody in particular) or 'none'.",
    )
    defense: DefenseName = field(
        "iddm",
        help="'iddm' (alternating identity decoupling); baselines at the same epsilon: 'noise' (uniform random "
        "±epsilon, frozen), 'cloak' (one-shot FR cloak of the photos, then ordinary training), 'aspl' "
        "(Anti-DreamBooth-style: data steps maximize the personalization loss).",
    )
    cloak_steps: int = field(60, help="Data steps of the 'cloak' baseline, all before training.", ge=1)
    max_denoise_timestep: int = field(
        500, help="x̂0 proxy: timesteps drawn below this (less noise = sharper faces).", ge=1, le=1000
    )
    data_step_checkpointing: bool = field(
        True,
        help="Gradient checkpointing of the UNet's blocks and of the VAE layer by layer, and VAE slicing, during data "
        "steps only: the same perturbation (up to float rounding) from a fraction of the memory (SD 1.5, 512 px: "
        "1.33x vanilla's peak instead of 3.5x), for more data-step compute (README: GPU memory). "
        "--no-data_step_checkpointing keeps every activation.",
    )

    def problems(self) -> list[str]:
        problems = []
        try:
            level = parse_level(self.privacy)[0]
        except ValueError as err:
            problems.append(str(err).rstrip("."))
            level = 0.0
        if level > 0 and not resolve_privacy(self).enabled:
            # PrivacySettings.enabled is the one rule for "no defense": a level with options that switch it off is
            # refused rather than trained undefended.
            culprit = "--epsilon 0" if self.epsilon == 0 else f"--data_steps {self.data_steps}"
            problems.append(
                f"{culprit} at --privacy {self.privacy} would train without any defense; give it a value above 0, "
                "or --privacy off for an undefended run"
            )
        if self.surrogate_weights is not None and len(self.surrogate_weights) != len(self.surrogates):
            problems.append(
                f"--surrogate_weights has {len(self.surrogate_weights)} values for {len(self.surrogates)} surrogates"
            )
        decoy = decoy_path(self.decoy)
        if decoy is not None and not Path(decoy).exists():
            problems.append(f"--decoy {self.decoy} is not a photo file or folder")
        elif decoy is not None and Path(decoy).is_dir():
            if not any(p.suffix.lower() in IMAGE_EXTENSIONS for p in Path(decoy).iterdir()):
                problems.append(f"--decoy {self.decoy} is a folder without photos")
        if self.surrogates_per_step is not None and self.surrogates_per_step > len(self.surrogates):
            problems.append(
                f"--surrogates_per_step is {self.surrogates_per_step} but only {len(self.surrogates)} "
                "surrogates are set"
            )
        if self.delta_grid == 1:
            problems.append("--delta_grid must be 0 (per pixel) or at least 2, got 1")
        if len(set(self.surrogates)) != len(self.surrogates):
            problems.append(f"--surrogates lists a model twice: {self.surrogates}")
        return problems


@dataclass(frozen=True)
class PrivacySettings:
    """Every IDDM value after resolving the level and the overrides (recorded in manifests and logs)."""

    level: float
    label: str
    epsilon: float
    step_size: float
    data_steps: int
    round_steps: int
    stage1_fraction: float
    lambda_gen: float
    lambda_data: float
    lambda_fid: float
    lambda_model: float
    identity_loss: str
    surrogates: tuple[str, ...]
    surrogate_weights: tuple[float, ...]
    surrogates_per_step: int | None
    surrogate_precision: str
    eot: tuple[str, ...]
    jitter: float
    low_frequency: int
    max_denoise_timestep: int
    decoy: str | None = None
    defense: str = "iddm"
    cloak_steps: int = 60
    warp: float = 0.0
    warp_grid: int = 8
    shape_limit: float = 0.0
    delta_grid: int = 0
    delta_chroma: float = 1.0
    lambda_natural: float = 0.0
    shared_perturbation: bool = False
    data_step_checkpointing: bool = True

    @property
    def enabled(self) -> bool:
        if self.level <= 0 or self.epsilon <= 0:
            return False
        return self.defense in ("noise", "cloak") or self.data_steps > 0

    @property
    def alternates(self) -> bool:
        """Whether Stage 1 interleaves data rounds with personalization (IDDM and ASPL do; noise and cloak don't)."""
        return self.enabled and self.defense in ("iddm", "aspl")

    @property
    def white_box(self) -> list[str]:
        """FR models the optimizer saw (white-box for an attacker): none for vanilla, noise and ASPL."""
        return list(self.surrogates) if self.enabled and self.defense in ("iddm", "cloak") else []

    @property
    def defense_name(self) -> str:
        """``none`` when privacy is off, else the defense."""
        return self.defense if self.enabled else "none"

    def as_dict(self) -> dict:
        return {**asdict(self), "enabled": self.enabled}


IDENTITY_ONLY_SETTINGS = ("decoy", "warp", "shape_limit", "delta_grid", "delta_chroma", "shared_perturbation")
"""Settings only the identity objectives (iddm, cloak) use: the noise control and ASPL keep their published
definitions, so for them these fields fall back to their defaults (nothing is loaded, warped or recorded)."""


def decoy_path(decoy: str | Path | None) -> str | None:
    """The photo or folder behind a ``--decoy`` value (a built-in name resolved); ``None`` for none."""
    if decoy is None or str(decoy).strip().lower() in ("", "none"):
        return None
    return str(BUILTIN_DECOYS.get(str(decoy), decoy))


def parse_level(value: str | float) -> tuple[float, str]:
    """``"medium"`` -> ``(0.66, "medium")``; ``"0.5"`` -> ``(0.5, "0.50")``."""
    if isinstance(value, str) and value.strip().lower() in PRESETS:
        name = value.strip().lower()
        return PRESETS[name], name
    try:
        level = float(value)
    except ValueError:
        raise ValueError(f"--privacy must be one of {list(PRESETS)} or a number in [0, 1], got {value!r}.") from None
    if not 0.0 <= level <= 1.0:
        raise ValueError(f"--privacy must be in [0, 1], got {level}.")
    label = next((name for name, v in PRESETS.items() if v == level), f"{level:.2f}")
    return level, label


def resolve_privacy(config: PrivacyConfig) -> PrivacySettings:
    """Map ``config.privacy`` to every underlying value, then apply the config's explicit overrides."""
    level, label = parse_level(config.privacy)

    def pick(override, default):
        return default if override is None else override

    epsilon = pick(config.epsilon, MAX_EPSILON * level)
    surrogates = tuple(config.surrogates)
    weights = (
        tuple(config.surrogate_weights) if config.surrogate_weights else (1.0 / len(surrogates),) * len(surrogates)
    )
    settings = PrivacySettings(
        level=level,
        label=label,
        epsilon=epsilon,
        step_size=pick(config.step_size, max(epsilon / 8, 0.25 / 255)),
        data_steps=pick(config.data_steps, round(2 + 4 * level) if level > 0 else 0),
        round_steps=pick(config.round_steps, 50),
        stage1_fraction=pick(config.stage1_fraction, 0.5 + 0.25 * level if level > 0 else 0.0),
        lambda_gen=pick(config.lambda_gen, 1.0),
        lambda_data=pick(config.lambda_data, 1.0),
        # A light fidelity penalty keeps δ off the ε-box corners where identity gradients are weak: on the
        # Obama photos at medium it raised PSNR from 29.4 to 32.9 dB for a dlib cosine of 0.881 instead of 0.874.
        lambda_fid=pick(config.lambda_fid, 0.01 * (1 - level)),
        lambda_model=pick(config.lambda_model, 0.0),
        identity_loss=config.identity_loss,
        surrogates=surrogates,
        surrogate_weights=weights,
        surrogates_per_step=config.surrogates_per_step,
        surrogate_precision=config.surrogate_precision,
        eot=tuple(config.eot),
        jitter=config.jitter,
        low_frequency=config.low_frequency,
        decoy=decoy_path(config.decoy),
        max_denoise_timestep=config.max_denoise_timestep,
        defense=config.defense,
        cloak_steps=config.cloak_steps,
        warp=pick(config.warp, WARP_PER_LEVEL * level),
        warp_grid=config.warp_grid,
        shape_limit=config.shape_limit,
        delta_grid=pick(config.delta_grid, 0),
        delta_chroma=config.delta_chroma,
        lambda_natural=pick(config.lambda_natural, 0.0),
        shared_perturbation=config.shared_perturbation,
        data_step_checkpointing=config.data_step_checkpointing,
    )
    if settings.white_box:
        return settings
    return replace(settings, **{f.name: f.default for f in fields(settings) if f.name in IDENTITY_ONLY_SETTINGS})
