"""The attacker's options that ``iddm evaluate`` and ``iddm benchmark`` share: its FR systems, and the image
transformations (robustness conditions, purifiers) it attacks through."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from iddm.config import field
from iddm.evaluate.attacker import DEFAULT_BACKENDS
from iddm.evaluate.purify import NO_PRETRAINED_BASE, parse_purifiers


@dataclass
class AttackerOptions:
    backends: list[str] = field(DEFAULT_BACKENDS, help="Face recognition systems of the attacker.")
    mobilefacenet: Path | None = field(
        None, help="MobileFaceNet.tflite (or its folder) for the 'mobilefacenet' backend (not shipped; see README)."
    )
    robustness: bool = field(
        False, help="Also attack after JPEG 90/75/50, resize x0.5 and a blur of 1 and 2 px per 64 px of image side."
    )
    purify: bool = field(
        False,
        help="Also attack after each of the attacker's purifiers (JPEG 30, blur, noisy upscaling, SDEdit with the "
        "base model) and report the one that links best (best-purifier columns, per cell in a benchmark).",
    )
    purifiers: list[str] | None = field(
        None,
        help="Purifiers as KIND:STRENGTH (jpeg:30, blur:2, noisy_upscale:0.5, sdedit:0.3); default: JPEG 30, blur "
        "1/2/3, noisy upscaling x0.5/x0.25, and SDEdit 0.1/0.2/0.3/0.5 unless the base model is iddm:micro.",
    )
    purify_model: str | None = field(
        None, help="Base model SDEdit purifies with (default: the base model that was personalized)."
    )

    def attacker_problems(self, base_model: str | None = None) -> list[str]:
        """Purifier strengths out of range, and SDEdit asked of ``base_model`` (when known) that has no pretraining."""
        if self.purifiers is None:
            return []
        try:
            parse_purifiers(self.purifiers)  # a strength out of range is refused before any work
        except ValueError as err:
            return [str(err)]
        base = self.purify_model or base_model
        if self.purify and any("sdedit" in p for p in self.purifiers) and base in NO_PRETRAINED_BASE:
            return [f"SDEdit purifiers need a pretrained base model; {base} has none (--purify_model)"]
        return []
