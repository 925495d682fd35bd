"""Wall time of ``iddm benchmark`` on Ray against the sequential run, and Ray's overhead per cell.

    python benchmarks/bench_ray.py [--steps 300] [--workers 2] [--output runs/bench_ray]

A 4-cell micro benchmark (two identities of the test photos x vanilla and IDDM high, 32 px, SFace as
surrogate and attacker) runs three times in fresh processes pinned to the same 2 CPU cores:

* ``sequential``: the command as it runs without ``--workers`` (one cell after the other, torch's
  default threads);
* ``sequential, 1 thread``: the same with ``OMP_NUM_THREADS=1`` (what one Ray task gets);
* ``ray, N workers``: ``--workers N --cpus_per_cell 1`` (N single-threaded tasks at once).

It prints a table of wall times with the ratio to the sequential run, and Ray's overhead per cell:
the time from submitting a task to getting its result, minus the time the cell itself ran
(``cell.log``), i.e. scheduling, a worker's start and imports, and the transfer of the inputs and
the record. ``results.csv`` of the Ray run is checked against the sequential ones (wall times aside).
Load averages before and after are printed: on a shared machine the numbers mean little above ~0.5.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT / "tests" / "fixtures" / "photos"
IDENTITIES = {"obama": 4, "macron": 2, "sunak": 1}


def dataset(folder: Path) -> Path:
    for name in IDENTITIES:
        (folder / name).mkdir(parents=True, exist_ok=True)
        for path in sorted(PHOTOS.glob(f"{name}_*.jpg")):
            shutil.copy(path, folder / name / path.name)
    return folder


def run(label: str, args: list[str], env: dict[str, str], cores: str) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(
        ["taskset", "-c", cores, sys.executable, "-m", "iddm.cli", *args], env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{label} failed:\n{done.stderr[-3000:]}")
    return seconds, done.stderr


def rows(out: Path) -> list[dict]:
    with open(out / "results.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k != "wall_s"} for row in csv.DictReader(handle)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="Personalization steps per run.")
    parser.add_argument("--workers", type=int, default=2, help="Ray workers.")
    parser.add_argument("--cores", default="0,1", help="CPU cores every run is pinned to (taskset).")
    parser.add_argument("--output", type=Path, default=ROOT / "runs" / "bench_ray")
    args = parser.parse_args()
    if args.output.exists():
        shutil.rmtree(args.output)
    data = dataset(args.output / "data")
    options = args.output / "personalize.yaml"
    options.write_text("train_batch_size: 2\nnum_validation_images: 1\ncheckpointing_steps: 0\nround_steps: 10\n")
    common = ["benchmark", "--dataset", str(data), "--model", "iddm:micro", "--max_train_steps", str(args.steps)]
    common += ["--resolution", "32"]
    common += ["--num_images", "4", "--num_inference_steps", "4", "--methods", "vanilla", "iddm", "--levels", "high"]
    common += ["--surrogates", "sface", "--backends", "sface", "--personalize_config", str(options)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    load_before = os.getloadavg()

    runs = {}
    runs["sequential"] = run("sequential", [*common, "--output_dir", str(args.output / "seq")], env, args.cores)
    one_thread = {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    runs["sequential, 1 thread"] = run(
        "sequential, 1 thread", [*common, "--output_dir", str(args.output / "seq1")], one_thread, args.cores
    )
    ray_args = [*common, "--output_dir", str(args.output / "ray"), "--workers", str(args.workers)]
    runs[f"ray, {args.workers} workers"] = run("ray", [*ray_args, "--cpus_per_cell", "1"], env, args.cores)
    load_after = os.getloadavg()

    ray_log = runs[f"ray, {args.workers} workers"][1]
    ready = float(re.search(r"Ray ready in ([\d.]+) s", ray_log).group(1))
    returned = {m[0]: float(m[1]) for m in re.findall(r"Cell (\S+) returned ([\d.]+) s after submission", ray_log)}
    inside = {}
    for log in (args.output / "ray" / "cells").glob("*/*/cell.log"):
        cell = f"{log.parent.parent.name}/{log.parent.name}"
        inside[cell] = float(re.search(r"finished in ([\d.]+) s", log.read_text()).group(1))
    overhead = {cell: returned[cell] - inside[cell] for cell in returned}
    same = rows(args.output / "seq1") == rows(args.output / "ray")
    same_default = rows(args.output / "seq") == rows(args.output / "ray")

    baseline = runs["sequential"][0]
    print(f"\n4 cells ({args.steps} steps, 32 px, micro backbone), cores {args.cores}")
    print(
        f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}; "
        f"after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}\n"
    )
    print("| run | wall s | × sequential |\n|---|---|---|")
    for label, (seconds, _) in runs.items():
        print(f"| {label} | {seconds:.1f} | {seconds / baseline:.2f} |")
    print("\n| Ray overhead | s |\n|---|---|")
    print(f"| ray.init (local, once) | {ready:.1f} |")
    for cell in sorted(overhead):
        print(f"| {cell}: submit→result {returned[cell]:.1f} − in cell {inside[cell]:.1f} | {overhead[cell]:.1f} |")
    print(f"| mean per cell | {sum(overhead.values()) / len(overhead):.1f} |")
    print(
        f"\nresults.csv of the Ray run (wall times aside) equals the 1-thread sequential run's: {same}; the default "
        f"sequential run's: {same_default} (other thread counts may differ in the last bits of floats)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
