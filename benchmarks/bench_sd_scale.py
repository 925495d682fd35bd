"""What IDDM costs at real Stable Diffusion scale: time and peak memory of iddm's own trainer, on CPU or CUDA.

Builds a Stable Diffusion 1.5-sized pipeline with RANDOM weights in code (UNet 860 M, VAE 84 M, CLIP
text encoder 123 M parameters, the real CLIP tokenizer), saves it with ``save_pretrained`` to a temp
folder, and runs each method in a FRESH SUBPROCESS (so one run's allocations, allocator caches and peak
never leak into the next), on the three Obama fixture photos:

* ``vanilla_lora``: LoRA, privacy off, ``--steps`` steps;
* ``iddm_lora``: LoRA, privacy ``high``, one round of ``--data_steps`` data steps after step ``--round_steps``
  (default: the last step, so the data step runs inside the measured loop), surrogate ``sface`` only;
* ``iddm_lora_no_saving``: the same with ``--no-data_step_checkpointing``: the data step as it was before
  its memory saving (every activation of the VAE encoder, UNet and VAE decoder of all photos kept);
* ``dreambooth``: full UNet fine-tuning, privacy off, gradient checkpointing on, ``--steps`` steps;
* ``diffusers_lora``: a minimal diffusers LoRA loop written here (VAE encode, noise, UNet, MSE, AdamW), the
  reference iddm's vanilla LoRA is compared with (same adapters, rank 4 on to_k/q/v/out).

Peak memory is that of the personalization loop, above the loaded model and as a whole process:

* CUDA: ``torch.cuda.max_memory_allocated`` (reset once the run's models are loaded);
* CPU: the process's peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs`` once the run's models
  are loaded) measured at the end of the last step, before the final save (which serializes the weights). glibc's
  malloc keeps freed blocks below its (dynamic, up to 32 MiB) mmap threshold in the resident set, so by default
  the peak resident set of a run that frees and reallocates many large tensors counts memory no tensor holds any
  more (measured at 512 px: IDDM's peak 2.05x vanilla's that way). Each run therefore sets the threshold to
  ``MMAP_THRESHOLD`` (``mallopt``): every tensor above it gets its own mapping, returned when freed, and the
  resident set follows live memory, as CUDA's allocated bytes do. ``--malloc_defaults`` keeps glibc's defaults.

``peak memory x vanilla`` divides the whole-process peak (model included, what a GPU must hold) by vanilla
LoRA's; ``growth x vanilla`` divides the growth above the loaded model. Time per step is the median of the
steps without a data round (the first excluded when there are 3 or more); a data step's time is its round's
duration divided by its data steps.

    python benchmarks/bench_sd_scale.py --device cpu --resolution 256 --threads 1   # SD 1.5 size on the CPU
    python benchmarks/bench_sd_scale.py                                          # SD 1.5 size, on CUDA (bf16)
    python benchmarks/bench_sd_scale.py --tiny --device cpu                      # the tiny pipeline, smoke test

Prints a Markdown table, and writes the records as JSON to ``--json`` (after every run, so a run cut short
keeps what it measured). A failing run is recorded with its error and the others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO / "tests" / "fixtures" / "photos"
MMAP_THRESHOLD = 64 * 1024
"""Bytes above which a CPU run's allocations are mapped separately (see the module doc)."""
M_MMAP_THRESHOLD = -3
"""glibc's ``mallopt`` parameter number of the mmap threshold."""
TOKENIZER_FALLBACK = REPO / ".gpu_wheels" / "clip_tokenizer"
"""A saved copy of iddm's CLIP tokenizer, used only if building it fails where the benchmark runs."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def clip_tokenizer(errors: list[str]):
    from iddm.diffusion import build_clip_tokenizer

    try:
        return build_clip_tokenizer()
    except Exception:  # noqa: BLE001 - recorded, then a saved copy is tried
        errors.append("build_clip_tokenizer failed:\n" + traceback.format_exc())
        log(errors[-1])
        if not TOKENIZER_FALLBACK.is_dir():
            raise
        from transformers import CLIPTokenizer

        return CLIPTokenizer.from_pretrained(TOKENIZER_FALLBACK)


def build_sd15_pipeline(errors: list[str]):
    """Stable Diffusion 1.5's architecture with random weights (nothing downloaded)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from iddm.diffusion.tiny import assemble_sd_pipeline

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
        scaling_factor=0.18215,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=1,
            hidden_size=768,
            intermediate_size=3072,
            num_attention_heads=12,
            num_hidden_layers=12,
            vocab_size=49408,
            max_position_embeddings=77,
            projection_dim=768,
            hidden_act="quick_gelu",
        )
    )
    return assemble_sd_pipeline(unet, vae, text_encoder, clip_tokenizer(errors))


def parameter_counts(pipe) -> dict[str, int]:
    return {name: sum(p.numel() for p in getattr(pipe, name).parameters()) for name in ("unet", "vae", "text_encoder")}


# -- memory -------------------------------------------------------------------------------------------------
def _status_kib(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


class PeakMemory:
    """The peak of a stretch of code, in MiB: CUDA's allocated bytes, or the CPU process's resident set."""

    def __init__(self, device: str):
        self.device = device

    def start(self) -> float:
        """Reset the peak; returns the memory in use now (the loaded models)."""
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            return torch.cuda.memory_allocated() / 2**20
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
        return _status_kib("VmRSS") / 1024

    def peak(self) -> float:
        if self.device == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**20
        return _status_kib("VmHWM") / 1024


# -- one run, in its own process ------------------------------------------------------------------------------
class StepTimer:
    """Trainer hooks around the data round: the time of each step (data round excluded), of each data round, and
    the peak memory at the end of the last step (before the final save)."""

    def __init__(self, memory: PeakMemory, last_step: int):
        self.memory, self.last_step = memory, last_step
        self.steps: list[float] = []
        self.rounds: list[float] = []
        self.loop_peak: float | None = None
        self.mark = time.perf_counter()

    def sync(self) -> None:
        if self.memory.device == "cuda":
            torch.cuda.synchronize()

    def before_round(self, trainer, step: int) -> None:
        self.sync()
        now = time.perf_counter()
        self.steps.append(now - self.mark)
        self.mark = now

    def after_round(self, trainer, step: int) -> None:
        self.sync()
        now = time.perf_counter()
        if trainer.data_optimizer is not None and trainer.plan.data_round_after(step):
            self.rounds.append(now - self.mark)
        self.mark = now
        if step == self.last_step:
            self.loop_peak = self.memory.peak()


def median_step(seconds: list[float]) -> float:
    return statistics.median(seconds[1:] if len(seconds) >= 3 else seconds)


def run_iddm_trainer(spec: dict) -> dict:
    """One ``iddm personalize`` run (``spec["values"]``) with its memory and step times measured."""
    from iddm.config import build_config
    from iddm.schedule import PersonalizeConfig
    from iddm.schedule.hooks import DataRoundHook
    from iddm.schedule.trainer import Trainer

    memory = PeakMemory(spec["device"])
    trainer = Trainer(build_config(PersonalizeConfig, spec["values"]))
    timer = StepTimer(memory, trainer.config.max_train_steps - 1)

    class Before:
        def after_step(self, t, step):
            timer.before_round(t, step)

    class After:
        def after_step(self, t, step):
            timer.after_round(t, step)

    at = next(i for i, hook in enumerate(trainer.hooks) if isinstance(hook, DataRoundHook))
    trainer.hooks[at : at + 1] = [Before(), trainer.hooks[at], After()]
    loaded = memory.start()
    timer.mark = started = time.perf_counter()
    result = trainer.run()
    call_peak = memory.peak()
    data_steps = len(timer.rounds) * trainer.plan.data_steps
    steps = timer.steps
    return {
        "steps": result.steps,
        "data_steps": data_steps,
        "loaded_mib": loaded,
        "peak_mib": timer.loop_peak,
        "call_peak_mib": call_peak,
        "wall_seconds": result.wall_seconds,
        "call_seconds": time.perf_counter() - started,
        "step_seconds": steps,
        "ms_per_step": 1000 * median_step(steps),
        "ms_per_data_step": 1000 * sum(timer.rounds) / data_steps if data_steps else None,
        "last_round": {k: v for k, v in (result.log.get("rounds") or [{}])[-1].items() if isinstance(v, float)},
    }


def run_diffusers_loop(spec: dict) -> dict:
    """A minimal diffusers LoRA training loop (as ``train_dreambooth_lora.py`` does it, without the rest)."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    values, device = spec["values"], spec["device"]
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(values["mixed_precision"], torch.float32)
    memory = PeakMemory(device)
    pipe = StableDiffusionPipeline.from_pretrained(values["pretrained_model_name_or_path"], local_files_only=True)
    unet, vae, text_encoder = pipe.unet, pipe.vae, pipe.text_encoder
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
        module.to(device, dtype=dtype)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))  # fmt: skip
    if values.get("gradient_checkpointing"):
        unet.enable_gradient_checkpointing()
    cast_training_params(unet, dtype=torch.float32)
    parameters = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=values["learning_rate"])
    ids = pipe.tokenizer(["a photo of sks person"], padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        context = text_encoder(ids.input_ids.to(device))[0]
    generator = torch.Generator().manual_seed(0)
    resolution = values["resolution"]
    images = torch.rand((3, 3, resolution, resolution), generator=generator)
    unet.train()
    loaded = memory.start()
    seconds, peak = [], None
    for step in range(values["max_train_steps"]):
        started = time.perf_counter()
        pixels = images[step % 3 : step % 3 + 1].to(device, dtype) * 2 - 1
        with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
            with torch.no_grad():
                latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
            noise = torch.randn(latents.shape, generator=generator).to(latents)
            timesteps = torch.randint(0, 1000, (1,), generator=generator).to(device)
            noisy = scheduler.add_noise(latents, noise, timesteps)
            prediction = unet(noisy, timesteps, context).sample
            loss = torch.nn.functional.mse_loss(prediction.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    peak = memory.peak()
    return {
        "steps": values["max_train_steps"],
        "data_steps": 0,
        "loaded_mib": loaded,
        "peak_mib": peak,
        "call_peak_mib": peak,
        "wall_seconds": sum(seconds),
        "step_seconds": seconds,
        "ms_per_step": 1000 * median_step(seconds),
        "ms_per_data_step": None,
    }


def build(folder: Path, tiny: bool, resolution: int | None) -> int:
    """Build the random pipeline and save it to ``folder``; prints its parameter counts."""
    errors: list[str] = []
    if tiny:
        from iddm.diffusion import build_tiny_sd_pipeline

        pipe = build_tiny_sd_pipeline(resolution=resolution or 64)
    else:
        pipe = build_sd15_pipeline(errors)
    pipe.save_pretrained(folder, safe_serialization=True)
    print(json.dumps(parameter_counts(pipe)), flush=True)
    return 0


def child(spec_file: Path) -> int:
    """Run one spec in this (fresh) process and print its record as the last line of stdout."""
    spec = json.loads(spec_file.read_text())
    if spec["device"] == "cpu" and not spec.get("malloc_defaults"):
        import ctypes

        if ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1:
            raise RuntimeError("mallopt(M_MMAP_THRESHOLD) failed: rerun with --malloc_defaults.")
    torch.set_num_threads(spec["threads"])
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    record: dict = {"name": spec["name"]}
    try:
        run = run_diffusers_loop if spec["kind"] == "diffusers" else run_iddm_trainer
        record.update(ok=True, **run(spec))
    except Exception as err:  # noqa: BLE001 - the benchmark reports a failed run instead of stopping
        record.update(ok=False, error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
    print("RECORD " + json.dumps(record, default=str), flush=True)
    return 0


def spawn(spec: dict, work: Path, timeout: float) -> dict:
    spec_file = work / f"spec-{spec['name']}.json"
    spec_file.write_text(json.dumps(spec, default=str))
    log(f"run {spec['name']} ({spec['kind']}): {spec.get('overrides')}")
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, __file__, "--_child", str(spec_file)], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"name": spec["name"], "ok": False, "error": f"timed out after {timeout:.0f} s"}
    finally:
        shutil.rmtree(work / f"out-{spec['name']}", ignore_errors=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RECORD ")]
    if not lines:
        tail = (done.stdout + done.stderr)[-3000:]
        return {"name": spec["name"], "ok": False, "error": f"exit {done.returncode} (killed?)", "traceback": tail}
    record = json.loads(lines[-1][len("RECORD ") :])
    record["process_seconds"] = time.perf_counter() - started
    if record.get("ok"):
        log(
            f"run {spec['name']}: {record['steps']} steps + {record['data_steps']} data steps, "
            f"{record['ms_per_step']:.0f} ms/step, peak {record['peak_mib']:.0f} MiB "
            f"(loaded {record['loaded_mib']:.0f} MiB), {record['process_seconds']:.0f} s"
        )
    else:
        log(f"run {spec['name']} FAILED: {record['error']}\n{record.get('traceback', '')}")
    return record


# -- a trace of live tensor memory on the meta device (no compute) ------------------------------------------------
def build_sdxl_pipeline(errors: list[str]):
    """Stable Diffusion XL base's architecture with random weights (UNet 2.6 B, text encoders 123 M + 695 M)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    unet = UNet2DConditionModel(
        sample_size=128,
        block_out_channels=(320, 640, 1280),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        use_linear_projection=True,
        cross_attention_dim=2048,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=1024,
        scaling_factor=0.13025,
        force_upcast=True,
    )
    clip = dict(bos_token_id=49406, eos_token_id=49407, pad_token_id=1, vocab_size=49408, max_position_embeddings=77)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            **clip,
            hidden_size=768,
            intermediate_size=3072,
            num_attention_heads=12,
            num_hidden_layers=12,
            hidden_act="quick_gelu",
        )
    )
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(
        **clip, hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
        projection_dim=1280, hidden_act="gelu"))  # fmt: skip
    tokenizer = clip_tokenizer(errors)
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=clip_tokenizer(errors), unet=unet,
        scheduler=DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                clip_sample=False, set_alpha_to_one=False),
        force_zeros_for_empty_prompt=True, add_watermarker=False,
    )  # fmt: skip


class LiveTensorBytes:
    """A dispatch mode that adds up the bytes of every tensor storage created inside it while it is alive.

    ``peak`` is the most bytes alive at once: activations kept for backward, gradients, temporaries, as a
    caching-free allocator would hold them. Storages created before the mode (the weights) are not counted.
    """

    def __new__(cls):
        import weakref

        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves
        from torch.utils.weak import WeakIdKeyDictionary

        class Mode(TorchDispatchMode):
            def __init__(self):
                super().__init__()
                self.live = self.peak = 0
                self.seen = WeakIdKeyDictionary()

            def _free(self, nbytes: int) -> None:
                self.live -= nbytes

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for tensor in tree_leaves(out):
                    if isinstance(tensor, torch.Tensor):
                        storage = tensor.untyped_storage()
                        if storage not in self.seen:
                            nbytes = storage.nbytes()
                            self.seen[storage] = nbytes
                            self.live += nbytes
                            self.peak = max(self.peak, self.live)
                            weakref.finalize(storage, self._free, nbytes)
                return out

        return Mode()


def module_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def trace_meta(args: argparse.Namespace, resolution: int, mixed: str) -> dict[str, dict]:
    """Vanilla LoRA step, IDDM data step (with and without the saving) and DreamBooth step, traced on meta tensors.

    The data step is the x̂0 path (VAE encode, UNet, VAE decode of the N photos, backward to δ and the warp) with
    ``x̂0.mean()`` standing in for the surrogates' identity loss (SFace at 112 px: small next to it).
    """
    from iddm.decouple.memory import low_memory_data_step
    from iddm.decouple.objective import WARP_GRID, apply, warp
    from iddm.diffusion import Conditioning, MethodSettings, StableDiffusionBackbone, StableDiffusionXLBackbone

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed, torch.float32)
    meta = torch.device("meta")
    photos = 3
    records: dict[str, dict] = {}

    def backbone_for(method: str, gc: bool):
        errors: list[str] = []
        with meta:
            pipe = build_sdxl_pipeline(errors) if args.sdxl else build_sd15_pipeline(errors)
            cls = StableDiffusionXLBackbone if args.sdxl else StableDiffusionBackbone
            backbone = cls(pipe, resolution=resolution)
            backbone.prepare_for_training(MethodSettings(method, gradient_checkpointing=gc))
        backbone.to(meta, dtype)
        backbone._alpha_bar = lambda t: torch.full((len(t),), 0.5, device=meta)  # values are not needed
        return backbone

    def record(name: str, backbone, mode, extra_bytes: int = 0, data_steps: int = 0) -> None:
        weights = sum(module_bytes(m) for m in backbone.components().values())
        peak = weights + extra_bytes + mode.peak
        loaded = (weights + extra_bytes) / 2**20
        records[name] = {"ok": True, "steps": 1, "data_steps": data_steps, "loaded_mib": loaded,
                         "peak_mib": peak / 2**20, "ms_per_step": float("nan"), "ms_per_data_step": None}  # fmt: skip
        log(f"traced {name}: weights {weights / 2**30:.2f} GiB, peak {peak / 2**30:.2f} GiB")

    generator = torch.Generator().manual_seed(0)
    for name in args.runs:
        method = "dreambooth" if name == "dreambooth" else "lora"
        gc = name == "dreambooth" or args.gradient_checkpointing
        backbone = backbone_for(method, gc)
        backbone.train(name in ("vanilla_lora", "dreambooth", "diffusers_lora"))
        trainable = sum(p.numel() for p in backbone.trainable_parameters())
        adam = 2 * 4 * trainable  # AdamW's two fp32 moments, alive through every step
        # The text encoders' output (their values are not needed): cross-attention states, SDXL's pooled text and
        # size conditioning.
        count = args.train_batch_size if "iddm" not in name else photos
        width = backbone.unet.config.cross_attention_dim
        added = {"text_embeds": torch.empty((count, 1280), device=meta, dtype=dtype),
                 "time_ids": torch.empty((count, 6), device=meta, dtype=dtype)} if args.sdxl else {}  # fmt: skip
        # In the UNet's dtype (fp32 when DreamBooth trains it): the trainer's autocast does that cast on a GPU.
        states = torch.empty((count, 77, width), device=meta, dtype=backbone.unet.dtype)
        conditioning = Conditioning(states, added)
        if "iddm" not in name:
            images = torch.empty((args.train_batch_size, 3, resolution, resolution), device=meta)
            with LiveTensorBytes() as mode:
                loss = backbone.training_loss(images, conditioning, generator).mean()
                loss.backward()
                del loss
            record(name, backbone, mode, adam)
            continue
        clean = torch.empty((photos, 3, resolution, resolution), device=meta)
        with LiveTensorBytes() as mode, low_memory_data_step(backbone, name == "iddm_lora"):
            delta = torch.zeros_like(clean).requires_grad_(True)
            flow = torch.zeros((photos, 2, WARP_GRID, WARP_GRID), device=meta, requires_grad=True)
            images = apply(warp(clean, flow), delta)
            x0 = backbone.denoised_estimate(images, conditioning, generator, 500)
            torch.autograd.grad(x0.float().mean(), [delta, flow])
        record(name, backbone, mode, adam, data_steps=1)
    return records


# -- the plan and the table ------------------------------------------------------------------------------------
RUNS = ("diffusers_lora", "vanilla_lora", "iddm_lora", "iddm_lora_no_saving", "dreambooth")
LABELS = {
    "diffusers_lora": "minimal diffusers LoRA loop",
    "vanilla_lora": "vanilla LoRA (iddm, privacy off)",
    "iddm_lora": "IDDM LoRA (high)",
    "iddm_lora_no_saving": "IDDM LoRA (high), no data-step saving",
    "dreambooth": "DreamBooth (GC)",
}


def overrides_of(name: str, args: argparse.Namespace) -> dict:
    iddm = {"privacy": "high", "round_steps": args.round_steps, "data_steps": args.data_steps, "stage1_fraction": 1.0}
    return {
        "diffusers_lora": {},
        "vanilla_lora": {},
        "iddm_lora": iddm,
        "iddm_lora_no_saving": iddm | {"data_step_checkpointing": False},
        "dreambooth": {"method": "dreambooth", "gradient_checkpointing": True, "learning_rate": 5e-6},
    }[name]


def ratio(value: float | None, reference: float | None) -> str:
    return f"{value / reference:.2f}" if value and reference else "-"


def markdown(records: dict[str, dict], header: str) -> str:
    vanilla = records.get("vanilla_lora") if records.get("vanilla_lora", {}).get("ok") else None
    lines = [
        header,
        "",
        "| run | steps | data steps | ms/step | ms/data step | peak (MiB) | peak memory x vanilla | "
        "growth above loaded (MiB) | growth x vanilla |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in records.items():
        label = LABELS.get(name, name)
        if not r.get("ok"):
            lines.append(f"| {label} | FAILED: {r['error'][:150]} | | | | | | | |")
            continue
        growth = r["peak_mib"] - r["loaded_mib"]
        v_peak = vanilla["peak_mib"] if vanilla else None
        v_growth = vanilla["peak_mib"] - vanilla["loaded_mib"] if vanilla else None
        data = f"{r['ms_per_data_step']:.0f}" if r.get("ms_per_data_step") else "-"
        lines.append(
            f"| {label} | {r['steps']} | {r['data_steps']} | {r['ms_per_step']:.0f} | {data} | {r['peak_mib']:.0f} | "
            f"{ratio(r['peak_mib'], v_peak)} | {growth:.0f} | {ratio(growth, v_growth)} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--_child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--_build", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--model", type=Path, default=None, help="Use (or build once and keep) the random pipeline in this folder."
    )
    parser.add_argument("--tiny", action="store_true", help="The tiny random pipeline (CPU smoke test).")
    parser.add_argument(
        "--device",
        default=None,
        help="cpu, cuda (default: cuda if available) or meta: trace the "
        "live tensor memory of one step of each run on meta tensors, without computing anything.",
    )
    parser.add_argument("--sdxl", action="store_true", help="meta only: Stable Diffusion XL's architecture.")
    parser.add_argument("--resolution", type=int, default=None, help="Image side in px (default 512; tiny 64).")
    parser.add_argument("--steps", type=int, default=None, help="Personalization steps per run (default: CUDA 50, "
                        "CPU 2).")  # fmt: skip
    parser.add_argument(
        "--round_steps", type=int, default=None, help="IDDM K (default: --steps, one round at the end)."
    )
    parser.add_argument("--data_steps", type=int, default=1, help="IDDM M, data steps in the round (high: 6).")
    parser.add_argument("--mixed_precision", default=None, choices=["no", "fp16", "bf16"],
                        help="Default: bf16 on CUDA, no on CPU.")  # fmt: skip
    parser.add_argument("--gradient_checkpointing", action="store_true", help="UNet gradient checkpointing in "
                        "every run (DreamBooth always has it).")  # fmt: skip
    parser.add_argument("--train_batch_size", type=int, default=1, help="Photos per personalization step.")
    parser.add_argument("--malloc_defaults", action="store_true", help="CPU: keep glibc's malloc settings (the "
                        "peak resident set then counts freed memory malloc kept; see the module doc).")  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: torch's).")
    parser.add_argument("--runs", nargs="+", default=list(RUNS[1:]), choices=RUNS, help="Runs, in this order.")
    parser.add_argument("--timeout", type=float, default=3600, help="Seconds a run may take before it is stopped.")
    parser.add_argument("--json", type=Path, default=None, help="Write every record to this JSON file.")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._child:
        return child(args._child)
    if args._build:
        return build(args._build, args.tiny, args.resolution)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.steps = args.steps or (50 if device == "cuda" else 2)
    args.round_steps = args.round_steps or args.steps
    resolution = args.resolution or (64 if args.tiny else 1024 if args.sdxl else 512)
    mixed = args.mixed_precision or ("bf16" if device in ("cuda", "meta") else "no")
    threads = args.threads or torch.get_num_threads()

    import diffusers
    import transformers

    env = {
        "device": device,
        "gpu": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "threads": threads,
        "ram_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
    }
    log(f"environment: {env}")
    if device == "meta":
        records = trace_meta(args, resolution, mixed)
        arch = "XL base" if args.sdxl else "1.5"
        header = (
            f"Live tensor memory traced on meta tensors (no compute; weights + AdamW moments + the peak of tensors "
            f"alive in one step): Stable Diffusion {arch} size, {resolution} px, batch {args.train_batch_size}, "
            f"{mixed} frozen weights; IDDM: one data step's x̂0 path, 3 photos"
        )
        print("\n" + markdown(records, header) + "\n", flush=True)
        if args.json:
            args.json.write_text(json.dumps({"env": env, "runs": records}, indent=2) + "\n")
        return 0
    errors: list[str] = []
    payload: dict = {"env": env, "errors": errors, "args": {k: str(v) for k, v in vars(args).items()}, "runs": {}}
    work = Path(tempfile.mkdtemp(prefix="bench_sd_scale-"))
    try:
        model = args.model or work / "sd"
        if args.model is None or not (model / "model_index.json").is_file():
            started = time.perf_counter()
            # In a subprocess: building holds the whole pipeline, which this process would keep as resident memory.
            command = [sys.executable, __file__, "--_build", str(model), "--resolution", str(resolution)]
            command += ["--threads", str(threads)]
            done = subprocess.run(command + (["--tiny"] if args.tiny else []), capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"building the pipeline failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
            payload["build_seconds"] = time.perf_counter() - started
            log(f"pipeline built and saved in {payload['build_seconds']:.0f} s to {model}")
        photos = work / "photos"
        photos.mkdir()
        for path in sorted(PHOTOS.glob("obama_[123].jpg")):
            shutil.copy(path, photos / path.name)
        base = {
            "photos": str(photos),
            "pretrained_model_name_or_path": str(model),
            "method": "lora",
            "resolution": resolution,
            "train_batch_size": args.train_batch_size,
            "max_train_steps": args.steps,
            "learning_rate": 1e-4,
            "mixed_precision": mixed,
            "gradient_checkpointing": args.gradient_checkpointing,
            "surrogates": ["sface"],
            "checkpointing_steps": 0,
            "validation_steps": 0,
            "num_validation_images": 1,
            "num_inference_steps": 1,
            "seed": 0,
        }
        for name in args.runs:
            overrides = overrides_of(name, args)
            values = {**base, **overrides, "output_dir": str(work / f"out-{name}")}
            kind = "diffusers" if name == "diffusers_lora" else "iddm"
            spec = {"name": name, "kind": kind, "device": device, "threads": threads, "values": values,
                    "overrides": overrides, "malloc_defaults": args.malloc_defaults}  # fmt: skip
            payload["runs"][name] = spawn(spec, work, args.timeout)
            if args.json:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if args.model is None:
            shutil.rmtree(model, ignore_errors=True)

    gc_note = ", UNet gradient checkpointing in every run" if args.gradient_checkpointing else ""
    if device == "cpu":
        gc_note += ", glibc malloc defaults" if args.malloc_defaults else f", malloc mmap threshold {MMAP_THRESHOLD} B"
    header = (
        f"iddm at Stable Diffusion {'(tiny random) ' if args.tiny else '1.5 size (random weights) '}scale: "
        f"{resolution} px, batch {args.train_batch_size}, {mixed} mixed precision{gc_note}, {env['gpu']} ({device}, "
        f"{threads} threads); {args.steps} steps per run; IDDM: privacy high, one round of {args.data_steps} data "
        f"step(s) (3 photos) after step {args.round_steps}, surrogate sface"
    )
    print("\n" + markdown(payload["runs"], header) + "\n", flush=True)
    failed = [k for k, v in payload["runs"].items() if not v.get("ok")]
    for e in errors:
        print(e, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
