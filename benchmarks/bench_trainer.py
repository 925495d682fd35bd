"""Personalization speed and memory: iddm's LoRA trainer against a minimal diffusers-style loop.

Both run the same tiny Stable Diffusion pipeline (random weights), the same face crops, LoRA rank,
optimizer, batch size and number of steps, each in a fresh process (so peak memory is its own).
Prints a Markdown table with the ratio to the reference measured in the same run.

    python benchmarks/bench_trainer.py [--steps 40] [--resolution 64] [--batch 4]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

PHOTOS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "photos"


def _peak_mb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_iddm(model: str, photos: str, args: dict, queue) -> None:
    from iddm.config import build_config
    from iddm.schedule import PersonalizeConfig, personalize

    out = tempfile.mkdtemp()
    config = build_config(
        PersonalizeConfig,
        {
            "photos": photos,
            "output_dir": out,
            "pretrained_model_name_or_path": model,
            "method": "lora",
            "max_train_steps": args["steps"],
            "train_batch_size": args["batch"],
            "learning_rate": 1e-4,
            "checkpointing_steps": 0,
            "validation_steps": 0,
            "num_validation_images": 1,
            "num_inference_steps": 1,
            "resolution": args["resolution"],
        },
    )
    result = personalize(config)
    queue.put({"steps_per_s": args["steps"] / result.wall_seconds, "peak_mb": _peak_mb(args["device"])})
    shutil.rmtree(out, ignore_errors=True)


def run_reference(model: str, photos: str, args: dict, queue) -> None:
    """The loop of diffusers' train_dreambooth_lora.py, reduced to its essentials."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from peft import LoraConfig

    from iddm.diffusion import prepare_photos

    torch.manual_seed(0)
    device = torch.device(args["device"])
    pipe = StableDiffusionPipeline.from_pretrained(model, local_files_only=True)
    unet, vae, text_encoder, tokenizer = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False).to(device)
    unet.add_adapter(
        LoraConfig(
            r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"]
        )
    )
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)
    images = prepare_photos(photos, resolution=args["resolution"], crop="portrait").images.to(device)
    ids = tokenizer(
        ["a photo of sks person"] * args["batch"],
        padding="max_length",
        max_length=77,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)
    with torch.no_grad():
        context = text_encoder(ids)[0]
    unet.train()
    start = time.perf_counter()
    for _ in range(args["steps"]):
        batch = images[torch.randint(0, len(images), (args["batch"],))]
        latents = vae.encode(batch * 2 - 1).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), device=device)
        pred = unet(scheduler.add_noise(latents, noise, t), t, context).sample
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    wall = time.perf_counter() - start
    queue.put({"steps_per_s": args["steps"] / wall, "peak_mb": _peak_mb(args["device"])})


def measure(target, model: str, photos: str, args: dict) -> dict:
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(model, photos, args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="Training steps per measurement.")
    parser.add_argument("--resolution", type=int, default=64, help="Image resolution (px).")
    parser.add_argument("--batch", type=int, default=4, help="Batch size.")
    parser.add_argument("--repeats", type=int, default=2, help="Alternating repeats of each loop; best is kept.")
    parser.add_argument("--model", default=None, help="A diffusers SD folder (default: a tiny random one).")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available).")
    args = parser.parse_args()
    import torch

    from iddm.diffusion import save_tiny_sd_pipeline

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    work = Path(tempfile.mkdtemp())
    model = args.model or str(save_tiny_sd_pipeline(work / "tiny-sd", resolution=args.resolution))
    photos = work / "photos"
    photos.mkdir()
    for path in sorted(PHOTOS.glob("obama_[123].jpg")):
        shutil.copy(path, photos / path.name)
    settings = {"steps": args.steps, "resolution": args.resolution, "batch": args.batch, "device": device}
    results: dict[str, list[dict]] = {"reference": [], "iddm": []}
    for _ in range(args.repeats):  # alternate, so background load hits both alike
        results["reference"].append(measure(run_reference, model, str(photos), settings))
        results["iddm"].append(measure(run_iddm, model, str(photos), settings))
    best = {name: max(runs, key=lambda r: r["steps_per_s"]) for name, runs in results.items()}
    ref = best["reference"]
    print(
        f"\nLoRA personalization, {args.steps} steps, batch {args.batch}, {args.resolution} px, {device}, "
        f"{'tiny random SD' if args.model is None else args.model}, best of {args.repeats}\n"
    )
    print("| loop | steps/s | ratio to reference | peak memory (MB) | ratio |")
    print("|---|---|---|---|---|")
    for name, row in best.items():
        print(
            f"| {name} | {row['steps_per_s']:.2f} | {row['steps_per_s'] / ref['steps_per_s']:.3f} | "
            f"{row['peak_mb']:.0f} | {row['peak_mb'] / ref['peak_mb']:.3f} |"
        )
    print("\n" + json.dumps({"results": results}))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
