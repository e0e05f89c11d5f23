"""One pyramid level of a DICOM whole-slide image as a lazy array: tiles are decoded when sliced.

:class:`TiledLevel` reads only the DICOM tiles that a slice touches (see
:func:`~napari_mmfuse.io.dicom_frames.decode_frame`); :meth:`TiledLevel.to_dask` wraps it as a
dask array with a chunk per tile, as napari and the pipelines take it. Nothing is cached:
napari's dask cache keeps the tiles it shows.
"""

from __future__ import annotations

import dask.array as da
import numpy as np

from ..core.lazy import full_index
from .dicom_frames import FrameTable, decode_frame


class TiledLevel:
    """A slide level of ``(paths, rows, columns[, samples])`` pixels assembled from tiles on demand.

    Parameters
    ----------
    tables : list of FrameTable
        The frames of the level's files.
    grid : ndarray of int32, shape (paths, tile rows, tile columns, 2)
        (table index, frame index) of the tile at each place of the tile grid, -1 where none.
    off_grid : dict
        Tiles off the grid (TILED_SPARSE allows them): ``(path index, tile-grid row,
        tile-grid column)`` of the tile's first pixel -> list of ``(row, column, table
        index, frame index)``; they are found from the neighbouring cells too.
    tile : tuple of int
        Tile rows and columns.
    total : tuple of int
        Rows and columns of the level.
    samples : int
        Samples per pixel: a trailing axis when more than one.
    dtype : numpy dtype
    fill : number
        Value where no tile lies (white for RGB).
    """

    def __init__(self, tables: list[FrameTable], grid: np.ndarray, off_grid: dict, tile, total, samples: int, dtype, fill):
        self.tables, self.grid, self.off_grid = tables, grid, off_grid
        self.tile, self.total = tuple(tile), tuple(total)
        self.n_paths, self.samples, self.fill = grid.shape[0], samples, fill
        self.dtype = np.dtype(dtype)
        self.shape = ((self.n_paths,) if self.n_paths > 1 else ()) + self.total + ((samples,) if samples > 1 else ())
        self.ndim = len(self.shape)

    def __getitem__(self, key) -> np.ndarray:
        """Integers and slices (any step) per axis, as numpy indexes them."""
        key = full_index(key, self.ndim, f"a {self.ndim}D slide level")
        bounds, picks = [], []
        for k, size in zip(key, self.shape, strict=True):
            if isinstance(k, slice):
                start, stop, step = k.indices(size)
                if step == 1:
                    bounds.append((start, max(start, stop)))
                    picks.append(None)
                    continue
                wanted = np.arange(start, stop, step)
            elif isinstance(k, (int, np.integer)):
                if not -size <= k < size:
                    raise IndexError(f"index {k} is out of bounds for an axis of size {size}")
                wanted = int(k) % size
            else:
                raise IndexError(f"a slide level takes integers and slices, not {type(k).__name__}")
            low = int(np.min(wanted)) if np.size(wanted) else 0
            bounds.append((low, int(np.max(wanted)) + 1 if np.size(wanted) else 0))
            picks.append(wanted - low)
        region = self.read(bounds)
        for axis in reversed(range(self.ndim)):  # last axis first: an integer drops its axis
            if picks[axis] is not None:
                region = np.take(region, picks[axis], axis=axis)
        return region

    def read(self, bounds) -> np.ndarray:
        """The box ``[(start, stop), ...]`` (one pair per axis), decoding the tiles it touches."""
        offset = int(self.n_paths > 1)
        paths = range(*bounds[0]) if offset else range(1)
        (r0, r1), (c0, c1) = bounds[offset], bounds[offset + 1]
        out = np.full((len(paths), r1 - r0, c1 - c0, self.samples), self.fill, self.dtype)
        th, tw = self.tile
        for n, path in enumerate(paths):
            for i in range(max(0, r0 // th - 1), -(-r1 // th) if r1 > r0 else 0):
                for j in range(max(0, c0 // tw - 1), -(-c1 // tw) if c1 > c0 else 0):
                    for row, col, table, frame in self._tiles(path, i, j):
                        top, bottom = max(r0, row), min(r1, row + th)
                        left, right = max(c0, col), min(c1, col + tw)
                        if top < bottom and left < right:
                            pixels = decode_frame(self.tables[table], frame).reshape(th, tw, self.samples)
                            out[n, top - r0 : bottom - r0, left - c0 : right - c0] = pixels[
                                top - row : bottom - row, left - col : right - col
                            ]
        s0, s1 = bounds[-1] if self.samples > 1 else (0, 1)
        out = out[..., s0:s1]
        out = out if offset else out[0]
        return out if self.samples > 1 else out[..., 0]

    def _tiles(self, path: int, i: int, j: int) -> list[tuple[int, int, int, int]]:
        """(row, column, table, frame) of the tiles whose first pixel lies in grid cell (i, j)."""
        table, frame = (int(v) for v in self.grid[path, i, j])
        on_grid = [(i * self.tile[0], j * self.tile[1], table, frame)] if table >= 0 else []
        return on_grid + self.off_grid.get((path, i, j), [])

    def to_dask(self, name: str) -> da.Array:
        """A dask array over this level with one chunk per tile (and per optical path).

        Parameters
        ----------
        name : str
            The dask key: the same files and paths give the same name, so napari's cache
            keeps serving their tiles.
        """
        chunks = da.core.normalize_chunks(self.tile, self.total)
        chunks = ((1,) * self.n_paths,) * (self.n_paths > 1) + chunks + ((self.samples,),) * (self.samples > 1)
        meta = np.empty((0,) * self.ndim, self.dtype)
        return da.from_array(self, chunks=chunks, asarray=False, fancy=False, lock=False, name=name, meta=meta)
