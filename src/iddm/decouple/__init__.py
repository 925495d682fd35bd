"""IDDM's identity-decoupled data optimization: objectives, identity loss, EOT transforms, δ, privacy knob."""

from iddm.decouple.data_step import DataOptimizer, Perturbation, build_data_optimizer
from iddm.decouple.identity import IdentityLoss, identity_terms, load_margins
from iddm.decouple.objective import OBJECTIVES, ObjectiveInputs, project, signed_gradient_step
from iddm.decouple.privacy import PRESETS, PrivacyConfig, PrivacySettings, parse_level, resolve_privacy
from iddm.decouple.transforms import differentiable_jpeg, down_up_resize, gaussian_blur, sample_transform

__all__ = [
    "OBJECTIVES",
    "PRESETS",
    "DataOptimizer",
    "IdentityLoss",
    "ObjectiveInputs",
    "Perturbation",
    "PrivacyConfig",
    "PrivacySettings",
    "build_data_optimizer",
    "differentiable_jpeg",
    "down_up_resize",
    "gaussian_blur",
    "identity_terms",
    "load_margins",
    "parse_level",
    "project",
    "resolve_privacy",
    "sample_transform",
    "signed_gradient_step",
]
