"""Five-point face alignment: a similarity transform onto a landmark template, in numpy and in torch.

Conventions used throughout:

* Pixel coordinates put the centre of pixel ``(row i, column j)`` at ``(x=j, y=i)``, as OpenCV does;
  a matrix ``M`` of shape ``(2, 3)`` maps an image point ``(x, y, 1)`` to crop coordinates
  (``cv2.warpAffine``'s forward matrix).
* Resizing an image by ``s`` maps ``x`` to ``(x + 0.5) * s - 0.5`` (``cv2.resize`` / ``F.interpolate``
  with ``align_corners=False``); :func:`scaled_template` and :class:`FaceAligner` follow it, so
  aligning at 112 px and resizing the crop to 64 px equals aligning at 64 px directly.

:func:`align_crop` (OpenCV, ``uint8``) and :func:`warp_faces` (torch, differentiable) produce the same
crop from the same matrix, up to OpenCV's 1/32-pixel interpolation grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from skimage.transform import SimilarityTransform

ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)
"""The standard ArcFace/InsightFace 5-point template of a ``112 x 112`` crop: ``(x, y)`` of right eye,
left eye, nose tip, right and left mouth corner (the order of :class:`~iddm.faces.base.DetectedFace`)."""

Size = int | tuple[int, int]


def _hw(size: Size) -> tuple[int, int]:
    if isinstance(size, int | np.integer):
        return int(size), int(size)
    height, width = size
    return int(height), int(width)


def scaled_template(template: np.ndarray, from_size: Size, to_size: Size, margin: float = 0.0) -> np.ndarray:
    """Place a landmark template made for one crop size into another crop size.

    Args:
        template: ``(5, 2)`` ``(x, y)`` landmark positions in a crop of ``from_size``.
        from_size: ``(height, width)`` (or one int for square) of the crop the template was made for.
        to_size: ``(height, width)`` (or one int) of the target crop.
        margin: zoom out around the crop centre so the crop shows ``1 + margin`` times more in each
            direction (``0.25`` includes more hair and chin); ``0`` keeps the template's framing.

    Returns:
        ``(5, 2)`` float64 template for ``to_size``.
    """
    if margin <= -1.0:
        raise ValueError(f"margin must be > -1 (a zoom factor of 1 + margin), got {margin}.")
    (fh, fw), (th, tw) = _hw(from_size), _hw(to_size)
    template = np.asarray(template, dtype=np.float64)
    # Continuous coordinates (pixel edges at integers), where scaling is a plain multiplication.
    continuous = (template + 0.5) * np.array([tw / fw, th / fh])
    centre = np.array([tw / 2.0, th / 2.0])
    continuous = centre + (continuous - centre) / (1.0 + margin)
    return continuous - 0.5


def similarity_transform(landmarks: np.ndarray, template: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (rotation, uniform scale, translation) from landmarks to a template.

    Uses :class:`skimage.transform.SimilarityTransform` (Umeyama's closed form over all points).

    Args:
        landmarks: ``(K, 2)`` ``(x, y)`` points in image pixel coordinates (``K >= 2``; usually 5).
        template: ``(K, 2)`` target points in crop pixel coordinates.

    Returns:
        ``(2, 3)`` float64 matrix mapping image pixel coordinates to crop pixel coordinates.
    """
    landmarks = np.asarray(landmarks, dtype=np.float64)
    template = np.asarray(template, dtype=np.float64)
    if landmarks.shape != template.shape or landmarks.ndim != 2 or landmarks.shape[1] != 2:
        raise ValueError(f"landmarks {landmarks.shape} and template {template.shape} must both be (K, 2).")
    if not np.isfinite(landmarks).all():
        raise ValueError("landmarks contain NaN or infinite values.")
    transform = SimilarityTransform.from_estimate(landmarks, template)
    if not transform or np.ptp(landmarks, axis=0).max() < 1e-6:
        raise ValueError(f"Cannot fit a similarity transform to degenerate landmarks {landmarks.tolist()}.")
    return np.asarray(transform.params[:2], dtype=np.float64)


def align_crop(image: np.ndarray, landmarks: np.ndarray, template: np.ndarray, size: Size) -> np.ndarray:
    """Crop and align a face with OpenCV (bilinear, black outside the photo).

    Args:
        image: ``uint8`` RGB ``(H, W, 3)``.
        landmarks: ``(5, 2)`` face landmarks in ``image`` pixel coordinates.
        template: ``(5, 2)`` where the landmarks should land in the crop.
        size: ``(height, width)`` of the crop, or one int for square.

    Returns:
        ``uint8`` ``(height, width, 3)`` crop.
    """
    height, width = _hw(size)
    matrix = similarity_transform(landmarks, template)
    return cv2.warpAffine(
        np.ascontiguousarray(image), matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
    )


def _homogeneous(matrices: torch.Tensor) -> torch.Tensor:
    bottom = matrices.new_tensor([0.0, 0.0, 1.0]).expand(matrices.shape[0], 1, 3)
    return torch.cat([matrices, bottom], dim=1)


def _pixel_to_normalized(height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """``(3, 3)`` map from pixel coordinates to ``grid_sample``'s ``[-1, 1]`` (``align_corners=False``)."""
    return like.new_tensor([[2.0 / width, 0.0, 1.0 / width - 1.0], [0.0, 2.0 / height, 1.0 / height - 1.0], [0, 0, 1]])


def resize_matrices(matrices: torch.Tensor | np.ndarray, from_size: Size, to_size: Size) -> torch.Tensor | np.ndarray:
    """Re-express image->crop matrices for the same image resized from ``from_size`` to ``to_size``.

    Args:
        matrices: ``(2, 3)`` or ``(N, 2, 3)`` maps from pixel coordinates of a ``from_size`` image.
        from_size: ``(height, width)`` the matrices were computed for.
        to_size: ``(height, width)`` of the resized image.

    Returns:
        The same type and shape, mapping pixel coordinates of the ``to_size`` image to the same crop.
    """
    (fh, fw), (th, tw) = _hw(from_size), _hw(to_size)
    sx, sy = fw / tw, fh / th
    # x_from = (x_to + 0.5) * sx - 0.5
    inverse_resize = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])
    if isinstance(matrices, torch.Tensor):
        return matrices @ matrices.new_tensor(inverse_resize)
    return np.asarray(matrices, dtype=np.float64) @ inverse_resize


def warp_faces(
    images: torch.Tensor,
    matrices: torch.Tensor | np.ndarray,
    out_size: Size,
    antialias: bool = False,
) -> torch.Tensor:
    """Differentiable face crop: the torch counterpart of ``cv2.warpAffine`` with a similarity matrix.

    Gradients flow to ``images`` (not to ``matrices``, which are constants computed once from landmarks).

    Args:
        images: ``(N, 3, H, W)`` float images (any range; ``[0, 1]`` in iddm).
        matrices: ``(N, 2, 3)`` (or ``(2, 3)`` for all) maps from ``images`` pixel coordinates to crop
            pixel coordinates, as returned by :func:`similarity_transform`.
        out_size: ``(height, width)`` of the crops, or one int.
        antialias: when the warp shrinks the face (scale < 1), first downsample the images with an
            antialiasing filter so every source pixel contributes (``cv2.warpAffine`` does not do this;
            keep ``False`` to reproduce :func:`align_crop`).

    Returns:
        ``(N, 3, height, width)`` crops, zeros outside the image, same dtype and device as ``images``.
    """
    if images.ndim != 4:
        raise ValueError(f"warp_faces expects images of shape (N, C, H, W), got {tuple(images.shape)}.")
    n, _, height, width = images.shape
    out_h, out_w = _hw(out_size)
    theta = torch.as_tensor(np.asarray(matrices) if not isinstance(matrices, torch.Tensor) else matrices)
    theta = theta.to(device=images.device, dtype=torch.float64)
    if theta.ndim == 2:
        theta = theta.expand(n, 2, 3)
    if theta.shape != (n, 2, 3):
        raise ValueError(f"matrices must be (N, 2, 3) with N = {n} images, got {tuple(theta.shape)}.")
    if antialias:
        scale = torch.linalg.det(theta[:, :, :2]).abs().sqrt().max().item()
        if scale < 0.999:
            new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
            images = F.interpolate(images, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
            theta = resize_matrices(theta, (height, width), (new_h, new_w))
            height, width = new_h, new_w
    # grid_sample wants, for each normalized output point, the normalized input point:
    # N_in @ inv(M) @ inv(N_out).
    image_to_crop = _homogeneous(theta)
    n_in = _pixel_to_normalized(height, width, theta)
    n_out = _pixel_to_normalized(out_h, out_w, theta)
    grid_theta = (n_in @ torch.linalg.inv(image_to_crop) @ torch.linalg.inv(n_out))[:, :2]
    grid = F.affine_grid(grid_theta.to(images.dtype), [n, images.shape[1], out_h, out_w], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class FaceAligner:
    """Fixed differentiable face crops for a set of photos: matrices computed once, applied to any version of them.

    The matrices come from the landmarks of the *clean* photos and stay fixed, so the photo, a perturbed
    copy, or a model's reconstruction of it are all cropped identically (as IDDM's ``A_i`` needs).

    Matrices are in the pixel coordinates of the image size given at construction (the size detection ran
    on). Batches of another size (e.g. detection on the 512 px photo, a 64 px training copy at call time)
    are handled by rescaling the matrices to the batch's ``(H, W)``, assuming the batch image is the
    construction image resized (same framing, aspect ratio may change).

    Args:
        landmarks: ``(N, 5, 2)`` landmarks of the N photos (or a list of ``(5, 2)`` arrays).
        image_size: ``(height, width)`` the landmarks refer to: one for all photos, or a list of N.
        template: ``(5, 2)`` landmark positions in the crop.
        out_size: ``(height, width)`` of the crops, or one int.
        antialias: see :func:`warp_faces`.

    Example::

        faces = [detect_single_face(photo, source=str(p)) for p, photo in zip(paths, photos)]
        aligner = FaceAligner([f.landmarks for f in faces], [p.shape[:2] for p in photos],
                              recognizer.template, recognizer.input_size)
        crops = aligner(batch, indices)  # batch: (B, 3, 64, 64) versions of photos `indices`
    """

    def __init__(
        self,
        landmarks: np.ndarray | Sequence[np.ndarray],
        image_size: Size | Sequence[Size],
        template: np.ndarray,
        out_size: Size,
        antialias: bool = False,
    ) -> None:
        landmarks = [np.asarray(lm, dtype=np.float64) for lm in landmarks]
        if not landmarks:
            raise ValueError("FaceAligner needs the landmarks of at least one photo.")
        if isinstance(image_size, int | np.integer) or (
            len(image_size) == 2 and all(isinstance(v, int | np.integer) for v in image_size)
        ):
            sizes = [_hw(image_size)] * len(landmarks)
        else:
            sizes = [_hw(s) for s in image_size]
        if len(sizes) != len(landmarks):
            raise ValueError(f"Got {len(landmarks)} landmark sets but {len(sizes)} image sizes.")
        self.template = np.asarray(template, dtype=np.float64)
        self.out_size = _hw(out_size)
        self.image_sizes = sizes
        self.antialias = antialias
        self.matrices = torch.from_numpy(np.stack([similarity_transform(lm, self.template) for lm in landmarks]))
        """``(N, 2, 3)`` float64 image->crop maps, in pixel coordinates of each photo's ``image_size``."""

    def __len__(self) -> int:
        return len(self.image_sizes)

    def matrices_for(self, size: Size, indices: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """``(B, 2, 3)`` float64 matrices for ``(height, width)`` images of photos ``indices`` (default all)."""
        if indices is None:
            indices = range(len(self))
        indices = [int(i) for i in (indices.tolist() if isinstance(indices, torch.Tensor) else indices)]
        for i in indices:
            if not 0 <= i < len(self):
                raise IndexError(f"Photo index {i} out of range for a FaceAligner of {len(self)} photos.")
        return torch.stack([resize_matrices(self.matrices[i], self.image_sizes[i], size) for i in indices])

    def __call__(self, images: torch.Tensor, indices: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """Crop a batch of (versions of) the photos.

        Args:
            images: ``(B, 3, H, W)`` float in ``[0, 1]``; ``images[b]`` is a version of photo ``indices[b]``.
            indices: which photo each batch item is; default ``0..N-1`` (then ``B`` must equal ``N``).

        Returns:
            ``(B, 3, out_h, out_w)`` crops, differentiable w.r.t. ``images``.
        """
        if indices is None and images.shape[0] != len(self):
            raise ValueError(
                f"Batch of {images.shape[0]} images for a FaceAligner of {len(self)} photos: pass indices= to say "
                "which photo each image is."
            )
        matrices = self.matrices_for(tuple(images.shape[-2:]), indices)
        return warp_faces(images, matrices, self.out_size, antialias=self.antialias)
