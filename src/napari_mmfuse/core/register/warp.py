"""Resampling through a registration result, and the similarity measures shown to the user.

:func:`apply_transform` maps a moving image onto a reference grid through
``x -> T(x + u(x))``; :func:`metric_value` and :func:`local_similarity_map` score an
alignment on the fixed grid.
"""

from __future__ import annotations

import numpy as np
import torch

from ..device import get_device
from ..space import resample
from .checks import check_affine, check_image, check_mask, check_transform
from .metrics import Similarity, check_metric, intensity_range, local_correlation
from .pyramid import MIN_AXIS, Level, grid_points, halve

#: Grids larger than this are halved before evaluating a metric for display.
MAX_METRIC_VOXELS = 2**19


def warp(image: torch.Tensor, image_affine, transform, shape, affine, displacement, *, mode: str, device, chunk: int = 2**22):
    """Sample ``image`` (C, *s) at ``T(x + u(x))`` for the voxel centres x of a grid.

    Returns values (C, *shape) and a bool inside map (*shape) using the same
    half-voxel rule as :func:`napari_mmfuse.core.space.resample`.
    """
    n = len(shape)
    to_index = torch.as_tensor(np.linalg.inv(image_affine) @ transform, dtype=torch.float64, device=device)
    size = torch.as_tensor(image.shape[1:], dtype=torch.float64, device=device)
    scale = torch.where(size > 1, 2.0 / (size - 1).clamp(min=1), torch.zeros_like(size))
    total = int(np.prod(shape))
    values = torch.empty((image.shape[0], total), dtype=image.dtype, device=device)
    mask = torch.empty(total, dtype=torch.bool, device=device)
    flat_disp = None if displacement is None else torch.as_tensor(np.asarray(displacement, np.float32), device=device).reshape(-1, n)
    for begin in range(0, total, chunk):
        index = torch.arange(begin, min(begin + chunk, total), device=device)
        points = grid_points(shape, affine, device=device, index=index).to(torch.float64)
        if flat_disp is not None:
            points = points + flat_disp[index].to(torch.float64)
        ijk = points @ to_index[:n, :n].T + to_index[:n, n]
        mask[index] = ((ijk >= -0.5) & (ijk <= size - 0.5)).all(dim=-1)
        coords = (ijk * scale - (scale > 0).to(ijk.dtype)).flip(-1).to(torch.float32)
        grid = coords.reshape((1, -1) + (1,) * (n - 1) + (n,))
        sampled = torch.nn.functional.grid_sample(image[None], grid, mode=mode, padding_mode="border", align_corners=True)
        values[:, index] = sampled.reshape(image.shape[0], -1)
    return values.reshape((image.shape[0],) + tuple(shape)), mask.reshape(tuple(shape))


def _halving_factors(shape) -> tuple[int, ...]:
    return tuple(2 if s >= 2 * MIN_AXIS else 1 for s in shape)


def metric_value(
    fixed,
    fixed_affine,
    moving,
    moving_affine,
    *,
    metric: str = "mi",
    transform=None,
    displacement=None,
    fixed_mask=None,
    moving_mask=None,
    device=None,
) -> float:
    """Similarity of the fixed image and the moving image mapped through ``transform``.

    Evaluated on the fixed grid (halved, as in the pyramid, while it exceeds 2**19
    voxels), for before/after displays.

    Parameters
    ----------
    fixed, moving : array, shape (Y, X) or (Z, Y, X)
    fixed_affine, moving_affine : ndarray, shape (n + 1, n + 1)
    metric : {"mi", "nmi", "lncc", "mse"}
        MI/NMI/LNCC: higher is better; MSE: lower is better.
    transform : ndarray, shape (n + 1, n + 1), optional
        Fixed -> moving world (identity by default).
    displacement : ndarray, shape (*fixed_shape, n), optional
        Deformable part on the fixed grid (world units).
    fixed_mask, moving_mask : array of bool, optional
    device : str or torch.device, optional

    Returns
    -------
    float
    """
    check_metric(metric)
    fixed, fixed_affine = check_image(fixed, fixed_affine, "fixed")
    moving, moving_affine = check_image(moving, moving_affine, "moving")
    n = fixed.ndim
    if moving.ndim != n:
        raise ValueError(f"the fixed image is {n}D and the moving image {moving.ndim}D")
    transform = np.eye(n + 1) if transform is None else check_transform(transform, n, "transform")
    fixed_mask = check_mask(fixed_mask, fixed.shape, "fixed")
    moving_mask = check_mask(moving_mask, moving.shape, "moving")
    device = get_device(device)
    level = Level(torch.from_numpy(fixed).to(device), fixed_affine, None if fixed_mask is None else torch.from_numpy(fixed_mask).to(device))
    while np.prod(level.shape) > MAX_METRIC_VOXELS:
        factors = _halving_factors(level.shape)
        level = halve(level)
        if displacement is not None:
            displacement = displacement[tuple(slice(None, None, f) for f in factors)]
    channels = [moving] if moving_mask is None else [moving, moving_mask.astype(np.float32)]
    source = torch.from_numpy(np.stack(channels)).to(device)
    with torch.no_grad():
        values, within = warp(source, moving_affine, transform, level.shape, level.affine, displacement, mode="bilinear", device=device)
        weight = within.to(torch.float32)
        if moving_mask is not None:
            weight = weight * (values[1] > 0.5)
        if level.mask is not None:
            weight = weight * level.mask
        if float(weight.sum()) == 0:
            raise ValueError("the images do not overlap under this transform")
        fixed_values = level.image if metric == "lncc" else level.image.reshape(-1)
        shape = fixed_values.shape
        similarity = Similarity(
            metric,
            fixed_values,
            fixed_range=intensity_range(fixed, fixed_mask),
            moving_range=intensity_range(moving, moving_mask),
        )
        return float(similarity(values[0].reshape(shape), weight.reshape(shape)))


def local_similarity_map(
    fixed,
    fixed_affine,
    moving,
    moving_affine,
    *,
    transform=None,
    displacement=None,
    radius: int = 3,
    device=None,
) -> np.ndarray:
    """Squared local normalised cross-correlation on the fixed grid (1 = locally aligned).

    Squared so that inverted contrast (e.g. T1 vs T2) still reads as aligned; flat
    regions and points outside the moving image read 0.

    Parameters
    ----------
    fixed, moving : array, shape (Y, X) or (Z, Y, X)
    fixed_affine, moving_affine : ndarray, shape (n + 1, n + 1)
    transform : ndarray, shape (n + 1, n + 1), optional
    displacement : ndarray, shape (*fixed_shape, n), optional
    radius : int
        Window half width in fixed voxels.
    device : str or torch.device, optional

    Returns
    -------
    ndarray, shape fixed.shape, float32 in [0, 1]
    """
    fixed, fixed_affine = check_image(fixed, fixed_affine, "fixed")
    moving, moving_affine = check_image(moving, moving_affine, "moving")
    n = fixed.ndim
    if moving.ndim != n:
        raise ValueError(f"the fixed image is {n}D and the moving image {moving.ndim}D")
    transform = np.eye(n + 1) if transform is None else check_transform(transform, n, "transform")
    device = get_device(device)
    with torch.no_grad():
        values, within = warp(torch.from_numpy(moving[None]).to(device), moving_affine, transform, fixed.shape, fixed_affine, displacement, mode="bilinear", device=device)
        f_low, f_high = intensity_range(fixed)
        m_low, m_high = intensity_range(moving)
        f = (torch.from_numpy(fixed).to(device) - f_low) / max(f_high - f_low, 1e-12)
        m = (values[0] - m_low) / max(m_high - m_low, 1e-12)
        weight = within.to(torch.float32)
        cc = local_correlation(f, m, weight, radius) * weight
    return cc.clamp(0.0, 1.0).cpu().numpy().astype(np.float32)


def apply_transform(
    image,
    image_affine,
    transform,
    reference_shape,
    reference_affine,
    *,
    interpolation: str = "linear",
    displacement=None,
    channel_axis: int | None = None,
    fill_value: float = 0.0,
    device=None,
) -> np.ndarray:
    """Resample a moving image onto a reference grid through ``x -> T(x + u(x))``.

    Parameters
    ----------
    image : array, shape (*spatial) (plus a channel axis)
    image_affine : ndarray, shape (n + 1, n + 1)
    transform : ndarray, shape (n + 1, n + 1)
        Fixed (reference) world -> moving world.
    reference_shape : tuple of int, length n
    reference_affine : ndarray, shape (n + 1, n + 1)
    interpolation : {"linear", "nearest"}
        Use "nearest" for labels (keeps the dtype); "linear" returns float32.
    displacement : ndarray, shape (*reference_shape, n), optional
        World displacement on the reference grid (deformable results).
    channel_axis : int, optional
        Channel axis of ``image`` (e.g. -1 for RGB), kept in the output.
    fill_value : float
        Value outside the moving image.
    device : str or torch.device, optional

    Returns
    -------
    ndarray, shape reference_shape (plus the channel axis)
    """
    array = np.asarray(image)
    n = array.ndim - (channel_axis is not None)
    transform = check_transform(transform, n, "transform")
    image_affine = check_affine(image_affine, n)
    if displacement is None:
        return resample(
            array,
            np.linalg.inv(transform) @ image_affine,
            reference_shape,
            reference_affine,
            interpolation=interpolation,
            channel_axis=channel_axis,
            fill_value=fill_value,
            device=device,
        )
    if interpolation not in ("linear", "nearest"):
        raise ValueError(f"interpolation must be 'linear' or 'nearest', not {interpolation!r}")
    reference_shape = tuple(int(s) for s in reference_shape)
    displacement = np.asarray(displacement, np.float32)
    if displacement.shape != reference_shape + (n,):
        raise ValueError(f"displacement must have shape {reference_shape + (n,)}, got {displacement.shape}")
    reference_affine = check_affine(reference_affine, n)
    device = get_device(device)
    stacked = np.moveaxis(array, channel_axis, 0) if channel_axis is not None else array[None]
    source = torch.from_numpy(np.ascontiguousarray(stacked, dtype=np.float32)).to(device)
    mode = "bilinear" if interpolation == "linear" else "nearest"
    with torch.no_grad():
        values, within = warp(source, image_affine, transform, reference_shape, reference_affine, displacement, mode=mode, device=device)
        values = torch.where(within, values, torch.as_tensor(fill_value, dtype=values.dtype, device=device))
    out = values.cpu().numpy()
    if interpolation == "nearest":
        out = (np.rint(out) if np.issubdtype(array.dtype, np.integer) else out).astype(array.dtype)
    else:
        out = out.astype(np.float32)
    return np.moveaxis(out, 0, channel_axis) if channel_axis is not None else out[0]
