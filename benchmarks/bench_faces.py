"""Faces per second of iddm's face recognizers on the CPU, next to their reference implementations.

Rows: torch SFace vs OpenCV's ``cv2.FaceRecognizerSF`` (the reference, same ONNX weights), dlib ResNet
(embedding from our aligned crop: shape predictor + chip + network), and, when ``iddm.faces.facenet``
is importable, torch FaceNet vs OpenCV's ``cv2.dnn`` running the frozen TF graph. Each measurement is the
best of ``--repeats`` timed runs after a warm-up, on real aligned crops of the test photos.

Usage::

    python benchmarks/bench_faces.py [--threads N] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from iddm.faces import align_crop, detect_single_face
from iddm.faces.dlib_backend import DlibResNet
from iddm.faces.sface import SFace, sface_model_path
from iddm.images import load_photo

PHOTOS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "photos"


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def crops_for(recognizer, photos, batch: int) -> np.ndarray:
    crops = [align_crop(img, face.landmarks, recognizer.template, recognizer.input_size) for img, face in photos]
    return np.stack([crops[i % len(crops)] for i in range(batch)])


def to_tensor(crops: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0


def opencv_facenet_net():
    """FaceNet's frozen graph up to its pre-normalization node, in a form cv2.dnn's TF importer accepts."""
    from tensorboard.compat.proto import graph_pb2

    from iddm.faces.facenet import INPUT_NODE, PRE_NORM_NODE, graph_path, read_graph

    graph = read_graph(graph_path())
    nodes = {node.name: node for node in graph.node}
    ordered, seen = [], set()
    stack = [(PRE_NORM_NODE, False)]
    while stack:  # iterative post-order: parents before children
        name, expanded = stack.pop()
        if expanded:
            ordered.append(nodes[name])
            continue
        if name in seen:
            continue
        seen.add(name)
        stack.append((name, True))
        stack.extend((p.lstrip("^").split(":")[0], False) for p in reversed(nodes[name].input))
    cut = graph_pb2.GraphDef()
    cut.node.extend(ordered)
    for node in cut.node:
        for i, parent in enumerate(node.input):
            if parent == f"{INPUT_NODE}:0":
                node.input[i] = INPUT_NODE
    return cv2.dnn.readNetFromTensorflow(np.frombuffer(cut.SerializeToString(), dtype=np.uint8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)

    photos = []
    for path in sorted(PHOTOS.glob("*.jpg")):
        image = load_photo(path)
        photos.append((image, detect_single_face(image, source=str(path))))

    rows: list[tuple[str, int, float, str]] = []  # (backend, batch, faces/s, reference name)
    reference: dict[tuple[str, int], float] = {}

    sface = SFace()
    cv_sface = cv2.FaceRecognizerSF.create(str(sface_model_path()), "")
    dlib_resnet = DlibResNet()
    for batch in args.batches:
        crops = crops_for(sface, photos, batch)
        bgr = [np.ascontiguousarray(c[:, :, ::-1]) for c in crops]
        x = to_tensor(crops)
        seconds = best_seconds(lambda: [cv_sface.feature(c) for c in bgr], args.repeats)
        reference[("sface", batch)] = batch / seconds
        rows.append(("cv2 FaceRecognizerSF (reference)", batch, batch / seconds, "sface"))
        with torch.inference_mode():
            seconds = best_seconds(lambda: sface.embed(x), args.repeats)
        rows.append(("SFace torch, inference", batch, batch / seconds, "sface"))
        xg = x.clone().requires_grad_(True)
        seconds = best_seconds(lambda: torch.autograd.grad(sface.embed(xg).sum(), xg), args.repeats)
        rows.append(("SFace torch, forward+backward", batch, batch / seconds, "sface"))
        x_dlib = to_tensor(crops_for(dlib_resnet, photos, batch))
        seconds = best_seconds(lambda: dlib_resnet.embed(x_dlib), max(1, args.repeats // 2))
        rows.append(("dlib ResNet (no reference)", batch, batch / seconds, ""))

    try:
        from iddm.faces.facenet import FaceNet

        facenet = FaceNet()
    except (ImportError, FileNotFoundError) as err:
        print(f"FaceNet skipped: {err}", file=sys.stderr)
        facenet = None
    if facenet is not None:
        try:
            cv_facenet = opencv_facenet_net()
        except (ImportError, cv2.error) as err:
            print(f"cv2.dnn cannot run FaceNet's graph: {err}", file=sys.stderr)
            cv_facenet = None
        for batch in args.batches:
            crops = crops_for(facenet, photos, batch)
            x = to_tensor(crops)
            if cv_facenet is not None:

                def run_cv(crops=crops):  # cv2.dnn runs this graph one image at a time only
                    out = []
                    for crop in crops:
                        # FaceNet's input is 160 x 160 (our crop may be taller: FaceNet.embed squashes it too).
                        x = cv2.resize(crop, (160, 160), interpolation=cv2.INTER_AREA).astype(np.float32)
                        x = (x - x.mean()) / max(x.std(), 1.0 / np.sqrt(x.size))  # FaceNet's prewhiten
                        cv_facenet.setInput(np.ascontiguousarray(x.transpose(2, 0, 1))[None])
                        out.append(cv_facenet.forward())
                    return out

                seconds = best_seconds(run_cv, args.repeats)
                reference[("facenet", batch)] = batch / seconds
                rows.append(("cv2.dnn FaceNet graph (reference)", batch, batch / seconds, "facenet"))
            with torch.inference_mode():
                seconds = best_seconds(lambda: facenet.embed(x), args.repeats)
            rows.append(("FaceNet torch, inference", batch, batch / seconds, "facenet"))

    print(f"CPU, {args.threads} threads, torch {torch.__version__}, OpenCV {cv2.__version__}; best of {args.repeats}\n")
    print("| backend | batch | faces/s | vs reference |")
    print("|---|---:|---:|---:|")
    for name, batch, rate, ref in rows:
        ratio = f"{rate / reference[(ref, batch)]:.2f}x" if (ref, batch) in reference else "-"
        print(f"| {name} | {batch} | {rate:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
