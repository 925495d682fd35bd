"""The ``iddm pretrain`` command: :func:`add_commands` registers it on the ``iddm`` sub-command parser.

``python -m iddm.prior.cli pretrain ...`` runs it stand-alone.
"""

from __future__ import annotations

import argparse
import logging
import sys
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


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point with ``iddm``'s error convention (one line on stderr, exit status 2)."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    parser = argparse.ArgumentParser(prog="iddm", description="iddm's face-prior commands.")
    parser.add_argument("-v", "--verbose", action="store_true", help="Debug logging.")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError, ImportError) as err:
        print(f"iddm {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
