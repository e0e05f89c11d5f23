"""Multi-resolution pyramids and world <-> sampling-grid coordinate maps for registration.

All helpers keep the index -> world affine of every level, so that each level is an
image placed in the same world as the full-resolution one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

#: Axes shorter than this (in voxels) are not halved any further.
MIN_AXIS = 8


@dataclass
class Level:
    """One pyramid level: an image on its own grid.

    Attributes
    ----------
    image : Tensor, shape (*shape)
        float32 intensities.
    affine : ndarray, shape (n + 1, n + 1)
        Index -> world affine of this level.
    mask : Tensor or None, shape (*shape)
        bool mask (True = use) or None.
    """

    image: torch.Tensor
    affine: np.ndarray
    mask: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.image.shape)

    @property
    def spacing(self) -> np.ndarray:
        return np.linalg.norm(self.affine[:-1, :-1], axis=0)


def gaussian_blur(image: torch.Tensor, sigma, stride=None) -> torch.Tensor:
    """Separable Gaussian smoothing with reflected borders, optionally keeping every k-th voxel.

    Each 1D pass is a weighted sum of shifted views of the padded image (on the CPU about
    ten times faster than a one-channel ``conv3d`` with a 1D kernel).

    Parameters
    ----------
    image : Tensor, shape (*spatial)
    sigma : sequence of float, one per axis, in voxels (0 leaves an axis alone)
    stride : sequence of int, one per axis, optional
        Keep voxels ``0, k, 2k, ...`` along each axis: the same as slicing the smoothed
        image with ``[::k]``, but each pass only computes the voxels kept, and later
        passes run on the already reduced grid.

    Returns
    -------
    Tensor, shape (*spatial), reduced by ``stride``
    """
    out = image
    n = image.ndim
    stride = [1] * n if stride is None else list(stride)
    for axis, s in enumerate(sigma):
        size, step = out.shape[axis], stride[axis]
        count = (size - 1) // step + 1
        every = [slice(None)] * n
        every[axis] = slice(None, None, step)
        if s <= 0 or size < 2:
            out = out[tuple(every)]
            continue
        radius = min(int(np.ceil(3 * s)), size - 1)
        x = np.arange(-radius, radius + 1, dtype=np.float64)
        kernel = np.exp(-0.5 * (x / s) ** 2)
        kernel = (kernel / kernel.sum()).astype(np.float32)
        pad = [0, 0] * n
        pad[2 * (n - 1 - axis)] = pad[2 * (n - 1 - axis) + 1] = radius
        padded = F.pad(out[None, None], pad, mode="reflect")[0, 0]
        total = None
        for shift, weight in enumerate(kernel.tolist()):
            view = padded.narrow(axis, shift, (count - 1) * step + 1)[tuple(every)]
            total = view * weight if total is None else total.add_(view, alpha=weight)
        out = total
    return out


def halve(level: Level) -> Level:
    """Smooth (sigma 1 voxel) and keep every second voxel along axes long enough to halve."""
    shape = level.shape
    factors = [2 if s >= 2 * MIN_AXIS else 1 for s in shape]
    sigma = [1.0 if f == 2 else 0.0 for f in factors]
    stride = np.diag(np.array(factors + [1], dtype=np.float64))
    mask = None
    if level.mask is not None:
        mask = gaussian_blur(level.mask.to(torch.float32), sigma, factors) > 0.5
    return Level(gaussian_blur(level.image, sigma, factors).contiguous(), level.affine @ stride, mask)


def build_pyramid(image: torch.Tensor, affine: np.ndarray, levels: int, mask: torch.Tensor | None = None) -> list[Level]:
    """Gaussian pyramid, coarsest level first, finest (the input) last.

    Parameters
    ----------
    image : Tensor, shape (*spatial)
    affine : ndarray, shape (n + 1, n + 1)
    levels : int
        Number of levels (1 = the input only).
    mask : Tensor, shape (*spatial), optional

    Returns
    -------
    list of Level, length ``levels``
    """
    pyramid = [Level(image, np.asarray(affine, np.float64), mask)]
    for _ in range(levels - 1):
        pyramid.append(halve(pyramid[-1]))
    return pyramid[::-1]


def normaliser(shape, affine: np.ndarray) -> np.ndarray:
    """Matrix mapping a world point (napari order) to ``grid_sample`` coordinates of a grid.

    ``grid_sample`` with ``align_corners=True`` wants coordinates in [-1, 1] in reversed
    (x, y[, z]) order; this folds the inverse affine, the scaling and the reversal into one
    homogeneous matrix.

    Returns
    -------
    ndarray, shape (n + 1, n + 1)
    """
    shape = np.asarray(shape, dtype=np.float64)
    n = shape.size
    scale = np.where(shape > 1, 2.0 / np.maximum(shape - 1, 1), 0.0)
    to_unit = np.eye(n + 1)
    to_unit[:n, :n] = np.diag(scale)
    to_unit[:n, n] = -(scale > 0).astype(np.float64)
    flip = np.eye(n + 1)
    flip[:n, :n] = np.eye(n)[::-1]
    return flip @ to_unit @ np.linalg.inv(affine)


def sample(image: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Trilinear/bilinear interpolation of ``image`` at ``grid_sample`` coordinates.

    Parameters
    ----------
    image : Tensor, shape (C, *spatial) or (*spatial)
    coords : Tensor, shape (N, n)
        Output of :func:`normaliser` applied to points.

    Returns
    -------
    Tensor, shape (C, N) or (N,)
    """
    squeeze = image.ndim == coords.shape[-1]
    source = image[None, None] if squeeze else image[None]
    grid = coords.reshape((1, -1) + (1,) * (coords.shape[-1] - 1) + (coords.shape[-1],))
    values = F.grid_sample(source, grid.to(source.dtype), mode="bilinear", padding_mode="border", align_corners=True)
    values = values.reshape(source.shape[1], -1)
    return values[0] if squeeze else values


def interpolate(image: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of a constant image at points, differentiable in ``coords`` only.

    The same values as :func:`sample` (``grid_sample``, border padding, aligned corners)
    for a single-channel image, from gathers of the ``2 ** n`` corner voxels and
    element-wise lerps: on the CPU this is several times faster than ``grid_sample``'s
    3D backward pass, which the registration optimisers run every iteration.

    Parameters
    ----------
    image : Tensor, shape (*spatial)
        Not differentiated (use :func:`sample` for an image that needs a gradient).
    coords : Tensor, shape (N, n)
        ``grid_sample`` coordinates (reversed axis order, [-1, 1]).

    Returns
    -------
    Tensor, shape (N,)
    """
    n = image.ndim
    flat = image.detach().reshape(-1)
    base = torch.zeros(coords.shape[0], dtype=torch.int64, device=coords.device)
    fractions, offsets = [], [0]
    stride = 1
    for axis in reversed(range(n)):  # coords are in reversed (x, y[, z]) order: column n - 1 - axis
        size = image.shape[axis]
        position = ((coords[:, n - 1 - axis] + 1.0) * (0.5 * (size - 1))).clamp(0.0, float(size - 1))
        low = position.detach().floor().clamp(max=max(size - 2, 0))
        fractions.append(position - low)
        base = base + low.to(torch.int64) * stride
        step = stride if size > 1 else 0
        offsets = offsets + [o + step for o in offsets]
        stride *= size
    index = base[:, None] + torch.as_tensor(offsets, device=coords.device)
    corners = flat.index_select(0, index.reshape(-1)).reshape(index.shape)  # faster than flat[index] on the CPU
    # corners' last index bit is the fastest axis (fractions[0]); lerp it away first
    for t in fractions:
        low_half = corners[:, 0::2]
        corners = low_half + (corners[:, 1::2] - low_half) * t[:, None]
    return corners[:, 0]


def inside(coords: torch.Tensor) -> torch.Tensor:
    """True where ``grid_sample`` coordinates fall within the grid's voxel centres, shape (N,)."""
    return coords.abs().amax(dim=-1) <= 1.0 + 1e-6


def grid_points(shape, affine: np.ndarray, *, device, index: torch.Tensor | None = None) -> torch.Tensor:
    """World points of (some of) the voxel centres of a grid.

    Parameters
    ----------
    shape : tuple of int
    affine : ndarray, shape (n + 1, n + 1)
    device : torch.device
    index : Tensor, shape (N,), optional
        Flat (C-order) voxel indices to keep; all voxels if omitted.

    Returns
    -------
    Tensor, shape (N, n), float32
    """
    n = len(shape)
    if index is None:
        axes = [torch.arange(s, dtype=torch.float64, device=device) for s in shape]
        ijk = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, n)
    else:
        coords = []
        rest = index
        for size in reversed(shape):
            coords.append(rest % size)
            rest = rest // size
        ijk = torch.stack(coords[::-1], dim=-1).to(torch.float64)
    a = torch.as_tensor(affine, dtype=torch.float64, device=device)
    return (ijk @ a[:n, :n].T + a[:n, n]).to(torch.float32)
