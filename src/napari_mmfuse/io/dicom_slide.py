"""DICOM whole-slide images (VL Whole Slide Microscopy): one series' pyramid as one lazy multiscale slide.

The instances of a series whose ImageType says VOLUME are the pyramid's levels (instances
of one size, e.g. one per optical path or a concatenation, form one level); LABEL,
OVERVIEW and THUMBNAIL images are left out and named in the metadata. Each level is a
dask array whose chunks are the DICOM tiles: opening reads the headers and locates every
frame in its file (:class:`~napari_mmfuse.io.dicom_frames.FrameTable`), and a tile is read
and decoded only when a view or a computation asks for its pixels. TILED_FULL (frame
order) and TILED_SPARSE (per-frame PlanePositionSlideSequence) layouts are both read.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import numpy as np
from dask.base import tokenize

from ._common import ImageRecord, ReadError, check_budget, format_bytes
from .dicom_frames import (
    MODALITIES,
    FrameTable,
    SeriesInfo,
    as_list,
    declared_frame_bytes,
    decode_frame,
    find_value,
    first_item,
    floats,
    read_frame_table,
)
from .dicom_wsi import TiledLevel

#: ImageType value 3 of the instances that make the pyramid.
PYRAMID_FLAVOUR = "VOLUME"
#: A slide whose tiles cover less than this fraction of its declared matrix is refused ...
MIN_SLIDE_COVERAGE = 0.01
#: ... when the matrix holds more than this many bytes (a small sparse slide is filled in).
SPARSE_SLIDE_BYTES = 64 * 2**20
#: Relative difference of the row and column pixel sizes that ImagedVolumeWidth/Height may
#: give before they are taken as no calibration at all.
MAX_PIXEL_ASPECT_ERROR = 0.01


@dataclass
class _Instance:
    """One file of a slide series: header, frame table and where each frame sits."""

    file: Path
    dataset: object
    table: FrameTable
    tile: tuple[int, int]
    total: tuple[int, int]
    flavour: str
    path_ids: list[str]
    path_names: list[str]
    rows: np.ndarray  # 0-based pixel row of each frame's first pixel
    cols: np.ndarray
    paths: list[str]  # optical path of each frame
    planes: np.ndarray  # focal plane (z offset, or plane index) of each frame


def build_slides(info: SeriesInfo, files: list[Path], source: Path) -> list[ImageRecord]:
    """Open the whole-slide instances of one series as lazy slides.

    Parameters
    ----------
    info : SeriesInfo
        The series.
    files : list of Path
        Its whole-slide instance files.
    source : Path
        What the user opened (file or folder), recorded as ``source_path``.

    Returns
    -------
    list of ImageRecord
        One multiscale record (one level per instance size, largest first) for the
        VOLUME instances; only when the series has none, one record per other instance.
        Slides are 2D, RGB or with a channel axis per optical path, in micrometres.
    """
    instances = [_open_instance(file) for file in files]
    pyramid = [i for i in instances if i.flavour == PYRAMID_FLAVOUR]
    if pyramid:
        others = [i for i in instances if i.flavour != PYRAMID_FLAVOUR]
        return [_slide_record(info, pyramid, source, info.name, others)]
    several = len(instances) > 1
    return [_slide_record(info, [i], source, _name(info, i) if several else info.name, []) for i in instances]


def _name(info: SeriesInfo, instance: _Instance) -> str:
    """Layer name of an instance opened alone: the series name, its flavour and size."""
    return f"{info.name} {instance.flavour.lower()} {instance.total[1]}x{instance.total[0]}"


def _open_instance(file: Path) -> _Instance:
    """Header, frame table and frame positions of one file; no tile is decoded unless the order is undeclared."""
    dataset, table = read_frame_table(file)
    tile = (int(dataset.Rows), int(dataset.Columns))
    total = (
        int(dataset.get("TotalPixelMatrixRows") or tile[0]),
        int(dataset.get("TotalPixelMatrixColumns") or tile[1]),
    )
    if min(total) <= 0 or min(tile) <= 0:
        raise ReadError(file, f"invalid slide size: {total[1]}x{total[0]} matrix of {tile[1]}x{tile[0]} tiles")
    check_budget(file, declared_frame_bytes(dataset), f"one decoded {tile[1]}x{tile[0]} tile")
    image_type = [str(v).upper() for v in as_list(dataset.get("ImageType"))]
    optical = list(dataset.get("OpticalPathSequence") or [])
    path_ids = [str(p.get("OpticalPathIdentifier") or i + 1) for i, p in enumerate(optical)]
    path_names = [str(p.get("OpticalPathDescription") or path_ids[i]) for i, p in enumerate(optical)]
    instance = _Instance(
        file, dataset, table, tile, total, image_type[2] if len(image_type) > 2 else PYRAMID_FLAVOUR,
        path_ids, path_names, *_tile_layout(dataset, table.n_frames, tile, total, path_ids, column_major=False),
    )
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence")
    declared = (per_frame is not None and len(per_frame) == table.n_frames) or dataset.get("DimensionOrganizationType")
    if not declared:
        _choose_frame_order(instance)
    for identifier in dict.fromkeys(instance.paths):
        if identifier not in path_ids:
            path_ids.append(identifier)
            path_names.append(identifier)
    return instance


def _slide_record(info: SeriesInfo, instances: list[_Instance], source: Path, name: str, others) -> ImageRecord:
    """One record: levels (instances grouped by matrix size, largest first) as dask arrays."""
    sizes = sorted({i.total for i in instances}, key=lambda s: (-s[1], -s[0]))
    levels = [[i for i in instances if i.total == size] for size in sizes]
    base = levels[0][0]
    path_ids, path_names = [], []
    for instance in levels[0]:
        for identifier, label in zip(instance.path_ids, instance.path_names, strict=True):
            if identifier not in path_ids:
                path_ids.append(identifier)
                path_names.append(label)
    samples = int(base.dataset.get("SamplesPerPixel") or 1)
    options = base.table.options
    dtype = np.dtype(f"{'i' if options.get('pixel_representation') else 'u'}{max(1, int(options['bits_allocated']) // 8)}")
    fill = np.iinfo(dtype).max if samples == 3 else 0
    n_planes = len(np.unique(np.concatenate([i.planes for i in levels[0]])))
    if n_planes > 1:
        warnings.warn(f"{base.file.name}: {n_planes} focal planes; only the first is read", stacklevel=5)
    arrays = [_level_array(level, path_ids, samples, dtype, fill) for level in levels]
    spacing_um, units = _pixel_spacing(base)
    affine = np.diag([spacing_um[0], spacing_um[1], 1.0])
    metadata = {
        "source_path": str(source),
        "file": str(base.file),
        "modality": MODALITIES.get(info.modality, info.modality),
        "dicom_modality": info.modality,
        "series_description": info.description,
        "series_uid": info.uid,
        "series_number": info.number,
        "patient_id": info.patient_id,
        "spacing": spacing_um,
        "image_type": [str(v) for v in as_list(base.dataset.get("ImageType"))],
        "total_pixel_matrix": base.total,
        "tile_size": base.tile,
        "n_frames": base.table.n_frames,
        "focal_planes": n_planes,
        "level_shapes": [tuple(int(s) for s in a.shape) for a in arrays],
        "level_files": [[str(i.file) for i in level] for level in levels],
    }
    if others:
        metadata["associated_images"] = {f"{i.flavour.lower()} {i.total[1]}x{i.total[0]}": str(i.file) for i in others}
    origin = first_item(base.dataset, "TotalPixelMatrixOriginSequence")
    orientation = floats(base.dataset.get("ImageOrientationSlide"))
    if origin is not None:
        metadata["slide_origin_mm"] = (
            float(origin.get("XOffsetInSlideCoordinateSystem") or 0.0),
            float(origin.get("YOffsetInSlideCoordinateSystem") or 0.0),
        )
    if orientation is not None:
        metadata["slide_orientation"] = orientation.tolist()
    if units == "um" and origin is not None and orientation is not None and len(orientation) == 6:
        # slide point = origin + column * dx * row_cosines + row * dy * column_cosines: projected
        # onto the column and row directions, the first pixel sits at (c . origin, r . origin)
        position = np.array([*metadata["slide_origin_mm"], 0.0]) * 1000.0
        affine[:2, 2] = [orientation[3:] @ position, orientation[:3] @ position]
    multichannel = len(path_ids) > 1
    return ImageRecord(
        data=arrays if len(arrays) > 1 else arrays[0],
        affine=affine,
        name=name,
        units=units,
        metadata=metadata,
        channel_axis=0 if multichannel else None,
        channel_names=path_names if multichannel else None,
        rgb=samples == 3,
    )


def _pixel_spacing(instance: _Instance) -> tuple[tuple[float, float], str]:
    """(row, column) pixel size in um and the units: PixelSpacing, else ImagedVolumeHeight/Width, else pixels."""
    dataset = instance.dataset
    shared = first_item(dataset, "SharedFunctionalGroupsSequence")
    spacing = floats(find_value((shared,), (dataset,), "PixelMeasuresSequence", "PixelSpacing"))
    if spacing is not None and len(spacing) == 2 and np.all(spacing > 0):
        return (float(spacing[0]) * 1000.0, float(spacing[1]) * 1000.0), "um"
    width, height = dataset.get("ImagedVolumeWidth"), dataset.get("ImagedVolumeHeight")
    note = ""
    if width and height and float(width) > 0 and float(height) > 0:
        row_um = float(height) * 1000.0 / instance.total[0]
        col_um = float(width) * 1000.0 / instance.total[1]
        if abs(row_um - col_um) <= MAX_PIXEL_ASPECT_ERROR * max(row_um, col_um):
            return (row_um, col_um), "um"
        note = f" and ImagedVolumeWidth/Height give {col_um:.3g} x {row_um:.3g} um pixels, not square"
    warnings.warn(f"{instance.file.name}: no PixelSpacing{note}; the slide is placed in pixels", stacklevel=6)
    return (1.0, 1.0), "pixel"


def _level_array(level: list[_Instance], path_ids: list[str], samples: int, dtype, fill) -> da.Array:
    """A dask array of one pyramid level, a chunk per tile, decoded when computed (see :class:`.TiledLevel`).

    Tiles on the tile grid go into an index array (vectorised: a 100k-pixel slide has
    150k tiles); tiles off the grid, which TILED_SPARSE allows, into a dictionary.
    """
    base = level[0]
    (th, tw), (rows, cols) = base.tile, base.total
    index = {identifier: k for k, identifier in enumerate(path_ids)}
    plane = min(i.planes.min() for i in level)  # the first focal plane
    parts, covered = [], 0.0
    for number, instance in enumerate(level):
        if instance.tile != base.tile:
            raise ReadError(instance.file, f"{instance.tile} tiles where {base.file.name} of the same level has {base.tile}")
        frames = np.flatnonzero(instance.planes == plane)
        row, col = instance.rows[frames], instance.cols[frames]
        outside = np.flatnonzero((row < 0) | (row >= rows) | (col < 0) | (col >= cols))
        if len(outside):
            k = outside[0]
            raise ReadError(
                instance.file, f"corrupt: frame {frames[k] + 1} sits at row {row[k] + 1}, column {col[k] + 1}, "
                f"outside the {cols}x{rows} matrix"
            )
        path = np.array([index.get(instance.paths[f], -1) for f in frames], np.int64)
        known = path >= 0  # an optical path of another level only
        frames, row, col, path = frames[known], row[known], col[known], path[known]
        covered += float(np.sum(np.minimum(th, rows - row) * np.minimum(tw, cols - col)))
        parts.append((number, frames, row, col, path))
    _check_coverage(base, covered, len(path_ids), samples, dtype)
    grid = np.full((len(path_ids), -(-rows // th), -(-cols // tw), 2), -1, np.int32)
    off_grid: dict[tuple[int, int, int], list[tuple[int, int, int, int]]] = {}
    for number, frames, row, col, path in parts:
        aligned = (row % th == 0) & (col % tw == 0)
        grid[path[aligned], row[aligned] // th, col[aligned] // tw] = np.stack(
            [np.full(int(aligned.sum()), number), frames[aligned]], axis=-1
        )
        for k in np.flatnonzero(~aligned).tolist():
            key = (int(path[k]), int(row[k]) // th, int(col[k]) // tw)
            off_grid.setdefault(key, []).append((int(row[k]), int(col[k]), number, int(frames[k])))
    lazy = TiledLevel([i.table for i in level], grid, off_grid, base.tile, base.total, samples, dtype, fill)
    return lazy.to_dask("dicom-slide-" + tokenize([(str(i.file), i.file.stat().st_mtime_ns) for i in level], path_ids))


def _check_coverage(base: _Instance, covered: float, n_paths: int, samples: int, dtype) -> None:
    """Refuse a large matrix that its tiles barely cover: a lying header (or a truncated sparse file)."""
    matrix = float(base.total[0]) * base.total[1] * n_paths
    nbytes = matrix * samples * np.dtype(dtype).itemsize
    if nbytes > SPARSE_SLIDE_BYTES and covered < MIN_SLIDE_COVERAGE * matrix:
        raise ReadError(
            base.file,
            f"the header declares a {base.total[1]}x{base.total[0]} pixel matrix ({format_bytes(nbytes)}) but its "
            f"tiles of {base.tile[1]}x{base.tile[0]} cover {100 * covered / matrix:.2g} % of it "
            "(truncated file or lying header)",
        )


def _tile_layout(dataset, n_frames, tile, total, path_ids, *, column_major):
    """(rows, columns, optical paths, focal planes) of the frames; 0-based pixel offsets.

    Per-frame PlanePositionSlideSequence when present, else TILED_FULL order: tiles row
    by row (column by column when ``column_major``), then focal planes, then optical paths.
    """
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence")
    shared = first_item(dataset, "SharedFunctionalGroupsSequence")
    if per_frame is not None and len(per_frame) == n_frames:
        rows, cols, paths, planes = np.empty(n_frames, np.int64), np.empty(n_frames, np.int64), [], np.empty(n_frames)
        for frame, group in enumerate(per_frame):
            position = first_item(group, "PlanePositionSlideSequence")
            if position is None:
                raise ReadError(dataset.filename, f"frame {frame + 1} has no PlanePositionSlideSequence")
            identifier = find_value((group, shared), (), "OpticalPathIdentificationSequence", "OpticalPathIdentifier")
            rows[frame] = int(position.RowPositionInTotalImagePixelMatrix) - 1
            cols[frame] = int(position.ColumnPositionInTotalImagePixelMatrix) - 1
            paths.append(str(identifier) if identifier is not None else (path_ids[0] if path_ids else "1"))
            planes[frame] = float(position.get("ZOffsetInSlideCoordinateSystem") or 0.0)
        return rows, cols, paths, planes
    across = -(-total[1] // tile[1])
    down = -(-total[0] // tile[0])
    n_planes = int(dataset.get("TotalPixelMatrixFocalPlanes") or 1)
    names = path_ids or [str(i + 1) for i in range(int(dataset.get("NumberOfOpticalPaths") or 1))]
    if across * down * n_planes * len(names) != n_frames:
        raise ReadError(
            dataset.filename,
            f"{n_frames} frames do not tile a {total[1]}x{total[0]} matrix with {tile[1]}x{tile[0]} tiles "
            f"({n_planes} focal plane(s), {len(names)} optical path(s))",
        )
    frame = np.arange(n_frames, dtype=np.int64)
    position, plane_path = frame % (across * down), frame // (across * down)
    row, col = (position % down, position // down) if column_major else np.divmod(position, across)
    paths = [names[k] for k in (plane_path // n_planes).tolist()]
    return row * tile[0], col * tile[1], paths, (plane_path % n_planes).astype(np.float64)


def _choose_frame_order(instance: _Instance) -> None:
    """Place the frames column by column when their tiles join up better that way than row by row.

    Without per-frame positions and a declared organisation, TILED_FULL order is only a
    convention, and some writers stored tiles column by column. The edges of the first
    frames (two rows or columns of tiles) decide; only their edges are kept.
    """
    dataset, tile, total = instance.dataset, instance.tile, instance.total
    column_major = _tile_layout(dataset, instance.table.n_frames, tile, total, instance.path_ids, column_major=True)
    across, down = -(-total[1] // tile[1]), -(-total[0] // tile[0])
    count = min(instance.table.n_frames, 2 * max(across, down) + 2)
    edges = {}
    for frame in range(count):
        pixels = decode_frame(instance.table, frame).astype(np.float64)
        edges[frame] = (pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1])
    row_major = (instance.rows, instance.cols, instance.paths)
    if _seam_cost(edges, column_major[:3], tile, total) < _seam_cost(edges, row_major, tile, total):
        warnings.warn(
            f"{instance.file.name}: frame order not declared (no DimensionOrganizationType); the tiles join up "
            "when placed column by column rather than row by row, so they are placed that way",
            stacklevel=6,
        )
        instance.rows, instance.cols, instance.paths, instance.planes = column_major


def _seam_cost(edges: dict, layout, tile, total) -> float:
    """Mean absolute step across the borders of neighbouring tiles of the first optical path.

    ``edges`` maps a frame to its (top row, bottom row, left column, right column).
    """
    rows, cols, paths = layout
    first_path = paths[0]
    grid = {(int(rows[f]), int(cols[f])): edge for f, edge in edges.items() if paths[f] == first_path}
    steps = []
    for (row, col), (_, bottom, _, right_edge) in grid.items():
        height = min(tile[0], total[0] - row)
        width = min(tile[1], total[1] - col)
        right = grid.get((row, col + tile[1]))
        below = grid.get((row + tile[0], col))
        if right is not None:
            steps.append(np.abs(right_edge[:height] - right[2][:height]).mean())
        if below is not None:
            steps.append(np.abs(bottom[:width] - below[0][:width]).mean())
    return float(np.mean(steps)) if steps else 0.0
