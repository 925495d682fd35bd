"""What IDDM costs at real Stable Diffusion scale: time and peak memory of iddm's own trainer.

Builds a Stable Diffusion 1.5-sized pipeline with RANDOM weights in code (UNet 860 M, VAE 84 M, CLIP
text encoder 123 M parameters, the real CLIP tokenizer), saves it with ``save_pretrained`` to a temp
folder, and runs :func:`iddm.schedule.personalize` on it, in one process on one device:

* ``vanilla LoRA``: LoRA, privacy off, ``--steps`` steps;
* ``IDDM LoRA``: LoRA, privacy high with ``round_steps`` 10, ``data_steps`` 6, ``stage1_fraction`` 1.0
  (so ``steps / 10 * 6`` data steps), surrogate ``sface`` only;
* ``DreamBooth``: full UNet fine-tuning, privacy off, gradient checkpointing on, ``--db_steps`` steps.

A short LoRA run first warms the device up (kernels, cuDNN/cuBLAS handles) and is not reported. Time is
the personalization loop (``RunResult.wall_seconds``, data rounds included); peak memory is
``torch.cuda.max_memory_allocated`` over the whole ``personalize`` call (reset before each run). The
cost of one data step is derived as ``(IDDM - vanilla) / data steps``, so it includes the per-round
bookkeeping (surrogate cosines, PSNR/SSIM of the decoupled photos).

Prints a Markdown table with ratios to vanilla LoRA, and writes ``$OUT/bench_sd_scale.json`` when the
environment variable ``OUT`` is set (after every run, so a run cut short keeps what it measured). A
failing run is recorded with its traceback and the others still run.

    python benchmarks/bench_sd_scale.py [--steps 60] [--db_steps 30]    # SD 1.5 size, on CUDA (bf16)
    python benchmarks/bench_sd_scale.py --tiny                          # the tiny pipeline, CPU smoke test
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO / "tests" / "fixtures" / "photos"
TOKENIZER_FALLBACK = REPO / ".gpu_wheels" / "clip_tokenizer"
"""A saved copy of iddm's CLIP tokenizer, used only if building it fails where the benchmark runs."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def clip_tokenizer(errors: list[str]):
    from iddm.diffusion import build_clip_tokenizer

    try:
        return build_clip_tokenizer()
    except Exception:  # noqa: BLE001 - recorded, then a saved copy is tried
        errors.append("build_clip_tokenizer failed:\n" + traceback.format_exc())
        log(errors[-1])
        if not TOKENIZER_FALLBACK.is_dir():
            raise
        from transformers import CLIPTokenizer

        return CLIPTokenizer.from_pretrained(TOKENIZER_FALLBACK)


def build_sd15_pipeline(errors: list[str]):
    """Stable Diffusion 1.5's architecture with random weights (nothing downloaded)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from iddm.diffusion.tiny import assemble_sd_pipeline

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
        scaling_factor=0.18215,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=1,
            hidden_size=768,
            intermediate_size=3072,
            num_attention_heads=12,
            num_hidden_layers=12,
            vocab_size=49408,
            max_position_embeddings=77,
            projection_dim=768,
            hidden_act="quick_gelu",
        )
    )
    return assemble_sd_pipeline(unet, vae, text_encoder, clip_tokenizer(errors))


def parameter_counts(pipe) -> dict[str, int]:
    return {name: sum(p.numel() for p in getattr(pipe, name).parameters()) for name in ("unet", "vae", "text_encoder")}


def peak_mib(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process-wide, never reset


def run_one(name: str, overrides: dict, base: dict, device: str, work: Path) -> dict:
    """One ``personalize`` call; returns its timings and memory, or the error it raised."""
    from iddm.config import build_config
    from iddm.schedule import PersonalizeConfig, personalize

    values = {**base, **overrides, "output_dir": str(work / f"out-{name}")}
    record: dict = {"name": name, "config": {k: v for k, v in values.items() if k not in ("photos", "output_dir")}}
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        record["allocated_before_mib"] = torch.cuda.memory_allocated() / 2**20
    log(f"run {name}: {overrides}")
    started = time.perf_counter()
    try:
        result = personalize(build_config(PersonalizeConfig, values))
    except Exception as err:  # noqa: BLE001 - the benchmark reports iddm's errors instead of stopping
        record.update(ok=False, error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
        record["total_seconds"] = time.perf_counter() - started
        if device == "cuda":
            record["peak_mib"] = peak_mib(device)
        log(f"run {name} FAILED:\n{record['traceback']}")
        return record
    finally:
        shutil.rmtree(work / f"out-{name}", ignore_errors=True)
    rounds = result.log.get("rounds", [])
    data_steps = sum(1 for _ in rounds) * result.privacy.data_steps
    record.update(
        ok=True,
        steps=result.steps,
        wall_seconds=result.wall_seconds,
        total_seconds=time.perf_counter() - started,
        rounds=len(rounds),
        data_steps=data_steps,
        final_loss=result.final_loss,
        peak_mib=peak_mib(device),
        ms_per_step=1000 * result.wall_seconds / result.steps,
        steps_per_s=result.steps / result.wall_seconds,
    )
    if rounds:
        last = rounds[-1]
        record["last_round"] = {k: last[k] for k in ("surrogate_cos_x0_mean", "psnr_db", "ssim", "linf_255")}
    log(
        f"run {name}: {result.steps} steps + {data_steps} data steps in {result.wall_seconds:.2f} s "
        f"(call {record['total_seconds']:.1f} s), peak {record['peak_mib']:.0f} MiB"
    )
    return record


def summarize(records: dict[str, dict]) -> dict:
    """Ratios to vanilla LoRA and the derived cost of one data step."""
    derived: dict = {}
    vanilla, iddm, db = records.get("vanilla_lora"), records.get("iddm_lora"), records.get("dreambooth")
    if vanilla and vanilla.get("ok"):
        if iddm and iddm.get("ok"):
            derived["iddm_over_vanilla_time"] = iddm["wall_seconds"] / vanilla["wall_seconds"]
            derived["iddm_over_vanilla_peak_mem"] = iddm["peak_mib"] / vanilla["peak_mib"]
            if iddm["data_steps"]:
                extra = iddm["wall_seconds"] - vanilla["wall_seconds"] * iddm["steps"] / vanilla["steps"]
                derived["ms_per_data_step"] = 1000 * extra / iddm["data_steps"]
                derived["data_step_over_personalization_step"] = derived["ms_per_data_step"] / vanilla["ms_per_step"]
        if db and db.get("ok"):
            derived["dreambooth_over_vanilla_steps_per_s"] = db["steps_per_s"] / vanilla["steps_per_s"]
            derived["dreambooth_over_vanilla_peak_mem"] = db["peak_mib"] / vanilla["peak_mib"]
    return derived


def markdown(records: dict[str, dict], derived: dict, header: str) -> str:
    labels = {"vanilla_lora": "vanilla LoRA", "iddm_lora": "IDDM LoRA (high)", "dreambooth": "DreamBooth (GC)"}
    vanilla = records.get("vanilla_lora") if records.get("vanilla_lora", {}).get("ok") else None
    lines = [
        header,
        "",
        "| run | steps | data steps | loop (s) | ms/step | steps/s | time / vanilla LoRA per step | peak (MiB) | "
        "peak / vanilla LoRA |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, label in labels.items():
        r = records.get(key)
        if r is None:
            continue
        if not r.get("ok"):
            lines.append(f"| {label} | FAILED: {r['error'][:150]} | | | | | | | |")
            continue
        time_ratio = r["ms_per_step"] / vanilla["ms_per_step"] if vanilla else float("nan")
        mem_ratio = r["peak_mib"] / vanilla["peak_mib"] if vanilla else float("nan")
        lines.append(
            f"| {label} | {r['steps']} | {r['data_steps']} | {r['wall_seconds']:.2f} | {r['ms_per_step']:.1f} | "
            f"{r['steps_per_s']:.2f} | {time_ratio:.2f} | {r['peak_mib']:.0f} | {mem_ratio:.2f} |"
        )
    if "ms_per_data_step" in derived:
        lines += [
            "",
            f"IDDM / vanilla LoRA wall time: {derived['iddm_over_vanilla_time']:.2f}x; one data step "
            f"(3 photos, all rounds' bookkeeping included): {derived['ms_per_data_step']:.0f} ms = "
            f"{derived['data_step_over_personalization_step']:.1f} personalization steps.",
        ]
    return "\n".join(lines)


def write_json(payload: dict) -> None:
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "bench_sd_scale.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="The tiny random pipeline at 64 px (CPU smoke test).")
    parser.add_argument("--steps", type=int, default=None, help="LoRA steps, vanilla and IDDM (default 60; tiny 6).")
    parser.add_argument("--db_steps", type=int, default=None, help="DreamBooth steps (default 30; tiny 4).")
    parser.add_argument("--round_steps", type=int, default=None, help="IDDM K (default 10; tiny 2).")
    parser.add_argument("--data_steps", type=int, default=6, help="IDDM M, data steps per round.")
    parser.add_argument("--warmup_steps", type=int, default=4, help="Steps of the unreported warm-up LoRA run.")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available).")
    parser.add_argument("--skip", nargs="*", default=[], help="Runs to skip: warmup vanilla_lora iddm_lora dreambooth")
    args = parser.parse_args()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    steps = args.steps or (6 if args.tiny else 60)
    db_steps = args.db_steps or (4 if args.tiny else 30)
    round_steps = args.round_steps or (2 if args.tiny else 10)
    data_steps = 2 if args.tiny and args.data_steps == 6 else args.data_steps
    resolution = 64 if args.tiny else 512

    import diffusers
    import transformers

    env = {
        "device": device,
        "gpu": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
    }
    try:
        import cv2

        env["opencv"] = cv2.__version__
    except ImportError:
        pass
    log(f"environment: {env}")
    errors: list[str] = []
    payload: dict = {"env": env, "errors": errors, "runs": {}, "derived": {}}
    work = Path(tempfile.mkdtemp(prefix="bench_sd_scale-"))
    try:
        model = work / "sd"
        started = time.perf_counter()
        if args.tiny:
            from iddm.diffusion import build_tiny_sd_pipeline

            pipe = build_tiny_sd_pipeline(resolution=resolution)
        else:
            pipe = build_sd15_pipeline(errors)
        payload["parameters"] = parameter_counts(pipe)
        built = time.perf_counter()
        pipe.save_pretrained(model, safe_serialization=True)
        del pipe
        gc.collect()
        payload["build_seconds"] = built - started
        payload["save_seconds"] = time.perf_counter() - built
        log(
            f"pipeline {payload['parameters']} built in {payload['build_seconds']:.1f} s, saved in "
            f"{payload['save_seconds']:.1f} s to {model}"
        )
        photos = work / "photos"
        photos.mkdir()
        for path in sorted(PHOTOS.glob("obama_[123].jpg")):
            shutil.copy(path, photos / path.name)

        base = {
            "photos": str(photos),
            "pretrained_model_name_or_path": str(model),
            "method": "lora",
            "resolution": resolution,
            "train_batch_size": 1,
            "max_train_steps": steps,
            "learning_rate": 1e-4,
            "mixed_precision": "bf16" if device == "cuda" else "no",
            "surrogates": ["sface"],
            "checkpointing_steps": 0,
            "validation_steps": 0,
            "num_validation_images": 1,
            "num_inference_steps": 1,
            "seed": 0,
        }
        iddm = {"privacy": "high", "round_steps": round_steps, "data_steps": data_steps, "stage1_fraction": 1.0}
        plan = [
            ("warmup", {"max_train_steps": args.warmup_steps}),
            ("vanilla_lora", {}),
            ("iddm_lora", iddm),
            (
                "dreambooth",
                {
                    "method": "dreambooth",
                    "gradient_checkpointing": True,
                    "max_train_steps": db_steps,
                    "learning_rate": 5e-6,
                },
            ),
        ]
        for name, overrides in plan:
            if name in args.skip:
                continue
            payload["runs"][name] = run_one(name, overrides, base, device, work)
            payload["derived"] = summarize(payload["runs"])
            write_json(payload)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    records = {k: v for k, v in payload["runs"].items() if k != "warmup"}
    header = (
        f"iddm at Stable Diffusion {'(tiny random) ' if args.tiny else '1.5 size (random weights) '}scale: "
        f"{resolution} px, batch 1, {base['mixed_precision']} mixed precision, {env['gpu']} ({device}); "
        f"IDDM: privacy high, K={round_steps}, M={data_steps}, stage1_fraction 1.0, surrogate sface"
    )
    print("\n" + markdown(records, payload["derived"], header) + "\n", flush=True)
    print(json.dumps({"derived": payload["derived"]}, indent=2), flush=True)
    failed = [k for k, v in payload["runs"].items() if not v.get("ok")]
    if failed or errors:
        print(f"\nERRORS in {failed or 'setup'}:", flush=True)
        for k in failed:
            print(f"--- {k} ---\n{payload['runs'][k]['traceback']}", flush=True)
        for e in errors:
            print(e, flush=True)
    write_json(payload)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
