"""Whether avatars are good faces of one consistent person: SER-FIQ, consistency, and realism as a distribution.

* :func:`serfiq_scores`: SER-FIQ (Terhörst et al., "SER-FIQ: Unsupervised Estimation of Face Image Quality
  Based on Stochastic Embedding Robustness", CVPR 2020), the face quality the IDDM and Anti-DreamBooth papers
  report. The model is **SFace** (iddm's torch port, :class:`iddm.faces.sface.SFace`): its convolutional trunk
  runs once, then its last layer (the 50176 -> 128 embedding layer) runs :data:`SERFIQ_PASSES` times with
  dropout (p = 0.5) on its input; the score is ``2 / (1 + exp(mean pairwise euclidean distance))`` of the
  normalized embeddings, in ``(0, 1]``, higher = a face the model embeds stably (better quality).
* :func:`consistency`: mean pairwise FR cosine among one model's avatars (one virtual person: high).
* :func:`realism_features`, :func:`kernel_inception_distance`: the features of the realism distance are those
  of **TAEF2's encoder** (:func:`iddm.weights.taef2_path`, MIT, shipped with iddm, so nothing is downloaded):
  the 64 channels of its last block, averaged over the image, at 64 px. An autoencoder's features describe
  colour, texture and shape, what a reconstruction needs, and were never trained to tell people apart, so the
  distance does not reward or punish the identity change itself (an FR embedding would). CLIP is not used: no
  CLIP image weights are available offline. The numbers are not comparable with published (Inception) FID/KID.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from iddm.faces import DetectedFace, align_crop

SERFIQ_PASSES = 100
"""Stochastic forward passes per face (Terhörst et al. use 100)."""
SERFIQ_DROPOUT = 0.5
MIN_KID_SAMPLES = 4
"""Fewest feature vectors per set for :func:`kernel_inception_distance`; fewer give ``None``, never a number."""
REALISM_SIDE = 64


@functools.cache
def _sface():
    from iddm.faces import load_recognizer

    return load_recognizer("sface")


def _sface_trunk(model, faces: torch.Tensor) -> torch.Tensor:
    """SFace up to its embedding layer: ``(N, 3, 112, 112)`` in ``[0, 1]`` -> ``(N, 50176)`` (cf. ``SFaceNet``)."""
    x = (faces * 255.0 - 127.5) * 0.0078125
    for conv, prelu in zip(model.convs, model.prelus):
        x = prelu(conv(x))
    return x.flatten(1)


def serfiq_scores(
    images: Sequence[np.ndarray],
    faces: Sequence[DetectedFace | None],
    passes: int = SERFIQ_PASSES,
    seed: int = 0,
) -> list[float | None]:
    """SER-FIQ of each image's face (``None`` where no face was detected); seeded, so reproducible."""
    recognizer = _sface()
    model = recognizer.model
    generator = torch.Generator().manual_seed(seed)
    scores: list[float | None] = []
    for image, face in zip(images, faces):
        if face is None:
            scores.append(None)
            continue
        crop = align_crop(image, face.landmarks, recognizer.template, recognizer.input_size)
        batch = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255.0
        with torch.no_grad():
            features = _sface_trunk(model, batch.to(recognizer.device)).cpu()
            keep = torch.rand((passes, features.shape[1]), generator=generator) >= SERFIQ_DROPOUT
            dropped = features * keep / (1.0 - SERFIQ_DROPOUT)
            weight, bias = model.fc.weight.detach().cpu(), model.fc.bias.detach().cpu()
            embeddings = F.normalize(F.linear(dropped, weight, bias), dim=1)
            distances = torch.pdist(embeddings.double())
        scores.append(float(2.0 / (1.0 + math.exp(float(distances.mean())))))
    return scores


def consistency(embeddings: np.ndarray) -> float | None:
    """Mean pairwise cosine of ``(N, D)`` unit embeddings (``None`` below two faces)."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if len(embeddings) < 2:
        return None
    cosine = embeddings @ embeddings.T
    upper = np.triu_indices(len(embeddings), k=1)
    return float(cosine[upper].mean())


@functools.cache
def _taef2_encoder() -> torch.nn.Module:
    from iddm.diffusion.taef2 import TinyFluxAutoencoder
    from iddm.weights import taef2_path

    vae = TinyFluxAutoencoder.from_pretrained(taef2_path(), torch_dtype=torch.float32)
    return vae.encoder[:-1].eval().requires_grad_(False)  # up to the last 64-channel block


def realism_features(images: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
    """``(N, 64)`` float64: TAEF2 encoder features of whole RGB ``uint8`` images, resized to 64 px, pooled."""
    encoder = _taef2_encoder()
    rows = []
    for start in range(0, len(images), batch_size):
        chunk = [
            torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1).float() / 255.0
            for im in images[start : start + batch_size]
        ]
        batch = torch.stack(
            [
                F.interpolate(x[None], size=(REALISM_SIDE, REALISM_SIDE), mode="bilinear", antialias=True)[0]
                for x in chunk
            ]
        )
        with torch.no_grad():
            rows.append(encoder(batch).mean(dim=(2, 3)).double().numpy())
    return np.concatenate(rows) if rows else np.zeros((0, 64))


def kernel_inception_distance(
    a: np.ndarray,
    b: np.ndarray,
    subsets: int = 100,
    subset_size: int = 1000,
    min_samples: int = MIN_KID_SAMPLES,
    seed: int = 0,
) -> float | None:
    """KID (Bińkowski et al., ICLR 2018): the unbiased MMD² with the kernel ``(x·y / d + 1)³``, averaged over
    ``subsets`` random subsets of ``min(subset_size, N, M)`` rows of each set. Unbiased, so it can be slightly
    negative when the sets come from one distribution.

    Returns:
        The distance, or ``None`` with a warning when either set has fewer than ``min_samples`` rows.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if min(len(a), len(b)) < min_samples:
        warnings.warn(
            f"KID undefined: {len(a)} and {len(b)} feature vectors, at least {min_samples} per set needed.",
            stacklevel=2,
        )
        return None
    rng = np.random.default_rng(seed)
    m = min(subset_size, len(a), len(b))
    dim = a.shape[1]
    values = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = ((p @ q.T / dim + 1) ** 3 for p, q in ((x, x), (y, y), (x, y)))
        off = 1.0 - np.eye(m)
        values.append((kxx * off).sum() / (m * (m - 1)) + (kyy * off).sum() / (m * (m - 1)) - 2 * kxy.mean())
    return float(np.mean(values))
