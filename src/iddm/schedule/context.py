"""What the personalization loop's hooks and artifacts see of a run: its state and a protocol of its parts.

:class:`iddm.schedule.trainer.Trainer` satisfies :class:`RunContext`; hooks and artifacts depend on this module,
not on the trainer, so the trainer can import them without an import circle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from iddm.decouple import DataOptimizer, PrivacySettings
from iddm.diffusion import Backbone
from iddm.schedule.config import PersonalizeConfig
from iddm.schedule.plan import StagePlan


@dataclass
class TrainingState:
    """Everything that changes during training and is restored on resume (with the weights)."""

    step: int
    generator: torch.Generator
    data_generator: torch.Generator
    history: dict
    loss: float = float("nan")

    @classmethod
    def fresh(cls, seed: int) -> TrainingState:
        history = {"loss": [], "rounds": [], "initial": None}
        return cls(0, torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 7919), history)


class RunContext(Protocol):
    """The parts of a running personalization that hooks and artifacts read (and, for ``state``, update)."""

    config: PersonalizeConfig
    privacy: PrivacySettings
    output_dir: Path
    backbone: Backbone
    accelerator: Any  # accelerate.Accelerator
    clean: torch.Tensor  # (N, 3, R, R) clean training photos in [0, 1], on the run's device
    plan: StagePlan
    data_optimizer: DataOptimizer | None
    method: str
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    state: TrainingState
