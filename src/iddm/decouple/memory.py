"""Peak memory of IDDM's data steps: the same δ from a fraction of the activations.

A data step differentiates the identity loss of x̂0 with respect to the N training photos, through the VAE
encoder, the UNet and the VAE decoder at full resolution, all N photos at once. Kept for the backward pass,
those activations made IDDM's peak about 3.5x vanilla LoRA's at Stable Diffusion 1.5 size (512 px): the
decoder's last blocks alone hold several 128-channel 512x512 maps per photo and per layer.

:func:`low_memory_data_step` lowers that with diffusers' own switches, only while the data steps run:

* gradient checkpointing of the UNet's blocks (each block's activations are recomputed in the backward pass
  instead of kept);
* checkpointing of the VAE layer by layer (each ResNet block, attention, up- and downsampler): diffusers' own
  VAE checkpointing recomputes a whole up-block in the backward pass, and the decoder's last ones hold a dozen
  256- and 128-channel maps at full resolution at once (measured at 512 px: the largest part of the peak);
* the VAE's encoder and decoder checkpointed as wholes too, with VAE slicing (one photo at a time): until the
  backward pass reaches a photo, only its input is kept, and then only one photo's layer inputs exist at a time
  (each runs once more per data step).

Every random draw (VAE posterior noise, diffusion noise, timesteps, EOT) stays where it was, on the same
generator and in the same order, and the models are deterministic in eval mode: δ is the same as without the
switches up to floating-point rounding (tested: ``tests/test_memory_data_step.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from iddm.diffusion import Backbone

VAE_LAYERS = frozenset({"ResnetBlock2D", "Attention", "Upsample2D", "Downsample2D"})
"""diffusers' layer classes the VAE is checkpointed by (deterministic in eval mode: a recomputation repeats them)."""


def _checkpointable(module: nn.Module | None) -> bool:
    return module is not None and bool(getattr(module, "_supports_gradient_checkpointing", False))


def _checkpointed(function: Callable) -> Callable:
    """``function`` through non-reentrant ``torch.utils.checkpoint`` while gradients are on."""

    def call(*args, **kwargs):
        if torch.is_grad_enabled():
            return checkpoint(function, *args, use_reentrant=False, **kwargs)
        return function(*args, **kwargs)

    return call


def _override(owner: object, name: str, value: Callable) -> Callable[[], None]:
    """Set the instance attribute ``owner.name``; returns what restores the attribute as it was."""
    had, previous = name in vars(owner), vars(owner).get(name)
    setattr(owner, name, value)

    def restore() -> None:
        if had:
            setattr(owner, name, previous)
        else:
            delattr(owner, name)

    return restore


@contextmanager
def low_memory_data_step(backbone: Backbone, enabled: bool = True) -> Iterator[list[str]]:
    """Within the block: the switches of the module doc.

    Switches the user already turned on (e.g. ``--gradient_checkpointing`` for the UNet) stay on afterwards;
    the others are turned off again on exit, also when the block raises. Yields the names of the switches it
    turned on (empty when ``enabled`` is false or the backbone has none of them, e.g. the pixel backbone).
    """
    undo: list[Callable[[], None]] = []
    names: list[str] = []
    if enabled:
        vae = getattr(backbone, "vae", None)
        if _checkpointable(backbone.unet) and not backbone.unet.is_gradient_checkpointing:
            backbone.unet.enable_gradient_checkpointing()
            undo.append(backbone.unet.disable_gradient_checkpointing)
            names.append("unet gradient checkpointing")
        layers = [m for m in vae.modules() if type(m).__name__ in VAE_LAYERS] if vae is not None else []
        if layers and not getattr(vae, "is_gradient_checkpointing", False):
            wholes = [part for part in (getattr(vae, "encoder", None), getattr(vae, "decoder", None)) if part]
            undo += [_override(m, "forward", _checkpointed(m.forward)) for m in layers + wholes]
            names.append("vae layer checkpointing")
        if vae is not None and hasattr(vae, "enable_slicing") and not getattr(vae, "use_slicing", True):
            vae.enable_slicing()
            undo.append(vae.disable_slicing)
            names.append("vae slicing")
    try:
        yield names
    finally:
        for restore in reversed(undo):
            restore()
