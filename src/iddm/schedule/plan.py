"""The two-stage schedule of IDDM as a small pure object (docs/design.md §2.4)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StagePlan:
    """Which personalization steps are followed by a round of data steps.

    Stage 1 (decoupling) is ``rounds`` rounds of ``round_steps`` personalization steps, each followed
    by ``data_steps`` data steps on δ. Stage 2 (consolidation) is the remaining personalization steps
    on the frozen decoupled photos. ``rounds == 0`` is vanilla personalization.
    """

    total_steps: int
    round_steps: int
    rounds: int
    data_steps: int

    @classmethod
    def from_fraction(cls, total_steps: int, stage1_fraction: float, round_steps: int, data_steps: int) -> StagePlan:
        if not 0.0 <= stage1_fraction <= 1.0:
            raise ValueError(f"stage1_fraction must be in [0, 1], got {stage1_fraction}.")
        if round_steps < 1:
            raise ValueError(f"round_steps must be >= 1, got {round_steps}.")
        rounds = int(total_steps * stage1_fraction) // round_steps if data_steps > 0 else 0
        return cls(total_steps=total_steps, round_steps=round_steps, rounds=rounds, data_steps=data_steps)

    @property
    def stage1_steps(self) -> int:
        return self.rounds * self.round_steps

    @property
    def stage2_steps(self) -> int:
        return self.total_steps - self.stage1_steps

    @property
    def total_data_steps(self) -> int:
        return self.rounds * self.data_steps

    def stage(self, step: int) -> int:
        """Stage (1 or 2) of personalization step ``step`` (0-based)."""
        return 1 if step < self.stage1_steps else 2

    def data_round_after(self, step: int) -> bool:
        """Whether a round of data steps follows personalization step ``step`` (0-based)."""
        return step < self.stage1_steps and (step + 1) % self.round_steps == 0
