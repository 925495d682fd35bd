"""The ``iddm`` command line: personalize, generate, export, faces, tiny-sd, evaluate, benchmark.

Every failure a user can cause prints one line, ``iddm COMMAND: error: ...``, and exits with 2 (bad
input) or 1 (anything else); ``-v`` shows the traceback of the latter. Ctrl-C exits with 130 and says
how to resume; CUDA running out of memory names the flags that lower it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from iddm.config import ArgumentParser, add_dataclass_arguments, config_from_namespace, print_error

logger = logging.getLogger("iddm")


def _add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML file of options; command-line flags override it.")


def _cmd_personalize(args: argparse.Namespace) -> int:
    from iddm.diffusion.loading import BUILTIN_MODELS, describe_builtin
    from iddm.schedule import PersonalizeConfig, personalize

    config = config_from_namespace(PersonalizeConfig, args)
    model = config.pretrained_model_name_or_path
    if model in BUILTIN_MODELS:
        logger.warning(
            "Base model %s: %s. It is for trying iddm and measuring privacy on a CPU; its avatars are "
            "low-resolution faces, not Stable Diffusion quality. Pass --pretrained_model_name_or_path for Stable "
            "Diffusion.",
            model,
            describe_builtin(model),
        )
    result = personalize(config)
    print(
        f"Wrote {result.output_dir} ({result.steps} steps in {result.wall_seconds:.0f} s, final loss "
        f"{result.final_loss:.4f}, privacy {result.privacy.label}). Publish only {result.output_dir}/model/."
    )
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from iddm.diffusion.generate import GenerateConfig, run_generate

    paths = run_generate(config_from_namespace(GenerateConfig, args))
    print(f"Wrote {len(paths)} images and grid.png to {paths[0].parent}.")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from iddm.diffusion.export import export_kohya
    from iddm.run_layout import resolve_model_dir

    output = export_kohya(resolve_model_dir(args.run), args.output)
    print(f"Wrote {output} (kohya / A1111 / ComfyUI LoRA format).")
    return 0


def _cmd_faces(args: argparse.Namespace) -> int:
    import json

    from iddm.faces.mobilefacenet import use_model_path
    from iddm.faces.report import faces_report, format_faces_report

    use_model_path(args.mobilefacenet)
    report = faces_report([Path(p) for p in args.photos], args.backends)
    print(json.dumps(report, indent=2) if args.json else format_faces_report(report))
    if not any(entry["face_found"] for entry in report["detections"]):
        raise ValueError("no usable face in any of the photos")
    return 0


def _cmd_tiny_sd(args: argparse.Namespace) -> int:
    from iddm.diffusion.tiny import save_tiny_sd_pipeline, save_tiny_sdxl_pipeline

    save = save_tiny_sdxl_pipeline if args.xl else save_tiny_sd_pipeline
    path = save(args.output_dir, seed=args.seed, resolution=args.resolution)
    name = "Stable Diffusion XL" if args.xl else "Stable Diffusion"
    print(f"Wrote a tiny random {name} pipeline to {path} (random weights: it draws noise).")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from iddm.diffusion.generate import GenerateConfig
    from iddm.evaluate.cli import add_commands as add_evaluation_commands
    from iddm.prior.cli import add_commands as add_prior_commands
    from iddm.schedule import PersonalizeConfig

    parser = ArgumentParser(prog="iddm", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="Debug logging; tracebacks of unexpected errors.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    personalize = commands.add_parser(
        "personalize", help="Personalize a model on photos of one person, optionally with IDDM privacy."
    )
    _add_config_flag(personalize)
    add_dataclass_arguments(personalize, PersonalizeConfig, "personalization")
    personalize.set_defaults(func=_cmd_personalize)

    generate = commands.add_parser("generate", help="Generate images from a base or personalized model.")
    _add_config_flag(generate)
    add_dataclass_arguments(generate, GenerateConfig, "generation")
    generate.set_defaults(func=_cmd_generate)

    export = commands.add_parser("export", help="Export a LoRA run's weights in kohya / A1111 / ComfyUI format.")
    export.add_argument("run", type=Path, help="A finished LoRA run folder (or its model/).")
    export.add_argument("--format", choices=["kohya"], default="kohya", help="Target format (default: kohya).")
    export.add_argument(
        "--output", type=Path, help="Output file (default: RUN/model/pytorch_lora_weights_kohya.safetensors)."
    )
    export.set_defaults(func=_cmd_export)

    faces = commands.add_parser("faces", help="Detect faces and compare photos under each face recognition model.")
    faces.add_argument("photos", nargs="+", help="Photo files.")
    faces.add_argument(
        "--backends", nargs="+", default=["sface", "facenet", "dlib"], help="Face recognition models to compare with."
    )
    faces.add_argument(
        "--mobilefacenet", type=Path, help="MobileFaceNet.tflite (or its folder) for the 'mobilefacenet' backend."
    )
    faces.add_argument("--json", action="store_true", help="Print machine-readable JSON.")
    faces.set_defaults(func=_cmd_faces)

    tiny = commands.add_parser("tiny-sd", help="Write a tiny random Stable Diffusion pipeline (offline SD path).")
    tiny.add_argument("--output_dir", type=Path, required=True, help="Folder to write the pipeline to.")
    tiny.add_argument("--seed", type=int, default=0, help="Seed of the random weights.")
    tiny.add_argument("--resolution", type=int, default=64, help="Image resolution in px.")
    tiny.add_argument("--xl", action="store_true", help="A Stable Diffusion XL pipeline (two text encoders).")
    tiny.set_defaults(func=_cmd_tiny_sd)

    add_evaluation_commands(commands)
    add_prior_commands(commands)
    return parser


BAD_INPUT = (ValueError, FileNotFoundError, FileExistsError, PermissionError, NotADirectoryError, ImportError)

GPU_MEMORY_FLAGS = {
    "personalize": "--gradient_checkpointing, --mixed_precision fp16 (bf16 on Ampere or newer GPUs), "
    "--train_batch_size 1 (or a lower --resolution)",
    "generate": "a lower --resolution",
}
"""Per command, the flags that lower its GPU memory, named when CUDA runs out of it."""


def _is_gpu_out_of_memory(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.OutOfMemoryError)


def gpu_out_of_memory_message(command: str) -> str:
    """The one line for a CUDA out-of-memory error in ``command``: which flags lower the memory it needs."""
    flags = GPU_MEMORY_FLAGS.get(command, "a lower --resolution or fewer images at once")
    return f"CUDA out of memory; lower the GPU memory needed with {flags} (README: GPU memory)"


def main(argv: list[str] | None = None) -> int:
    from transformers.utils import logging as transformers_logging

    # transformers warns at import that torchvision is absent; iddm uses no image processor from it.
    transformers_logging.set_verbosity_error()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("httpx", "urllib3", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.func(args)
    except BAD_INPUT as err:
        print_error(args.command, err)
        return 2
    except KeyboardInterrupt:
        print_error(args.command, "interrupted; finished work is kept (personalize: --resume_from_checkpoint latest)")
        return 130
    except MemoryError:
        print_error(args.command, "out of memory; lower --resolution, --train_batch_size or --num_images")
        return 1
    except Exception as err:
        if args.verbose:
            raise
        if _is_gpu_out_of_memory(err):
            print_error(args.command, gpu_out_of_memory_message(args.command))
            return 1
        print_error(args.command, f"{type(err).__name__}: {err} (run with -v for the traceback)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
