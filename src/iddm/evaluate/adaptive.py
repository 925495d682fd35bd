"""The adaptive attacker: learns to undo the decoupling on identities it knows, attacks the ones it does not.

The attacker knows that iddm protects models of people, and it holds real photos and protected generations of
*training identities*. On top of a fixed FR embedding (black-box or surrogate) it fits a small head
(:class:`AdaptiveHead`) mapping a generation's embedding into the real photos' embedding space: first an alignment
of the generations' mean and spread with the real photos' (``align``), then a residual linear map or 2-layer MLP
trained with ``1 - cos(h(x), template)`` to the real identity's template (plus, optionally, a normalized-softmax
cross-entropy over the training identities). Which head it keeps (plain, ``align`` or the trained one) is chosen
by leave-one-identity-out over its training identities only (:func:`select_kind`).

It is evaluated only on identities it never trained on: the identities of a finished ``iddm benchmark`` are split
into ``k`` identity-disjoint folds (:func:`identity_folds`); per FR system, method and level one head is trained on
the other folds' cells (all seeds) and attacks this fold's cells. No extra personalization is run: everything
comes from the benchmark's ``probes.npz`` (the generations' embeddings and each user's reference embeddings).

The gallery of both attackers is every user identity's reference photos (as ``probes.npz`` stores them), so the
plain attacker is recomputed on the same gallery as the adaptive one (like for like; chance ``1 / #identities``);
the benchmark's own R1-U (a larger gallery with distractors) is reported beside them.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from iddm.evaluate import metrics
from iddm.evaluate.cells import CELL_FILE, PROBES_FILE, Cell, load_probes

HeadKind = Literal["align", "linear", "mlp"]
CANDIDATE_ORDER = ("plain", "align", "linear", "mlp")
"""Heads the inner selection compares, simplest first (a tie keeps the simpler one)."""
RESULTS_FILE = "results.json"


@dataclass(frozen=True)
class CellProbes:
    """One finished benchmark cell as one FR system saw it.

    Attributes:
        backend: the FR system's registry key (``dlib``, ``sface``, ...); ``recognizer`` its embedding name.
        role: ``white-box`` (a surrogate of the cell's optimizer) or ``black-box``.
        threshold: the system's cosine threshold (match rate).
        probes: ``(P, D)`` float32 unit embeddings of the cell's generations with a detected face.
        benchmark_rank1, benchmark_match: the benchmark's own R1-U and match rate (``None``: no face).
    """

    identity: str
    method: str
    level: str
    seed: int
    backend: str
    recognizer: str
    role: str
    threshold: float
    probes: np.ndarray
    benchmark_rank1: float | None
    benchmark_match: float | None


@dataclass(frozen=True)
class HeadConfig:
    """How the adaptive head is trained (full-batch AdamW, seeded, CPU).

    Attributes:
        kind: ``align`` (mean and spread of the generations' embeddings aligned with the real photos'), ``linear``
            (alignment, then a residual ``D x D`` map + bias fitted in closed form: least squares to the templates
            with a ``ridge`` penalty) or ``mlp`` (alignment, then a residual ``D -> hidden -> D`` ReLU MLP trained
            for ``steps`` of AdamW on the cosine loss).
        select: pick among the plain attacker, ``align`` and ``kind`` by leave-one-identity-out over the *training*
            identities (needs 3 of them; else ``kind`` is used).
        contrastive_weight: weight of the cross-entropy over training-identity templates (0: cosine loss only).
        scale: logit scale of that cross-entropy (cosines times ``scale``).
    """

    kind: HeadKind = "linear"
    select: bool = True
    ridge: float = 1.0
    hidden: int = 256
    steps: int = 300
    learning_rate: float = 1e-2
    weight_decay: float = 1e-4
    contrastive_weight: float = 0.0
    scale: float = 16.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("align", "linear", "mlp"):
            raise ValueError(f"head kind must be 'align', 'linear' or 'mlp', got {self.kind!r}.")
        if (
            self.steps < 0
            or self.hidden < 1
            or self.learning_rate <= 0
            or min(self.contrastive_weight, self.ridge) < 0
        ):
            raise ValueError(
                "head steps, ridge, contrastive weight >= 0, hidden >= 1 and learning rate > 0 are needed."
            )


# ----------------------------------------------------------------------------------------------------
# Reading a finished benchmark
# ----------------------------------------------------------------------------------------------------


def _cell_probes(record: dict, folder: Path) -> list[CellProbes]:
    probes, _ = load_probes(folder / PROBES_FILE)
    out = []
    for key, m in record["backends"].items():
        if m["recognizer"] not in probes:
            raise ValueError(f"{folder / PROBES_FILE} holds no embeddings of {m['recognizer']}.")
        out.append(
            CellProbes(
                identity=record["identity"],
                method=record["method"],
                level=str(record["level"]),
                seed=int(record.get("seed", 0)),
                backend=key,
                recognizer=m["recognizer"],
                role=str(m.get("role", "unknown")),
                threshold=float(m["threshold"]),
                probes=np.asarray(probes[m["recognizer"]], dtype=np.float32),
                benchmark_rank1=m.get("rank1"),
                benchmark_match=m.get("match_rate"),
            )
        )
    return out


def load_benchmark(benchmark_dir: str | Path) -> tuple[list[CellProbes], dict[str, dict[str, np.ndarray]]]:
    """Every finished cell of an ``iddm benchmark`` output, and every user's reference embeddings.

    Returns:
        ``(cells, references)``: ``references[recognizer name][identity]`` is ``(R, D)`` unit rows of the user's
        reference photos with a face (identities with none are left out).

    Raises:
        FileNotFoundError: no such folder, or no ``results.json`` (the benchmark did not finish).
        ValueError: an unreadable ``results.json``, no finished cell, or a cell without its ``probes.npz``.
    """
    root = Path(benchmark_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such benchmark folder.")
    path = root / RESULTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{root} holds no {RESULTS_FILE}: pass the folder of a finished `iddm benchmark`.")
    try:
        records = json.loads(path.read_text())["cells"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a readable `iddm benchmark` results file ({type(err).__name__}).") from None
    if not records:
        raise ValueError(f"{path} lists no finished cell.")
    cells: list[CellProbes] = []
    references: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    for record in records:
        folder = Cell(record["identity"], record["method"], str(record["level"]), int(record.get("seed", 0))).folder(
            root
        )
        if not (folder / CELL_FILE).is_file() or not (folder / PROBES_FILE).is_file():
            raise ValueError(f"{folder}: the cell has no {CELL_FILE} or {PROBES_FILE} (an incomplete benchmark).")
        cells += _cell_probes(record, folder)
        _, reference = load_probes(folder / PROBES_FILE)
        for name, rows in reference.items():
            if len(rows):
                references[name].setdefault(record["identity"], np.asarray(rows, dtype=np.float32))
    return cells, dict(references)


# ----------------------------------------------------------------------------------------------------
# Identity-disjoint folds
# ----------------------------------------------------------------------------------------------------


def identity_folds(identities: Sequence[str], k: int, seed: int = 0) -> list[tuple[list[str], list[str]]]:
    """``k`` identity-disjoint ``(train identities, evaluation identities)`` splits; every identity is evaluated once.

    The identities are shuffled with ``seed`` and cut into ``k`` folds of sizes differing by at most one.

    Raises:
        ValueError: ``k < 2`` or fewer than ``k`` distinct identities.
    """
    unique = sorted(set(identities))
    if k < 2:
        raise ValueError(f"--folds must be at least 2 (got {k}).")
    if len(unique) < k:
        raise ValueError(f"{len(unique)} identities are too few for {k} identity-disjoint folds (need >= {k}).")
    order = np.random.default_rng(seed).permutation(len(unique))
    folds = [sorted(unique[i] for i in chunk) for chunk in np.array_split(order, k)]
    return [(sorted(set(unique) - set(fold)), fold) for fold in folds]


# ----------------------------------------------------------------------------------------------------
# The head
# ----------------------------------------------------------------------------------------------------


class AdaptiveHead(nn.Module):
    """``h(x) = normalize(z + f(z))``, ``z = scale * (x - gen_mean) + real_mean``: ``(N, D)`` -> ``(N, D)`` unit rows.

    The affine part aligns the generations' embeddings with the real photos' (mean and spread, fitted by
    :func:`fit_alignment`); ``f`` (``None``, a residual linear map or a 2-layer MLP) is zero at init. With the
    defaults (``gen_mean = real_mean = 0``, ``scale = 1``, no ``f``) the head is the identity: the plain attacker.
    """

    def __init__(self, dim: int, kind: HeadKind | Literal["plain", "align"] = "linear", hidden: int = 256) -> None:
        super().__init__()
        self.register_buffer("gen_mean", torch.zeros(dim))
        self.register_buffer("real_mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(()))
        self.residual: nn.Module | None = None
        if kind == "linear":
            self.residual = last = nn.Linear(dim, dim)
        elif kind == "mlp":
            self.residual = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
            last = self.residual[-1]
        if self.residual is not None:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.scale * (x - self.gen_mean) + self.real_mean
        return nn.functional.normalize(z if self.residual is None else z + self.residual(z), dim=-1)


def fit_alignment(probes: np.ndarray, real: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """``(gen_mean (D,), real_mean (D,), scale)``: the means of ``(N, D)`` generations and ``(M, D)`` real photos'
    embeddings, and the ratio of their RMS distances to those means (real / generations)."""
    gen_mean, real_mean = probes.mean(axis=0), real.mean(axis=0)
    gen_spread = np.sqrt(((probes - gen_mean) ** 2).sum(axis=1).mean())
    real_spread = np.sqrt(((real - real_mean) ** 2).sum(axis=1).mean())
    scale = float(real_spread / gen_spread) if gen_spread > 1e-8 and real_spread > 1e-8 else 1.0
    return gen_mean, real_mean, scale


def train_head(
    probes: np.ndarray,
    targets: np.ndarray,
    templates: np.ndarray,
    real: np.ndarray,
    config: HeadConfig = HeadConfig(),
    kind: HeadKind | Literal["plain", "align"] | None = None,
) -> AdaptiveHead:
    """Fit a head mapping protected generations to their real identity's template.

    Args:
        probes: ``(N, D)`` unit embeddings of training identities' generations.
        targets: ``(N,)`` int index of each probe's identity in ``templates``.
        templates: ``(C, D)`` unit templates of the training identities' real photos.
        real: ``(M, D)`` embeddings of those identities' real photos (for the alignment).
        kind: ``plain`` (identity), ``align`` (alignment only), ``linear`` or ``mlp`` (alignment, then a residual
            trained for ``config.steps``); default ``config.kind``.

    Returns:
        The trained head (eval mode, on the CPU); deterministic for a given ``config.seed``.
    """
    kind = kind or config.kind
    if len(probes) == 0 or len(probes) != len(targets):
        raise ValueError(f"train_head needs probes with one target each (got {len(probes)} and {len(targets)}).")
    generator = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        head = AdaptiveHead(probes.shape[1], kind, config.hidden)
    if kind == "plain":
        return head.eval()
    gen_mean, real_mean, scale = fit_alignment(probes, real)
    head.gen_mean.copy_(torch.as_tensor(gen_mean))
    head.real_mean.copy_(torch.as_tensor(real_mean))
    head.scale.fill_(scale)
    if head.residual is None:
        return head.eval()
    if kind == "linear":
        _fit_ridge(head, probes, templates[targets], config.ridge)
        return head.eval()
    x = torch.as_tensor(probes, dtype=torch.float32)
    y = torch.as_tensor(targets, dtype=torch.long)
    t = torch.as_tensor(templates, dtype=torch.float32)
    optimizer = torch.optim.AdamW(
        head.residual.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    for _ in range(config.steps):
        mapped = head(x)
        loss = (1 - (mapped * t[y]).sum(dim=1)).mean()
        if config.contrastive_weight > 0:
            loss = loss + config.contrastive_weight * nn.functional.cross_entropy(config.scale * mapped @ t.T, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return head.eval()


def _fit_ridge(head: AdaptiveHead, probes: np.ndarray, targets: np.ndarray, ridge: float) -> None:
    """Set the linear residual ``W, b`` of ``head`` to ``argmin ||z + W z + b - t||^2 + ridge ||W||^2`` (``z``: aligned
    ``(N, D)`` probes, ``t``: their ``(N, D)`` templates)."""
    with torch.no_grad():
        z = head.scale * (torch.as_tensor(probes, dtype=torch.float64) - head.gen_mean) + head.real_mean
    z = z.numpy()
    residual = targets.astype(np.float64) - z
    z_mean, r_mean = z.mean(axis=0), residual.mean(axis=0)
    zc = z - z_mean
    weight_t = np.linalg.solve(zc.T @ zc + max(ridge, 1e-8) * np.eye(z.shape[1]), zc.T @ (residual - r_mean))
    head.residual.weight.data.copy_(torch.as_tensor(weight_t.T))
    head.residual.bias.data.copy_(torch.as_tensor(r_mean - z_mean @ weight_t))


def apply_head(head: AdaptiveHead | None, probes: np.ndarray) -> np.ndarray:
    """``(P, D)`` embeddings through ``head`` (``None``: unchanged) -> ``(P, D)`` float32 unit rows."""
    if head is None or len(probes) == 0:
        return np.asarray(probes, dtype=np.float32)
    with torch.no_grad():
        return head(torch.as_tensor(probes, dtype=torch.float32)).numpy()


# ----------------------------------------------------------------------------------------------------
# One fold, one group of cells
# ----------------------------------------------------------------------------------------------------


def training_set(
    cells: Sequence[CellProbes], references: Mapping[str, np.ndarray], train: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """The pairs a head learns from: only cells of the ``train`` identities.

    Returns:
        ``(probes (N, D), targets (N,), templates (C, D), real (M, D), identities (C,))``: the identities actually
        used (those with a reference photo and at least one generation with a face), in the order of
        ``templates``; ``real`` stacks their reference photos.
    """
    allowed = set(train)
    used = sorted({c.identity for c in cells if c.identity in allowed and len(c.probes) and c.identity in references})
    index = {name: i for i, name in enumerate(used)}
    rows = [(c.probes, index[c.identity]) for c in cells if c.identity in index and len(c.probes)]
    dim = next((r.shape[1] for r in references.values()), 0)
    if not rows:
        empty = np.zeros((0, dim), np.float32)
        return empty, np.zeros(0, int), empty, empty, []
    probes = np.concatenate([p for p, _ in rows])
    targets = np.concatenate([np.full(len(p), i) for p, i in rows])
    templates = np.stack([metrics.identity_centroids(references[n], [n] * len(references[n]))[1][0] for n in used])
    real = np.concatenate([references[n] for n in used])
    return probes.astype(np.float32), targets, templates.astype(np.float32), real.astype(np.float32), used


def select_kind(cells: Sequence[CellProbes], references: Mapping[str, np.ndarray], config: HeadConfig) -> str:
    """The head the attacker keeps: leave-one-identity-out over the identities of ``cells`` (its training ones).

    Each candidate (:data:`CANDIDATE_ORDER`: plain, ``align``, ``config.kind``) is fitted on all identities but one
    and attacks that one in a gallery of these identities' real photos only; the best mean R1-U wins (a tie keeps
    the simpler head). Fewer than 3 identities (or ``config.select`` off): ``config.kind``.
    """
    names = sorted({c.identity for c in cells if len(c.probes) and c.identity in references})
    if not config.select or len(names) < 3:
        return config.kind
    candidates = [k for k in CANDIDATE_ORDER if k in ("plain", "align", config.kind)]
    known = {n: references[n] for n in names}
    gallery, labels = gallery_of(known)
    scores = {}
    for kind in candidates:
        hits = []
        for held_out in names:
            probes, targets, templates, real, _ = training_set(cells, known, [n for n in names if n != held_out])
            head = train_head(probes, targets, templates, real, config, kind)
            for cell in cells:
                if cell.identity == held_out and len(cell.probes):
                    hits.append(metrics.rank1_untargeted(apply_head(head, cell.probes), gallery, labels, held_out))
        scores[kind] = float(np.mean(hits))
    return max(candidates, key=lambda k: (scores[k], -candidates.index(k)))


def gallery_of(references: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(gallery (G, D), labels (G,))``: every identity's reference photos, labelled by identity."""
    names = sorted(references)
    return np.concatenate([references[n] for n in names]), np.array([n for n in names for _ in references[n]])


def attack(
    probes: np.ndarray, gallery: np.ndarray, labels: np.ndarray, user: str, reference: np.ndarray, threshold: float
) -> tuple[float | None, float | None]:
    """``(R1-U, match rate)`` of ``(P, D)`` probes of ``user``; ``(None, None)`` without a probe."""
    if len(probes) == 0:
        return None, None
    rank1 = metrics.rank1_untargeted(probes, gallery, labels, user)
    return rank1, metrics.match_rate_at_threshold(probes, reference, threshold)


def attack_fold(
    cells: Sequence[CellProbes],
    references: Mapping[str, np.ndarray],
    train: Sequence[str],
    evaluate: Sequence[str],
    config: HeadConfig,
) -> tuple[list[dict], list[str], str | None]:
    """Train a head on ``train``'s cells, then attack ``evaluate``'s cells with and without it.

    ``cells`` are one FR system's cells of one method and level. Returns ``(rows, identities trained on, the head
    kind kept by :func:`select_kind`)``;
    a row per evaluated cell holds the plain and adaptive R1-U and match rate (adaptive ``None`` when no
    training identity had a generation with a face).
    """
    if set(train) & set(evaluate):
        raise ValueError(f"Training and evaluation identities overlap: {sorted(set(train) & set(evaluate))}.")
    probes, targets, templates, real, used = training_set(cells, references, train)
    kind = None
    if used:
        known = [c for c in cells if c.identity in used]
        kind = select_kind(known, {n: references[n] for n in used}, config)
    head = train_head(probes, targets, templates, real, config, kind) if used else None
    gallery, labels = gallery_of(references)
    rows = []
    for cell in cells:
        if cell.identity not in evaluate or cell.identity not in references:
            continue
        reference = references[cell.identity]
        plain = attack(cell.probes, gallery, labels, cell.identity, reference, cell.threshold)
        mapped = apply_head(head, cell.probes)
        adaptive = (
            attack(mapped, gallery, labels, cell.identity, reference, cell.threshold)
            if head is not None
            else (None, None)
        )
        rows.append(
            {
                "identity": cell.identity,
                "seed": cell.seed,
                "num_faces": len(cell.probes),
                "plain_rank1": plain[0],
                "plain_match": plain[1],
                "adaptive_rank1": adaptive[0],
                "adaptive_match": adaptive[1],
                "benchmark_rank1": cell.benchmark_rank1,
                "benchmark_match": cell.benchmark_match,
            }
        )
    return rows, used, kind


# ----------------------------------------------------------------------------------------------------
# Every fold, every FR system, method and level
# ----------------------------------------------------------------------------------------------------


def run_adaptive_attack(
    cells: Sequence[CellProbes],
    references: Mapping[str, Mapping[str, np.ndarray]],
    k: int = 5,
    config: HeadConfig = HeadConfig(),
) -> dict:
    """The adaptive attacker over ``k`` identity-disjoint folds, per FR system, method and level.

    Args:
        cells, references: from :func:`load_benchmark`.

    Returns:
        ``{"folds": [{"train", "evaluate"}], "groups": [{"backend", "recognizer", "role", "method", "level",
        "num_identities", "chance_rank1", "folds": [{"fold", "trained_on", "evaluated"}], "rows": [...]}]}``.

    Raises:
        ValueError: too few identities for ``k`` folds.
    """
    users = sorted({c.identity for c in cells if any(c.identity in r for r in references.values())})
    folds = identity_folds(users, k, config.seed)
    groups: dict[tuple[str, str, str], list[CellProbes]] = defaultdict(list)
    for cell in cells:
        groups[(cell.backend, cell.method, cell.level)].append(cell)
    out = []
    for (backend, method, level), members in sorted(groups.items()):
        refs = references.get(members[0].recognizer, {})
        group = {"backend": backend, "recognizer": members[0].recognizer, "role": members[0].role}
        group |= {"method": method, "level": level, "num_identities": len(refs), "folds": [], "rows": []}
        group["chance_rank1"] = 1.0 / len(refs) if refs else None
        for index, (train, evaluate) in enumerate(folds):
            rows, used, kind = attack_fold(members, refs, train, evaluate, config)
            evaluated = sorted({r["identity"] for r in rows})
            group["folds"].append({"fold": index, "trained_on": used, "evaluated": evaluated, "head": kind})
            group["rows"] += [{**row, "fold": index} for row in rows]
        out.append(group)
    return {"folds": [{"train": t, "evaluate": e} for t, e in folds], "groups": out}


# ----------------------------------------------------------------------------------------------------
# Summary and tables
# ----------------------------------------------------------------------------------------------------

METRICS = ("plain_rank1", "adaptive_rank1", "benchmark_rank1", "plain_match", "adaptive_match", "benchmark_match")


def _spread(values: Sequence[float]) -> dict[str, float | None]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return {"mean": None, "std": None, "min": None, "max": None}
    a = np.asarray(finite, dtype=float)
    return {"mean": float(a.mean()), "std": float(a.std()), "min": float(a.min()), "max": float(a.max())}


def summarize(group: dict) -> dict:
    """Per-identity means (over seeds) and their spread across identities, for every metric of :data:`METRICS`."""
    per_identity: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in group["rows"]:
        for name in METRICS:
            if row[name] is not None:
                per_identity[row["identity"]][name].append(row[name])
    means = {
        identity: {name: (float(np.mean(v[name])) if v[name] else None) for name in METRICS}
        for identity, v in sorted(per_identity.items())
    }
    summary = {name: _spread([m[name] for m in means.values()]) for name in METRICS}
    return {"per_identity": means, "across_identities": summary, "num_evaluated": len(means)}
