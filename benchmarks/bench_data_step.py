"""What one IDDM data step costs on the face prior, in personalization steps, and what its parts cost.

The run is built exactly as ``iddm personalize`` builds it (default base model, its personalization defaults,
the photos given), then timed: one personalization step, one data step, and inside the data step the model's
x̂0 path (VAE encode, UNet, VAE decode; forward and backward to the photos) and each surrogate's forward and
backward pass on the photos' crops. The surrogates are timed with their weights in channels-last memory format
(iddm's placement, :func:`iddm.faces.base.place`) and, as the baseline of the same run, contiguous. Each
measurement is the best of ``--repeats``, the layouts taking turns so that a busy machine slows both alike.
The last row projects IDDM's loop time over vanilla's at equal steps from the run's own plan (rounds x data
steps).

Usage::

    python benchmarks/bench_data_step.py [--photos data/eval/Tony_Blair/set_A] [--privacy high] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from bench_faces import best_seconds  # this folder is on sys.path when the script runs

from iddm.decouple.objective import ObjectiveInputs
from iddm.decouple.privacy import PrivacyConfig
from iddm.schedule.config import PersonalizeConfig
from iddm.schedule.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


def best_ms_per_layout(recognizers, layouts: list[torch.memory_format], fns, repeats: int) -> list[list[float]]:
    """Best time in ms of each of ``fns`` with the surrogates' weights in each layout, ``[layout][fn]``. The layouts
    take turns ``repeats`` times and the conversion between them is not timed."""
    best = [[float("inf")] * len(fns) for _ in layouts]
    for _ in range(repeats):
        for row, memory_format in zip(best, layouts):
            for recognizer in recognizers:
                recognizer.model.to(memory_format=memory_format)
            row[:] = [min(b, seconds * 1000) for b, seconds in zip(row, best_seconds(fns, 1))]
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, default=ROOT / "data" / "eval" / "Tony_Blair" / "set_A")
    parser.add_argument("--privacy", default="high")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: as a benchmark cell runs)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        config = PersonalizeConfig(
            photos=args.photos, output_dir=Path(tmp) / "run", privacy_config=PrivacyConfig(privacy=args.privacy)
        )
        trainer = Trainer(config)
    backbone, optimizer, plan = trainer.backbone, trainer.data_optimizer, trainer.plan
    if optimizer is None:
        raise SystemExit(f"--privacy {args.privacy} runs no data steps; choose low, medium or high")
    identity, generator, clean = optimizer.identity, trainer.state.data_generator, trainer.clean
    photos = clean.clone().requires_grad_(True)
    indices = torch.arange(len(clean))
    backbone.train(False)
    conditioning = backbone.encode_prompts([config.instance_prompt] * len(clean)).detach()
    inputs = ObjectiveInputs(clean, backbone, conditioning, identity, optimizer.settings, generator)

    def personalization_step():
        backbone.train(True)
        trainer.step(0)

    def data_step():
        optimizer.step(inputs)

    def x0_path():
        x0 = backbone.denoised_estimate(photos, conditioning, generator, optimizer.settings.max_denoise_timestep)
        torch.autograd.grad(x0.sum(), photos)

    def surrogate(recognizer):
        return lambda: torch.autograd.grad(identity.embed(recognizer, photos, indices).sum(), photos)

    parts = [("personalization step", personalization_step), ("x̂0 path (fwd+bwd)", x0_path)]
    parts += [(f"{r.name} (fwd+bwd)", surrogate(r)) for r in identity.recognizers]
    parts += [("data step", data_step)]
    layouts = [torch.contiguous_format, torch.channels_last]
    fns = [fn for _, fn in parts]
    contiguous, channels_last = best_ms_per_layout(identity.recognizers, layouts, fns, args.repeats)

    data_steps = plan.rounds * plan.data_steps
    print(
        f"{len(clean)} photos at {backbone.resolution} px, privacy {args.privacy}: {plan.rounds} rounds x "
        f"{plan.data_steps} data steps over {plan.total_steps} personalization steps; {args.threads} thread(s)\n"
    )
    print("| part | contiguous ms | channels-last ms | ratio |")
    print("|---|---|---|---|")
    for (name, _), base, ours in zip(parts, contiguous, channels_last):
        print(f"| {name} | {base:.0f} | {ours:.0f} | {ours / base:.2f}x |")
    step = contiguous[0], channels_last[0]
    data = contiguous[-1], channels_last[-1]
    projected = [(plan.total_steps * s + data_steps * d) / (plan.total_steps * s) for s, d in zip(step, data)]
    print(f"| data step / personalization step | {data[0] / step[0]:.1f} | {data[1] / step[1]:.1f} | |")
    print(f"| projected IDDM / vanilla loop time | {projected[0]:.2f} | {projected[1]:.2f} | |")


if __name__ == "__main__":
    main()
