"""Large images (slide pyramids) without holding them in memory.

Registration of a pyramid runs on one coarse level (:func:`coarse_level_index`,
:func:`level_affine`); the transform found there is a world transform, so it applies to
every level. :func:`lazy_apply_transform` then resamples the moving image onto a large
reference grid as a dask array: each output block reads only the region of the moving
image that it maps to, so memory stays bounded by the block size whatever the image size.

World conventions follow :mod:`napari_mmfuse.core.space`; transforms map a
fixed (reference) world point to a moving world point, as in
:mod:`napari_mmfuse.core.register`.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import numpy as np

from .space import check_affine, resample

if TYPE_CHECKING:
    import dask.array as da

#: Largest side (pixels) of the pyramid level that registration runs on.
MAX_REGISTRATION_SIZE = 2048
#: Output block shape of :func:`lazy_apply_transform` by number of spatial axes: a row of
#: 256-pixel TIFF tiles high, so the OME-TIFF writer, which streams bands of whole tile
#: rows, computes every block once; 3D blocks are thin slabs for the same reason.
BLOCK_SHAPE = {2: (256, 2048), 3: (16, 256, 256)}


def full_index(key, ndim: int, what: str) -> tuple:
    """``key`` of an array-like's ``__getitem__`` as one entry per axis (Ellipsis expanded).

    Raises
    ------
    IndexError
        For more entries than ``ndim`` axes (``what`` names the array in the message).
    """
    key = key if isinstance(key, tuple) else (key,)
    if any(k is Ellipsis for k in key):
        at = next(i for i, k in enumerate(key) if k is Ellipsis)
        key = key[:at] + (slice(None),) * (ndim - len(key) + 1) + key[at + 1 :]
    key = key + (slice(None),) * (ndim - len(key))
    if len(key) != ndim:
        raise IndexError(f"too many indices for {what}: {len(key)}")
    return key


def coarse_level_index(shapes, max_size: int | None = None) -> int:
    """The finest pyramid level whose largest side is at most ``max_size`` (else the coarsest).

    Parameters
    ----------
    shapes : sequence of sequence of int
        Spatial shapes of the levels, largest first.
    max_size : int, optional
        Largest allowed side; defaults to :data:`MAX_REGISTRATION_SIZE`.

    Returns
    -------
    int
        Index into ``shapes``. Large slides register on that level; the transform found
        there moves every level, since all levels share one world placement.
    """
    max_size = MAX_REGISTRATION_SIZE if max_size is None else max_size
    if max_size < 1:
        raise ValueError(f"the largest registration size must be at least 1 pixel, got {max_size}")
    for index, shape in enumerate(shapes):
        if max(shape) <= max_size:
            return index
    return len(shapes) - 1


def downsampling_factors(full_shape, level_shape) -> np.ndarray:
    """Level-0 voxels per voxel of a pyramid level, along each axis.

    An integer factor ``f`` is returned exactly when the level's size is the full size
    divided by ``f`` rounded down or up (how pyramids are written); otherwise the
    plain ratio of the sizes.

    Parameters
    ----------
    full_shape, level_shape : sequence of int
        Spatial shapes of level 0 and of the level.

    Returns
    -------
    ndarray of float, one factor per axis
    """
    full = np.asarray(full_shape, np.float64)
    level = np.asarray(level_shape, np.float64)
    if full.shape != level.shape or np.any(level < 1) or np.any(level > full):
        raise ValueError(f"a pyramid level of shape {tuple(level_shape)} does not fit level 0 of shape {tuple(full_shape)}")
    ratio = full / level
    whole = np.round(ratio)
    exact = (np.floor(full / whole) == level) | (np.ceil(full / whole) == level)
    return np.where(exact, whole, ratio)


def level_affine(affine, full_shape, level_shape) -> np.ndarray:
    """Index -> world affine of a pyramid level, from the affine of level 0.

    Voxel ``k`` of a level downsampled ``f`` times covers level-0 voxels ``k f`` to
    ``k f + f - 1``; its centre is at level-0 index ``k f + (f - 1) / 2``.

    Parameters
    ----------
    affine : ndarray, shape (n + 1, n + 1)
        Index -> world affine of level 0.
    full_shape, level_shape : sequence of int, length n
        Spatial shapes of level 0 and of the level.

    Returns
    -------
    ndarray, shape (n + 1, n + 1)
    """
    n = len(full_shape)
    affine = check_affine(affine, n)
    factors = downsampling_factors(full_shape, level_shape)
    level_to_full = np.diag(np.append(factors, 1.0))
    level_to_full[:n, n] = (factors - 1) / 2
    return affine @ level_to_full


def output_level_index(shapes, affine, transform, reference_affine) -> int:
    """The coarsest pyramid level still at least as fine as a reference grid.

    A reference voxel step, mapped through ``transform`` into the image, must span at
    least one voxel of the level in every direction; resampling from that level loses
    no detail the reference grid can hold and reads the fewest pixels.

    Parameters
    ----------
    shapes : sequence of sequence of int
        Spatial shapes of the image's levels, largest first.
    affine : ndarray, shape (n + 1, n + 1)
        Index -> world affine of level 0.
    transform : ndarray, shape (n + 1, n + 1)
        Reference world -> image world.
    reference_affine : ndarray, shape (n + 1, n + 1)

    Returns
    -------
    int
    """
    best = 0
    for index, shape in enumerate(shapes):
        mapping = np.linalg.inv(level_affine(affine, shapes[0], shape)) @ transform @ reference_affine
        smallest_step = np.linalg.svd(mapping[:-1, :-1], compute_uv=False).min()
        if smallest_step >= 1.0 - 1e-6:
            best = index
    return best


def _translation(offset) -> np.ndarray:
    out = np.eye(len(offset) + 1)
    out[:-1, -1] = offset
    return out


def _read(image, region) -> np.ndarray:
    """Pixels of a region of a numpy or dask array (a dask read stays in the calling thread)."""
    import dask.array as da

    part = image[region]
    if isinstance(part, da.Array):
        return part.compute(scheduler="synchronous")
    return np.asarray(part)


def _cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer) and not np.issubdtype(values.dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype, copy=False)


def lazy_apply_transform(
    image,
    image_affine,
    transform,
    reference_shape,
    reference_affine,
    *,
    interpolation: str = "linear",
    channel_axis: int | None = None,
    displacement=None,
    displacement_affine=None,
    fill_value: float = 0.0,
    dtype=None,
    block_shape=None,
) -> da.Array:
    """Resample an image onto a reference grid through ``x -> T(x + u(x))``, block by block.

    Nothing is computed here: the result is a dask array whose blocks each read the
    bounding box (plus one voxel) of the image region their voxel centres map to, and
    resample it with :func:`napari_mmfuse.core.register.apply_transform`. Computing a
    block therefore gives the values of resampling the whole image at once (up to the
    float32 rounding of sample positions: about 1e-4 of the intensity range, and rare
    nearest-neighbour ties at exactly half a voxel).

    Parameters
    ----------
    image : array-like (numpy or dask), shape (*spatial) plus an optional channel axis
        Read lazily: only the regions the computed blocks need.
    image_affine : ndarray, shape (n + 1, n + 1)
        Index -> world affine of ``image``.
    transform : ndarray, shape (n + 1, n + 1)
        Reference world -> image world.
    reference_shape : sequence of int, length n
    reference_affine : ndarray, shape (n + 1, n + 1)
    interpolation : {"linear", "nearest"}
        Use "nearest" for labels.
    channel_axis : int, optional
        Channel axis of ``image`` (e.g. -1 for RGB), kept at the same position.
    displacement : array, shape (*field_shape, n), optional
        Deformable part (world units, napari order) on its own grid, interpolated
        linearly at each reference voxel.
    displacement_affine : ndarray, shape (n + 1, n + 1), optional
        Index -> world affine of the displacement grid; required with ``displacement``.
    fill_value : float
        Value outside the image.
    dtype : numpy dtype, optional
        Output dtype; integers are rounded and clipped. Default: the image's dtype for
        "nearest", float32 for "linear".
    block_shape : sequence of int, optional
        Spatial shape of the output blocks; default :data:`BLOCK_SHAPE`. Memory grows
        with it (a block, the image region it reads, and their float32 copies).

    Returns
    -------
    dask.array.Array, shape reference_shape (plus the channel axis)

    Raises
    ------
    ValueError
        For an unknown interpolation, mismatched dimensions or a displacement without
        its affine.
    """
    import dask.array as da  # dask and torch only when a transform is applied: `mmfuse --help` imports this module

    from .register import apply_transform

    if interpolation not in ("linear", "nearest"):
        raise ValueError(f"interpolation must be 'linear' or 'nearest', not {interpolation!r}")
    if not hasattr(image, "ndim"):
        image = np.asarray(image)
    if channel_axis is not None and channel_axis % image.ndim != image.ndim - 1:
        image = da.moveaxis(image, channel_axis, -1) if isinstance(image, da.Array) else np.moveaxis(image, channel_axis, -1)
    n = image.ndim - (channel_axis is not None)
    if n not in (2, 3):
        raise ValueError(f"lazy resampling needs a 2D or 3D image, got {n} spatial axes (shape {image.shape})")
    reference_shape = tuple(int(s) for s in reference_shape)
    if len(reference_shape) != n:
        raise ValueError(f"the image has {n} spatial axes but the reference grid {len(reference_shape)}")
    image_affine = check_affine(image_affine, n)
    reference_affine = check_affine(reference_affine, n)
    transform = check_affine(transform, n)
    if displacement is not None:
        if displacement_affine is None:
            raise ValueError("a displacement field needs its index -> world affine (displacement_affine)")
        displacement = np.asarray(displacement, np.float32)
        if displacement.ndim != n + 1 or displacement.shape[-1] != n:
            raise ValueError(f"the displacement field must have shape (*grid, {n}), got {displacement.shape}")
        displacement_affine = check_affine(displacement_affine, n)
        reach = np.abs(displacement).reshape(-1, n).max(axis=0)
    else:
        reach = np.zeros(n)
    out_dtype = np.dtype(dtype) if dtype is not None else (image.dtype if interpolation == "nearest" else np.dtype(np.float32))
    block_shape = tuple(int(b) for b in (BLOCK_SHAPE[n] if block_shape is None else block_shape))
    if len(block_shape) != n or min(block_shape) < 1:
        raise ValueError(f"block_shape must be {n} positive sizes, got {block_shape}")
    channels = image.shape[n:]
    chunks = da.core.normalize_chunks(block_shape, reference_shape) + tuple((c,) for c in channels)
    to_image = np.linalg.inv(image_affine) @ transform
    image_shape = np.asarray(image.shape[:n])

    def block(block_info=None):
        location = block_info[None]["array-location"][:n]
        starts = np.array([start for start, _ in location])
        shape = tuple(int(stop - start) for start, stop in location)
        affine = reference_affine @ _translation(starts)
        field = None
        if displacement is not None:
            field = resample(displacement, displacement_affine, shape, affine, channel_axis=-1)
        # world box of the block's voxel centres (widened by the displacement), then its image box
        corners = np.array(list(itertools.product(*[(0, s - 1) for s in shape])), np.float64)
        world = corners @ affine[:n, :n].T + affine[:n, n]
        low_world, high_world = world.min(axis=0) - reach, world.max(axis=0) + reach
        box = np.array(list(itertools.product(*zip(low_world, high_world, strict=True))))
        index = box @ to_image[:n, :n].T + to_image[:n, n]
        low = np.clip(np.floor(index.min(axis=0)).astype(int) - 1, 0, image_shape)
        high = np.clip(np.ceil(index.max(axis=0)).astype(int) + 2, 0, image_shape)
        if np.any(high <= low):
            return np.full(shape + channels, fill_value, dtype=out_dtype)
        region = _read(image, tuple(slice(a, b) for a, b in zip(low, high, strict=True)))
        values = apply_transform(
            region,
            image_affine @ _translation(low),
            transform,
            shape,
            affine,
            interpolation=interpolation,
            displacement=field,
            channel_axis=-1 if channels else None,
            fill_value=fill_value,
        )
        return _cast(values, out_dtype)

    meta = np.empty((0,) * (n + len(channels)), dtype=out_dtype)
    out = da.map_blocks(block, dtype=out_dtype, chunks=chunks, meta=meta)
    if channel_axis is not None and channel_axis % out.ndim != out.ndim - 1:
        return da.moveaxis(out, -1, channel_axis)
    return out
