"""TIFF family reader: TIFF, OME-TIFF, Aperio SVS, QPTIFF, NDPI and ImageJ hyperstacks.

Reading is lazy: the pixels of large or pyramidal files stay on disk behind dask arrays
(one per pyramid level, through tifffile's Zarr store); only small single-level images
are read at once. The world frame is the slide plane in micrometres, in napari axis
order ``(y, x)`` (``(z, y, x)`` for stacks), see :mod:`napari_mmfuse.core.space`.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import dask.array as da
import numpy as np
import tifffile
import zarr

from ..core.space import spacing_of
from ._common import ImageRecord, ReadError, format_bytes, memory_budget, report_non_finite
from .formats import stem, suffixes
from .units import WRITE_UNITS, project_units, um_per_unit

SUFFIXES = suffixes("ome_tiff", "tiff")
#: Single-level images smaller than this are read into memory at once.
EAGER_READ_BYTES = 64 * 2**20
#: Namespace of the OME MapAnnotation holding our exact affine, units and layer type.
ANNOTATION_NAMESPACE = "napari-mmfuse"
_RGB_PHOTOMETRIC = (tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.YCBCR)
#: Dots-per-inch values that image software writes by default; not a physical calibration.
_DEFAULT_DPI = (72.0, 96.0, 150.0, 300.0, 600.0)


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
        name=stem(path, SUFFIXES),
        units=units,
        metadata=metadata,
        channel_axis=channel_axis,
        channel_names=channel_names,
        rgb=rgb,
        layer_type=layer_type,
        axis_labels=tuple(a.lower() for i, a in enumerate(letters) if i != channel_axis and not (rgb and a == "S")),
    )
