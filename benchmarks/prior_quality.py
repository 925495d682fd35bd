"""Quality of the face prior: a grid of samples, their face detection rate, and the autoencoder on held-out faces.

    python benchmarks/prior_quality.py [--prior DIR] [--num_samples 64] [--grid docs/images/prior_samples.png]

* Samples: ``--num_samples`` images through plain diffusers (``StableDiffusionPipeline``), sample ``i`` with seed
  ``i`` and the colour caption for even ``i``, the black-and-white caption for odd ``i``; face detection rate
  with YuNet (``iddm.faces.detect_faces``: any face found), overall and per caption.
* Autoencoder: PSNR / SSIM of ``decode(encode(x))`` (posterior mean) against the aligned 64-px crops of the
  held-out people (never seen in pretraining) and, for comparison, of the pretraining LFW people; plus how well
  the reconstruction keeps the identity (dlib cosine between crop and reconstruction, and the share above dlib's
  own threshold).

Writes the grid PNG and a JSON of every number (``--json``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

from iddm.evaluate.linkability import embed_images
from iddm.evaluate.quality import mean_psnr_ssim
from iddm.faces import detect_faces, load_recognizer
from iddm.images import atomic_write_json, load_photo, make_grid, save_png
from iddm.prior import HELD_OUT_IDENTITIES, PRIOR_FILE, default_prior_path
from iddm.prior.data import aligned_crop, find_identities, is_excluded

REPO = Path(__file__).resolve().parents[1]


def crops_of(data_dir: Path, identities: list[str], resolution: int, margin: float, limit: int | None) -> list:
    """Aligned ``(R, R, 3)`` uint8 crops of every photo (at most ``limit`` per identity) of the given identities."""
    found = find_identities(data_dir)
    crops = []
    for identity, paths in found.items():
        if is_excluded(identity, identities):
            for path in paths[:limit]:
                crops.append(aligned_crop(load_photo(path), str(path), resolution, margin))
    return crops


@torch.no_grad()
def reconstruct(pipeline: StableDiffusionPipeline, crops: list[np.ndarray]) -> list[np.ndarray]:
    """``decode(encode(x).mean)`` of uint8 crops, as uint8."""
    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 127.5 - 1
    out = []
    for start in range(0, len(x), 32):
        latents = pipeline.vae.encode(x[start : start + 32]).latent_dist.mean
        decoded = pipeline.vae.decode(latents).sample
        out.append(((decoded.clamp(-1, 1) + 1) * 127.5 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return list(np.concatenate(out))


def identity_kept(crops: list[np.ndarray], recons: list[np.ndarray], recognizer) -> dict:
    """dlib cosine between each crop and its reconstruction (where both show a face)."""
    a = embed_images(crops, [recognizer])
    b = embed_images(recons, [recognizer])
    both = a.detected & b.detected
    ea = a.embeddings[recognizer.name][both[a.detected]]
    eb = b.embeddings[recognizer.name][both[b.detected]]
    cos = (ea * eb).sum(axis=1)
    return {
        "num": int(both.sum()),
        "mean_cosine": float(cos.mean()),
        "share_above_threshold": float((cos >= recognizer.threshold).mean()),
        "threshold": float(recognizer.threshold),
        "reconstruction_detection_rate": float(b.detected.mean()),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prior", type=Path, default=None, help="Prior folder (default: the shipped one).")
    parser.add_argument("--data_dir", type=Path, default=REPO / "data" / "faces", help="Face corpus.")
    parser.add_argument("--num_samples", type=int, default=64, help="Samples in the grid.")
    parser.add_argument("--guidance_scale", type=float, default=3.0, help="Classifier-free guidance of the samples.")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps of the samples.")
    parser.add_argument("--grid", type=Path, default=REPO / "docs" / "prior_samples.png", help="Grid PNG to write.")
    parser.add_argument("--json", type=Path, default=REPO / "docs" / "prior_quality.json", help="Numbers to write.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads.")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    prior = args.prior or default_prior_path()
    info = json.loads((prior / PRIOR_FILE).read_text())
    captions = [info["captions"]["color"], info["captions"]["gray"]]
    resolution, margin = info["personalization"]["resolution"], info["personalization"]["margin"]
    pipeline = StableDiffusionPipeline.from_pretrained(prior, local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)

    started = time.perf_counter()
    samples = []
    for i in range(args.num_samples):
        image = pipeline(
            captions[i % 2],
            num_inference_steps=args.steps,
            guidance_scale=args.guidance_scale,
            generator=torch.Generator().manual_seed(i),
            output_type="np",
        ).images[0]
        samples.append((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8))
    sample_seconds = time.perf_counter() - started
    detected = np.array([len(detect_faces(image)) > 0 for image in samples])
    save_png(args.grid, make_grid(samples, columns=8))

    dlib = load_recognizer("dlib")
    held_out = crops_of(args.data_dir, HELD_OUT_IDENTITIES, resolution, margin, None)
    seen_people = [n for n in ("Ariel_Sharon", "Colin_Powell", "Donald_Rumsfeld", "George_W_Bush")]
    seen = crops_of(args.data_dir, seen_people, resolution, margin, None)
    held_rec, seen_rec = reconstruct(pipeline, held_out), reconstruct(pipeline, seen)
    held_psnr, held_ssim = mean_psnr_ssim(held_out, held_rec)
    seen_psnr, seen_ssim = mean_psnr_ssim(seen, seen_rec)
    save_png(args.grid.with_name(args.grid.stem + "_vae.png"), make_grid(held_out[::10] + held_rec[::10], columns=15))
    result = {
        "prior": str(prior),
        "samples": {
            "num": args.num_samples,
            "guidance_scale": args.guidance_scale,
            "steps": args.steps,
            "face_detection_rate": float(detected.mean()),
            "face_detection_rate_color_caption": float(detected[0::2].mean()),
            "face_detection_rate_gray_caption": float(detected[1::2].mean()),
            "seconds_per_sample": sample_seconds / args.num_samples,
        },
        "autoencoder": {
            "held_out": {"num": len(held_out), "psnr_db": held_psnr, "ssim": held_ssim,
                         "dlib_identity": identity_kept(held_out, held_rec, dlib)},
            "pretraining_lfw_people": {"num": len(seen), "psnr_db": seen_psnr, "ssim": seen_ssim,
                                       "dlib_identity": identity_kept(seen, seen_rec, dlib)},
        },
    }  # fmt: skip
    atomic_write_json(args.json, result)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
