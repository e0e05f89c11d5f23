"""DICOM whole-slide images (VL Whole Slide Microscopy): tiles assembled into one 2D slide in micrometres."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..core.space import affine_from_itk
from ._common import ImageRecord, ReadError, check_budget, format_bytes
from .dicom_frames import (
    MODALITIES,
    SeriesInfo,
    as_list,
    dcmread,
    declared_frame_bytes,
    decode_frames,
    find_value,
    first_item,
    floats,
)


def build_slide(info: SeriesInfo, file: Path, source: Path, *, several: bool) -> ImageRecord:
    """Assemble the tiles of a whole-slide image instance into one 2D slide.

    Parameters
    ----------
    info : SeriesInfo
        The series the instance belongs to.
    file : Path
        The instance file.
    source : Path
        What the user opened (file or folder), recorded as ``source_path``.
    several : bool
        The series holds several instances (pyramid levels, labels): the name tells which.

    Returns
    -------
    ImageRecord
        2D slide (RGB, or one channel per optical path) in micrometres (pixels without PixelSpacing).
    """
    try:
        dataset = dcmread(file)
    except Exception as error:  # pydicom raises many types on corrupt files
        raise ReadError(file, f"invalid DICOM file ({type(error).__name__}: {error})") from error
    tile = (int(dataset.Rows), int(dataset.Columns))
    total = (
        int(dataset.get("TotalPixelMatrixRows") or tile[0]),
        int(dataset.get("TotalPixelMatrixColumns") or tile[1]),
    )
    n_frames = int(dataset.get("NumberOfFrames") or 1)
    samples = int(dataset.get("SamplesPerPixel") or 1)
    shared = first_item(dataset, "SharedFunctionalGroupsSequence")
    optical_paths = list(dataset.get("OpticalPathSequence") or [])
    path_ids = [str(p.get("OpticalPathIdentifier") or i + 1) for i, p in enumerate(optical_paths)]
    path_names = [str(p.get("OpticalPathDescription") or path_ids[i]) for i, p in enumerate(optical_paths)]

    per_frame = dataset.get("PerFrameFunctionalGroupsSequence")
    declared = (per_frame is not None and len(per_frame) == n_frames) or dataset.get("DimensionOrganizationType")
    layout = _tile_layout(dataset, tile, total, n_frames, shared, path_ids, column_major=False)
    for identifier in dict.fromkeys(p for _, _, p, _ in layout):
        if identifier not in path_ids:
            path_ids.append(identifier)
            path_names.append(identifier)
    planes = sorted({z for _, _, _, z in layout})
    if len(planes) > 1:
        warnings.warn(f"{file.name}: {len(planes)} focal planes; only the first is read", stacklevel=4)
    wanted = [f for f, (_, _, _, z) in enumerate(layout) if z == planes[0]]
    _check_slide_size(file, dataset, layout, wanted, tile, total, len(path_ids))
    frames = dict(zip(wanted, decode_frames(file, wanted)))

    if not declared:
        # no per-frame positions and no declared organisation: TILED_FULL order is only
        # a convention, and some writers stored tiles column by column; keep the order
        # whose tiles join without seams
        column_major = _tile_layout(dataset, tile, total, n_frames, shared, path_ids, column_major=True)
        if _seam_cost(frames, column_major, tile, total) < _seam_cost(frames, layout, tile, total):
            warnings.warn(
                f"{file.name}: frame order not declared (no DimensionOrganizationType); the tiles join up "
                "when placed column by column rather than row by row, so they are placed that way",
                stacklevel=4,
            )
            layout = column_major

    first = next(iter(frames.values()))
    fill = np.iinfo(first.dtype).max if samples == 3 and first.dtype.kind == "u" else 0
    out = np.full((len(path_ids),) + total + first.shape[2:], fill, dtype=first.dtype)
    for frame_index, frame in frames.items():
        row, col, identifier, _ = layout[frame_index]
        height = min(tile[0], total[0] - row)
        width = min(tile[1], total[1] - col)
        if height > 0 and width > 0:
            out[path_ids.index(identifier), row : row + height, col : col + width] = frame[:height, :width]
    del frames

    pixel_spacing = floats(find_value((shared,), (dataset,), "PixelMeasuresSequence", "PixelSpacing"))
    if pixel_spacing is None:
        warnings.warn(f"{file.name}: no PixelSpacing; the slide is placed in pixels", stacklevel=4)
        spacing_um = (1.0, 1.0)
        units = "pixel"
    else:
        spacing_um = (float(pixel_spacing[0]) * 1000.0, float(pixel_spacing[1]) * 1000.0)
        units = "um"
    affine = affine_from_itk([spacing_um[1], spacing_um[0]], [0.0, 0.0])

    multichannel = out.shape[0] > 1
    data = out if multichannel else out[0]
    image_type = [str(v) for v in as_list(dataset.get("ImageType"))]
    name = info.name
    if several:
        flavour = image_type[2].lower() if len(image_type) > 2 else "image"
        name = f"{name} {flavour} {total[1]}x{total[0]}"
    origin = first_item(dataset, "TotalPixelMatrixOriginSequence")
    metadata = {
        "source_path": str(source),
        "file": str(file),
        "modality": MODALITIES.get(info.modality, info.modality),
        "dicom_modality": info.modality,
        "series_description": info.description,
        "series_uid": info.uid,
        "series_number": info.number,
        "patient_id": info.patient_id,
        "spacing": spacing_um,
        "image_type": image_type,
        "total_pixel_matrix": total,
        "tile_size": tile,
        "n_frames": n_frames,
        "focal_planes": len(planes),
    }
    if origin is not None:
        metadata["slide_origin_mm"] = (
            float(origin.get("XOffsetInSlideCoordinateSystem", 0.0)),
            float(origin.get("YOffsetInSlideCoordinateSystem", 0.0)),
        )
    if dataset.get("ImageOrientationSlide") is not None:
        metadata["slide_orientation"] = [float(v) for v in dataset.ImageOrientationSlide]
    return ImageRecord(
        data=data,
        affine=affine,
        name=name,
        units=units,
        metadata=metadata,
        channel_axis=0 if multichannel else None,
        channel_names=path_names[: out.shape[0]] if multichannel else None,
        rgb=samples == 3,
    )


#: A slide whose tiles cover less than this fraction of its declared matrix is not assembled ...
MIN_SLIDE_COVERAGE = 0.5
#: ... when the assembled matrix would exceed this many bytes (a small sparse slide is filled in).
SPARSE_SLIDE_BYTES = 64 * 2**20


def _check_slide_size(file: Path, dataset, layout, wanted, tile, total, n_paths: int) -> None:
    """Compare the declared total pixel matrix with the tiles actually present, before allocating it.

    Every tile must start inside the matrix; the matrix must fit the memory budget; and a
    matrix over :data:`SPARSE_SLIDE_BYTES` whose tiles cover under :data:`MIN_SLIDE_COVERAGE`
    of it is refused as a lying (or very sparse) header rather than filled with blank pixels.
    """
    if min(total) <= 0 or min(tile) <= 0:
        raise ReadError(file, f"invalid slide size: {total[1]}x{total[0]} matrix of {tile[1]}x{tile[0]} tiles")
    frame_bytes = declared_frame_bytes(dataset)
    pixel_bytes = frame_bytes / (tile[0] * tile[1])
    covered: set = set()
    area = 0
    for index in wanted:
        row, col, identifier, _ = layout[index]
        if not (0 <= row < total[0] and 0 <= col < total[1]):
            raise ReadError(
                file, f"corrupt: frame {index + 1} sits at row {row + 1}, column {col + 1}, outside the "
                f"{total[1]}x{total[0]} matrix"
            )
        if (row, col, identifier) not in covered:
            covered.add((row, col, identifier))
            area += min(tile[0], total[0] - row) * min(tile[1], total[1] - col)
    matrix = float(total[0]) * total[1] * n_paths
    assembled = matrix * pixel_bytes
    check_budget(file, assembled + len(wanted) * frame_bytes, f"the {total[1]}x{total[0]} slide")
    if assembled > SPARSE_SLIDE_BYTES and area < MIN_SLIDE_COVERAGE * matrix:
        raise ReadError(
            file,
            f"the header declares a {total[1]}x{total[0]} pixel matrix ({format_bytes(assembled)}) but its "
            f"{len(covered)} tile(s) of {tile[1]}x{tile[0]} cover {100 * area / matrix:.2g} % of it; not assembled "
            "(truncated file or lying header)",
        )


def _tile_layout(
    dataset, tile, total, n_frames, shared, path_ids, *, column_major
) -> list[tuple[int, int, str, float]]:
    """(row, column, optical path, focal plane) of each frame; 0-based pixel offsets.

    Per-frame PlanePositionSlideSequence when present, else TILED_FULL order: tiles row
    by row (column by column when ``column_major``), then focal planes, then optical paths.
    """
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and len(per_frame) == n_frames:
        layout = []
        for frame, group in enumerate(per_frame):
            position = first_item(group, "PlanePositionSlideSequence")
            if position is None:
                raise ReadError(dataset.filename, f"frame {frame + 1} has no PlanePositionSlideSequence")
            identifier = find_value((group, shared), (), "OpticalPathIdentificationSequence", "OpticalPathIdentifier")
            layout.append(
                (
                    int(position.RowPositionInTotalImagePixelMatrix) - 1,
                    int(position.ColumnPositionInTotalImagePixelMatrix) - 1,
                    str(identifier) if identifier is not None else (path_ids[0] if path_ids else "1"),
                    float(position.get("ZOffsetInSlideCoordinateSystem") or 0.0),
                )
            )
        return layout
    across = -(-total[1] // tile[1])
    down = -(-total[0] // tile[0])
    planes = int(dataset.get("TotalPixelMatrixFocalPlanes") or 1)
    paths = path_ids or [str(i + 1) for i in range(int(dataset.get("NumberOfOpticalPaths") or 1))]
    if across * down * planes * len(paths) != n_frames:
        raise ReadError(
            dataset.filename,
            f"{n_frames} frames do not tile a {total[1]}x{total[0]} matrix with {tile[1]}x{tile[0]} tiles "
            f"({planes} focal plane(s), {len(paths)} optical path(s))",
        )
    layout = []
    for frame in range(n_frames):
        position, plane_path = frame % (across * down), frame // (across * down)
        row, col = (position % down, position // down) if column_major else divmod(position, across)
        layout.append((row * tile[0], col * tile[1], paths[plane_path // planes], float(plane_path % planes)))
    return layout


def _seam_cost(frames: dict, layout, tile, total) -> float:
    """Mean absolute step across the borders of neighbouring tiles of one plane and path."""
    first_path = layout[next(iter(frames))][2]
    grid = {layout[f][:2]: frame for f, frame in frames.items() if layout[f][2] == first_path}
    steps = []
    for (row, col), frame in grid.items():
        height = min(tile[0], total[0] - row)
        width = min(tile[1], total[1] - col)
        right = grid.get((row, col + tile[1]))
        below = grid.get((row + tile[0], col))
        if right is not None:
            steps.append(np.abs(frame[:height, -1].astype(np.float64) - right[:height, 0]).mean())
        if below is not None:
            steps.append(np.abs(frame[-1, :width].astype(np.float64) - below[0, :width]).mean())
    return float(np.mean(steps)) if steps else 0.0
