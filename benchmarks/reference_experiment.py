"""IDDM's reference experiment on the micro backbone, with real photos and three real FR systems.

Trains on 3 Obama photos (the 4th is held out as the attacker's reference), once per level: vanilla
(``off``), IDDM ``low``/``medium``/``high`` (calibrated identity loss) and ``high-unbounded``, and two
controls at the ``high`` budget: ``noise`` (uniform ±ε) and ``cloak`` (one-shot FR cloak, then
ordinary training). Same seed and number of
personalization steps for all. Samples 16 avatars per run and attacks them with SFace and FaceNet
(white-box: the optimizer's surrogates) and dlib (black-box: never seen by the optimizer).

    python benchmarks/reference_experiment.py [--quick] [--output_dir runs/reference]

Writes ``results.json``, ``results.md`` and ``grid.png`` into the output folder. Finished runs are
reused when the command is run again (delete the folder to start over).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from iddm.config import build_config
from iddm.diffusion import INSTANCE_PROMPT
from iddm.diffusion.generate import generate_images, load_for_generation
from iddm.evaluate.linkability import embed_images, linkability
from iddm.evaluate.quality import brisque_score
from iddm.evaluate.results import to_json
from iddm.faces import load_recognizer
from iddm.images import atomic_write_json, atomic_write_text, load_photo, make_grid, save_png
from iddm.run_layout import LOG_FILE, PRIVATE_DIR
from iddm.schedule import PersonalizeConfig, personalize

PHOTOS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "photos"
LEVELS = {
    "off": {"privacy": "off"},
    "low": {"privacy": "low"},
    "medium": {"privacy": "medium"},
    "high": {"privacy": "high"},
    "noise": {"privacy": "high", "defense": "noise"},
    "cloak": {"privacy": "high", "defense": "cloak"},
    "high-unbounded": {"privacy": "high", "identity_loss": "unbounded"},
}
BACKENDS = {"sface": True, "facenet": True, "dlib": False}  # name -> white-box (a default surrogate)


def impostor_photos() -> dict[str, list[np.ndarray]]:
    """Real photos of every identity but the user's, from the fixtures and from installed packages."""
    import matplotlib.cbook
    import skimage.data

    groups: dict[str, list[np.ndarray]] = {}
    for path in sorted(PHOTOS.glob("*.jpg")):
        name = path.stem.rsplit("_", 1)[0]
        if name != "obama":
            groups.setdefault(name, []).append(load_photo(path))
    groups["collins"] = [skimage.data.astronaut()]
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as handle:
        from PIL import Image

        groups["hopper"] = [np.asarray(Image.open(handle).convert("RGB"))]
    return groups


def run_level(name: str, overrides: dict, photos: Path, out: Path, args) -> dict:
    config = build_config(
        PersonalizeConfig,
        {
            "photos": photos,
            "output_dir": out,
            "pretrained_model_name_or_path": "iddm:micro",
            "max_train_steps": args.steps,
            "seed": args.seed,
            "checkpointing_steps": 500,
            "validation_steps": 0,
            "num_validation_images": 4,
            "resume_from_checkpoint": "latest",
            **overrides,
        },
    )
    started = time.perf_counter()
    result = personalize(config)
    wall = time.perf_counter() - started
    return {"wall_s": wall, "loop_s": result.wall_seconds, "final_loss": result.final_loss}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, default=Path("runs/reference"), help="Where results go.")
    parser.add_argument("--quick", action="store_true", help="Smoke mode: 300 steps, 8 samples (about 10 min).")
    parser.add_argument("--steps", type=int, default=None, help="Personalization steps (default 1500, quick 300).")
    parser.add_argument("--num_samples", type=int, default=None, help="Avatars per run (default 16, quick 8).")
    parser.add_argument("--levels", nargs="+", default=list(LEVELS), choices=list(LEVELS), help="Runs to do.")
    parser.add_argument("--seed", type=int, default=0, help="Seed shared by every run.")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    args.steps = args.steps or (300 if args.quick else 1500)
    args.num_samples = args.num_samples or (8 if args.quick else 16)
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    train = out / "photos"
    train.mkdir(exist_ok=True)
    for path in sorted(PHOTOS.glob("obama_[123].jpg")):
        shutil.copy(path, train / path.name)

    recognizers = [load_recognizer(name) for name in BACKENDS]
    heldout = embed_images([load_photo(PHOTOS / "obama_4.jpg")], recognizers)
    impostors = impostor_photos()
    gallery_images = [load_photo(PHOTOS / "obama_4.jpg")] + [img for imgs in impostors.values() for img in imgs]
    gallery_labels = ["obama"] + [name for name, imgs in impostors.items() for _ in imgs]
    gallery = embed_images(gallery_images, recognizers, gallery_labels)

    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    if results.get("settings", {}).get("steps") != args.steps:
        results = {}
    results.setdefault("levels", {})
    results["settings"] = {"steps": args.steps, "num_samples": args.num_samples, "seed": args.seed}
    rows = {}
    for level in args.levels:
        run_dir = out / "runs" / level
        record = results["levels"].get(level)
        if record is None:
            print(f"== {level}: training {args.steps} steps", flush=True)
            timing = run_level(level, LEVELS[level], train, run_dir, args)
            backbone = load_for_generation(run_dir)
            samples = generate_images(backbone, [INSTANCE_PROMPT], args.num_samples, seed=1000, guidance_scale=1.0)
            for i, sample in enumerate(samples):
                save_png(run_dir / "samples" / f"sample_{i:02d}.png", sample)
            probes = embed_images(samples, recognizers)
            log = json.loads((run_dir / PRIVATE_DIR / LOG_FILE).read_text())
            final = log.get("final") or {}
            brisque = [brisque_score(s) for s in samples]
            record = {
                **timing,
                "face_detection_rate": probes.detection_rate,
                "brisque_mean": float(np.nanmean(brisque)),
                "psnr_db": final.get("psnr_db"),
                "ssim": final.get("ssim"),
                "linf_255": final.get("linf_255"),
                "fr": {
                    r.name: to_json(
                        linkability(
                            probes, heldout, gallery, "obama", r, "white-box" if BACKENDS[key] else "black-box"
                        )
                    )
                    for key, r in zip(BACKENDS, recognizers)
                },
            }
            results["levels"][level] = record
            atomic_write_json(results_path, results)
        rows[level] = record
    results["chance_rank1"] = next(iter(rows.values()))["fr"]["sface"]["chance_rank1"] if rows else None
    atomic_write_json(results_path, results)
    atomic_write_text(out / "results.md", markdown_table(results))
    grid_rows = []
    for level in args.levels:
        samples = sorted((out / "runs" / level / "samples").glob("*.png"))[:8]
        grid_rows.extend(load_photo(p, max_side=64) for p in samples)
    if grid_rows:
        save_png(out / "grid.png", make_grid(grid_rows, columns=8))
    print(markdown_table(results))
    return 0


def markdown_table(results: dict) -> str:
    levels = results["levels"]
    vanilla_wall = levels.get("off", {}).get("wall_s")
    names = list(next(iter(levels.values()))["fr"]) if levels else []
    header = ["run"] + [
        f"{n} {'(white-box)' if levels[next(iter(levels))]['fr'][n]['white_box'] else '(black-box)'}"
        f" match / rank-1 / cos"
        for n in names
    ]
    header += ["face det.", "BRISQUE", "PSNR dB", "SSIM", "wall s", "× vanilla"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for level, row in levels.items():
        cells = [level]
        for n in names:
            fr = row["fr"][n]
            cells.append(f"{fr['match_rate']:.2f} / {fr['rank1']:.2f} / {fr['ism']:.3f}")
        psnr = "–" if row["psnr_db"] is None else f"{row['psnr_db']:.1f}"
        ssim = "–" if row["ssim"] is None else f"{row['ssim']:.3f}"
        ratio = f"{row['wall_s'] / vanilla_wall:.2f}" if vanilla_wall else "–"
        cells += [
            f"{row['face_detection_rate']:.2f}",
            f"{row['brisque_mean']:.1f}",
            psnr,
            ssim,
            f"{row['wall_s']:.0f}",
            ratio,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    chance = results.get("chance_rank1")
    settings = results["settings"]
    lines.append("")
    lines.append(
        f"{settings['steps']} personalization steps, {settings['num_samples']} samples per run, seed "
        f"{settings['seed']}; rank-1 chance level {chance:.3f}. Match rate at each system's own threshold, "
        "rank-1 among identities (user = held-out photo), mean cosine to the held-out photo."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
