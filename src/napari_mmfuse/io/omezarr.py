"""OME-Zarr (OME-NGFF multiscales) reader and writer, with zarr directly.

Two versions are handled: NGFF 0.4 on Zarr v2 (``.zattrs`` holding ``multiscales``) and
NGFF 0.5 on Zarr v3 (``zarr.json`` holding ``attributes["ome"]["multiscales"]``); older
0.1-0.3 groups are read too. Level 0's scale and translation give the record's affine;
an affine that is not a scale plus translation (rotation, shear, flips) is kept exactly
in the custom attribute ``"mmfuse_affine"``, which our reader prefers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import dask.array as da
import numpy as np
import zarr

from ..core.space import spacing_of
from ._common import ImageRecord, ReadError, format_bytes, memory_budget, refuse_overwrite
from .formats import get_format
from .tiff import canonical_layout, downsample2, pyramid_count
from .units import WRITE_UNITS, project_units, um_per_unit

SUFFIXES = get_format("ome_zarr").suffixes
#: Attribute holding the exact index -> world affine of level 0 (written by us).
AFFINE_ATTRIBUTE = "mmfuse_affine"
#: Attribute holding the units of :data:`AFFINE_ATTRIBUTE`.
UNITS_ATTRIBUTE = "mmfuse_units"
_NGFF_UNIT = {"um": "micrometer", "mm": "millimeter"}
_AXIS_TYPE = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
_DEFAULT_CHUNK = {2: 256, 3: 64}  # spatial chunk edge by number of spatial axes


def _stem(path: Path) -> str:
    name = path.name
    for suffix in SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.name


def _ome_attributes(attributes: dict) -> dict:
    """The NGFF block: ``attributes["ome"]`` (0.5) or the attributes themselves (<= 0.4)."""
    ome = attributes.get("ome")
    return ome if isinstance(ome, dict) else attributes


def is_ome_zarr(path) -> bool:
    """Whether ``path`` is the root folder of an OME-Zarr image (NGFF multiscales).

    Parameters
    ----------
    path : str or Path
        A folder; its ``.zattrs`` (Zarr v2) or ``zarr.json`` (Zarr v3) must hold
        ``multiscales`` (or a bioformats2raw layout). Never raises.

    Returns
    -------
    bool
    """
    try:
        path = Path(path)
        if not path.is_dir():
            return False
        for name in (".zattrs", "zarr.json"):
            file = path / name
            if file.is_file():
                attributes = json.loads(file.read_text(encoding="utf-8"))
                if name == "zarr.json":
                    attributes = attributes.get("attributes", {})
                ome = _ome_attributes(attributes)
                if "multiscales" in ome or "bioformats2raw.layout" in ome:
                    return True
    except (OSError, ValueError, AttributeError):
        return False
    return False


def _scale_translation(transforms, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """Compose NGFF scale/translation transformations into one scale and translation."""
    scale, translation = np.ones(ndim), np.zeros(ndim)
    for transform in transforms or []:
        kind = transform.get("type")
        if kind == "identity":
            continue
        if kind not in ("scale", "translation"):
            raise ValueError(f"coordinate transformation {kind!r} is not supported")
        if kind not in transform:
            raise ValueError(f"{kind} transformations stored in a separate array are not supported")
        values = np.asarray(transform[kind], dtype=np.float64)
        if values.shape != (ndim,):
            raise ValueError(f"{kind} has {values.size} values for {ndim} axes")
        if kind == "scale":
            scale, translation = scale * values, translation * values
        else:
            translation = translation + values
    return scale, translation


def _axes(multiscale: dict, ndim: int) -> list[dict]:
    """Axes as dicts with name/type/unit (0.4+), from names (0.3), or tczyx (0.1-0.2)."""
    axes = multiscale.get("axes")
    if axes is None:
        axes = list("tczyx"[-ndim:])
    axes = [{"name": a} if isinstance(a, str) else dict(a) for a in axes]
    for axis in axes:
        axis.setdefault("type", _AXIS_TYPE.get(str(axis.get("name")).lower()))
    if len(axes) != ndim:
        raise ValueError(f"{len(axes)} axes described for {ndim}D arrays")
    return axes


def read_ome_zarr(path) -> list[ImageRecord]:
    """Read an OME-Zarr image (OME-NGFF 0.1-0.5, Zarr v2 or v3) lazily.

    Parameters
    ----------
    path : str or Path
        The image's root folder (a bioformats2raw root opens its first image).

    Returns
    -------
    list of ImageRecord
        One record whose data are dask arrays, a list largest first when there are
        several levels. The affine comes from the ``"mmfuse_affine"`` attribute when
        present, else from level 0's scale and translation on the space axes. Units
        "micrometer"/"millimeter" become "um"/"mm" (other lengths are converted to one
        of them); without units world is in "pixel". A "channel" axis (or "c") becomes
        the channel axis, named by the omero channel labels; ``"image-label"`` groups
        are returned as labels. ``metadata`` holds ``source_path``, ``units``,
        ``pixel_size_um``, ``ngff_version``, ``level_shapes``, ``level_scales``,
        ``channel_names`` and ``modality`` ("fluorescence" for several channels).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ReadError
        If it is not a Zarr group with NGFF multiscales or its metadata are inconsistent.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such OME-Zarr folder: {path}")
    if not path.is_dir():
        raise ReadError(path, "an OME-Zarr image is a folder, this is a file")
    try:
        group = zarr.open_group(str(path), mode="r")
        attributes = group.attrs.asdict()
        ome = _ome_attributes(attributes)
        if "multiscales" not in ome and "bioformats2raw.layout" in ome:
            group = group["0"]
            attributes = group.attrs.asdict()
            ome = _ome_attributes(attributes)
    except Exception as exc:  # zarr raises many types (JSON, metadata, missing nodes)
        raise ReadError(path, f"not a readable Zarr group ({type(exc).__name__}: {exc})") from exc
    if "multiscales" not in ome:
        raise ReadError(path, "the Zarr group holds no OME-NGFF multiscales")
    try:
        return [_record(path, group, attributes, ome)]
    except ReadError:
        raise
    except Exception as exc:  # malformed metadata or arrays: KeyError, TypeError, zarr errors
        raise ReadError(path, f"inconsistent OME-NGFF metadata ({type(exc).__name__}: {exc})") from exc


#: A level that could not be held in memory (over the budget) or has more than
#: :data:`MANY_CHUNKS` chunks must have at least this fraction of its chunk files present.
MIN_CHUNKS_PRESENT = 0.5
MANY_CHUNKS = 1_000_000
_ZARR_METADATA = {".zarray", ".zattrs", ".zgroup", ".zmetadata", "zarr.json"}


def _count_files(folder: Path, stop: int) -> int:
    """Chunk (or shard) files under ``folder``, counting no further than ``stop``."""
    count, pending = 0, [folder]
    while pending and count < stop:
        try:
            entries = list(os.scandir(pending.pop()))
        except OSError:
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                pending.append(Path(entry.path))
            elif entry.name not in _ZARR_METADATA:
                count += 1
    return count


def _check_chunks_present(path: Path, array, name: str) -> None:
    """Compare a level's declared shape with the chunk files present, before dask builds its graph.

    Missing chunks read as the fill value, so a sparse level is fine while it is small;
    a level over the memory budget, or with more than :data:`MANY_CHUNKS` chunks, whose
    files are mostly absent is refused as a lying (or truncated) ``.zarray``/``zarr.json``.
    """
    shape = tuple(int(n) for n in array.shape)
    if any(n < 0 for n in shape):
        raise ReadError(path, f"level {name!r} declares a negative shape {shape}")
    unit = getattr(array, "shards", None) or array.chunks
    units = float(np.prod([-(-n // max(1, int(c))) for n, c in zip(shape, unit, strict=False)], dtype=np.float64))
    nbytes = float(np.prod(shape, dtype=np.float64)) * np.dtype(array.dtype).itemsize
    if nbytes <= memory_budget() and units <= MANY_CHUNKS:
        return
    folder = path / name
    if not folder.is_dir():
        return  # a remote or zipped store: the files cannot be counted here
    needed = int(np.ceil(MIN_CHUNKS_PRESENT * units))
    present = _count_files(folder, needed)
    if present < needed:
        size = "x".join(str(n) for n in shape)
        raise ReadError(
            path,
            f"level {name!r} declares a {size} array ({format_bytes(nbytes)}, {units:.3g} chunks) but holds "
            f"{present} chunk file(s); truncated or lying metadata",
        )


def _record(path: Path, group, attributes: dict, ome: dict) -> ImageRecord:
    multiscale = ome["multiscales"][0]
    datasets = multiscale["datasets"]
    if not datasets:
        raise ReadError(path, "the multiscales list no datasets")
    for d in datasets:
        _check_chunks_present(path, group[d["path"]], d["path"])
    arrays = [da.from_zarr(group[d["path"]]) for d in datasets]
    ndim = arrays[0].ndim
    if any(a.ndim != ndim for a in arrays):
        raise ReadError(path, "the pyramid levels have different numbers of axes")
    axes = _axes(multiscale, ndim)
    global_scale, global_translation = _scale_translation(multiscale.get("coordinateTransformations"), ndim)
    level_scales = []
    for dataset in datasets:
        scale, translation = _scale_translation(dataset.get("coordinateTransformations"), ndim)
        level_scales.append((scale * global_scale, translation * global_scale + global_translation))

    spatial = [i for i, a in enumerate(axes) if a["type"] == "space"]
    n = len(spatial)
    if n not in (2, 3) or spatial != list(range(ndim - n, ndim)):
        raise ReadError(path, f"need 2 or 3 trailing space axes, got {[a.get('name') for a in axes]}")
    channels = [i for i, a in enumerate(axes) if a["type"] == "channel"]
    channel_axis = channels[0] if channels else None

    factors = [um_per_unit(axes[i].get("unit")) for i in spatial]
    scale0, translation0 = level_scales[0]
    if all(f is not None for f in factors):
        units = project_units(factors)
        convert = np.array(factors) / um_per_unit(units)
    else:
        units, convert = "pixel", np.ones(n)
    affine = np.eye(n + 1)
    affine[:n, :n] = np.diag(scale0[spatial] * convert)
    affine[:n, n] = translation0[spatial] * convert
    stored = attributes.get(AFFINE_ATTRIBUTE)
    if stored is not None:
        stored = np.asarray(stored, dtype=np.float64)
        stored_units = attributes.get(UNITS_ATTRIBUTE, units)
        if stored.shape != (n + 1, n + 1) or stored_units not in WRITE_UNITS:
            raise ReadError(path, f"the {AFFINE_ATTRIBUTE} attribute does not fit a {n}D image")
        affine, units = stored, stored_units
    pixel_size = None if units == "pixel" else (spacing_of(affine) * um_per_unit(units)).tolist()

    channel_names = None
    n_channels = arrays[0].shape[channel_axis] if channel_axis is not None else 0
    labels = [c.get("label") for c in (ome.get("omero") or {}).get("channels", [])]
    if n_channels and len(labels) == n_channels and all(isinstance(c, str) and c for c in labels):
        channel_names = labels
    metadata = {
        "source_path": str(path),
        "units": units,
        "pixel_size_um": pixel_size,
        "ngff_version": str(ome.get("version", multiscale.get("version", ""))),
        "level_shapes": [tuple(int(s) for s in a.shape) for a in arrays],
        "level_scales": [scale[spatial].tolist() for scale, _ in level_scales],
        "channel_names": channel_names,
    }
    if n_channels > 1:
        metadata["modality"] = "fluorescence"
    return ImageRecord(
        data=arrays if len(arrays) > 1 else arrays[0],
        affine=affine,
        name=str(multiscale.get("name") or _stem(path)),
        units=units,
        metadata=metadata,
        channel_axis=channel_axis,
        channel_names=channel_names,
        layer_type="labels" if "image-label" in ome else "image",
        axis_labels=tuple(str(a.get("name")) for i, a in enumerate(axes) if i != channel_axis),
    )


def write_ome_zarr(
    path,
    data,
    affine,
    *,
    overwrite: bool = False,
    channel_axis: int | None = None,
    channel_names=None,
    units: str = "um",
    levels: int | None = None,
    chunks=None,
    zarr_format: int = 2,
    layer_type: str = "image",
) -> Path:
    """Write an image as an OME-Zarr multiscale pyramid.

    Axes are written in NGFF order ``[t], [c], [z], y, x``. Each level halves Y and X
    (2x2 mean for images, every second pixel for labels) and is built from the level
    written before it, read back lazily, so memory stays bounded for dask input. Level
    scale/translation transformations describe each level's pixel centres; the exact
    affine and its units are also stored as ``"mmfuse_affine"``/``"mmfuse_units"``.

    Parameters
    ----------
    path : str or Path
        Output folder, normally ending in ``.ome.zarr``.
    data : array-like (numpy or dask)
        Image; its last ``n`` non-channel axes are spatial, one further leading axis
        (time) is allowed.
    affine : array, shape (n + 1, n + 1)
        Index -> world affine of the spatial axes (napari order), n = 2 or 3.
    overwrite : bool
        Replace an existing folder.
    channel_axis : int, optional
        Axis holding channels (NGFF axis "c").
    channel_names : sequence of str, optional
        One name per channel, written as omero channel labels.
    units : {"um", "mm", "pixel"}
        World units of the affine ("micrometer", "millimeter", or no unit).
    levels : int, optional
        Number of levels including full resolution; by default one level up to 2048 px
        a side, else halvings until under 1024 px.
    chunks : int or sequence of int, optional
        Chunk edge of the spatial axes (int), or chunk sizes of all written axes in NGFF
        order. By default 256 (2D) or 64 (3D) on spatial axes and 1 elsewhere.
    zarr_format : {2, 3}
        2 writes NGFF 0.4 (``.zattrs``), 3 writes NGFF 0.5 (``zarr.json``).
    layer_type : {"image", "labels"}
        Labels are marked with ``"image-label"`` and downsampled without averaging.

    Returns
    -------
    Path
        The written folder.

    Raises
    ------
    FileExistsError
        If ``path`` exists and ``overwrite`` is False.
    ValueError
        If the data, affine, units, names, chunks or format are inconsistent.
    """
    path = Path(path)
    refuse_overwrite(path, overwrite)
    if zarr_format not in (2, 3):
        raise ValueError(f"zarr_format must be 2 or 3, not {zarr_format!r}")
    if units not in WRITE_UNITS:
        raise ValueError(f"units must be one of {WRITE_UNITS}, not {units!r}")
    if layer_type not in ("image", "labels"):
        raise ValueError(f"layer_type must be 'image' or 'labels', not {layer_type!r}")
    data, affine, letters = canonical_layout(data, affine, channel_axis, rgb=False)
    names = letters.lower()
    n = affine.shape[0] - 1
    ndim = len(names)
    if "c" in names and channel_names is not None and len(channel_names) != data.shape[names.index("c")]:
        raise ValueError(f"{len(channel_names)} channel names for {data.shape[names.index('c')]} channels")
    if chunks is None or isinstance(chunks, (int, np.integer)):
        edge = _DEFAULT_CHUNK[n] if chunks is None else int(chunks)
        chunks = tuple(edge if i >= ndim - n else 1 for i in range(ndim))
    chunks = tuple(int(c) for c in chunks)
    if len(chunks) != ndim or min(chunks) < 1:
        raise ValueError(f"chunks {chunks} do not fit the written axes {names!r}")
    y_axis = names.index("y")
    n_levels = pyramid_count(data.shape[y_axis : y_axis + 2], levels)
    labels = layer_type == "labels"

    from .atomic import atomic_output

    # built in a hidden folder beside ``path`` and swapped in whole: an input that is ``path``
    # is read (lazily, while the levels are stored) before the old folder is replaced
    with atomic_output(path, overwrite=overwrite, folder=True) as target:
        group = zarr.open_group(str(target), mode="w-", zarr_format=zarr_format)
        spacing = np.ones(ndim)
        spacing[ndim - n :] = spacing_of(affine)
        origin = np.zeros(ndim)
        origin[ndim - n :] = affine[:n, n]
        level = data if isinstance(data, da.Array) else da.from_array(data)
        datasets = []
        for index in range(n_levels):
            level_chunks = tuple(min(c, s) for c, s in zip(chunks, level.shape, strict=True))
            options = (
                {"dimension_names": list(names)}
                if zarr_format == 3
                else {"chunk_key_encoding": {"name": "v2", "separator": "/"}}
            )
            array = group.create_array(
                str(index), shape=level.shape, dtype=level.dtype, chunks=level_chunks, fill_value=0, **options
            )
            da.store(level.rechunk(level_chunks), array, lock=False)
            factor = np.ones(ndim)
            factor[y_axis : y_axis + 2] = 2.0**index
            shift = np.zeros(ndim) if labels else spacing * (factor - 1) / 2  # block-mean pixel centres
            datasets.append(
                {
                    "path": str(index),
                    "coordinateTransformations": [
                        {"type": "scale", "scale": (spacing * factor).tolist()},
                        {"type": "translation", "translation": (origin + shift).tolist()},
                    ],
                }
            )
            if index + 1 < n_levels:
                level = downsample2(da.from_zarr(array), (y_axis, y_axis + 1), labels)

        axes = []
        for name in names:
            axis = {"name": name, "type": _AXIS_TYPE[name]}
            if axis["type"] == "space" and units != "pixel":
                axis["unit"] = _NGFF_UNIT[units]
            axes.append(axis)
        multiscale = {
            "name": _stem(path),
            "axes": axes,
            "datasets": datasets,
            "type": "nearest" if labels else "mean",
            "metadata": {"method": "napari_mmfuse 2x2 " + ("stride" if labels else "mean")},
        }
        ome: dict = {"multiscales": [multiscale]}
        if "c" in names and channel_names is not None:
            ome["omero"] = {"channels": [{"label": str(c), "color": "FFFFFF", "active": True} for c in channel_names]}
        if labels:
            ome["image-label"] = {}
        if zarr_format == 2:
            multiscale["version"] = "0.4"
            if labels:
                ome["image-label"]["version"] = "0.4"
            attributes = ome
        else:
            attributes = {"ome": {"version": "0.5", **ome}}
        attributes[AFFINE_ATTRIBUTE] = affine.tolist()
        attributes[UNITS_ATTRIBUTE] = units
        group.attrs.update(attributes)
    return path
