"""A fresh accelerate ``Accelerator`` for each training in one process."""

from __future__ import annotations

from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState


def fresh_accelerator(**kwargs) -> Accelerator:
    """``Accelerator(**kwargs)`` after clearing accelerate's process-wide state.

    accelerate keeps singletons per process; a process that runs several trainings (a benchmark, the tests, a
    notebook) may change precision or gradient accumulation between them, which accelerate otherwise refuses.
    The distributed state itself is kept.
    """
    AcceleratorState._reset_state()
    GradientState._reset_state()
    return Accelerator(**kwargs)
