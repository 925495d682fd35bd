"""CUDA running out of memory in ``iddm personalize`` is one line that names the flags lowering the memory."""

from __future__ import annotations

import torch

from iddm.cli import main
from iddm.schedule.trainer import Trainer

FLAGS = ["--gradient_checkpointing", "--mixed_precision", "--train_batch_size 1"]


def _personalize(train_dir, tmp_path, *extra: str) -> list[str]:
    return [
        "personalize", "--photos", str(train_dir), "--output_dir", str(tmp_path / "run"),
        "--pretrained_model_name_or_path", "iddm:micro", "--resolution", "32",
        "--max_train_steps", "2", "--train_batch_size", "2", "--checkpointing_steps", "0", "--validation_steps", "0",
        *extra,
    ]  # fmt: skip


def _out_of_memory(self, step: int) -> float:
    # What the CUDA caching allocator raises, message and all.
    raise torch.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 2.50 GiB. GPU 0 has a total capacity of 11.76 GiB of which 1.02 GiB "
        "is free.\nIf reserved but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF"
    )


def test_cuda_out_of_memory_in_a_step_is_one_line_naming_the_flags(train_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Trainer, "step", _out_of_memory)
    capsys.readouterr()
    code = main(_personalize(train_dir, tmp_path))
    _, err = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("iddm personalize: error:")]
    assert len(errors) == 1 and errors[0] == err.strip().splitlines()[-1], err
    for flag in FLAGS:
        assert flag in errors[0], errors[0]
    assert "PYTORCH_CUDA_ALLOC_CONF" not in errors[0]  # iddm's advice, not the allocator's


def test_other_runtime_errors_keep_their_message(train_dir, tmp_path, monkeypatch, capsys):
    def broken(self, step: int) -> float:
        raise RuntimeError("something else broke")

    monkeypatch.setattr(Trainer, "step", broken)
    capsys.readouterr()
    assert main(_personalize(train_dir, tmp_path)) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("iddm personalize: error: RuntimeError: something else broke"), last
    assert "--gradient_checkpointing" not in last
