"""Benchmark cells as Ray tasks: ``iddm benchmark --workers N`` (a local Ray started for the run) or
``--ray_address ADDR|auto`` (an existing cluster). Ray is imported here only, and only then.

Each cell is one task running :func:`iddm.evaluate.cells.execute_cell` (the same function as the
sequential loop, so the same files and the same numbers), declaring its resources: ``cpus_per_cell``
CPUs (and as many torch threads) and, for Stable Diffusion cells on a cluster with GPUs, one GPU, so
a multi-GPU node runs one cell per GPU. At most ``workers`` tasks are in flight. A task that raises,
runs out of memory or whose worker dies becomes the cell's ``error.json``; the other cells go on.
Ctrl-C cancels the tasks in flight (their processes are killed) and keeps every finished cell.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

from iddm.evaluate.cells import Cell, CellPlan, execute_cell, record_failure
from iddm.evaluate.dataset import Identity
from iddm.evaluate.linkability import FaceSet
from iddm.evaluate.results import CellFailure, CellRecord

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'iddm[ray]'"
CONNECT_TIMEOUT_S = 3.0
OBJECT_STORE_BYTES = 256 * 1024**2
"""A local Ray's object store: the cells exchange only embeddings and small records."""


def require_ray() -> Any:
    """The ``ray`` module, or ``ImportError`` with the one line that says what to install."""
    try:
        import ray
    except ImportError:
        raise ImportError(
            f"--workers and --ray_address run cells on Ray, which is not installed: {INSTALL_HINT}"
        ) from None
    return ray


def check_address(address: str) -> None:
    """Fail within :data:`CONNECT_TIMEOUT_S` seconds when ``address`` (``host:port``, ``ray://host:port``) does
    not answer; ``auto`` is left to Ray, which fails at once when no cluster runs on this machine."""
    if address == "auto":
        return
    parts = urlsplit(address if "://" in address else f"gcs://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or not port:
        raise ValueError(f"--ray_address {address!r} is not HOST:PORT, ray://HOST:PORT or auto.")
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as err:
        raise ValueError(
            f"--ray_address {address}: nothing answers there ({err.strerror or err}); start the cluster with "
            "`ray start --head` on its head node, or leave --ray_address out to run a local Ray."
        ) from None


def _connect(ray: Any, workers: int | None, address: str | None, cpus_per_cell: int) -> None:
    if address is None:
        ray.init(
            num_cpus=(workers or 1) * cpus_per_cell,
            include_dashboard=False,
            log_to_driver=False,
            object_store_memory=OBJECT_STORE_BYTES,
            configure_logging=False,
        )
        return
    try:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    except ConnectionError as err:
        raise ValueError(f"--ray_address {address}: {err}") from None


def _describe(error: BaseException) -> str:
    """One line for a task's error: a Python exception of the cell, an out-of-memory kill, or a dead worker."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        error = cause
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:500]}"


COST_PER_METHOD = {"vanilla": 1.0, "noise": 1.0, "cloak": 1.2, "iddm": 1.5, "iddm-unbounded": 1.5, "aspl": 2.2}
"""A cell's personalization time relative to vanilla's, roughly (measured on the face prior, README Results)."""


def expected_cost(cell: Cell, identity: Identity) -> float:
    """Relative cost of a cell, for starting the longest of an identity's cells first (greedy scheduling's
    shortest makespan).

    Data steps grow with the number of training photos; the training steps do not.
    """
    factor = COST_PER_METHOD.get(cell.method, 1.5)
    return 1.0 + (factor - 1.0) * max(identity.num_train, 1) / 5


def run_cells_on_ray(
    cells: Sequence[Cell],
    identities: Sequence[Identity],
    faces: Mapping[str, FaceSet],
    plan: CellPlan,
    workers: int | None,
    address: str | None,
    cpus_per_cell: int,
    gpu_cells: bool,
) -> list[CellRecord | CellFailure]:
    """Run ``cells`` as Ray tasks, at most ``workers`` at once (``None``: as many as the cluster fits).

    Args:
        faces: every identity's photos as embedded by the attacker (shipped to the workers once).
        gpu_cells: the cells run Stable Diffusion: each takes one GPU when the cluster has GPUs.

    Returns:
        The outcome of every cell, in completion order.
    """
    from iddm.progress import progress_bar

    ray = require_ray()
    started = time.perf_counter()
    _connect(ray, workers, address, cpus_per_cell)
    outcomes: list[CellRecord | CellFailure] = []
    in_flight: dict[Any, tuple[Cell, float]] = {}
    try:
        gpus = ray.cluster_resources().get("GPU", 0) if gpu_cells else 0
        logger.info(
            "Ray ready in %.1f s: %s CPUs, %s GPUs; each cell takes %d CPU(s)%s.",
            time.perf_counter() - started,
            ray.cluster_resources().get("CPU", 0),
            ray.cluster_resources().get("GPU", 0),
            cpus_per_cell,
            " and 1 GPU" if gpus else "",
        )
        task = ray.remote(execute_cell).options(num_cpus=cpus_per_cell, num_gpus=1 if gpus else 0, max_retries=0)
        plan = replace(plan, torch_threads=cpus_per_cell)
        faces_ref = ray.put(dict(faces))
        by_name = {i.name: i for i in identities}
        # Identity by identity, so that a run stopped halfway has whole identities to report and a rerun finishes
        # the rest; within an identity, the longest cells first.
        rank = {identity.name: i for i, identity in enumerate(identities)}
        queue = sorted(cells, key=lambda c: (rank[c.identity], -expected_cost(c, by_name[c.identity])))
        limit = workers or len(cells)
        failed = 0
        with progress_bar(total=len(cells), desc="benchmark cells", unit="cell") as bar:
            while queue or in_flight:
                while queue and len(in_flight) < limit:
                    cell = queue.pop(0)
                    ref = task.remote(cell, by_name[cell.identity], faces_ref, plan, capture_output=True)
                    in_flight[ref] = (cell, time.perf_counter())
                bar.set_postfix_str(f"done {len(outcomes) - failed}, running {len(in_flight)}, failed {failed}")
                ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
                for ref in ready:
                    cell, submitted = in_flight.pop(ref)
                    try:
                        outcome = ray.get(ref)
                    except Exception as err:  # noqa: BLE001 - a dead worker or an OOM kill fails this cell only
                        outcome = record_failure(cell, plan.output_dir, _describe(err))
                    if isinstance(outcome, CellFailure):
                        failed += 1
                        logger.error("Cell %s failed: %s (log: %s).", cell.label, outcome.error, outcome.log)
                    logger.info(
                        "Cell %s returned %.1f s after submission.", cell.label, time.perf_counter() - submitted
                    )
                    outcomes.append(outcome)
                    bar.update(1)
            bar.set_postfix_str(f"done {len(outcomes) - failed}, failed {failed}")
    except KeyboardInterrupt:
        logger.warning("Interrupted: cancelling %d running cell(s); finished cells are kept.", len(in_flight))
        for ref in in_flight:
            ray.cancel(ref, force=True)
        # Let the cancellations land before disconnecting: shutting down under a task's late reply can abort Ray.
        ray.wait(list(in_flight), num_returns=len(in_flight), timeout=10)
        raise
    finally:
        ray.shutdown()
    return outcomes
