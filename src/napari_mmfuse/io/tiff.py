"""OME-TIFF writer (tiled pyramids, streamed dask input); the TIFF family reader is :mod:`.tiff_read`.

:func:`write_ome_tiff` stores the exact affine in an OME annotation that
:func:`read_tiff` restores. ``read_tiff`` and the unit helpers are re-exported here.
"""

from __future__ import annotations

import json
from pathlib import Path

import dask.array as da
import numpy as np
import tifffile

from ..core.space import spacing_of
from ._common import refuse_overwrite
from .formats import stem
from .tiff_read import ANNOTATION_NAMESPACE, EAGER_READ_BYTES, SUFFIXES, read_tiff
from .units import WRITE_UNITS, project_units, um_per_unit

__all__ = [
    "ANNOTATION_NAMESPACE", "BAND_BYTES", "EAGER_READ_BYTES", "IN_MEMORY_WRITE_BYTES", "PYRAMID_ABOVE",
    "PYRAMID_SMALLEST", "SUFFIXES", "WRITE_UNITS", "canonical_layout", "downsample2", "project_units",
    "pyramid_count", "read_tiff", "um_per_unit", "write_ome_tiff",
]

#: Dask input up to this size is computed at once before writing; larger input is streamed.
IN_MEMORY_WRITE_BYTES = 256 * 2**20
#: A pyramid is written when the image is larger than this along Y or X ...
PYRAMID_ABOVE = 2048
#: ... and halved until both sides are smaller than this.
PYRAMID_SMALLEST = 1024
#: Rows of tiles computed at once when streaming dask input to a file (bytes).
BAND_BYTES = 64 * 2**20
_OME_UNIT = {"um": "µm", "mm": "mm"}


def canonical_layout(data, affine, channel_axis, rgb: bool) -> tuple:
    """Move the axes of an array to ``[time], [channel], spatial..., [rgb]``.

    Parameters
    ----------
    data : array-like (numpy or dask)
        Its last ``n`` non-channel, non-RGB axes are spatial (``n`` from ``affine``); at
        most one further leading axis is allowed (time).
    affine : array, shape (n + 1, n + 1)
    channel_axis : int or None
    rgb : bool
        The last axis holds RGB(A) samples.

    Returns
    -------
    data : array-like
        Transposed view (numpy or dask, as given).
    affine : ndarray
        Validated float64 affine.
    axes : str
        Letters of the returned axes among "TCZYXS".
    """
    affine = np.asarray(affine, dtype=np.float64)
    spacing_of(affine)  # validates shape, finiteness, singularity
    n = affine.shape[0] - 1
    if n not in (2, 3):
        raise ValueError(f"only 2D and 3D images can be written, the affine is {affine.shape}")
    if isinstance(data, (list, tuple)):
        data = data[0]
    if not hasattr(data, "ndim"):
        data = np.asarray(data)
    ndim = data.ndim
    if rgb and data.shape[-1] not in (3, 4):
        raise ValueError(f"rgb=True needs 3 or 4 samples on the last axis, got shape {data.shape}")
    axes = list(range(ndim - 1 if rgb else ndim))
    channel = None
    if channel_axis is not None:
        channel = channel_axis % ndim
        if channel not in axes:
            raise ValueError("channel_axis cannot be the RGB axis")
        axes.remove(channel)
    if len(axes) < n or len(axes) > n + 1:
        raise ValueError(
            f"data of shape {data.shape} does not match a {n}D affine "
            "(allowed: spatial axes, one channel axis, one leading time axis, RGB samples)"
        )
    others, spatial = axes[:-n], axes[-n:]
    order = others + ([channel] if channel is not None else []) + spatial + ([ndim - 1] if rgb else [])
    letters = "T" * len(others) + ("C" if channel is not None else "") + "ZYX"[-n:] + ("S" if rgb else "")
    if order != list(range(ndim)):
        data = data.transpose(order)
    return data, affine, letters


def pyramid_count(shape_yx, levels: int | None) -> int:
    """Number of pyramid levels (level 0 included) for an image of ``shape_yx``.

    Parameters
    ----------
    shape_yx : sequence of int
        Full-resolution (Y, X) size.
    levels : int or None
        Requested count. None chooses: one level up to :data:`PYRAMID_ABOVE` pixels a
        side, else halvings until both sides are under :data:`PYRAMID_SMALLEST`.

    Returns
    -------
    int
        The count, capped so that the smallest level keeps at least one pixel a side.

    Raises
    ------
    ValueError
        If ``levels`` is below 1.
    """
    ny, nx = (int(s) for s in shape_yx)
    if levels is None:
        if max(ny, nx) <= PYRAMID_ABOVE:
            return 1
        count = 1
        while max(ny, nx) >= PYRAMID_SMALLEST:
            ny, nx, count = ny // 2, nx // 2, count + 1
        return count
    if int(levels) < 1:
        raise ValueError(f"the number of levels must be at least 1, got {levels}")
    return max(1, min(int(levels), int(np.log2(min(ny, nx))) + 1))


def downsample2(data, yx_axes: tuple[int, int], labels: bool):
    """Halve an array along its Y and X axes (an odd last row/column is dropped).

    Parameters
    ----------
    data : array-like (numpy or dask)
    yx_axes : tuple of int
        The Y and X axes.
    labels : bool
        Take every second pixel (no new values appear) instead of the 2x2 block mean.

    Returns
    -------
    array-like
        Same type and dtype as ``data`` (means of integers are rounded); lazy for dask.
    """
    slicer = [slice(None)] * data.ndim
    for axis in yx_axes:
        slicer[axis] = slice(0, data.shape[axis] // 2 * 2, 2 if labels else None)
    data = data[tuple(slicer)]
    if labels:
        return data
    dtype = data.dtype
    if isinstance(data, da.Array):
        mean = da.coarsen(np.mean, data, {axis: 2 for axis in yx_axes}, trim_excess=True)
    else:
        shape = []
        for axis, size in enumerate(data.shape):
            shape.extend([size // 2, 2] if axis in yx_axes else [size])
        block_axes = tuple(axis + 1 + yx_axes.index(axis) for axis in yx_axes)
        mean = data.reshape(shape).mean(axis=block_axes)
    if np.issubdtype(dtype, np.integer):
        mean = mean.round()
    return mean.astype(dtype)


def _storable(data, path: Path):
    """Cast dtypes OME-TIFF cannot hold: bool -> uint8, float16 -> float32, 64-bit ints -> 32 bits."""
    if data.dtype == np.bool_:
        return data.astype(np.uint8)
    if data.dtype == np.float16:
        return data.astype(np.float32)
    if data.dtype in (np.int64, np.uint64):
        low, high = (int(v) for v in da.compute(data.min(), data.max()))
        target = np.uint32 if low >= 0 else np.int32
        info = np.iinfo(target)
        if low < info.min or high > info.max:
            raise ValueError(f"{path.name}: values {low}..{high} do not fit the 32-bit integers OME-TIFF holds")
        return data.astype(target)
    return data


def write_ome_tiff(
    path,
    data,
    affine,
    *,
    overwrite: bool = False,
    channel_axis: int | None = None,
    channel_names=None,
    rgb: bool = False,
    units: str = "um",
    metadata: dict | None = None,
    pyramid_levels: int | None = None,
    tile: int = 256,
    layer_type: str = "image",
) -> Path:
    """Write an image as OME-TIFF, with a tiled pyramid when it is large.

    The pixel size (PhysicalSizeX/Y/Z) and the translation (Plane PositionX/Y/Z) come
    from the affine; the exact affine, the units, the layer type and ``metadata`` are
    also stored in an OME MapAnnotation (namespace :data:`ANNOTATION_NAMESPACE`), so
    :func:`read_tiff` restores any affine, rotated or sheared ones included, exactly.

    Parameters
    ----------
    path : str or Path
        Output file, normally ending in ``.ome.tif``.
    data : array-like (numpy or dask)
        Image; its last ``n`` non-channel, non-RGB axes are spatial, one further leading
        axis (time) is allowed (a multiscale list writes its first level). Dask input
        larger than :data:`IN_MEMORY_WRITE_BYTES` is written tile by tile, one band of
        rows (:data:`BAND_BYTES`) in memory at a time. 64-bit integers are stored as
        32-bit ones when their values fit, bool as uint8, float16 as float32.
    affine : array, shape (n + 1, n + 1)
        Index -> world affine of the spatial axes (napari order), n = 2 or 3.
    overwrite : bool
        Replace an existing file.
    channel_axis : int, optional
        Axis holding channels; written as the OME C dimension.
    channel_names : sequence of str, optional
        One name per channel (OME Channel Name).
    rgb : bool
        The last axis holds RGB(A) samples (written interleaved, photometric RGB).
    units : {"um", "mm", "pixel"}
        World units of the affine; "pixel" writes no physical size.
    metadata : dict, optional
        JSON-serialisable extra fields, restored into the record's metadata on reading.
    pyramid_levels : int, optional
        Number of levels including full resolution; by default one level up to
        :data:`PYRAMID_ABOVE` px a side, else halvings until under :data:`PYRAMID_SMALLEST`.
        Levels are stored as SubIFDs.
    tile : int
        Tile edge (multiple of 16) for tiled (large or pyramidal) images.
    layer_type : {"image", "labels"}
        Labels are downsampled by taking every second pixel instead of the 2x2 mean.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    FileExistsError
        If ``path`` exists and ``overwrite`` is False.
    ValueError
        If the data, affine, units, names or tile size are inconsistent.
    """
    path = Path(path)
    refuse_overwrite(path, overwrite)
    if units not in WRITE_UNITS:
        raise ValueError(f"units must be one of {WRITE_UNITS}, not {units!r}")
    if layer_type not in ("image", "labels"):
        raise ValueError(f"layer_type must be 'image' or 'labels', not {layer_type!r}")
    if tile % 16:
        raise ValueError(f"tile must be a multiple of 16, got {tile}")
    data, affine, axes = canonical_layout(data, affine, channel_axis, rgb)
    data = _storable(data, path)
    n = affine.shape[0] - 1
    y_axis = axes.index("Y")
    n_levels = pyramid_count(data.shape[y_axis : y_axis + 2], pyramid_levels)
    if isinstance(data, da.Array) and data.nbytes <= IN_MEMORY_WRITE_BYTES:
        data = data.compute()
    tiled = n_levels > 1 or max(data.shape[y_axis : y_axis + 2]) > PYRAMID_ABOVE or isinstance(data, da.Array)

    ome: dict = {"axes": axes, "Name": stem(path, SUFFIXES)}
    if "C" in axes and channel_names is not None:
        names = [str(c) for c in channel_names]
        if len(names) != data.shape[axes.index("C")]:
            raise ValueError(f"{len(names)} channel names for {data.shape[axes.index('C')]} channels")
        ome["Channel"] = {"Name": names}
    spacing = spacing_of(affine)
    translation = affine[:n, n]
    resolution = {}
    if units != "pixel":
        for letter, size in zip("ZYX"[-n:], spacing, strict=True):
            ome[f"PhysicalSize{letter}"] = float(size)
            ome[f"PhysicalSize{letter}Unit"] = _OME_UNIT[units]
        planes = list(np.ndindex(*data.shape[: axes.index("Y")]))
        z_index = axes.find("Z")
        position: dict = {}
        for letter, origin in zip("ZYX"[-n:], translation, strict=True):
            if letter == "Z":
                values = [float(origin + p[z_index] * spacing[0]) for p in planes]
            else:
                values = [float(origin)] * len(planes)
            position[f"Position{letter}"] = values
            position[f"Position{letter}Unit"] = [_OME_UNIT[units]] * len(planes)
        ome["Plane"] = position
        cm = spacing[-2:] * um_per_unit(units) * 1e-4  # (y, x) pixel size in cm
        resolution = {"resolution": (1.0 / cm[1], 1.0 / cm[0]), "resolutionunit": "CENTIMETER"}
    ome["MapAnnotation"] = {
        "Namespace": ANNOTATION_NAMESPACE,
        "affine": json.dumps(affine.tolist()),
        "units": units,
        "layer_type": layer_type,
        "metadata": json.dumps(metadata or {}, default=str),
    }

    options = {
        "photometric": "rgb" if rgb else "minisblack",
        "compression": "zlib",
        "tile": (tile, tile) if tiled else None,
    }
    bigtiff = data.nbytes * 4 / 3 > 2**31 - 2**25
    level = data
    from .atomic import atomic_output

    # written under a hidden temporary name and renamed into place whole (an input may be this path)
    with (
        atomic_output(path, overwrite=overwrite) as temporary,
        tifffile.TiffWriter(temporary, bigtiff=bigtiff, ome=True) as writer,
    ):
        for index in range(n_levels):
            extra: dict = dict(options)
            if resolution:
                factor = 2.0**index
                extra["resolution"] = tuple(r / factor for r in resolution["resolution"])
                extra["resolutionunit"] = resolution["resolutionunit"]
            if index == 0:
                extra.update(subifds=n_levels - 1, metadata=ome)
            else:
                extra.update(subfiletype=1, metadata=None)
            if isinstance(level, da.Array):
                writer.write(
                    _band_tiles(level, tile, rgb), shape=level.shape, dtype=level.dtype, **extra
                )
            else:
                writer.write(level, **extra)
            if index + 1 < n_levels:
                level = downsample2(level, (y_axis, y_axis + 1), layer_type == "labels")
    return path


def _band_tiles(level, tile: int, rgb: bool):
    """Yield the tiles of a dask array in TIFF order, computing one band of rows at a time."""
    n_plane_axes = level.ndim - (3 if rgb else 2)
    ny = level.shape[n_plane_axes]
    row_bytes = level.dtype.itemsize * int(np.prod(level.shape[n_plane_axes + 1 :]))
    band = max(1, BAND_BYTES // max(row_bytes * tile, 1)) * tile
    for plane in np.ndindex(*level.shape[:n_plane_axes]):
        for y0 in range(0, ny, band):
            block = level[plane + (slice(y0, y0 + band),)].compute()
            for ty in range(0, block.shape[0], tile):
                for tx in range(0, block.shape[1], tile):
                    yield block[ty : ty + tile, tx : tx + tile]
