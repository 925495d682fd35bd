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


def best_seconds(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Best wall time of each function; the functions take turns, so a busy machine slows all of them alike."""
    for fn in fns:
        fn()  # warm-up
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, record in zip(fns, times):
            start = time.perf_counter()
            fn()
            record.append(time.perf_counter() - start)
    return [min(record) for record in times]


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
        xg = x.clone().requires_grad_(True)
        x_dlib = to_tensor(crops_for(dlib_resnet, photos, batch))

        def torch_inference(x=x):
            with torch.inference_mode():
                return sface.embed(x)

        seconds = best_seconds(
            [
                lambda bgr=bgr: [cv_sface.feature(c) for c in bgr],
                torch_inference,
                lambda xg=xg: torch.autograd.grad(sface.embed(xg).sum(), xg),
                lambda x_dlib=x_dlib: dlib_resnet.embed(x_dlib),
            ],
            args.repeats,
        )
        reference[("sface", batch)] = batch / seconds[0]
        rows.append(("cv2 FaceRecognizerSF (reference)", batch, batch / seconds[0], "sface"))
        rows.append(("SFace torch, inference", batch, batch / seconds[1], "sface"))
        rows.append(("SFace torch, forward+backward", batch, batch / seconds[2], "sface"))
        rows.append(("dlib ResNet (no reference)", batch, batch / seconds[3], ""))

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

            def facenet_inference(x=x):
                with torch.inference_mode():
                    return facenet.embed(x)

            if cv_facenet is not None:
                cv_seconds, seconds = best_seconds([run_cv, facenet_inference], args.repeats)
                reference[("facenet", batch)] = batch / cv_seconds
                rows.append(("cv2.dnn FaceNet graph (reference)", batch, batch / cv_seconds, "facenet"))
            else:
                (seconds,) = best_seconds([facenet_inference], args.repeats)
            rows.append(("FaceNet torch, inference", batch, batch / seconds, "facenet"))

    print(
        f"CPU, {args.threads} threads, torch {torch.__version__}, OpenCV {cv2.__version__}; best of {args.repeats}\n"
    )
    print("| backend | batch | faces/s | vs reference |")
    print("|---|---:|---:|---:|")
    for name, batch, rate, ref in rows:
        ratio = f"{rate / reference[(ref, batch)]:.2f}x" if (ref, batch) in reference else "-"
        print(f"| {name} | {batch} | {rate:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
