"""A limit on how unusual the warp may make each training photo's face shape: reshaping without caricature.

The identity loss is met as well by a caricature (an enlarged nose, a stretched mouth) as by another person's face,
and the warp finds caricatures first: on the 128-px prior the clean photos' 68 points carried through the warp read
3.42 (``medium``) and 4.30 (``high``) against 1.03 for the clean ones, and the LoRA drew it on every avatar.
:class:`ShapeLimit` follows dlib's 68 points of each clean photo through the warp (:func:`warped_points`,
differentiable in the flow) and, after each warp step, pulls the flow back until the warped shape's distance
(:func:`iddm.faces.shape.shape_distance`, 1.0 = a typical real face) is within the limit, or within the clean
photo's own distance where that is larger: the warp may then move a face toward another plausible face, not out of
the range of real faces.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from iddm.faces.shape import face_shape_points, shape_distance


def displacement_at(flow: torch.Tensor, points: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The warp's displacement ``(N, K, 2)`` (px) at ``points`` ``(N, K, 2)`` ``(x, y)`` pixels of an image of
    ``size`` ``(H, W)``: the flow ``(N, 2, g, g)`` upsampled as :func:`iddm.decouple.objective.warp` upsamples it."""
    height, width = size
    field = F.interpolate(flow, size=(height, width), mode="bicubic", align_corners=True)
    scale = points.new_tensor([2 / max(width - 1, 1), 2 / max(height - 1, 1)])
    grid = (points * scale - 1).unsqueeze(1)  # (N, 1, K, 2) in grid_sample's [-1, 1]
    return F.grid_sample(field, grid.to(field), mode="bilinear", align_corners=True)[:, :, 0].permute(0, 2, 1)


def warped_points(flow: torch.Tensor, points: torch.Tensor, size: tuple[int, int], iterations: int = 3):
    """Where the warp moves ``points`` ``(N, K, 2)`` of the clean photos: ``warp`` samples the clean photo at
    ``p + d(p)`` for output pixel ``p``, so a point ``q`` lands at the ``p`` solving ``p + d(p) = q`` (a few
    fixed-point iterations; the field is smooth and a few pixels large)."""
    moved = points
    for _ in range(iterations):
        moved = points - displacement_at(flow, moved, size)
    return moved


@dataclass
class ShapeLimit:
    """The clean photos' 68 points ``(N, 68, 2)`` (pixels) and the largest shape distance ``(N,)`` each may reach."""

    points: torch.Tensor
    caps: torch.Tensor

    @classmethod
    def of(cls, images: list[np.ndarray], landmarks: np.ndarray, limit: float, device: torch.device) -> ShapeLimit:
        """From the clean photos (``uint8`` RGB) and their YuNet landmarks ``(N, 5, 2)``: each cap is ``limit`` or the
        clean face's own distance, whichever is larger."""
        points = np.stack([face_shape_points(image, marks) for image, marks in zip(images, landmarks)])
        caps = shape_distance(points).clamp(min=limit)
        return cls(torch.tensor(points, dtype=torch.float32, device=device), caps.float().to(device))

    def distances(self, flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``(N,)`` shape distance of the warped faces (differentiable in ``flow``, ``(N, 2, g, g)`` or one shared
        ``(1, 2, g, g)``)."""
        flow = flow.expand(len(self.points), -1, -1, -1)
        return shape_distance(warped_points(flow, self.points, size)).to(flow.dtype)

    def project(self, flow: torch.Tensor, bound: float, size: tuple[int, int], iterations: int = 20) -> torch.Tensor:
        """``flow`` ``(N, 2, g, g)`` moved, photo by photo, down the gradient of its shape distance's excess over its
        cap (each step moves a control point by at most ``bound / 16`` px, within ``±bound``) until every warped face
        is within its cap or ``iterations`` run out. A shared ``(1, 2, g, g)`` flow follows the summed excess of all
        the photos' faces."""
        for _ in range(iterations):
            flow = flow.detach().requires_grad_(True)
            excess = (self.distances(flow, size) - self.caps).clamp(min=0)
            if not bool((excess > 0).any()):
                break
            (gradient,) = torch.autograd.grad(excess.sum(), flow)
            largest = gradient.abs().amax(dim=(1, 2, 3), keepdim=True).clamp(min=1e-12)
            flow = (flow - bound / 16 * gradient / largest).clamp(-bound, bound)
        return flow.detach()
