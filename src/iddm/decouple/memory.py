"""Peak memory of IDDM's data steps: the same δ from a fraction of the activations.

A data step differentiates the identity loss of x̂0 with respect to the N training photos, through the VAE
encoder, the UNet and the VAE decoder at full resolution, all N photos at once. Kept for the backward pass,
those activations made IDDM's peak about 3.5x vanilla LoRA's at Stable Diffusion 1.5 size (512 px): the
decoder's last blocks alone hold several 128-channel 512x512 maps per photo and per layer.

:func:`low_memory_data_step` lowers that with diffusers' own switches, only while the data steps run:

* gradient checkpointing of the UNet's and the VAE's blocks (each block's activations are recomputed in the
  backward pass instead of kept: about a third more data-step compute);
* VAE slicing (the VAE encodes and decodes one photo at a time, so a recomputed block holds one photo).

Every random draw (VAE posterior noise, diffusion noise, timesteps, EOT) stays where it was, on the same
generator and in the same order, and the models are deterministic in eval mode: δ is the same as without the
switches up to floating-point rounding (tested: ``tests/test_memory_data_step.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from torch import nn

from iddm.diffusion import Backbone


def _checkpointable(module: nn.Module | None) -> bool:
    return module is not None and bool(getattr(module, "_supports_gradient_checkpointing", False))


@contextmanager
def low_memory_data_step(backbone: Backbone, enabled: bool = True) -> Iterator[list[str]]:
    """Within the block: gradient checkpointing on the backbone's UNet and VAE, and VAE slicing (see module doc).

    Switches the user already turned on (e.g. ``--gradient_checkpointing`` for the UNet) stay on afterwards;
    the others are turned off again on exit, also when the block raises. Yields the names of the switches it
    turned on (empty when ``enabled`` is false or the backbone has none of them, e.g. the pixel backbone's
    VAE).
    """
    undo: list[Callable[[], None]] = []
    names: list[str] = []
    if enabled:
        vae = getattr(backbone, "vae", None)
        for name, module in (("unet", backbone.unet), ("vae", vae)):
            if _checkpointable(module) and not module.is_gradient_checkpointing:
                module.enable_gradient_checkpointing()
                undo.append(module.disable_gradient_checkpointing)
                names.append(f"{name} gradient checkpointing")
        if vae is not None and hasattr(vae, "enable_slicing") and not getattr(vae, "use_slicing", True):
            vae.enable_slicing()
            undo.append(vae.disable_slicing)
            names.append("vae slicing")
    try:
        yield names
    finally:
        for restore in reversed(undo):
            restore()
