"""Rendering of the typed results: Markdown and self-contained HTML reports, and the privacy-utility plot.

Nothing here computes a metric; every number comes from :mod:`iddm.evaluate.results` objects (or, for the
benchmark's tables, from their ``results.csv`` rows).
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from iddm.evaluate.face_report import FACE_TITLE, face_rows, face_table
from iddm.evaluate.plot import png_array
from iddm.evaluate.render_attacks import (
    PURIFY_NOTE,
    PURIFY_TITLE,
    best_purifier_table,
    purification_table,
    robustness_table,
)
from iddm.evaluate.report import fmt, html_document, html_image, html_table, markdown_table
from iddm.evaluate.results import (
    SIGNIFICANCE_SE,
    BackendLinkability,
    CellFailure,
    CellRecord,
    EvaluateReport,
    cell_name,
)
from iddm.images import load_photo, make_grid
from iddm.run_layout import PRIVATE_DIR, TRAINING_PHOTOS_DIR

LINK_HEADER = [
    "FR system",
    "role",
    "ISM (stranger)",
    "R1-U (chance)",
    "rank-last (chance)",
    "mean rank (chance)",
    "user z ± SE",
    "R1-T (chance)",
    "match @thr",
    "M@FAR 1e-2",
    "M@FAR 1e-3",
    "FDFR",
    "flags",
]

FOOTNOTE = (
    "R1-U: fraction of detected generated faces whose nearest gallery identity is the user (chance = "
    "1/#identities). Rank-last: fraction whose *least* similar identity is the user (chance = 1/#identities): "
    "a defense that pushes the user further away than any stranger is linkable too. Mean rank: the user's rank "
    "among the identities (1 = most similar; chance = (#identities + 1)/2). User z: the user's cosine as a "
    "z-score against the generation's cosines to every other identity (0 = a stranger; < 0 over-decoupled). "
    "ISM (stranger): mean cosine to the user's template, beside the cosine of a random stranger's photo to an "
    "anchor under that FR model (shipped impostor statistics). R1-T: fraction of the user's real photos whose "
    "top-ranked image in a pool of the generations and other identities' images is a generation. match @thr: "
    "verified as the user at the system's own threshold t. M@FAR: at thresholds calibrated on the gallery's "
    "impostor comparisons (†: too few impostor scores for that FAR; the rate understates linkability). "
    f"flags: attacks that beat chance by more than {SIGNIFICANCE_SE:g} standard errors (binomial at chance over "
    "the detected probes for rank-1 and rank-last; empirical for z). Black-box systems are the transfer test."
)


def thumbnail(image: np.ndarray, side: int = 128) -> np.ndarray:
    """A square ``side`` px thumbnail (center crop) for grids of mixed-size images."""
    from PIL import Image

    h, w = image.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = Image.fromarray(np.ascontiguousarray(image[top : top + s, left : left + s]))
    return np.asarray(crop.resize((side, side), Image.Resampling.LANCZOS if s > side else Image.Resampling.NEAREST))


def flag_text(m: BackendLinkability) -> str:
    """``linkable: rank1, user_z`` / ``over-decoupled: rank_last`` / empty, for a table cell."""
    parts = []
    if m.linkable:
        parts.append("linkable: " + ", ".join(f for f in m.flags if f == "rank1" or (f == "user_z" and m.user_z > 0)))
    if m.over_decoupled:
        parts.append(
            "over-decoupled: " + ", ".join(f for f in m.flags if f == "rank_last" or (f == "user_z" and m.user_z < 0))
        )
    return "; ".join(parts)


def link_row(key: str, m: BackendLinkability) -> list[str]:
    """One formatted row of :data:`LINK_HEADER`."""

    def at(name: str) -> str:
        entry = m.match_at_far.get(name)
        if entry is None:
            return "–"
        return f"{fmt(entry.match_rate)}{'' if entry.reliable else '†'} (t={fmt(entry.threshold, 3)})"

    pool = {"generations": "gen. pool", "real photos": "photo pool"}.get(m.rank1_targeted_pool or "", "")
    z = "–" if m.user_z is None else f"{m.user_z:+.2f} ± {fmt(m.user_z_standard_error)}"
    return [
        f"{key} ({m.recognizer})",
        m.role,
        f"{fmt(m.ism, 3)} ({fmt(m.impostor_mean, 3)})",
        f"{fmt(m.rank1)} ({fmt(m.chance_rank1)})",
        f"{fmt(m.rank_last)} ({fmt(m.chance_rank1)})",
        f"{fmt(m.mean_user_rank, 1)} ({fmt(m.chance_mean_user_rank, 1)})",
        z,
        f"{fmt(m.rank1_targeted)} ({fmt(m.chance_rank1_targeted)}{', ' + pool if pool else ''})",
        f"{fmt(m.match_rate)} (t={fmt(m.threshold, 3)})",
        at("0.01"),
        at("0.001"),
        fmt(m.fdfr),
        flag_text(m),
    ]


def flag_lines(label: str, backends: Mapping[str, BackendLinkability]) -> list[str]:
    """One sentence per FR system of ``backends`` whose attacks beat chance (see :data:`FOOTNOTE`)."""
    lines = []
    for key, m in backends.items():
        if not m.flags:
            continue
        margin = SIGNIFICANCE_SE * (m.rank_standard_error or 0)
        parts = []
        if "rank1" in m.flags:
            parts.append(f"rank-1 {fmt(m.rank1)} > chance {fmt(m.chance_rank1)} + {fmt(margin)}")
        if "rank_last" in m.flags:
            parts.append(f"rank-last {fmt(m.rank_last)} > chance {fmt(m.chance_rank1)} + {fmt(margin)}")
        if "user_z" in m.flags:
            parts.append(f"user z {m.user_z:+.2f} beyond ±{fmt(SIGNIFICANCE_SE * m.user_z_standard_error)}")
        verdict = " and ".join(v for v, on in (("linkable", m.linkable), ("over-decoupled", m.over_decoupled)) if on)
        lines.append(f"{label}{key} ({m.role}): {verdict}: {'; '.join(parts)} ({m.num_faces} detected probes)")
    return lines


def utility_rows(report: EvaluateReport) -> list[list[str]]:
    utility, pert = report.utility, report.utility.perturbation
    undetected = ", ".join(utility.undetected_images[:8]) + ("..." if len(utility.undetected_images) > 8 else "")
    return [
        ["face detection rate", fmt(utility.face_detection_rate), f"no face: {undetected}" if undetected else ""],
        ["FDFR", fmt(utility.fdfr), ""],
        ["BRISQUE (mean, lower = better)", fmt(utility.brisque_mean, 1), utility.brisque_note or ""],
        ["PSNR of X+δ vs X (dB)", fmt(pert.psnr_db, 1), pert.note or ""],
        ["SSIM of X+δ vs X", fmt(pert.ssim, 3), ""],
        ["L∞ of δ (0..255)", fmt(pert.linf_255), ""],
        ["CLIP score", fmt(utility.clip_score, 1), utility.clip_note or ""],
        ["SSIM to vanilla generations", fmt(utility.ssim_to_vanilla, 3), utility.ssim_to_vanilla_note or ""],
        *face_rows(utility.face),
    ]


def _evaluate_intro(report: EvaluateReport) -> list[str]:
    lines = []
    if report.run:
        run = report.run
        lines.append(
            f"Run `{run.dir}`: defense {run.defense}, privacy {run.privacy}, white-box surrogates "
            f"{', '.join(run.surrogates) or 'none'}, {run.steps} steps."
        )
    lines.append(
        f"Attacker: {report.reference.num_faces} reference face(s) of the user; gallery of "
        f"{len(report.gallery.identities)} identities, {report.gallery.num_faces} faces."
    )
    return lines


def evaluate_markdown(report: EvaluateReport) -> str:
    lines = [f"# iddm evaluate: {report.num_images} images from {report.images}", ""]
    lines += [line + "\n" for line in _evaluate_intro(report)]
    if report.warnings:
        lines += ["**Warnings**", ""] + [f"- {w}" for w in report.warnings] + [""]
    lines.append("## Linkability\n")
    lines.append(markdown_table(LINK_HEADER, [link_row(k, m) for k, m in report.backends.items()]))
    flags = flag_lines("", report.backends)
    if flags:
        lines += ["**Attacks that beat chance**", ""] + [f"- {line}" for line in flags] + [""]
    lines.append(FOOTNOTE + "\n")
    lines.append("## Utility\n")
    lines.append(markdown_table(["metric", "value", "note"], utility_rows(report)))
    if report.robustness:
        lines.append("## Robustness (linkability after platform degradations)\n")
        lines.append(markdown_table(*robustness_table(report.robustness)))
    if report.purification:
        lines.append("## Purification (the attacker purifies before linking; best purifier)\n")
        lines.append(markdown_table(*purification_table(report.purification)))
        lines.append(PURIFY_NOTE + "\n")
    return "\n".join(lines)


def _html_list(title: str, items: Sequence[str]) -> str:
    if not items:
        return ""
    return f"<p><b>{html.escape(title)}</b></p><ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>"


def evaluate_html(report: EvaluateReport, images: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> str:
    thumbs = [thumbnail(i) for i in images[:32]]
    refs = [thumbnail(i) for i in reference[:8]]
    body = ['<p class="note">' + html.escape(" ".join(_evaluate_intro(report))) + "</p>"]
    body.append(_html_list("Warnings", report.warnings))
    body += [
        html_image(make_grid(thumbs, columns=8), f"generated images (first {len(thumbs)})", min_width=512),
        html_image(make_grid(refs, columns=8), "the user's reference photos (attacker's knowledge)"),
        "<h2>Linkability</h2>",
        html_table(LINK_HEADER, [link_row(k, m) for k, m in report.backends.items()]),
        _html_list("Attacks that beat chance", flag_lines("", report.backends)),
        f'<p class="note">{html.escape(FOOTNOTE)}</p>',
        "<h2>Utility</h2>",
        html_table(["metric", "value", "note"], utility_rows(report)),
    ]
    if report.robustness:
        body += ["<h2>Robustness</h2>", html_table(*robustness_table(report.robustness))]
    if report.purification:
        body += ["<h2>Purification (best purifier)</h2>", html_table(*purification_table(report.purification))]
        body.append(f'<p class="note">{html.escape(PURIFY_NOTE)}</p>')
    return html_document("iddm evaluate", "\n".join(b for b in body if b))


# ----------------------------------------------------------------------------------------------------
# Benchmark
# ----------------------------------------------------------------------------------------------------


def _numbers(values: Sequence[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v]


def _mean(values: Sequence[Any]) -> float | None:
    numbers = _numbers(values)
    return float(np.mean(numbers)) if numbers else None


def _spread(values: Sequence[Any]) -> float | None:
    """Sample standard deviation (``None`` under two values)."""
    numbers = _numbers(values)
    return float(np.std(numbers, ddof=1)) if len(numbers) > 1 else None


_LABEL_COLUMNS = ("identity", "method", "level", "seed", "defense", "white_box", "status", "error")


def aggregate(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every numeric ``results.csv`` column per (method, level), over the finished cells.

    Each identity's cells are averaged over its seeds first, so an identity counts once however many seeds
    it ran: ``<column>`` is the mean over identities, ``<column>_sd`` the spread across identities, and
    ``<column>_seed_sd`` the run-to-run spread (standard deviation across seeds, averaged over identities;
    ``None`` with one seed).
    """
    groups: dict[tuple[str, str], dict[str, list[Mapping[str, Any]]]] = {}
    for row in rows:
        if row["status"] == "done":
            groups.setdefault((row["method"], row["level"]), {}).setdefault(row["identity"], []).append(row)
    means = []
    for (method, level), by_identity in groups.items():
        group = [row for cells in by_identity.values() for row in cells]
        seeds = max(len(cells) for cells in by_identity.values())
        mean: dict[str, Any] = {"method": method, "level": level, "identities": len(by_identity), "seeds": seeds}
        for column in dict.fromkeys(c for r in group for c in r):
            values = [r.get(column) for r in group]
            if column.endswith(("_role", "_r1t_pool")):
                kinds = {v for v in values if v}
                mean[column] = kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else None)
            elif column.endswith("_flags"):
                mean[column] = sum(bool(v) for v in values)
            elif column.endswith("_best_purifier"):  # the purifier chosen most often, and how often
                counts = Counter(v for v in values if v)
                mean[column] = ", ".join(f"{name} x{n}" for name, n in counts.most_common(2)) or None
            elif column not in _LABEL_COLUMNS:
                per_identity = [[r.get(column) for r in cells] for cells in by_identity.values()]
                mean[column] = _mean([_mean(v) for v in per_identity])
                mean[f"{column}_sd"] = _spread([_mean(v) for v in per_identity])
                mean[f"{column}_seed_sd"] = _mean([_spread(v) for v in per_identity]) if seeds > 1 else None
        means.append(mean)
    return means


def headline_backend(rows: Sequence[Mapping[str, Any]], backends: Sequence[str]) -> str:
    """The linkability number the curve shows: dlib if attacked with, else a system black-box in every cell."""
    keys = [k.strip().lower() for k in backends]
    if "dlib" in keys:
        return "dlib"
    for key in keys:
        if all(r.get(f"{key}_role") == "black-box" for r in rows if r["status"] == "done"):
            return key
    return keys[0]


def _with_spread(row: Mapping[str, Any], column: str, digits: int = 2) -> str:
    """``mean±sd`` on a mean row (the spread over identities), the plain value on an identity's row."""
    spread = row.get(f"{column}_sd")
    return fmt(row.get(column), digits) + ("" if spread is None else f"±{fmt(spread, digits)}")


def benchmark_table(
    rows: Sequence[Mapping[str, Any]], keys: Sequence[str], with_identity: bool
) -> tuple[list[str], list[list[str]]]:
    """The per-cell (``with_identity``) or mean table of ``results.md`` and ``report.html``."""
    header = (["identity"] if with_identity else []) + ["method", "level"]
    header += ["seed"] if with_identity else ["identities", "seeds"]
    header += [f"{k} R1-U / last / z / ISM / match" for k in keys]
    header += ["R1-U chance", "face det.", "BRISQUE", "PSNR dB", "SSIM", "SSIM→vanilla", "wall s"]
    header += ["flags"] if with_identity else ["flagged cells"]
    body = []
    for row in rows:
        cells = ([row["identity"]] if with_identity else []) + [row["method"], row["level"]]
        cells += [str(row.get("seed", ""))] if with_identity else [str(row["identities"]), str(row["seeds"])]
        if row.get("status") == "failed":
            body.append(cells + ["failed: " + str(row.get("error", ""))[:120]] + [""] * (len(header) - len(cells) - 1))
            continue
        for key in keys:
            mark = " (wb)" if row.get(f"{key}_role") == "white-box" else ""
            z = row.get(f"{key}_user_z")
            cells.append(
                f"{_with_spread(row, f'{key}_r1u')} / {fmt(row.get(f'{key}_rank_last'))} / "
                f"{'–' if z is None else f'{z:+.2f}'} / {_with_spread(row, f'{key}_ism', 3)} / "
                f"{_with_spread(row, f'{key}_match_rate')}{mark}"
            )
        cells += [
            fmt(_mean([row.get(f"{k}_r1u_chance") for k in keys])),
            fmt(row.get("face_detection_rate")),
            fmt(row.get("brisque_mean"), 1),
            fmt(row.get("psnr_db"), 1),
            fmt(row.get("ssim"), 3),
            fmt(row.get("ssim_to_vanilla"), 3),
            fmt(row.get("wall_s"), 0),
        ]
        if with_identity:
            cells.append("; ".join(f"{k}: {row[f'{k}_flags']}" for k in keys if row.get(f"{k}_flags")))
        else:
            cells.append(", ".join(f"{k} {row[f'{k}_flags']}" for k in keys if row.get(f"{k}_flags")))
        body.append(cells)
    return header, body


def seed_spread_table(means: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """Run-to-run spread per (method, level) with several seeds: the standard deviation across seeds of each
    identity's result, averaged over identities (rows of :func:`aggregate`; empty when every group has one seed)."""
    header = ["method", "level", "seeds"] + [f"{k} R1-U / z / match" for k in keys] + ["face det.", "wall s"]
    body = [
        [row["method"], row["level"], str(row["seeds"])]
        + [" / ".join(fmt(row.get(f"{k}_{m}_seed_sd")) for m in ("r1u", "user_z", "match_rate")) for k in keys]
        + [fmt(row.get("face_detection_rate_seed_sd")), fmt(row.get("wall_s_seed_sd"), 0)]
        for row in means
        if row["seeds"] > 1
    ]
    return header, body


SEED_SPREAD_TITLE = "Run-to-run spread (standard deviation across seeds, mean over identities)"
MEAN_TITLE = "Mean over identities (each identity averaged over its seeds; ±: standard deviation across identities)"


def benchmark_flag_lines(records: Sequence[CellRecord]) -> list[str]:
    return [line for r in records for line in flag_lines(f"{r.identity} {cell_name(r)}, ", r.backends)]


def benchmark_markdown(
    rows: Sequence[Mapping[str, Any]],
    records: Sequence[CellRecord],
    failures: Sequence[CellFailure],
    keys: Sequence[str],
    notes: Sequence[str],
) -> str:
    md = ["# iddm benchmark", ""]
    if failures:
        md += [f"**{len(failures)} cell(s) failed** (rerun the same command to retry them):", ""]
        md += [f"- {f.identity} {cell_name(f)}: {f.error} (log: {f.log})" for f in failures] + [""]
    means = aggregate(rows)
    md += [f"## {MEAN_TITLE}", "", markdown_table(*benchmark_table(means, keys, False))]
    if any(f"{k}_best_purifier" in m for m in means for k in keys):
        md += [f"## {PURIFY_TITLE}", "", markdown_table(*best_purifier_table(means, keys)), "", PURIFY_NOTE, ""]
    md += [f"## {FACE_TITLE}", "", markdown_table(*face_table(means, False))]
    header, spread = seed_spread_table(means, keys)
    if spread:
        md += [f"## {SEED_SPREAD_TITLE}", "", markdown_table(header, spread)]
    md += ["## Per cell", "", markdown_table(*benchmark_table(rows, keys, True))]
    flags = benchmark_flag_lines(records)
    if flags:
        md += ["## Attacks that beat chance", ""] + [f"- {line}" for line in flags] + [""]
    md += [f"- {note}" for note in notes]
    return "\n".join(md) + "\n"


def _image_file(path: Path) -> np.ndarray | None:
    return load_photo(path) if path.is_file() else None


def _figure_or_note(image: np.ndarray | None, caption: str, missing: str) -> str:
    if image is None:
        return f'<span class="note">{html.escape(missing)}</span>'
    return html_image(image, caption, min_width=192, max_side=640)


def benchmark_html(
    records: Sequence[CellRecord],
    failures: Sequence[CellFailure],
    rows: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
    notes: Sequence[str],
    plot: bytes,
    photos: Mapping[str, tuple[Sequence[Path], Sequence[Path]]],
    output_dir: Path,
) -> str:
    """A single self-contained HTML page: curve, tables and, per identity, the photos and every cell's images.

    Args:
        photos: identity -> ``(training photos, held-out reference photos)``.
    """
    body = ["<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>"]
    body.append(
        _html_list(
            f"{len(failures)} cell(s) failed (rerun to retry)",
            [f"{f.identity} {cell_name(f)}: {f.error}" for f in failures],
        )
    )
    body.append(html_image(png_array(plot), "privacy-utility curve", min_width=1000, max_side=1100))
    means = aggregate(rows)
    body += [f"<h2>{html.escape(MEAN_TITLE)}</h2>", html_table(*benchmark_table(means, keys, False))]
    if any(f"{k}_best_purifier" in m for m in means for k in keys):
        body += [f"<h2>{html.escape(PURIFY_TITLE)}</h2>", html_table(*best_purifier_table(means, keys))]
    body += [f"<h2>{html.escape(FACE_TITLE)}</h2>", html_table(*face_table(rows, True))]
    header, spread = seed_spread_table(means, keys)
    if spread:
        body += [f"<h2>{html.escape(SEED_SPREAD_TITLE)}</h2>", html_table(header, spread)]
    body += ["<h2>Per cell</h2>", html_table(*benchmark_table(rows, keys, True))]
    body.append(_html_list("Attacks that beat chance", benchmark_flag_lines(records)))
    by_identity: dict[str, list[CellRecord]] = {}
    for record in records:
        by_identity.setdefault(record.identity, []).append(record)
    for name, cell_records in by_identity.items():
        train, reference = photos[name]
        body.append(f"<h2>{html.escape(name)}</h2>")
        body.append(html_image(make_grid([thumbnail(load_photo(p)) for p in train[:8]], columns=8), "training photos"))
        held = [thumbnail(load_photo(p)) for p in reference[:8]]
        body.append(html_image(make_grid(held, columns=8), "held-out reference (attacker's)"))
        first_run = output_dir / cell_records[0].run_dir
        crops = _image_file(first_run / PRIVATE_DIR / TRAINING_PHOTOS_DIR / "clean_grid.png")
        if crops is not None:
            body.append(html_image(crops, "clean training crops"))
        body.append("<h3>Per method and level: training photos X+δ and generations</h3>")
        table = [
            "<table><thead><tr><th>cell</th><th>training photos X+δ</th><th>generations</th>"
            "<th>linkability</th></tr></thead><tbody>"
        ]
        for record in cell_records:
            run_dir = output_dir / record.run_dir
            decoupled = _image_file(run_dir / PRIVATE_DIR / TRAINING_PHOTOS_DIR / "decoupled_grid.png")
            generations = _image_file(output_dir / record.images_dir / "grid.png")
            link = "<br>".join(
                html.escape(f"{k} ({m.role}): R1-U {fmt(m.rank1)}, rank-last {fmt(m.rank_last)}, ISM {fmt(m.ism, 3)}")
                for k, m in record.backends.items()
            )
            table.append(
                f"<tr><td>{html.escape(cell_name(record))}</td>"
                f"<td>{_figure_or_note(decoupled, 'X+δ', 'clean photos (no perturbation)')}</td>"
                f"<td>{_figure_or_note(generations, 'generations', 'missing')}</td><td>{link}</td></tr>"
            )
        body.append("".join(table) + "</tbody></table>")
        body.append("<h3>Linkability per cell</h3>")
        body.append(
            html_table(
                ["cell", *LINK_HEADER],
                [[cell_name(r), *link_row(k, r.backends[k])] for r in cell_records for k in keys],
            )
        )
    return html_document("iddm benchmark", "\n".join(b for b in body if b))
