"""The ``iddm evaluate`` and ``iddm benchmark`` commands (registered by :mod:`iddm.cli`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from iddm.config import add_dataclass_arguments, config_from_namespace, print_error
from iddm.evaluate.benchmark import BenchmarkConfig
from iddm.evaluate.harness import EvaluateConfig
from iddm.evaluate.report import fmt


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from iddm.evaluate.harness import run_evaluate

    config = config_from_namespace(EvaluateConfig, args)
    report = run_evaluate(config)
    summary = ", ".join(
        f"{key} ({m.role}) R1-U {fmt(m.rank1)}, rank-last {fmt(m.rank_last)}" for key, m in report.backends.items()
    )
    card = f"; model card of {config.run_dir} updated" if config.run_dir else ""
    print(f"Wrote metrics.json, report.md and report.html to {config.output_dir}: {summary}{card}.")
    return 0


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from iddm.evaluate.benchmark import run_benchmark
    from iddm.evaluate.results import CellFailure, cell_name

    config = config_from_namespace(BenchmarkConfig, args)
    outcomes = run_benchmark(config)
    out = Path(config.output_dir)
    print((out / "results.md").read_text())
    print(
        f"{len(outcomes)} cells. Wrote results.csv, results.json, results.md, privacy_utility.png and "
        f"report.html to {out}."
    )
    failed = [o for o in outcomes if isinstance(o, CellFailure)]
    if failed:
        print_error(
            "benchmark",
            f"{len(failed)} of {len(outcomes)} cells failed (first: {failed[0].identity}/{cell_name(failed[0])}: "
            f"{failed[0].error}); see results.md and each cell's cell.log, then rerun the same "
            "command to retry only those",
        )
        return 1
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``evaluate`` and ``benchmark`` to the ``iddm`` sub-commands."""
    evaluate = commands.add_parser(
        "evaluate", help="Attack generated images with face recognition: linkability, utility, robustness."
    )
    evaluate.add_argument("--config", type=Path, help="YAML file of options; command-line flags override it.")
    add_dataclass_arguments(evaluate, EvaluateConfig, "evaluation")
    evaluate.set_defaults(func=_cmd_evaluate)

    benchmark = commands.add_parser(
        "benchmark", help="Run IDDM and baselines on a dataset of identities and attack every result."
    )
    benchmark.add_argument("--config", type=Path, help="YAML file of options; command-line flags override it.")
    add_dataclass_arguments(benchmark, BenchmarkConfig, "benchmark")
    benchmark.set_defaults(func=_cmd_benchmark)
