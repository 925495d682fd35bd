"""Train iddm's attribute model (gender, age band, ethnicity) on UTKFace and ship it in ``iddm/weights/attributes``.

UTKFace (Z. Zhang, Y. Song, H. Qi, "Age Progression/Regression by Conditional Adversarial Autoencoder", CVPR
2017) is for **non-commercial research only**; so are the weights this writes. Its photos are never copied into
the repository: the script reads them from ``--data`` and writes only the fp16 weights, ``metrics.json`` (the
held-out accuracies), a README with the credit, and the folder's ``SHA256SUMS``.

The file names ``AGE_GENDER_RACE_DATE.jpg`` carry the labels. Every photo is detected with YuNet and aligned
with :func:`iddm.evaluate.attributes.attribute_crop` (what the harness does to avatars); photos without a face
are counted and left out. UTKFace has no identity labels, so the held-out split cannot be identity-disjoint by
construction: photos are grouped by their collection timestamp to the minute (a burst of one person's photos
lands on one side) and whole groups are held out, chosen by a seeded hash.

Usage::

    nice -n 19 python benchmarks/train_attributes.py --data ../shared/data/faces/utkface [--epochs 30] [--threads 1]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from iddm.evaluate.attributes import (
    HEADS,
    METRICS_FILE,
    WEIGHTS_FILE,
    AttributeNet,
    age_band,
    attribute_crop,
    crop_features,
    predict_crops,
    split_logits,
)
from iddm.evaluate.face_utility import largest_face
from iddm.faces import DetectedFace
from iddm.images import atomic_write_json, atomic_write_safetensors, atomic_write_text, load_photo
from iddm.weights import write_manifest

OUT = Path(__file__).resolve().parents[1] / "src" / "iddm" / "weights" / "attributes"
README = """# iddm attribute model (gender, age band, ethnicity)

A one-hidden-layer network on a HOG and an 8 x 8 colour thumbnail of 64-px aligned face crops, trained by
`benchmarks/train_attributes.py` on the labels of UTKFace:
Z. Zhang, Y. Song, H. Qi, "Age Progression/Regression by Conditional Adversarial Autoencoder", CVPR 2017
(https://susanqq.github.io/UTKFace/). UTKFace is available for **non-commercial research purposes only**;
these weights inherit that restriction. No UTKFace photo is shipped. Held-out accuracy: `metrics.json`.

`face_shape.json` is a statistical model of the same faces' shapes (dlib's 68 points: mean shape, 24 principal
modes and their variances; `benchmarks/fit_face_shape.py`), under the same restriction.
"""


def labels_of(path: Path) -> tuple[int, int, int, str] | None:
    """``(gender, age band, ethnicity, group)`` from ``AGE_GENDER_RACE_DATE.jpg``; ``None`` for a malformed name."""
    parts = path.stem.split("_")
    if len(parts) < 4 or not all(p.isdigit() for p in parts[:4]) or int(parts[1]) > 1 or int(parts[2]) > 4:
        return None
    return int(parts[1]), age_band(int(parts[0])), int(parts[2]), parts[3][:12]


def utkface_faces(data: Path, skipped: dict[str, int]) -> Iterator[tuple[np.ndarray, DetectedFace, tuple]]:
    """``(photo, its largest face, its labels)`` of every usable UTKFace photo; counts what is left out in
    ``skipped`` (``bad_name``: no labels in the file name, ``no_face``: YuNet found none)."""
    for path in sorted(data.glob("*.jpg")):
        label = labels_of(path)
        if label is None:
            skipped["bad_name"] += 1
            continue
        image = load_photo(path)
        face = largest_face(image)
        if face is None:
            skipped["no_face"] += 1
            continue
        yield image, face, label


def load_crops(data: Path) -> tuple[np.ndarray, np.ndarray, list[str], dict]:
    """Aligned crops, labels ``(N, 3)`` and split groups of every usable photo, and what was left out."""
    crops, labels, groups, skipped = [], [], [], {"bad_name": 0, "no_face": 0}
    for image, face, label in utkface_faces(data, skipped):
        crops.append(attribute_crop(image, face))
        labels.append(label[:3])
        groups.append(label[3])
    return np.stack(crops), np.array(labels, dtype=np.int64), groups, skipped


def held_out(groups: list[str], fraction: float, seed: int) -> np.ndarray:
    """``(N,)`` bool: the photo's group hashes (with the seed) into the held-out ``fraction``."""

    def unit(group: str) -> float:
        return int(hashlib.sha256(f"{seed}:{group}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF

    return np.array([unit(g) < fraction for g in groups])


def augmented(crops: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Features of the crops, of their mirror images, and of a grey copy of a random 15% (some avatars are black and
    white), with their labels."""
    grey_index = rng.permutation(len(crops))[: len(crops) * 15 // 100]
    grey = crops[grey_index].mean(3, keepdims=True).round().astype(np.uint8).repeat(3, axis=3)
    parts = [crops, crops[:, :, ::-1], grey]
    features = np.concatenate([crop_features(part) for part in parts])
    return features, np.concatenate([labels, labels, labels[grey_index]])


def loss_of(model: AttributeNet, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    blocks = split_logits(model(x))
    return sum(F.cross_entropy(block, y[:, i]) for i, block in enumerate(blocks.values()))


def evaluate(model: AttributeNet, crops: np.ndarray, labels: np.ndarray) -> dict:
    model.eval()
    predictions = predict_crops(crops, model)
    result = {}
    for i, (name, classes) in enumerate(HEADS.items()):
        majority = np.bincount(labels[:, i], minlength=len(classes)).max() / len(labels)
        result[name] = {
            "accuracy": round(float(np.mean(predictions[name] == labels[:, i])), 4),
            "majority_class_rate": round(float(majority), 4),
            "classes": list(classes),
        }
    return result


def train(crops: np.ndarray, labels: np.ndarray, epochs: int, seed: int) -> AttributeNet:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    features, labels = augmented(crops, labels, rng)
    model = AttributeNet(features.shape[1])
    model.mean.copy_(torch.from_numpy(features.mean(0)))
    model.std.copy_(torch.from_numpy(features.std(0) + 1e-3))
    x_all, y_all = torch.from_numpy(features), torch.from_numpy(labels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    steps = epochs * -(-len(features) // 128)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=steps)
    for epoch in range(epochs):
        model.train()
        started, total = time.perf_counter(), 0.0
        order = torch.from_numpy(rng.permutation(len(features)))
        for start in range(0, len(order), 128):
            index = order[start : start + 128]
            loss = loss_of(model, x_all[index], y_all[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(index)
        print(f"epoch {epoch + 1}/{epochs}: loss {total / len(features):.3f} ({time.perf_counter() - started:.0f} s)")
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/faces/utkface"))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--held_out", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/iddm_utkface_crops.npz"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.cache.is_file():
        cached = np.load(args.cache, allow_pickle=False)
        crops, labels = cached["crops"], cached["labels"]
        groups, skipped = list(cached["groups"]), json.loads(str(cached["skipped"]))
    else:
        crops, labels, groups, skipped = load_crops(args.data)
        arrays = {"crops": crops, "labels": labels, "groups": np.array(groups)}
        np.savez(args.cache, **arrays, skipped=json.dumps(skipped))
    test = held_out(groups, args.held_out, args.seed)
    print(f"{len(crops)} faces ({skipped}); {int(test.sum())} held out in {len(set(np.array(groups)[test]))} groups")
    model = train(crops[~test], labels[~test], args.epochs, args.seed)
    metrics = {
        "data": "UTKFace (Zhang, Song and Qi, CVPR 2017), aligned & cropped subset; non-commercial research only",
        "split": f"held-out {args.held_out:.0%} of collection-minute groups (seed {args.seed}); no identity labels",
        "num_train": int((~test).sum()),
        "num_held_out": int(test.sum()),
        "skipped": skipped,
        "epochs": args.epochs,
        "held_out": evaluate(model, crops[test], labels[test]),
    }
    print(json.dumps(metrics["held_out"], indent=1))
    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write_safetensors(
        OUT / WEIGHTS_FILE, {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    )
    atomic_write_json(OUT / METRICS_FILE, metrics)
    atomic_write_text(OUT / "README.md", README)
    write_manifest(OUT)


if __name__ == "__main__":
    main()
