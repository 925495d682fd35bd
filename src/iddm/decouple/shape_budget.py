"""The shape budget: the warp may give a face another plausible shape, not a caricature.

Unconstrained, the warp's control points move features independently (eyes pulled apart, a mouth stretched): the
surrogates lose the person, and the LoRA learns a caricature (``docs/results/cfp20_128_high.md``). The budget holds
each decoupled photo's face shape, on dlib's 68 points against real faces' statistical shape model
(:mod:`iddm.faces.shape`), within ``budget`` (1.0: as unusual as a typical real face) or the clean photo's own
distance when that is larger. The points are found once on the clean photos; a warp moves a point at ``q`` to
about ``q - field(q)`` (first order in the field's gradient, which the coarse warp keeps small), so the distance
is a differentiable function of the flow alone.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from iddm.decouple.objective import displacement_field
from iddm.faces.dlib_backend import DlibLandmarks68
from iddm.faces.shape import real_face_shape, shape_distance_torch


class ShapeBudget:
    """The clean photos' 68 points and each photo's limit on its decoupled shape distance.

    Args:
        clean: ``(N, 3, R, R)`` clean training photos in ``[0, 1]``.
        landmarks: ``(N, 5, 2)`` their YuNet landmarks in pixels of ``clean``.
        budget: the largest shape distance a warp may leave (> 0; each photo keeps at least its own).
    """

    def __init__(self, clean: torch.Tensor, landmarks: torch.Tensor, budget: float):
        predictor = DlibLandmarks68()
        images = (clean.detach().float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        points = [predictor.in_image(np.ascontiguousarray(image), lm) for image, lm in zip(images, landmarks.numpy())]
        self.points = torch.tensor(np.stack(points), dtype=torch.float32, device=clean.device)
        self.size = tuple(clean.shape[-2:])
        self.model = real_face_shape()
        self.clean_distance = shape_distance_torch(self.points, self.model)
        self.limit = self.clean_distance.clamp_min(budget)

    def moved_points(self, flow: torch.Tensor) -> torch.Tensor:
        """``(N, 68, 2)`` where the warp by ``flow`` ``(N, 2, g, g)`` puts the clean photos' points."""
        height, width = self.size
        field = displacement_field(flow.to(self.points), self.size)
        scale = self.points.new_tensor([2 / max(width - 1, 1), 2 / max(height - 1, 1)])
        grid = (self.points * scale - 1).unsqueeze(1)  # (N, 1, 68, 2) in grid_sample's [-1, 1] (align_corners)
        at_points = F.grid_sample(field, grid, mode="bilinear", align_corners=True)  # (N, 2, 1, 68)
        return self.points - at_points[:, :, 0].transpose(1, 2)

    def distances(self, flow: torch.Tensor) -> torch.Tensor:
        """``(N,)`` shape distance of each photo warped by ``flow`` (differentiable)."""
        return shape_distance_torch(self.moved_points(flow), self.model)

    def excess(self, flow: torch.Tensor) -> torch.Tensor:
        """Sum over photos of how far each warped shape lies beyond its limit (0 within budget; differentiable)."""
        return F.relu(self.distances(flow) - self.limit).sum()
