"""IDDM's identity-decoupled data optimization: identity loss, EOT transforms, data steps, privacy knob."""

from iddm.decouple.data_step import DataOptimizer, build_data_optimizer, psnr_db
from iddm.decouple.identity import IdentityLoss
from iddm.decouple.privacy import PRESETS, PrivacySettings, parse_level, resolve_privacy
from iddm.decouple.transforms import differentiable_jpeg, down_up_resize, gaussian_blur, sample_transform

__all__ = [
    "PRESETS",
    "DataOptimizer",
    "IdentityLoss",
    "PrivacySettings",
    "build_data_optimizer",
    "differentiable_jpeg",
    "down_up_resize",
    "gaussian_blur",
    "parse_level",
    "psnr_db",
    "resolve_privacy",
    "sample_transform",
]
