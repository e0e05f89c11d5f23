"""The record every reader returns: pixels plus their placement in physical space."""

from __future__ import annotations

import io
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.space import FRAME


class ReadError(ValueError):
    """A file of a supported type could not be read (corrupt, truncated, inconsistent)."""

    def __init__(self, path, problem: str):
        problem = re.sub(r"\s*\n\s*", " ", str(problem).strip())  # one line, whatever a library said
        super().__init__(f"cannot read {Path(path)}: {problem}")
        self.path = Path(path)
        self.problem = problem


@dataclass
class ImageRecord:
    """An image as read from a file: data, world affine and metadata.

    Attributes
    ----------
    data : array-like or list of array-like
        numpy or dask array; a list (largest level first) for multiscale images.
    affine : ndarray, shape (n + 1, n + 1)
        Maps a spatial array index to the world (LPS frame, napari axis order,
        see :mod:`napari_mmfuse.core.space`). ``n`` counts spatial axes only.
    name : str
        Layer name.
    units : str
        World units: "mm" for volumes, "um" for slides, "pixel" when unknown.
    metadata : dict
        At least ``source_path``, ``frame``; ``modality`` when known; anything else the
        reader found (spacing, orientation, channel names, vendor fields).
    channel_axis : int, optional
        Axis of ``data`` holding separate channels (split into one layer each).
    channel_names : list of str, optional
    rgb : bool
        Last axis is RGB(A).
    layer_type : str
        "image" or "labels".
    axis_labels : tuple of str, optional
        Names of the non-channel axes, e.g. ("t", "z", "y", "x").
    """

    data: Any
    affine: np.ndarray
    name: str
    units: str = "mm"
    metadata: dict = field(default_factory=dict)
    channel_axis: int | None = None
    channel_names: list[str] | None = None
    rgb: bool = False
    layer_type: str = "image"
    axis_labels: tuple[str, ...] | None = None

    @property
    def multiscale(self) -> bool:
        return isinstance(self.data, (list, tuple))

    @property
    def level0(self):
        """The full-resolution array."""
        return self.data[0] if self.multiscale else self.data

    @property
    def spatial_ndim(self) -> int:
        return self.affine.shape[0] - 1

    def __post_init__(self):
        self.affine = np.asarray(self.affine, dtype=np.float64)
        self.metadata.setdefault("frame", FRAME)
        self.metadata.setdefault("units", self.units)

    def layer_affine(self) -> np.ndarray:
        """The affine over all non-channel, non-RGB axes (leading axes get identity)."""
        n_axes = self.level0.ndim - (self.channel_axis is not None) - int(self.rgb)
        n = self.spatial_ndim
        full = np.eye(n_axes + 1)
        full[n_axes - n :, n_axes - n :] = self.affine
        return full

    def to_layer_data(self) -> tuple:
        """napari ``LayerDataTuple`` (data, kwargs, layer_type)."""
        n_axes = self.level0.ndim - (self.channel_axis is not None) - int(self.rgb)
        units = self.units if self.units != "pixel" else "pixel"
        kwargs: dict[str, Any] = {
            "name": self.name,
            "affine": self.layer_affine(),
            "metadata": dict(self.metadata),
            "units": (units,) * n_axes,
        }
        if self.axis_labels is not None:
            kwargs["axis_labels"] = tuple(self.axis_labels)
        if self.layer_type == "image":
            if self.multiscale:
                kwargs["multiscale"] = True
            if self.rgb:
                kwargs["rgb"] = True
            if self.channel_axis is not None:
                kwargs["channel_axis"] = self.channel_axis
                names = self.channel_names or [f"ch{i}" for i in range(self.level0.shape[self.channel_axis])]
                kwargs["name"] = [f"{self.name} [{c}]" for c in names]
                kwargs["metadata"] = [dict(self.metadata, channel=c) for c in names]
        elif self.multiscale:
            kwargs["multiscale"] = True
        return (self.data, kwargs, self.layer_type)


#: A voxel-grid affine entry this close (in index units) to a whole number counts as one.
GRID_TOLERANCE = 1e-4


def file_grid(shape, affine, *, fastest_first: bool = False) -> dict:
    """The voxel grid a file stores, recorded by its reader in ``metadata["grid"]``.

    Parameters
    ----------
    shape : sequence of int
        Spatial shape of the array as the file's library gives it.
    affine : ndarray, shape (n + 1, n + 1)
        Its index -> world affine (LPS, napari-order world).
    fastest_first : bool
        Whether the array's first axis is the file's fastest-varying one (nibabel's
        ``(i, j, k)``) rather than its slowest (ITK's and pydicom's ``(k, j, i)``).

    Returns
    -------
    dict
        ``{"shape": [...], "affine": [[...]]}`` in ITK array order (slowest axis first, as
        ``SimpleITK.GetArrayFromImage`` orders it), JSON-able: what
        :func:`on_file_grid` writes an output back onto.
    """
    affine = np.asarray(affine, dtype=np.float64)
    shape = [int(n) for n in shape]
    if fastest_first:
        n = len(shape)
        affine = affine.copy()
        affine[:, :n] = affine[:, :n][:, ::-1]
        shape = shape[::-1]
    return {"shape": shape, "affine": affine.tolist()}


def on_file_grid(data, affine, grid, *, rgb: bool = False, fastest_first: bool = False):
    """``data`` in the array order of a file's grid, when it lies on that grid up to axis order.

    A result resampled onto a reference image lies on the reference's grid as our readers
    hold it (axes permuted and flipped to run along the world axes); this undoes that
    reordering (transposes and reversals only, no interpolation), so the written file has
    the reference file's shape, axis order and affine.

    Parameters
    ----------
    data : numpy or dask array
        Spatial axes first, then RGB when ``rgb``.
    affine : ndarray, shape (n + 1, n + 1)
        Index -> world affine of ``data``.
    grid : dict or sequence of dict
        A :func:`file_grid` record, or several (e.g. every input's): the first ``data`` lies on
        is taken.
    rgb : bool
        Whether the last axis is not spatial (RGB, or a displacement field's vector components).
    fastest_first : bool
        Return the array with the file's fastest axis first (for nibabel's NIfTI writer);
        else slowest first (ITK, TIFF, Zarr writers).

    Returns
    -------
    (data, affine) or None
        The reordered data and the grid's own affine (exactly the reference file's), or
        None when ``data`` lies on no ``grid`` (other shape, spacing, direction or origin).
    """
    for candidate in [grid] if isinstance(grid, dict) else grid:
        placed = _on_one_grid(data, affine, candidate, rgb, fastest_first)
        if placed is not None:
            return placed
    return None


def _on_one_grid(data, affine, grid: dict, rgb: bool, fastest_first: bool):
    """:func:`on_file_grid` for one grid record."""
    affine = np.asarray(affine, dtype=np.float64)
    target = np.asarray(grid["affine"], dtype=np.float64)
    shape = tuple(int(n) for n in grid["shape"])
    n = affine.shape[0] - 1
    if target.shape != affine.shape or len(shape) != n or data.ndim != n + int(rgb):
        return None
    index = np.linalg.solve(target, affine)  # our index -> the file's index
    linear = np.rint(index[:n, :n])
    if not (np.allclose(index[:n, :n], linear, atol=GRID_TOLERANCE)
            and np.allclose(index[:n, n], np.rint(index[:n, n]), atol=GRID_TOLERANCE)
            and np.array_equal(np.abs(linear).sum(axis=0), np.ones(n))
            and np.array_equal(np.abs(linear).sum(axis=1), np.ones(n))):
        return None
    order = [int(np.flatnonzero(linear[axis])[0]) for axis in range(n)]  # file axis <- our axis
    flips = [linear[axis, order[axis]] < 0 for axis in range(n)]
    if tuple(data.shape[axis] for axis in order) != shape:
        return None
    offsets = np.rint(index[:n, n])
    if any(offsets[axis] != (shape[axis] - 1 if flips[axis] else 0) for axis in range(n)):
        return None
    data = data.transpose(order + list(range(n, data.ndim)))
    data = data[tuple(slice(None, None, -1) if flip else slice(None) for flip in flips)]
    if fastest_first:
        data = data.transpose(list(range(n))[::-1] + list(range(n, data.ndim)))
        target = target.copy()
        target[:, :n] = target[:, :n][:, ::-1]
    return data, target


def report_non_finite(data, path) -> int:
    """Count NaN/Inf voxels of an in-memory float array and warn about them (they are kept)."""
    if not isinstance(data, np.ndarray) or not np.issubdtype(data.dtype, np.floating):
        return 0
    count = int(data.size - np.count_nonzero(np.isfinite(data)))
    if count:
        warnings.warn(f"{Path(path).name}: {count} NaN/Inf voxels kept as they are", stacklevel=3)
    return count


def refuse_overwrite(path: Path, overwrite: bool) -> None:
    """Guard a writer's output path.

    Parameters
    ----------
    path : Path
        File or folder about to be written.
    overwrite : bool
        Whether replacing an existing ``path`` is allowed.

    Raises
    ------
    FileExistsError
        If ``path`` exists and ``overwrite`` is False.
    """
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it")


#: Environment variable overriding :func:`memory_budget` (bytes, or a size such as "4G", "512M").
BUDGET_VARIABLE = "MMFUSE_MEMORY_BUDGET"
#: Fraction of the available memory a single read may use by default.
BUDGET_FRACTION = 0.5
_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_size(text: str) -> int:
    """Bytes from ``"1234"``, ``"512M"``, ``"4G"``, ``"1.5GiB"`` or ``"2 TB"`` (binary multiples).

    Raises
    ------
    ValueError
        If ``text`` is not such a size.
    """
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", str(text))
    if not match:
        raise ValueError(f"{BUDGET_VARIABLE}={text!r} is not a size (bytes, or e.g. 512M, 4G)")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def _available_memory() -> int | None:
    """Available memory in bytes: /proc/meminfo MemAvailable, capped by a cgroup limit; psutil as a fallback."""
    available = None
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        available = None
    if available is None:
        try:
            import psutil

            available = int(psutil.virtual_memory().available)
        except Exception:  # psutil absent or unsupported platform
            return None
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:
            available = min(available, max(0, int(limit) - usage))
        break
    return available


def memory_budget() -> int:
    """Most bytes one read may allocate: ``MMFUSE_MEMORY_BUDGET`` if set, else half the available memory.

    The available memory is /proc/meminfo's MemAvailable (capped by a cgroup v1/v2 limit),
    or psutil's when there is no /proc; 2 GiB when neither says.

    Raises
    ------
    ValueError
        If ``MMFUSE_MEMORY_BUDGET`` is set but is not a size.
    """
    text = os.environ.get(BUDGET_VARIABLE, "").strip()
    if text:
        return parse_size(text)
    available = _available_memory()
    return int(BUDGET_FRACTION * available) if available else 2 * 2**30


def format_bytes(n: float) -> str:
    """``n`` bytes as a short human size ("3.2 GB")."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PB"


def check_budget(path, nbytes: float, what: str = "the image") -> None:
    """Refuse (ReadError) to allocate ``nbytes`` for a read when it exceeds :func:`memory_budget`.

    Parameters
    ----------
    path : str or Path
        The file, named in the message.
    nbytes : float
        Bytes the read would allocate (the declared size: a lying header is refused too).
    what : str
        What would be allocated, for the message.
    """
    budget = memory_budget()
    if nbytes > budget:
        raise ReadError(
            path,
            f"{what} would take {format_bytes(nbytes)} in memory, over the {format_bytes(budget)} budget "
            f"(set {BUDGET_VARIABLE} to change it)",
        )


def check_data_size(path, declared: float, present: float, what: str = "the header") -> None:
    """Refuse (ReadError) a file whose data is shorter than its header declares: truncated or corrupt."""
    if present < declared:
        raise ReadError(
            path,
            f"truncated or corrupt: {what} declares {format_bytes(declared)} of pixel data "
            f"but the file holds {format_bytes(present)}",
        )


def materialize(data, path=None, what: str = "the image") -> np.ndarray:
    """``np.asarray(data)`` after checking its size against :func:`memory_budget`.

    For lazy (dask, zarr, memory-mapped) arrays that a step needs in memory: a level
    read lazily may be far larger than the machine.

    Raises
    ------
    ReadError
        If ``data`` would take more bytes than the budget.
    """
    nbytes = float(np.prod(getattr(data, "shape", ()), dtype=np.float64)) * np.dtype(data.dtype).itemsize
    check_budget(path if path is not None else "<array>", nbytes, what)
    return np.asarray(data)


class CappedFile(io.FileIO):
    """A binary file whose ``read(n)`` never asks for more than what is left.

    Python allocates ``n`` bytes up front for ``read(n)``: a corrupt length field (a DICOM
    element, a PNG chunk, say 0x7FFFFFFF) would make a library allocate that much for a
    file of a few kilobytes. Pass this to libraries that accept file objects.
    """

    def read(self, size=-1):
        if size is not None and size > 0:
            size = min(size, max(0, os.fstat(self.fileno()).st_size - self.tell()))
        return super().read(size)
