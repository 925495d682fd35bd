"""The adaptive attacker on a finished ``iddm benchmark``: a head learned on some identities, attacking the others.

    python benchmarks/adaptive_attack.py --benchmark_dir runs/bench [--folds 5] [--head linear|mlp]

Per FR system, method and level, a small head on the FR embedding (:mod:`iddm.evaluate.adaptive`) learns to map
protected generations of the training identities to their real identity's template, and attacks the cells of
identities it never trained on (``--folds`` identity-disjoint folds, every identity attacked once). Writes
``adaptive_attack.json`` and ``adaptive_attack.md`` (default: into the benchmark folder; ``--output_dir`` to
write elsewhere): R1-U and match rate of the adaptive and the plain attacker on the same gallery, and the
benchmark's own R1-U, each as mean±std [min–max] across identities.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from iddm.evaluate.adaptive import HeadConfig, load_benchmark, run_adaptive_attack, summarize
from iddm.evaluate.report import json_safe
from iddm.images import atomic_write_json, atomic_write_text

NAME = "adaptive_attack"


def _cell(spread: dict[str, float | None]) -> str:
    if spread["mean"] is None:
        return "–"
    return f"{spread['mean']:.2f}±{spread['std']:.2f} [{spread['min']:.2f}–{spread['max']:.2f}]"


def _kept(folds: Sequence[dict]) -> str:
    counts = Counter(str(f["head"]) for f in folds)
    return ", ".join(f"{kind} ×{n}" for kind, n in sorted(counts.items()))


def markdown_table(result: dict) -> str:
    """The adaptive vs plain attacker per FR system, method and level (mean±std [min–max] across identities)."""
    lines = [
        "| FR | role | method-level | identities | chance | plain R1-U | adaptive R1-U | benchmark R1-U "
        "| plain match | adaptive match | heads kept |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for group in result["groups"]:
        s = group["summary"]["across_identities"]
        chance = f"{group['chance_rank1']:.2f}" if group["chance_rank1"] else "–"
        lines.append(
            f"| {group['backend']} | {group['role']} | {group['method']}-{group['level']} | "
            f"{group['summary']['num_evaluated']} | {chance} | {_cell(s['plain_rank1'])} | "
            f"{_cell(s['adaptive_rank1'])} | {_cell(s['benchmark_rank1'])} | {_cell(s['plain_match'])} | "
            f"{_cell(s['adaptive_match'])} | {_kept(group['folds'])} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmark_dir", type=Path, required=True, help="Output folder of a finished benchmark.")
    parser.add_argument("--output_dir", type=Path, help="Where the JSON and Markdown go (default: --benchmark_dir).")
    parser.add_argument("--folds", type=int, default=5, help="Identity-disjoint folds (>= 2; <= #identities).")
    parser.add_argument(
        "--head", choices=["align", "linear", "mlp"], default="linear", help="The head on the FR embedding."
    )
    parser.add_argument(
        "--no_select",
        action="store_true",
        help="Always use --head (default: keep plain, align or --head by leave-one-identity-out on training ids).",
    )
    parser.add_argument("--ridge", type=float, default=1.0, help="Ridge penalty of the linear head (closed form).")
    parser.add_argument("--hidden", type=int, default=256, help="Hidden width of the mlp head.")
    parser.add_argument("--steps", type=int, default=300, help="Full-batch AdamW steps per mlp head.")
    parser.add_argument("--learning_rate", type=float, default=1e-2, help="AdamW learning rate.")
    parser.add_argument("--weight_decay", type=float, default=1e-4, help="AdamW weight decay.")
    parser.add_argument(
        "--contrastive_weight", type=float, default=0.0, help="Weight of the cross-entropy over identities."
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the folds and of the heads.")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, parse_args(argv).threads))
    try:  # the caller's thread count back afterwards (tests call main in-process: it changes their floats)
        return _main(parse_args(argv))
    finally:
        torch.set_num_threads(threads)


def _main(args: argparse.Namespace) -> int:
    try:
        config = HeadConfig(
            kind=args.head,
            select=not args.no_select,
            ridge=args.ridge,
            hidden=args.hidden,
            steps=args.steps,
            learning_rate=args.learning_rate,
            weight_decay=args.weight_decay,
            contrastive_weight=args.contrastive_weight,
            seed=args.seed,
        )
        cells, references = load_benchmark(args.benchmark_dir)
        result = run_adaptive_attack(cells, references, args.folds, config)
    except (OSError, ValueError) as err:
        print(f"adaptive_attack: error: {err}", file=sys.stderr)
        return 2
    for group in result["groups"]:
        group["summary"] = summarize(group)
    result = {"benchmark_dir": str(args.benchmark_dir), "head": vars(config), "k": args.folds, **result}
    table = markdown_table(result)
    out = args.output_dir or args.benchmark_dir
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / f"{NAME}.json", json_safe(result))
    selected = ", kept per fold by leave-one-identity-out among plain, align and it" if config.select else ""
    notes = (
        f"Adaptive attacker ({config.kind} head{selected}; ridge {config.ridge:g}, mlp: {config.steps} steps, "
        f"contrastive weight {config.contrastive_weight:g}; seed {config.seed}) over {args.folds} identity-disjoint "
        f"folds of {args.benchmark_dir}. Each cell: mean±std [min–max] across the evaluated identities (each "
        "averaged over its seeds). Plain and adaptive R1-U use the same gallery (every user's reference photos); "
        "benchmark R1-U is the benchmark's own (its gallery adds distractors).\n\n"
    )
    atomic_write_text(out / f"{NAME}.md", f"# Adaptive attacker\n\n{notes}{table}")
    print(table, end="")
    print(f"Wrote {NAME}.json and {NAME}.md to {out}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
