"""The single personalization loop with IDDM's two-stage schedule, checkpoints and model card."""

from iddm.schedule.config import PersonalizeConfig
from iddm.schedule.plan import StagePlan
from iddm.schedule.trainer import LOG_FILE, RUN_FILE, RunResult, personalize

__all__ = ["LOG_FILE", "RUN_FILE", "PersonalizeConfig", "RunResult", "StagePlan", "personalize"]
