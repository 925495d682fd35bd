"""The single personalization loop with IDDM's two-stage schedule, checkpoints, artifacts and model card."""

from iddm.schedule.config import PersonalizeConfig
from iddm.schedule.plan import StagePlan
from iddm.schedule.trainer import RunResult, Trainer, personalize

__all__ = ["PersonalizeConfig", "RunResult", "StagePlan", "Trainer", "personalize"]
