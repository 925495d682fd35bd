"""The ``iddm pretrain`` command: :func:`add_commands` registers it on the ``iddm`` sub-command parser."""

from __future__ import annotations

import argparse
from pathlib import Path

from iddm.config import add_dataclass_arguments, config_from_namespace
from iddm.prior.config import PretrainConfig


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from iddm.prior.train import pretrain

    result = pretrain(config_from_namespace(PretrainConfig, args))
    corpus = result.corpus
    print(
        f"Wrote the face prior to {result.output_dir}: {corpus['photos_used']} photos of {corpus['identities']} "
        f"identities (face detection rate {corpus['face_detection_rate']:.3f}), "
        f"autoencoder {result.vae_seconds:.0f} s, UNet {result.unet_seconds:.0f} s."
    )
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``pretrain`` to the ``iddm`` sub-commands."""
    parser = commands.add_parser(
        "pretrain",
        help="Train the offline face prior (a small latent diffusion model in Stable Diffusion's shape) from a "
        "folder of faces.",
    )
    parser.add_argument("--config", type=Path, help="YAML file of options; command-line flags override it.")
    add_dataclass_arguments(parser, PretrainConfig, "pretraining")
    parser.set_defaults(func=_cmd_pretrain)
