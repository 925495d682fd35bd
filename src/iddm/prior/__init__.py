"""The offline face prior: a small latent diffusion model in Stable Diffusion's shape, and ``iddm pretrain``.

:func:`default_prior_path` is the shipped prior (verified by SHA-256); :func:`pretrain` rebuilds one from a
folder of faces. Only the CLI imports this package; the shipped prior itself lives in :mod:`iddm.weights`
(loaded by name: ``iddm:face-prior``).
"""

from iddm.prior.config import HELD_OUT_IDENTITIES, PretrainConfig
from iddm.weights import MANIFEST_FILE, PRIOR_FILE, default_prior_path, verify_manifest, write_manifest

__all__ = [
    "HELD_OUT_IDENTITIES",
    "MANIFEST_FILE",
    "PRIOR_FILE",
    "PretrainConfig",
    "default_prior_path",
    "pretrain",
    "verify_manifest",
    "write_manifest",
]


def pretrain(config: PretrainConfig):
    """Train and write a face prior; see :func:`iddm.prior.train.pretrain` (imported lazily: it pulls diffusers)."""
    from iddm.prior.train import pretrain as run

    return run(config)
