"""``iddm benchmark`` on Ray (``--workers``, ``--ray_address``): same answers as the sequential run, failed cells
recorded and retried, Ctrl-C, and the errors of a missing Ray or an unreachable cluster; real tiny runs."""

from __future__ import annotations

import csv
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import skimage.data
from conftest import TINY_BENCHMARK

from iddm.cli import main
from iddm.images import load_photo, save_png

pytest.importorskip("ray")

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def options(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("options") / "personalize.yaml"
    path.write_text("train_batch_size: 2\nnum_validation_images: 1\ncheckpointing_steps: 0\n")
    return path


def _dataset(root: Path, identity_photos, names=("obama", "macron", "sunak")) -> Path:
    for name in names:
        (root / name).mkdir(parents=True)
        for path in identity_photos[name]:
            (root / name / path.name).write_bytes(path.read_bytes())
    return root


def _args(dataset: Path, out: Path, options: Path, *extra: str) -> list[str]:
    args = ["benchmark", "--dataset", str(dataset), "--output_dir", str(out), *TINY_BENCHMARK, "--backends", "sface"]
    return [*args, "--surrogates", "sface", "--personalize_config", str(options), *extra]


def _rows(out: Path) -> list[dict]:
    with open(out / "results.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _run_subprocess(args: list[str], prelude: str = "", **kwargs) -> subprocess.Popen:
    code = f"import sys\n{prelude}\nfrom iddm.cli import main\nsys.exit(main({args!r}))\n"
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.Popen([sys.executable, "-c", code], env=env, text=True, preexec_fn=_as_from_a_shell, **kwargs)


def _as_from_a_shell() -> None:
    """In the child: SIGINT delivered and handled by default, as under a terminal. A blocked mask or an ignored
    disposition would be inherited from the test process, whose earlier tests run Ray and torch threads."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_two_workers_give_the_sequential_results(tmp_path, identity_photos, options, caplog):
    dataset = _dataset(tmp_path / "data", identity_photos)
    methods = ["--methods", "vanilla", "iddm", "--levels", "high"]
    # The sequential run, in a fresh process that must never import Ray, with one torch thread as each Ray task
    # has (across thread counts, float reductions may differ in the last bit: 1 level in 0.03% of the pixels).
    code = "import sys\nfrom iddm.cli import main\n"
    code += f"rc = main({_args(dataset, tmp_path / 'sequential', options, *methods)!r})\n"
    code += "assert 'ray' not in sys.modules, 'the sequential benchmark imported ray'\nsys.exit(rc)\n"
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True)
    assert done.returncode == 0, done.stderr[-3000:]

    caplog.set_level(logging.INFO, logger="iddm.progress")
    assert main(_args(dataset, tmp_path / "ray", options, *methods, "--workers", "2")) == 0
    # Off a terminal the bar is plain log lines; the last one counts the finished cells.
    progress = [r.getMessage() for r in caplog.records if r.name == "iddm.progress"]
    assert progress and progress[-1].startswith("benchmark cells: 100% 4/4") and "failed 0" in progress[-1]

    sequential, parallel = _rows(tmp_path / "sequential"), _rows(tmp_path / "ray")
    assert len(sequential) == 4 and [r["status"] for r in parallel] == ["done"] * 4
    for a, b in zip(sequential, parallel):
        a.pop("wall_s"), b.pop("wall_s")
        assert a == b
    for cell in (tmp_path / "ray" / "cells").glob("*/*"):
        twin = tmp_path / "sequential" / cell.relative_to(tmp_path / "ray")
        for image in (cell / "images").glob("image_*.png"):  # the same generations, bit for bit
            assert image.read_bytes() == (twin / "images" / image.name).read_bytes()
        log = (cell / "cell.log").read_text()
        assert "started" in log and "finished in" in log and "personalize" in log  # its progress bars too


def _kill_a_running_cell(stop: threading.Event, killed: list[str], cells: list[Path]) -> None:
    """SIGKILL the Ray worker of the first of ``cells`` seen running: started (its log names its process) and not
    finished (no ``cell.json`` yet)."""
    while not stop.is_set() and not killed:
        for folder in cells:
            log = folder / "cell.log"
            found = re.search(r"started in process (\d+)", log.read_text()) if log.is_file() else None
            if found is None or (folder / "cell.json").exists():
                continue
            os.kill(int(found.group(1)), signal.SIGKILL)
            killed.append(folder.parent.name)
            return
        time.sleep(0.05)


@pytest.mark.slow
def test_failed_cells_are_recorded_and_only_they_are_retried(tmp_path, identity_photos, options, capsys):
    dataset = _dataset(tmp_path / "data", identity_photos, names=("obama", "macron"))
    broken = dataset / "broken"
    broken.mkdir()
    save_png(broken / "a.png", skimage.data.coffee())  # the photo to train on shows no face: personalize fails
    (broken / "b.jpg").write_bytes(identity_photos["ardern"][0].read_bytes())
    out = tmp_path / "out"
    stop, killed = threading.Event(), []
    survivors = [out / "cells" / name / "vanilla-off-seed0" for name in ("obama", "macron")]
    killer = threading.Thread(target=_kill_a_running_cell, args=(stop, killed, survivors))
    killer.start()
    args = _args(dataset, out, options, "--methods", "vanilla")
    args[args.index("--max_train_steps") + 1] = "40"  # a cell runs for seconds: long enough to be caught running
    try:
        assert main([*args, "--workers", "2"]) == 1
    finally:
        stop.set()
        killer.join()
    assert killed, "no Ray worker was seen running a cell"
    err = capsys.readouterr().err
    assert "cells failed" in err and err.strip().splitlines()[-1].startswith("iddm benchmark: error:")
    rows = {r["identity"]: r for r in _rows(out)}
    assert set(rows) == {"broken", "macron", "obama"}
    failed = {name for name, r in rows.items() if r["status"] == "failed"}
    assert "broken" in failed and len(failed) == 2  # the broken folder, and the cell whose worker was killed
    assert "no usable photo" in rows["broken"]["error"] or "face" in rows["broken"]["error"]
    (crashed,) = failed - {"broken"}
    assert killed == [crashed]
    assert "Worker" in rows[crashed]["error"] or "died" in rows[crashed]["error"], rows[crashed]["error"]
    assert (
        "failed" in (out / "results.md").read_text()
        and (out / "cells" / "broken" / "vanilla-off-seed0" / "error.json").is_file()
    )
    (survivor,) = {"macron", "obama"} - failed
    finished = out / "cells" / survivor / "vanilla-off-seed0" / "cell.json"
    stamp = finished.stat().st_mtime_ns

    save_png(broken / "a.png", load_photo(identity_photos["ardern"][1]))  # mend the folder, rerun sequentially
    assert main(args) == 0
    assert finished.stat().st_mtime_ns == stamp  # a finished cell is never recomputed
    assert [r["status"] for r in _rows(out)] == ["done"] * 3
    assert not list((out / "cells").glob("*/*/error.json"))


def _ray_processes() -> set[int]:
    listing = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return {int(line.split()[0]) for line in listing.splitlines() if "raylet" in line or "ray::" in line}


@pytest.mark.slow
def test_ctrl_c_stops_the_workers_and_keeps_finished_cells(tmp_path, identity_photos, options):
    dataset = _dataset(tmp_path / "data", identity_photos)
    out = tmp_path / "out"
    before = _ray_processes()
    args = _args(dataset, out, options, "--methods", "vanilla", "iddm", "--levels", "high", "--workers", "1")
    args[args.index("--max_train_steps") + 1] = "100"  # cells long enough to interrupt one while it runs
    process = _run_subprocess(args, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not list(out.glob("cells/*/*/cell.json")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.5)
    finished = list(out.glob("cells/*/*/cell.json"))
    assert finished, "no cell finished"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err[-2000:]
    assert "interrupted" in err.strip().splitlines()[-1]
    assert all(p.is_file() for p in finished)
    time.sleep(2)
    assert _ray_processes() - before == set(), "Ray processes outlived the interrupted benchmark"
    assert len(list(out.glob("cells/*/*/cell.json"))) < 4


def test_without_ray_installed_workers_is_a_one_line_error(tmp_path, identity_photos, options):
    dataset = _dataset(tmp_path / "data", identity_photos, names=("obama", "sunak"))
    out = tmp_path / "out"
    process = _run_subprocess(
        _args(dataset, out, options, "--workers", "2"), "sys.modules['ray'] = None", stderr=subprocess.PIPE
    )
    _, err = process.communicate(timeout=120)
    assert process.returncode == 2
    assert err.strip() == (
        "iddm benchmark: error: --workers and --ray_address run cells on Ray, which is not installed: "
        "pip install 'iddm[ray]'"
    )
    assert not out.exists()


def test_an_unreachable_cluster_fails_within_seconds(tmp_path, identity_photos, options, capsys):
    dataset = _dataset(tmp_path / "data", identity_photos, names=("obama", "sunak"))
    out = tmp_path / "out"
    assert main(_args(dataset, out, options, "--ray_address", "not an address")) == 2  # (also warms the imports up)
    assert "is not HOST:PORT" in capsys.readouterr().err and not out.exists()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    started = time.monotonic()
    assert main(_args(dataset, out, options, "--ray_address", f"127.0.0.1:{port}")) == 2
    assert time.monotonic() - started < 10
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"iddm benchmark: error: --ray_address 127.0.0.1:{port}: nothing answers there")
    assert len(err.splitlines()) == 1 and not out.exists()


def test_a_cell_log_does_not_leave_library_handlers_on_its_closed_file(tmp_path):
    """A worker runs several cells: a library's console handler created during one cell (bound to the redirected
    stderr, its ``flush`` too, as diffusers and transformers do) must log to the next cell's file, not fail on the
    first's closed one."""
    import logging

    from iddm.evaluate.cells import _cell_log

    library = logging.getLogger("library_like_diffusers")
    library.propagate = False
    try:
        with _cell_log(tmp_path / "first.log", capture_output=True):
            handler = logging.StreamHandler()  # binds to sys.stderr, the first cell's file
            handler.flush = sys.stderr.flush  # diffusers.utils.logging does this
            library.addHandler(handler)
            library.warning("in the first cell")
        with _cell_log(tmp_path / "second.log", capture_output=True):
            library.warning("in the second cell")
    finally:
        library.handlers.clear()
    assert "in the first cell" in (tmp_path / "first.log").read_text()
    second = (tmp_path / "second.log").read_text()
    assert "in the second cell" in second and "Logging error" not in second
