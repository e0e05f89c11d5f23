"""TIFF family reader (TIFF, OME-TIFF, Aperio SVS, QPTIFF, NDPI, ImageJ) and OME-TIFF writer.

Reading is lazy: the pixels of large or pyramidal files stay on disk behind dask arrays
(one per pyramid level, through tifffile's Zarr store); only small single-level images
are read at once. The world frame is the slide plane in micrometres, in napari axis
order ``(y, x)`` (``(z, y, x)`` for stacks), see :mod:`napari_mmfuse.core.space`.
"""

from __future__ import annotations

import json
import re
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import dask.array as da
import numpy as np
import tifffile
import zarr

from ..core.space import spacing_of
from ._common import ImageRecord, ReadError, format_bytes, memory_budget, refuse_overwrite, report_non_finite

SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".svs", ".qptiff", ".ndpi", ".btf")
#: Single-level images smaller than this are read into memory at once.
EAGER_READ_BYTES = 64 * 2**20
#: Dask input up to this size is computed at once before writing; larger input is streamed.
IN_MEMORY_WRITE_BYTES = 256 * 2**20
#: A pyramid is written when the image is larger than this along Y or X ...
PYRAMID_ABOVE = 2048
#: ... and halved until both sides are smaller than this.
PYRAMID_SMALLEST = 1024
#: Rows of tiles computed at once when streaming dask input to a file (bytes).
BAND_BYTES = 64 * 2**20
#: Namespace of the OME MapAnnotation holding our exact affine, units and layer type.
ANNOTATION_NAMESPACE = "napari-mmfuse"
#: World units the writers accept (project units).
WRITE_UNITS = ("um", "mm", "pixel")

# micrometres per unit; keys are lower-case spellings found in OME, NGFF, ImageJ and TIFF
_UM_PER_UNIT = {
    "pm": 1e-6, "picometer": 1e-6,
    "å": 1e-4, "angstrom": 1e-4,
    "nm": 1e-3, "nanometer": 1e-3,
    "µm": 1.0, "μm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0,
    "mm": 1e3, "millimeter": 1e3,
    "cm": 1e4, "centimeter": 1e4,
    "m": 1e6, "meter": 1e6,
    "inch": 25400.0, "in": 25400.0,
}  # fmt: skip
_OME_UNIT = {"um": "µm", "mm": "mm"}
_RGB_PHOTOMETRIC = (tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.YCBCR)
#: Dots-per-inch values that image software writes by default; not a physical calibration.
_DEFAULT_DPI = (72.0, 96.0, 150.0, 300.0, 600.0)
_TIFF_ERRORS = (
    tifffile.TiffFileError,
    OSError,
    EOFError,
    ValueError,
    KeyError,
    IndexError,
    RuntimeError,
    NotImplementedError,
    struct.error,
)


def um_per_unit(unit) -> float | None:
    """Micrometres in one ``unit`` (OME, OME-NGFF, ImageJ and TIFF spellings), None if unknown.

    Parameters
    ----------
    unit : str or None
        e.g. ``"µm"``, ``"micrometer"``, ``"micron"``, ``"\\u00B5m"`` (ImageJ), ``"mm"``.

    Returns
    -------
    float or None
    """
    if not isinstance(unit, str):
        return None
    key = unit.strip().lower().replace("\\u00b5", "µ")
    return _UM_PER_UNIT.get(key)


def project_units(um_per: list[float]) -> str:
    """Choose the project world unit for axes stored in file units of ``um_per`` micrometres.

    Parameters
    ----------
    um_per : list of float
        Micrometres per file unit of each axis (see :func:`um_per_unit`).

    Returns
    -------
    str
        "mm" when every axis is in millimetres or larger units, else "um".
    """
    return "mm" if um_per and min(um_per) >= 1e3 else "um"


def _stem(path: Path) -> str:
    name = path.name
    for suffix in SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


# --------------------------------------------------------------------------- writing helpers


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

    ome: dict = {"axes": axes, "Name": _stem(path)}
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


# --------------------------------------------------------------------------- reading


def _parse_xml(text):
    """Parse an XML string, ignoring its encoding declaration; None when it is not XML."""
    if not isinstance(text, str) or "<" not in text:
        return None
    try:
        return ET.fromstring(re.sub(r"^\s*<\?xml[^>]*\?>", "", text))
    except ET.ParseError:
        return None


def _local(tag) -> str:
    return str(tag).rsplit("}", 1)[-1]


def _first(element, name: str):
    if element is None:
        return None
    return next((e for e in element.iter() if _local(e.tag) == name), None)


def _ome_info(xml) -> dict:
    """Physical sizes, channel names, first-plane position, magnification and our annotation."""
    root = _parse_xml(xml)
    info: dict = {"sizes": {}, "positions": {}}
    if root is None:
        return info
    pixels = _first(_first(root, "Image"), "Pixels")
    if pixels is not None:
        for letter in "XYZ":
            value = pixels.get(f"PhysicalSize{letter}")
            if value is not None:
                info["sizes"][letter] = (float(value), pixels.get(f"PhysicalSize{letter}Unit", "µm"))
        names = [c.get("Name") for c in pixels if _local(c.tag) == "Channel"]
        if names and all(names):
            info["channel_names"] = names
        plane = next((p for p in pixels if _local(p.tag) == "Plane"), None)
        for letter in "XYZ" if plane is not None else "":
            value = plane.get(f"Position{letter}")
            if value is not None:
                info["positions"][letter] = (float(value), plane.get(f"Position{letter}Unit", "reference frame"))
    objective = _first(root, "Objective")
    if objective is not None and objective.get("NominalMagnification"):
        info["magnification"] = float(objective.get("NominalMagnification"))
    for element in root.iter():
        if _local(element.tag) == "MapAnnotation" and element.get("Namespace") == ANNOTATION_NAMESPACE:
            info["mmfuse"] = {m.get("K"): m.text or "" for m in element.iter() if _local(m.tag) == "M"}
    return info


def _check_complete(path: Path, series) -> None:
    """Raise ReadError when strips or tiles of the series point beyond the end of their file."""
    for level in series.levels:
        for page in level.pages:
            if page is None:
                continue
            ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts, strict=False) if c]
            size = page.parent.filehandle.size
            chunk_bytes = float(np.prod(getattr(page, "chunks", page.shape), dtype=np.float64)) * page.dtype.itemsize
            if chunk_bytes > max(4 * page.nbytes, 64 * 2**20):
                raise ReadError(
                    path,
                    f"corrupt: a {'x'.join(map(str, page.shape))} page declares "
                    f"{'x'.join(map(str, page.chunks))} strips/tiles ({format_bytes(chunk_bytes)} each)",
                )
            segments = int(np.prod(getattr(page, "chunked", (len(page.dataoffsets),)), dtype=np.float64))
            if len(page.dataoffsets) < segments or len(page.databytecounts) < segments:
                raise ReadError(
                    path,
                    f"corrupt: a {'x'.join(map(str, page.shape))} page needs {segments} strips/tiles, "
                    f"the file lists {min(len(page.dataoffsets), len(page.databytecounts))}",
                )
            if page.compression == 1 and sum(page.databytecounts) < page.nbytes:
                raise ReadError(
                    path,
                    f"truncated or corrupt: an uncompressed {'x'.join(map(str, page.shape))} page needs "
                    f"{format_bytes(page.nbytes)}, its strips/tiles hold {format_bytes(sum(page.databytecounts))}",
                )
            if ends and max(ends) > size:
                raise ReadError(path, f"truncated: the image data needs {max(ends)} bytes but the file has {size}")


def _resolution_um(page) -> tuple[float | None, float | None, str]:
    """(y, x) pixel size in um from XResolution/YResolution and ResolutionUnit, or Nones."""
    tags = page.tags
    if "XResolution" not in tags or "YResolution" not in tags:
        return None, None, ""
    unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2  # TIFF default: inch
    um = {2: 25400.0, 3: 1e4, 4: 1e3, 5: 1.0}.get(unit)  # 4, 5: tifffile's mm and um extensions
    numerator, denominator = tags["XResolution"].value
    x_per_unit = numerator / denominator if denominator else 0.0
    numerator, denominator = tags["YResolution"].value
    y_per_unit = numerator / denominator if denominator else 0.0
    if um is None or x_per_unit <= 0 or y_per_unit <= 0:
        return None, None, ""
    if unit == 2 and x_per_unit in _DEFAULT_DPI and y_per_unit in _DEFAULT_DPI:
        return None, None, ""
    return um / y_per_unit, um / x_per_unit, "tiff_resolution"


def _calibration(tif, series, vendor: str, info: dict, spatial: list[str]):
    """Pixel size and origin of the spatial axes in um.

    Returns
    -------
    sizes : dict letter -> (value_um, um_per_file_unit)
    origin : dict letter -> value_um
    source : str
    """
    sizes: dict = {}
    source = ""
    for letter, (value, unit) in info["sizes"].items():
        factor = um_per_unit(unit)
        if factor is not None and value > 0:
            sizes[letter] = (value * factor, factor)
            source = "ome"
    page = series.keyframe
    if ("Y" not in sizes or "X" not in sizes) and vendor == "svs":
        mpp = _svs_metadata(page).get("MPP")
        if isinstance(mpp, (int, float)) and mpp > 0:
            sizes.update(Y=(float(mpp), 1.0), X=(float(mpp), 1.0))
            source = "aperio_mpp"
    if ("Y" not in sizes or "X" not in sizes) and vendor == "imagej":
        meta = tif.imagej_metadata or {}
        factor = um_per_unit(meta.get("unit"))
        tags = page.tags
        if factor is not None and "XResolution" in tags and "YResolution" in tags:
            (xn, xd), (yn, yd) = tags["XResolution"].value, tags["YResolution"].value
            if xn > 0 and yn > 0:
                sizes.update(Y=(yd / yn * factor, factor), X=(xd / xn * factor, factor))
                source = "imagej"
                if isinstance(meta.get("spacing"), (int, float)) and meta["spacing"] > 0:
                    sizes["Z"] = (float(meta["spacing"]) * factor, factor)
    if "Y" not in sizes or "X" not in sizes:
        y_um, x_um, source = _resolution_um(page)
        if y_um is not None:
            sizes.update(Y=(y_um, 1.0), X=(x_um, 1.0))
    if "Y" not in sizes or "X" not in sizes:
        return {}, {}, "none"
    origin = {}
    for letter, (value, unit) in info["positions"].items():
        factor = um_per_unit(unit)
        if factor is not None and letter in spatial:
            origin[letter] = value * factor
    return {k: v for k, v in sizes.items() if k in spatial}, origin, source


def _svs_metadata(page) -> dict:
    """Key = value fields of an Aperio ImageDescription (numbers as float), {} for others."""
    description = page.description or ""
    if not description.startswith("Aperio"):
        return {}
    fields: dict = {}
    for item in description.split("|")[1:]:
        key, sep, value = item.partition("=")
        if sep:
            value = value.strip()
            try:
                fields[key.strip()] = float(value)
            except ValueError:
                fields[key.strip()] = value
    return fields


_VENDOR_FLAGS = (
    ("is_ome", "ome"),
    ("is_svs", "svs"),
    ("is_qpi", "qptiff"),
    ("is_ndpi", "ndpi"),
    ("is_imagej", "imagej"),
)


def _vendor(tif) -> str:
    for flag, name in _VENDOR_FLAGS:
        if getattr(tif, flag, False):
            return name
    return "generic"


def _qptiff_info(series) -> tuple[list[str], float | None]:
    """Channel names (Biomarker, else Name) of each plane and the objective magnification."""
    names, magnification = [], None
    for page in series.pages:
        root = _parse_xml(getattr(page, "description", ""))
        if root is None:
            return [], magnification
        name = root.findtext("Biomarker") or root.findtext("Name")
        names.append(name.strip() if name else "")
        match = re.match(r"\s*([0-9.]+)", root.findtext("Objective") or "")
        if magnification is None and match:
            magnification = float(match.group(1))
    return (names if all(names) else []), magnification


def _magnification(vendor: str, series, info: dict) -> float | None:
    if vendor == "svs":
        value = _svs_metadata(series.keyframe).get("AppMag")
        return float(value) if isinstance(value, (int, float)) else None
    if vendor == "ndpi":
        value = (series.keyframe.ndpi_tags or {}).get("Magnification")
        return float(value) if isinstance(value, (int, float)) and value > 0 else None
    return info.get("magnification")


def _annotation(path: Path, info: dict, n: int):
    """Affine, units, layer type and metadata stored by :func:`write_ome_tiff`, or None."""
    stored = info.get("mmfuse")
    if not stored:
        return None
    try:
        affine = np.array(json.loads(stored["affine"]), dtype=np.float64)
        extra = json.loads(stored.get("metadata") or "{}")
    except (KeyError, ValueError, TypeError) as exc:
        raise ReadError(path, f"the {ANNOTATION_NAMESPACE} OME annotation is malformed ({exc})") from exc
    units = stored.get("units", "um")
    if affine.shape != (n + 1, n + 1) or units not in WRITE_UNITS:
        raise ReadError(path, f"the {ANNOTATION_NAMESPACE} OME annotation does not fit a {n}D image")
    layer_type = stored.get("layer_type", "image")
    return affine, units, layer_type if layer_type in ("image", "labels") else "image", extra


def read_tiff(path) -> list[ImageRecord]:
    """Read the main image series of a TIFF-family file, lazily and in micrometres.

    Handles plain TIFF, OME-TIFF, Aperio SVS, PerkinElmer/Akoya QPTIFF, Hamamatsu NDPI
    and ImageJ hyperstacks. Pyramidal files (levels or SubIFDs) give a multiscale
    record, a list of dask arrays largest first; single-level images under
    :data:`EAGER_READ_BYTES` are read into memory, larger ones stay dask arrays.

    Axes follow tifffile's series axes (singleton axes dropped): RGB(A) samples become
    ``rgb=True``; a C axis (or non-RGB samples) becomes the channel axis, named from the
    OME Channel names or the QPTIFF per-plane Biomarker/Name; a Z axis makes a 3D
    image with a 4x4 affine; other axes (T, ...) stay in front as non-spatial axes.
    The pixel size comes from, in order: the exact affine our writer stores, OME
    PhysicalSize (any length unit), Aperio ``MPP``, ImageJ units, XResolution/YResolution
    with ResolutionUnit inch/cm (unit NONE and default 72/96/150/300/600 dpi ignored).
    Without any, world = pixel coordinates (units "pixel"). The origin is the OME first
    plane's PositionX/Y(/Z) when given, else 0.

    Parameters
    ----------
    path : str or Path
        The file.

    Returns
    -------
    list of ImageRecord
        One record. ``metadata`` holds ``source_path``, ``units``, ``pixel_size_um``
        (spatial axes, None when uncalibrated), ``calibration`` (where it came from),
        ``vendor`` ("ome", "svs", "qptiff", "ndpi", "imagej" or "generic"),
        ``magnification`` when known, ``channel_names``, ``level_shapes``, ``axes`` and
        ``modality`` ("brightfield" for RGB, "fluorescence" for several channels).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ReadError
        If the file is not a TIFF, is truncated or corrupt, or has no Y/X axes.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such TIFF file: {path}")
    quiet = _quiet_tifffile()  # its warnings about a corrupt file become our one-line ReadError
    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:  # tifffile fails in many ways on corrupt tags (TypeError, ZeroDivisionError, ...)
        quiet.close()
        raise ReadError(path, f"not a readable TIFF file ({type(exc).__name__}: {exc})") from exc
    except BaseException:
        quiet.close()
        raise
    try:
        return [_read_series(path, tif)]
    except ReadError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # tifffile fails in many ways on corrupt tags (TypeError, ZeroDivisionError, ...)
        raise ReadError(path, f"image data could not be read ({type(exc).__name__}: {exc})") from exc
    finally:
        tif.close()  # the dask arrays' stores reopen the file when they read
        quiet.close()


class _quiet_tifffile:
    """Silence tifffile's log until ``close()``: its reports on a corrupt file become our one-line ReadError."""

    def __init__(self):
        import logging

        self._logger = logging.getLogger("tifffile")
        self._level = self._logger.level
        self._logger.setLevel(max(logging.CRITICAL, self._level))

    def close(self) -> None:
        self._logger.setLevel(self._level)


def _read_series(path: Path, tif) -> ImageRecord:
    if not tif.series:
        raise ReadError(path, "the file holds no image")
    series = tif.series[0]
    _check_complete(path, series)
    axes, shape = series.axes, series.shape
    if "Y" not in axes or "X" not in axes:
        raise ReadError(path, f"the image has no Y and X axes (axes {axes!r})")
    vendor = _vendor(tif)
    samples = axes.find("S")
    rgb = samples >= 0 and shape[samples] in (3, 4) and series.keyframe.photometric in _RGB_PHOTOMETRIC
    if "C" in axes:
        channel = axes.index("C")
    else:
        channel = samples if samples >= 0 and not rgb else None
    spatial = [axes.index(a) for a in "ZYX" if a in axes]
    plain = [i for i in range(len(axes)) if i != channel and not (rgb and i == samples)]
    if plain[-len(spatial) :] == spatial and (not rgb or samples == len(axes) - 1):
        order = list(range(len(axes)))
    else:
        others = [i for i in plain if i not in spatial]
        order = others + ([channel] if channel is not None else []) + spatial + ([samples] if rgb else [])

    if len(series.levels) == 1 and series.nbytes <= min(EAGER_READ_BYTES, memory_budget()):
        arrays = [series.asarray()]
    else:
        arrays = [da.from_zarr(zarr.open(series.aszarr(level=k), mode="r")) for k in range(len(series.levels))]
    if order != list(range(len(axes))):
        arrays = [a.transpose(order) for a in arrays]
    letters = "".join(axes[i] for i in order)
    channel_axis = order.index(channel) if channel is not None else None
    spatial_letters = [a for a in "ZYX" if a in axes]
    n = len(spatial_letters)

    info = _ome_info(tif.ome_metadata) if vendor == "ome" else {"sizes": {}, "positions": {}}
    n_channels = arrays[0].shape[channel_axis] if channel_axis is not None else 0
    if vendor == "qptiff":
        names, magnification = _qptiff_info(series)
    else:
        names, magnification = info.get("channel_names", []), _magnification(vendor, series, info)
    channel_names = names if n_channels and len(names) == n_channels else None

    layer_type, extra = "image", {}
    stored = _annotation(path, info, n)
    if stored is not None:
        affine, units, layer_type, extra = stored
        factor = um_per_unit(units)
        pixel_size = None if factor is None else (spacing_of(affine) * factor).tolist()
        source = ANNOTATION_NAMESPACE
    else:
        sizes, origin, source = _calibration(tif, series, vendor, info, spatial_letters)
        affine = np.eye(n + 1)
        if sizes:
            units = project_units([factor for _, factor in sizes.values()])
            scale = um_per_unit(units)
            spacing_um = [sizes.get(a, (1.0 * scale, scale))[0] for a in spatial_letters]
            affine[:n, :n] = np.diag(spacing_um) / scale
            affine[:n, n] = [origin.get(a, 0.0) / scale for a in spatial_letters]
            pixel_size = spacing_um
        else:
            units, pixel_size = "pixel", None

    data = arrays if len(arrays) > 1 else arrays[0]
    report_non_finite(data, path)
    metadata = {
        **(extra if isinstance(extra, dict) else {}),
        "source_path": str(path),
        "units": units,
        "pixel_size_um": pixel_size,
        "calibration": source,
        "vendor": vendor,
        "channel_names": channel_names,
        "level_shapes": [tuple(int(s) for s in a.shape) for a in arrays],
        "axes": letters,
    }
    if magnification is not None:
        metadata["magnification"] = magnification
    if vendor == "svs":
        metadata["aperio"] = {k: str(v) for k, v in _svs_metadata(series.keyframe).items()}
    if rgb:
        metadata["modality"] = "brightfield"
    elif n_channels > 1:
        metadata["modality"] = "fluorescence"
    return ImageRecord(
        data=data,
        affine=affine,
        name=_stem(path),
        units=units,
        metadata=metadata,
        channel_axis=channel_axis,
        channel_names=channel_names,
        rgb=rgb,
        layer_type=layer_type,
        axis_labels=tuple(a.lower() for i, a in enumerate(letters) if i != channel_axis and not (rgb and a == "S")),
    )
