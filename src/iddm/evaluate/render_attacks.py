"""Tables of the attacks on degraded generations: platform degradations (robustness) and the purifying attacker.

Nothing here computes a metric; the numbers come from :mod:`iddm.evaluate.results` objects or ``results.csv`` rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from iddm.evaluate.report import fmt
from iddm.evaluate.results import BackendLinkability, Purification


def robustness_table(
    robustness: Mapping[str, Mapping[str, BackendLinkability]],
) -> tuple[list[str], list[list[str]]]:
    keys = list(next(iter(robustness.values())))
    header = ["condition"] + [f"{k} R1-U / rank-last / ISM / match" for k in keys]
    rows = [
        [condition]
        + [f"{fmt(r[k].rank1)} / {fmt(r[k].rank_last)} / {fmt(r[k].ism, 3)} / {fmt(r[k].match_rate)}" for k in keys]
        for condition, r in robustness.items()
    ]
    return header, rows


PURIFY_NOTE = (
    "Each purifier is applied to every generation before the attack; PSNR/SSIM: purified vs unpurified "
    "generations (what the purifier costs in image quality). Best purifier: per FR system, the one with the "
    "highest R1-U (then match rate), 'none' when none beats the plain attack; an oracle choice over the sweep, "
    "so an upper bound on an attacker who must pick one blind."
)


def purification_table(purification: Purification) -> tuple[list[str], list[list[str]]]:
    """One row per purifier (its cost, then R1-U / match rate per FR system) and the best purifier's row."""
    keys = list(purification.best)
    header = ["purifier", "PSNR (dB) / SSIM"] + [f"{k} R1-U / match" for k in keys]
    rows = [
        [name, f"{fmt(purification.cost[name].psnr_db, 1)} / {fmt(purification.cost[name].ssim, 3)}"]
        + [f"{fmt(by_key[k].rank1)} / {fmt(by_key[k].match_rate)}" for k in keys]
        for name, by_key in purification.linkability.items()
    ]
    best = purification.best
    rows.append(
        ["best purifier", ""] + [f"{best[k].purifier}: {fmt(best[k].rank1)} / {fmt(best[k].match_rate)}" for k in keys]
    )
    return header, rows


PURIFY_TITLE = "The purifying attacker: R1-U plain -> under the best purifier (match rate there), mean over identities"


def best_purifier_table(means: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """Per method and level (:func:`aggregate`): each FR system's R1-U plain and under the best purifier."""
    header = ["method", "level"] + [f"{k} R1-U -> best (match) [purifier]" for k in keys]
    rows = [
        [m["method"], m["level"]]
        + [
            f"{fmt(m.get(f'{k}_r1u'))} -> {fmt(m.get(f'{k}_best_purifier_r1u'))} "
            f"({fmt(m.get(f'{k}_best_purifier_match_rate'))}) [{m.get(f'{k}_best_purifier') or '–'}]"
            for k in keys
        ]
        for m in means
    ]
    return header, rows


__all__ = ["PURIFY_NOTE", "PURIFY_TITLE", "best_purifier_table", "purification_table", "robustness_table"]
