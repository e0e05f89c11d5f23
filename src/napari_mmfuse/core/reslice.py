"""Reslicing for display: one world-aligned grid, and volumes sampled on it one block at a time.

napari's 2D view draws a slice of a 3D layer without the out-of-slice part of its rotation,
so two scans tilted differently disagree in 2D although they coincide in world space.
Sampling every oblique volume on one world-aligned grid (:func:`display_grid`) makes the
2D overlay exact; :class:`ReslicedVolume` does it lazily, only for the planes asked for.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
from scipy import ndimage

from .lazy import full_index
from .space import check_affine, spacing_of, world_bounds

TOLERANCE_DEG = 0.1
"""Axes closer than this angle (degrees) count as parallel: 0.1 deg moves a point 150 mm
from the centre by 0.26 mm, well under a voxel of the scans this is for."""


def _directions(affine: np.ndarray) -> np.ndarray:
    affine = check_affine(affine)
    return affine[:-1, :-1] / spacing_of(affine)


def axes_parallel(affine_a: np.ndarray, affine_b: np.ndarray, *, tolerance_deg: float = TOLERANCE_DEG) -> bool:
    """Whether each array axis of A runs along the same-numbered axis of B (either sense).

    Parameters
    ----------
    affine_a, affine_b : ndarray, shape (n + 1, n + 1)
        Index -> world affines.
    tolerance_deg : float
        Largest angle between paired axes that still counts as parallel.

    Returns
    -------
    bool
        True when a 2D view draws slices of A and B in the same planes.
    """
    cosines = np.abs(np.sum(_directions(affine_a) * _directions(affine_b), axis=0))
    return bool(cosines.min() >= np.cos(np.radians(tolerance_deg)))


def display_grid(shape, affine: np.ndarray, *, tolerance_deg: float = TOLERANCE_DEG) -> tuple[tuple, np.ndarray]:
    """The world-aligned grid that shows an image exactly in 2D.

    An image whose axes already run along the world axes keeps its own grid. Otherwise
    the grid has the image's voxel size along the nearest world axes and covers its world
    bounding box.

    Parameters
    ----------
    shape : tuple of int
        The image's spatial shape.
    affine : ndarray, shape (n + 1, n + 1)
        Its index -> world affine.
    tolerance_deg : float
        See :func:`axes_parallel`.

    Returns
    -------
    shape : tuple of int
    affine : ndarray, shape (n + 1, n + 1)
        Diagonal (positive voxel sizes) plus the origin, unless the image's own grid is kept.
    """
    affine = check_affine(affine, len(shape))
    n = len(shape)
    if axes_parallel(affine, np.eye(n + 1), tolerance_deg=tolerance_deg):
        return tuple(int(s) for s in shape), affine.copy()
    nearest = np.abs(_directions(affine)).argmax(axis=0)  # world axis nearest to each array axis
    spacing = np.empty(n)
    spacing[nearest] = spacing_of(affine)
    if len(set(nearest.tolist())) != n:  # axes closer to each other than to distinct world axes
        spacing[:] = spacing_of(affine).min()
    low, high = world_bounds(shape, affine)
    grid_shape = tuple(int(s) for s in np.maximum(np.round((high - low) / spacing).astype(int), 1))
    grid = np.eye(n + 1)
    grid[:n, :n] = np.diag(spacing)
    grid[:n, n] = low + spacing / 2
    return grid_shape, grid


class ReslicedVolume:
    """Read-only array view of a volume sampled on another grid, computed per requested block.

    Indexing with integers and slices (what napari asks for one displayed plane) resamples
    only that block, through the world affines; recent blocks are cached.

    Parameters
    ----------
    source : array-like, shape (Z, Y, X)
        The volume (kept by reference, never modified).
    source_affine : ndarray, shape (4, 4)
        Its index -> world affine.
    shape : tuple of int
        The grid's shape.
    affine : ndarray, shape (4, 4)
        The grid's index -> world affine.
    order : int
        0 (nearest: labels keep their values and dtype) or 1 (linear; float32 out).
    cache_size : int
        Number of recent blocks kept.
    """

    def __init__(self, source, source_affine, shape, affine, *, order: int = 1, cache_size: int = 8):
        if order not in (0, 1):
            raise ValueError(f"order must be 0 (nearest) or 1 (linear), got {order}")
        if np.ndim(source) != len(shape):
            raise ValueError(f"source is {np.ndim(source)}D and the grid {len(shape)}D")
        self.source = source
        self._array = source if isinstance(source, np.ndarray) else None
        self.source_affine = check_affine(source_affine, len(shape)).copy()
        self.affine = check_affine(affine, len(shape)).copy()
        self.shape = tuple(int(s) for s in shape)
        self.order = order
        self.dtype = np.dtype(source.dtype) if order == 0 else np.dtype(np.float32)
        self._grid_to_source = np.linalg.inv(self.source_affine) @ self.affine
        self._cache: OrderedDict = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()  # napari's asynchronous slicing may ask from a thread

    @property
    def ndim(self) -> int:
        """Number of axes."""
        return len(self.shape)

    @property
    def size(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"ReslicedVolume(shape={self.shape}, dtype={self.dtype}, order={self.order})"

    def matches(self, source, source_affine, shape, affine) -> bool:
        """Whether this view already shows ``source`` (at ``source_affine``) on the grid (``shape``, ``affine``)."""
        return (
            source is self.source
            and tuple(shape) == self.shape
            and np.allclose(source_affine, self.source_affine, rtol=0, atol=1e-9)
            and np.allclose(affine, self.affine, rtol=0, atol=1e-9)
        )

    def _block(self, key) -> tuple[tuple, tuple, tuple, tuple]:
        key = full_index(key, self.ndim, f"a {self.ndim}D volume")
        starts, steps, sizes, kept = [], [], [], []
        for k, n in zip(key, self.shape, strict=True):
            if isinstance(k, slice):
                start, stop, step = k.indices(n)
                starts.append(start), steps.append(step), sizes.append(len(range(start, stop, step))), kept.append(True)
            elif isinstance(k, (int, np.integer)):
                index = int(k) + (n if k < 0 else 0)
                if not 0 <= index < n:
                    raise IndexError(f"index {int(k)} is out of bounds for an axis of size {n}")
                starts.append(index), steps.append(1), sizes.append(1), kept.append(False)
            else:
                raise TypeError(f"ReslicedVolume takes integers and slices, not {type(k).__name__}")
        return tuple(starts), tuple(steps), tuple(sizes), tuple(kept)

    def __getitem__(self, key) -> np.ndarray:
        starts, steps, sizes, kept = block = self._block(key)
        with self._lock:
            cached = self._cache.get(block)
            if cached is not None:
                self._cache.move_to_end(block)
                return cached
        out_shape = tuple(s for s, k in zip(sizes, kept, strict=True) if k)
        if 0 in sizes:
            return np.zeros(out_shape, self.dtype)
        linear = self._grid_to_source[:-1, :-1]
        if self._array is None:  # a dask/zarr source is read once, on the first request
            self._array = np.asarray(self.source)
        out = ndimage.affine_transform(
            self._array,
            linear * np.asarray(steps, dtype=np.float64),
            offset=linear @ np.asarray(starts, dtype=np.float64) + self._grid_to_source[:-1, -1],
            output_shape=sizes,
            output=self.dtype,
            order=self.order,
            mode="constant",
            cval=0.0,
            prefilter=False,
        ).reshape(out_shape)
        out.setflags(write=False)
        with self._lock:
            self._cache[block] = out
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[...]
        return np.array(out, dtype=dtype) if dtype is not None or copy else out
