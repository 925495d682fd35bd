"""Personalization on the face prior, attacked: do generations link to a held-out person?

    python benchmarks/prior_personalize.py [--prior DIR] [--people Tony_Blair ...] [--privacy off medium]

For each held-out LFW person (never seen in pretraining): the first ``--num_train`` photos (by file name) are the
user's training photos; iddm's own trainer (``iddm.schedule.personalize``, LoRA on the prior through the Stable
Diffusion code path: VAE encode/decode, frozen CLIP text encoder, peft LoRA) personalizes the prior once per
privacy level, ``iddm.diffusion.generate`` draws ``--num_samples`` images with ``--prompt``, and the attacker
links them with dlib (black-box) and SFace (white-box when IDDM ran) to:

* ``reference``: the person's other photos (all held out from training);
* ``gallery``: those photos labelled as the user, plus 10 photos of each other LFW person (the pretraining
  ones and the other held-out ones) and every identity of ``tests/fixtures/photos``.

LoRA settings default to the prior's ``iddm_prior.json``; every one can be overridden. Writes ``results.json``,
``results.md`` and a grid of samples per run into ``--output_dir``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from iddm.config import build_config
from iddm.diffusion.generate import GenerateConfig, generate_images, load_for_generation
from iddm.evaluate.linkability import embed_images, linkability
from iddm.faces import load_recognizer
from iddm.images import atomic_write_json, atomic_write_text, load_photo, make_grid, save_png
from iddm.prior import HELD_OUT_IDENTITIES, PRIOR_FILE, default_prior_path
from iddm.schedule import PersonalizeConfig, personalize

REPO = Path(__file__).resolve().parents[1]
LFW = REPO / "data" / "faces" / "lfw7"
FIXTURES = REPO / "tests" / "fixtures" / "photos"
BACKENDS = ("dlib", "sface")
SURROGATES = {"sface", "facenet"}  # IDDM's default surrogates: white-box when privacy is on


def gallery_photos(person: str) -> dict[str, list[np.ndarray]]:
    """Distractor identity -> photos: 10 of each other LFW person, every fixture identity."""
    groups = {}
    for folder in sorted(p for p in LFW.iterdir() if p.is_dir() and p.name != person):
        groups[folder.name] = [load_photo(p) for p in sorted(folder.glob("*.jpg"))[:10]]
    for path in sorted(FIXTURES.glob("*.jpg")):
        groups.setdefault(path.stem.rsplit("_", 1)[0], []).append(load_photo(path))
    return groups


def lora_settings(prior: Path, args) -> dict:
    recommended = json.loads((prior / PRIOR_FILE).read_text())["personalization"]
    keys = ("lora_rank", "lora_target_modules", "learning_rate", "max_train_steps", "train_batch_size",
            "lr_scheduler", "instance_prompt", "guidance_scale", "num_inference_steps")  # fmt: skip
    settings = {key: recommended[key] for key in keys if key in recommended}
    for key in keys:
        if getattr(args, key, None) is not None:
            settings[key] = getattr(args, key)
    settings["crop"] = recommended.get("crop", "aligned")
    return settings


def run(person: str, privacy: str, prior: Path, settings: dict, args, recognizers, attacker) -> dict:
    out = args.output_dir / person / privacy
    photos = args.output_dir / person / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    for path in sorted((LFW / person).glob("*.jpg"))[: args.num_train]:
        shutil.copy(path, photos / path.name)
    config = build_config(
        PersonalizeConfig,
        {
            "pretrained_model_name_or_path": str(prior),
            "photos": photos,
            "output_dir": out,
            "method": "lora",
            "privacy": privacy,
            "seed": args.seed,
            "checkpointing_steps": 0,
            "validation_steps": 0,
            "overwrite": True,
            **{k: v for k, v in settings.items() if k not in ("num_inference_steps",)},
        },
    )
    started = time.perf_counter()
    result = personalize(config)
    train_wall = time.perf_counter() - started
    started = time.perf_counter()
    backbone = load_for_generation(prior, lora=out)
    samples = generate_images(
        backbone,
        GenerateConfig(
            prompt=[settings["instance_prompt"]],
            num_images=args.num_samples,
            seed=1000,
            guidance_scale=settings["guidance_scale"],
            num_inference_steps=settings.get("num_inference_steps", 25),
        ),
    )
    generate_wall = time.perf_counter() - started
    save_png(out / "samples.png", make_grid(samples, columns=8))
    probes = embed_images(samples, recognizers)
    reference, gallery = attacker
    white = SURROGATES if privacy != "off" else set()
    return {
        "train_wall_s": train_wall,
        "loop_s": result.wall_seconds,
        "generate_wall_s": generate_wall,
        "final_loss": result.final_loss,
        "face_detection_rate": probes.detection_rate,
        "fr": {
            r.name: linkability(probes, reference, gallery, "user", r, white_box=key in white)
            for key, r in zip(BACKENDS, recognizers)
        },
    }


def markdown(results: dict) -> str:
    lines = [
        "| person | privacy | steps | dlib match / rank-1 / cos | sface match / rank-1 / cos | face det. | train s | "
        "generate s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for person, levels in results["runs"].items():
        for privacy, row in levels.items():
            cells = [person, privacy, str(results["settings"]["max_train_steps"])]
            for name in ("dlib", "sface"):
                fr = row["fr"][name]
                cells.append(f"{fr['match_rate']:.2f} / {fr['rank1']:.2f} / {fr['mean_cosine_heldout']:.3f}")
            cells += [
                f"{row['face_detection_rate']:.2f}",
                f"{row['train_wall_s']:.0f}",
                f"{row['generate_wall_s']:.0f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prior", type=Path, default=None, help="Prior folder (default: the shipped one).")
    parser.add_argument("--people", nargs="+", default=HELD_OUT_IDENTITIES, help="Held-out LFW people.")
    parser.add_argument("--privacy", nargs="+", default=["off"], help="Privacy levels to run (e.g. off medium).")
    parser.add_argument("--num_train", type=int, default=5, help="Training photos (the first by file name).")
    parser.add_argument("--num_samples", type=int, default=16, help="Generations attacked per run.")
    parser.add_argument("--output_dir", type=Path, default=Path("runs/prior_personalize"), help="Where results go.")
    parser.add_argument("--seed", type=int, default=0, help="Personalization seed.")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads.")
    parser.add_argument("--lora_rank", type=int, default=None)
    parser.add_argument("--lora_target_modules", nargs="+", default=None)
    parser.add_argument("--learning_rate", type=float, default=None)
    parser.add_argument("--max_train_steps", type=int, default=None)
    parser.add_argument("--train_batch_size", type=int, default=None)
    parser.add_argument("--lr_scheduler", default=None)
    parser.add_argument("--instance_prompt", default=None)
    parser.add_argument("--guidance_scale", type=float, default=None)
    parser.add_argument("--num_inference_steps", type=int, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    prior = args.prior or default_prior_path()
    settings = lora_settings(prior, args)
    recognizers = [load_recognizer(name) for name in BACKENDS]
    results = {"prior": str(prior), "settings": settings, "runs": {}}
    for person in args.people:
        paths = sorted((LFW / person).glob("*.jpg"))
        if not paths:
            raise SystemExit(f"No photos of {person} in {LFW}.")
        reference = embed_images([load_photo(p) for p in paths[args.num_train :]], recognizers)
        distractors = gallery_photos(person)
        images = [load_photo(p) for p in paths[args.num_train :]] + [i for g in distractors.values() for i in g]
        labels = ["user"] * (len(paths) - args.num_train) + [n for n, g in distractors.items() for _ in g]
        gallery = embed_images(images, recognizers, labels)
        for privacy in args.privacy:
            print(f"== {person}, privacy {privacy}", flush=True)
            row = run(person, privacy, prior, settings, args, recognizers, (reference, gallery))
            results["runs"].setdefault(person, {})[privacy] = row
            atomic_write_json(args.output_dir / "results.json", results)
            print(json.dumps({k: v for k, v in row.items() if k != "fr"}), flush=True)
            for name, fr in row["fr"].items():
                print(f"   {name}: match {fr['match_rate']:.2f} rank-1 {fr['rank1']:.2f} (chance "
                      f"{fr['chance_rank1']:.3f}) cos {fr['mean_cosine_heldout']:.3f}", flush=True)  # fmt: skip
    atomic_write_text(args.output_dir / "results.md", markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
