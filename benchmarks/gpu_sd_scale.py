"""One command for a lent GPU: iddm's cost at Stable Diffusion 1.5 size, checked against issue 23's targets.

    python benchmarks/gpu_sd_scale.py --output "$OUT"          # on the GPU machine, at most --budget (470 s)
    python benchmarks/gpu_sd_scale.py --tiny --device cpu       # the tiny pipeline: checks the script runs

Builds the random SD 1.5-sized pipeline once (``bench_sd_scale.py --model``), then runs, each run in a fresh
process (``bench_sd_scale.py``):

1. bf16, 512 px, batch 1, the SD round length (50 steps, then one round of 6 data steps, privacy high):
   the minimal diffusers LoRA loop, iddm's vanilla LoRA, IDDM LoRA with and without the data-step memory saving,
   DreamBooth with gradient checkpointing;
2. fp16 and bf16 with ``--gradient_checkpointing`` (short runs: 10 steps, one data step): vanilla and IDDM LoRA.

Checks (printed as PASS/FAIL, also written to ``OUTPUT/gpu_sd_scale.json``):

* iddm vanilla LoRA vs the minimal diffusers loop: speed >= 0.95x, peak memory <= 1.05x;
* IDDM LoRA vs vanilla LoRA: peak memory <= 1.5x, time of the 50 steps and the data round <= 1.3x.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().with_name("bench_sd_scale.py")


def bench(args: argparse.Namespace, name: str, extra: list[str], model: Path, output: Path, timeout: float) -> dict:
    """Run ``bench_sd_scale.py`` with ``extra`` flags; returns its JSON records (``{}`` if it wrote none)."""
    record = output / f"{name}.json"
    command = [sys.executable, str(BENCH), "--model", str(model), "--json", str(record), *extra]
    if args.tiny:
        command.append("--tiny")
    if args.device:
        command += ["--device", args.device]
    if args.threads:
        command += ["--threads", str(args.threads)]
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(command[2:])}", flush=True)
    try:
        subprocess.run(command, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"{name}: stopped after {timeout:.0f} s; its finished runs are kept", flush=True)
    return json.loads(record.read_text()) if record.is_file() else {}


def check(label: str, value: float | None, limit: float, at_most: bool = True) -> dict:
    ok = value is not None and (value <= limit if at_most else value >= limit)
    shown = "n/a" if value is None else f"{value:.3f}"
    print(f"{'PASS' if ok else 'FAIL'}  {label}: {shown} ({'<=' if at_most else '>='} {limit})", flush=True)
    return {"check": label, "value": value, "limit": limit, "ok": ok}


def ratio(runs: dict, a: str, b: str, key: str) -> float | None:
    ra, rb = runs.get(a, {}), runs.get(b, {})
    if not (ra.get("ok") and rb.get("ok")) or not rb.get(key):
        return None
    return ra[key] / rb[key]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=None, help="Folder for the JSON records (default: a temp one).")
    parser.add_argument("--tiny", action="store_true", help="The tiny pipeline at 64 px (checks the script on a CPU).")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available).")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (CPU).")
    parser.add_argument("--budget", type=float, default=470, help="Seconds for everything (the 512 px group gets "
                        "what the two short groups leave).")  # fmt: skip
    args = parser.parse_args()
    output = args.output or Path(tempfile.mkdtemp(prefix="gpu_sd_scale-"))
    output.mkdir(parents=True, exist_ok=True)
    steps, short = ("4", "2") if args.tiny else ("50", "10")
    data_steps = "2" if args.tiny else "6"
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_sd_scale-model-") as folder:
        model = Path(folder) / "sd"
        main_runs = ["diffusers_lora", "vanilla_lora", "iddm_lora", "iddm_lora_no_saving", "dreambooth"]
        groups = {
            "bf16": ["--steps", steps, "--data_steps", data_steps, "--runs", *main_runs],
            **{
                f"{precision}_gc": [
                    "--mixed_precision",
                    precision,
                    "--gradient_checkpointing",
                    "--steps",
                    short,
                    "--runs",
                    "vanilla_lora",
                    "iddm_lora",
                ]  # fmt: skip
                for precision in ("fp16", "bf16")
            },
        }
        if args.tiny or args.device == "cpu":  # fp16 needs CUDA; the CPU check runs the plain-precision variant
            groups["fp16_gc"] = ["--mixed_precision", "no", *groups["fp16_gc"][2:]]
            groups["bf16"] = ["--mixed_precision", "no", *groups["bf16"]]
            groups["bf16_gc"] = ["--mixed_precision", "no", *groups["bf16_gc"][2:]]
        results = {}
        for name, flags in groups.items():
            left = args.budget - (time.perf_counter() - started)
            # The short groups need about 70 s each on an H100; the main group (and the build) gets the rest.
            timeout = left - 2 * 70 if name == "bf16" else left / (2 if name == "fp16_gc" else 1)
            results[name] = bench(args, name, flags, model, output, max(timeout, 10))
    runs = results["bf16"].get("runs", {})
    print(f"\nChecks (bf16 group, {'tiny' if args.tiny else 'SD 1.5 size, 512 px'}):", flush=True)
    checks = [
        check(
            "diffusers loop / iddm vanilla LoRA step time (iddm speed >= 0.95x)",
            ratio(runs, "diffusers_lora", "vanilla_lora", "ms_per_step"),
            0.95,
            at_most=False,
        ),  # fmt: skip
        check(
            "iddm vanilla LoRA / diffusers loop peak memory",
            ratio(runs, "vanilla_lora", "diffusers_lora", "peak_mib"),
            1.05,
        ),  # fmt: skip
        check("IDDM / vanilla LoRA peak memory", ratio(runs, "iddm_lora", "vanilla_lora", "peak_mib"), 1.5),
        check(
            "IDDM / vanilla LoRA time (steps + data round)",
            ratio(runs, "iddm_lora", "vanilla_lora", "wall_seconds"),
            1.3,
        ),  # fmt: skip
    ]
    for group in ("fp16_gc", "bf16_gc"):
        group_runs = results[group].get("runs", {})
        checks.append(check(f"{group}: IDDM / vanilla LoRA peak memory",
                            ratio(group_runs, "iddm_lora", "vanilla_lora", "peak_mib"), 1.5))  # fmt: skip
    summary = {"seconds": time.perf_counter() - started, "checks": checks, "groups": results}
    (output / "gpu_sd_scale.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"\n{len([c for c in checks if c['ok']])}/{len(checks)} checks pass in {summary['seconds']:.0f} s; "
          f"records in {output}", flush=True)  # fmt: skip
    return 0 if all(c["ok"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
