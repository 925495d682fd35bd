"""Quality of a face prior: samples per prompt (face found, colour), its autoencoder on held-out faces, and a
Fréchet distance between its samples and held-out real faces.

    python benchmarks/prior_quality.py [--prior iddm:face-prior-64 | PRIOR_FOLDER] [--corpus ../shared/data/faces]
        [--samples_per_prompt 64] [--name prior128]

* Samples: ``--samples_per_prompt`` images per prompt through plain diffusers (``StableDiffusionPipeline``),
  sample ``i`` of every prompt with seed ``i``; the prompts are the prior's own (its ``iddm_prior.json``: the
  sample prompts of a label-captioned prior, or the colour and black-and-white captions). Per prompt: the share
  with a face found by YuNet and by a second, unrelated detector (dlib's HOG frontal detector, upsampled once; the
  same two on the held-out real crops for reference), the mean colourfulness and the share that reads as black and
  white (colourfulness < ``GRAY_COLOURFULNESS``).
* Autoencoder: PSNR / SSIM of ``decode(encode(x))`` on aligned crops (the prior's resolution and margin) of people
  never seen in pretraining: the three held-out LFW people of ``data/faces`` and, with ``--corpus``, the 64
  held-out CFP people (frontal photos; ``benchmarks/cfp_eval_split.json``).
* Layout: per prompt, the share of samples whose largest face sits where iddm's aligned crop puts one, and the
  share with a second face (mirrored faces at the edges), beside the same shares on the held-out real crops.
* Realism: the Fréchet distance between FaceNet embeddings of the first prompt's samples ("a photo of a person"
  for every prior iddm ships) and of those held-out crops (biased upward for small sets: compare priors at equal
  ``--samples_per_prompt``).

Writes ``docs/images/<name>_samples.png`` (a row of 8 per prompt), ``docs/images/<name>_autoencoder.png``
(held-out crops over their reconstructions) and ``docs/results/<name>_quality.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

import iddm.diffusion  # noqa: F401  (registers the 128-px prior's autoencoder class with diffusers)
from iddm.diffusion.data import aligned_template
from iddm.evaluate.linkability import embed_images
from iddm.evaluate.quality import GRAY_COLOURFULNESS, colourfulness, frechet_distance, mean_psnr_ssim
from iddm.faces import detect_faces, load_recognizer
from iddm.images import PhotoError, atomic_write_json, load_photo, make_grid, save_png
from iddm.prior import PRIOR_FILE
from iddm.prior.config import HELD_OUT_LFW
from iddm.prior.data import aligned_crop
from iddm.weights import PRIOR_NAMES, prior_path

REPO = Path(__file__).resolve().parents[1]
IN_PLACE = 0.08
"""Mean landmark offset from the aligned template, as a share of the crop side, that still counts as in place."""


def held_out_crops(corpus: Path | None, resolution: int, margin: float) -> dict[str, list[np.ndarray]]:
    """Aligned uint8 crops of the held-out people: ``{"lfw": [...], "cfp": [...]}`` (CFP only with a corpus); photos
    without a detectable face are skipped and counted."""
    sets = {"lfw": [p for name in HELD_OUT_LFW for p in sorted((REPO / "data/faces/lfw7" / name).glob("*.jpg"))]}
    if corpus is not None:
        from make_eval_set import cfp_held_out  # the committed split, checked against this corpus

        sets["cfp"] = [
            p for identity in cfp_held_out(corpus) for p in sorted((corpus / identity).glob("frontal_*.jpg"))
        ]
    crops: dict[str, list[np.ndarray]] = {}
    for key, paths in sets.items():
        crops[key] = []
        for path in paths:
            try:
                crops[key].append(aligned_crop(load_photo(path), str(path), resolution, margin)[0])
            except (PhotoError, ValueError) as err:  # a face YuNet misses (FaceNotFoundError): counted, not a crash
                print(f"skipped {err}")
        print(f"{key}: {len(crops[key])} of {len(paths)} held-out photos cropped")
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


def face_layout(images: list[np.ndarray], resolution: int, margin: float) -> dict[str, float]:
    """Where YuNet finds faces in aligned crops or samples of them: the share whose largest face sits where the
    aligned crop puts a face (its five landmarks on average within ``IN_PLACE`` of the crop side from the template)
    and the share with a second face (the mirrored faces and eyes a prior learns from mirror-padded crops)."""
    template = aligned_template(resolution, margin)
    in_place, second = [], []
    for image in images:
        faces = detect_faces(image)  # largest first
        offset = np.linalg.norm(faces[0].landmarks - template, axis=1).mean() / resolution if faces else np.inf
        in_place.append(offset <= IN_PLACE)
        second.append(len(faces) > 1)
    return {"share_face_in_place": float(np.mean(in_place)), "share_second_face": float(np.mean(second))}


def dlib_face_rate(images: list[np.ndarray]) -> float:
    """Share of ``images`` (uint8 RGB) in which dlib's HOG frontal face detector (upsampled once, so that faces of
    a 128-px crop reach its 80-px window) finds a face: a second opinion beside YuNet, trained on other data."""
    import dlib

    detector = dlib.get_frontal_face_detector()
    return float(np.mean([len(detector(np.ascontiguousarray(image), 1)) > 0 for image in images]))


def prompts_of(info: dict) -> list[str]:
    captions = info["captions"]
    return list(captions["examples"]) if "examples" in captions else [captions["color"], captions["gray"]]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prior", default="iddm:face-prior", help=f"One of {PRIOR_NAMES} or a prior folder.")
    parser.add_argument("--corpus", type=Path, default=None, help="Face corpus holding cfp/ (held-out CFP people).")
    parser.add_argument("--samples_per_prompt", type=int, default=64, help="Samples per prompt.")
    parser.add_argument("--prompts", nargs="+", default=None, help="Prompts (default: the prior's own).")
    parser.add_argument("--guidance_scale", type=float, default=3.0, help="Classifier-free guidance of the samples.")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps of the samples.")
    parser.add_argument("--name", default="prior", help="Stem of the output files.")
    parser.add_argument("--threads", type=int, default=2, help="torch threads.")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    prior = prior_path(args.prior) if args.prior in PRIOR_NAMES else Path(args.prior)
    info = json.loads((prior / PRIOR_FILE).read_text())
    prompts = args.prompts or prompts_of(info)
    resolution, margin = info["personalization"]["resolution"], info["personalization"]["margin"]
    pipeline = StableDiffusionPipeline.from_pretrained(prior, local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)

    started = time.perf_counter()
    per_prompt, samples, rows = {}, [], []
    for prompt in prompts:
        images = []
        for i in range(args.samples_per_prompt):
            image = pipeline(
                prompt,
                num_inference_steps=args.steps,
                guidance_scale=args.guidance_scale,
                generator=torch.Generator().manual_seed(i),
                output_type="np",
            ).images[0]
            images.append((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8))
        colour = np.array([colourfulness(image) for image in images])
        per_prompt[prompt] = {
            "face_detection_rate": float(np.mean([len(detect_faces(image)) > 0 for image in images])),
            "face_detection_rate_dlib_hog": dlib_face_rate(images),
            "colourfulness": float(colour.mean()),
            "share_black_and_white": float((colour < GRAY_COLOURFULNESS).mean()),
            **face_layout(images, resolution, margin),
        }
        print(prompt, per_prompt[prompt], flush=True)
        samples.append(images)
        rows += images[:8]
    seconds = time.perf_counter() - started
    save_png(REPO / "docs/images" / f"{args.name}_samples.png", make_grid(rows, columns=8))

    crops = held_out_crops(args.corpus, resolution, margin)
    autoencoder, layouts = {}, {}
    for key, real in crops.items():
        rebuilt = reconstruct(pipeline, real)
        psnr_db, ssim_value = mean_psnr_ssim(real, rebuilt)
        autoencoder[key] = {"num": len(real), "psnr_db": psnr_db, "ssim": ssim_value}
        # the same measures on real crops, for reference
        layouts[key] = {**face_layout(real, resolution, margin), "face_detection_rate_dlib_hog": dlib_face_rate(real)}
        if key == "lfw":
            save_png(REPO / "docs/images" / f"{args.name}_autoencoder.png", make_grid(real[::15] + rebuilt[::15], 10))
    facenet = load_recognizer("facenet")
    real_faces = embed_images([c for group in crops.values() for c in group], [facenet])
    sample_faces = embed_images(samples[0], [facenet])
    result = {
        "prior": args.prior,
        "resolution": resolution,
        "samples": {
            "per_prompt": per_prompt,
            "num_per_prompt": args.samples_per_prompt,
            "guidance_scale": args.guidance_scale,
            "steps": args.steps,
            "seconds_per_sample": seconds / sum(len(images) for images in samples),
        },
        "autoencoder_held_out": autoencoder,
        "face_layout_held_out": layouts,
        "frechet_distance_facenet": {
            "prompt": prompts[0],
            "value": frechet_distance(sample_faces.embeddings[facenet.name], real_faces.embeddings[facenet.name]),
            "samples_with_a_face": int(sample_faces.detected.sum()),
            "held_out_real_faces": int(real_faces.detected.sum()),
        },
    }
    atomic_write_json(REPO / "docs/results" / f"{args.name}_quality.json", result)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
