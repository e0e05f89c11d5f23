"""NIfTI-1/2 (.nii, .nii.gz) reader and writer, in the LPS napari-order world frame."""

from __future__ import annotations

import contextlib
import gzip
import logging
import re
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from ..core.space import (
    affine_from_nifti,
    nifti_from_affine,
    orientation_code,
    reorient_to_nearest,
    spacing_of,
)
from ._common import (
    ImageRecord,
    ReadError,
    check_budget,
    check_data_size,
    file_grid,
    refuse_overwrite,
    report_non_finite,
)
from .formats import get_format, stem

SUFFIXES = get_format("nifti").suffixes
#: Files smaller than this are read completely at once, so that truncation shows up here.
EAGER_READ_BYTES = 512 * 2**20
#: Most distinct values an integer image may hold to be opened as labels.
MAX_LABELS = 256
#: At most this many distinct values (and at least two) make an integer-valued image a label map without a name hint.
FEW_LABELS = 16
#: A float value this close to an integer counts as that integer when deciding on labels.
LABEL_TOLERANCE = 1e-3
#: Elements per block when a volume is scanned for label values.
SCAN_ELEMENTS = 1 << 22
#: File-name words that mark a segmentation (any substring of the lower-case name).
LABEL_WORDS = ("mask", "label", "seg", "parc", "aseg", "class")
#: File-name tokens -> modality, used only when exactly one modality is named.
#: MR values follow :mod:`napari_mmfuse.sample_data` ("MR-T1"), the others DICOM's names.
MODALITY_TOKENS = {
    "t1": "MR-T1", "t1w": "MR-T1", "t1c": "MR-T1", "t1ce": "MR-T1", "t1gd": "MR-T1", "mprage": "MR-T1",
    "t2": "MR-T2", "t2w": "MR-T2",
    "flair": "MR-FLAIR",
    "dwi": "MR-DWI",
    "ct": "CT",
    "pet": "PET",
    "spect": "SPECT",
}
_VECTOR_INTENTS = {"displacement vector", "vector", "quaternion", "rgb vector", "rgba vector", "fnirt disp field"}
_SPACE_SCALE = {"meter": 1000.0, "micron": 1e-3}  # -> mm; "mm" and "unknown" are kept as mm
#: What nibabel raises on a corrupt file (an unknown unit or intent code is a KeyError).
NIBABEL_ERRORS = (
    ImageFileError, HeaderDataError, OSError, EOFError, ValueError, zlib.error, KeyError, IndexError, TypeError
)


def _names_labels(name: str) -> bool:
    lower = name.lower()
    return any(word in lower for word in LABEL_WORDS)


def guess_modality(name: str) -> str | None:
    """Guess the imaging modality from a file name, only when it is unambiguous.

    Parameters
    ----------
    name : str
        File name or stem, e.g. ``"sub-01_T1w.nii.gz"``.

    Returns
    -------
    str or None
        One of the values of :data:`MODALITY_TOKENS` (``"MR-T1"``, ``"MR-T2"``,
        ``"MR-FLAIR"``, ``"MR-DWI"``, ``"CT"``, ``"PET"``, ``"SPECT"``), or None when the
        name names no modality, several different ones, or a mask/label/segmentation.
    """
    if _names_labels(name):
        return None
    found = {MODALITY_TOKENS[t] for t in re.split(r"[^a-z0-9]+", name.lower()) if t in MODALITY_TOKENS}
    return found.pop() if len(found) == 1 else None


def label_values(data, limit: int = MAX_LABELS) -> np.ndarray | None:
    """The distinct values of ``data`` when it could be a label map, else None.

    A label map holds non-negative integer values (floats within :data:`LABEL_TOLERANCE`
    of an integer count: integer masks stored with a scale factor read back as
    0.99999997), at most ``limit`` distinct ones. The data is scanned in blocks of about
    :data:`SCAN_ELEMENTS` along the first axis after a strided sample, so an intensity
    image is usually rejected at the first block and memory stays bounded.

    Parameters
    ----------
    data : ndarray
        In memory or memory-mapped.
    limit : int
        Most distinct values allowed.

    Returns
    -------
    ndarray of int64 or None
        The sorted distinct (rounded) values.
    """
    if not isinstance(data, np.ndarray) or data.ndim == 0 or data.size == 0 or data.dtype.kind not in "biuf":
        return None
    if data.dtype == np.bool_:
        return np.unique(np.asarray(data, np.uint8))
    sample = data[tuple(slice(None, None, max(1, n // 32)) for n in data.shape)]
    seen: set[int] = set()
    for block in (sample, *_blocks(data)):
        values = _block_values(np.asarray(block))
        if values is None:
            return None
        seen.update(values.tolist())
        if len(seen) > limit:
            return None
    return np.array(sorted(seen), dtype=np.int64)


def _block_step(data: np.ndarray) -> int:
    per_row = max(1, data[0].size) if data.ndim > 1 else 1
    return max(1, SCAN_ELEMENTS // per_row)


def _blocks(data: np.ndarray):
    step = _block_step(data)
    for start in range(0, data.shape[0], step):
        yield data[start : start + step]


def _block_values(block: np.ndarray) -> np.ndarray | None:
    """Distinct non-negative integer values of one block, or None when it holds any other value."""
    if block.size == 0:
        return np.empty(0, np.int64)
    if block.dtype.kind == "f":
        rounded = np.rint(block)
        with np.errstate(invalid="ignore"):  # NaN fails the comparison; Inf gives NaN in the difference
            integral = np.all(np.abs(block - rounded) <= LABEL_TOLERANCE)
        if not integral:
            return None
        block = rounded
    low, high = block.min(), block.max()
    if low < 0 or high > np.iinfo(np.int64).max:
        return None
    if high < (1 << 20):
        return np.flatnonzero(np.bincount(np.asarray(block, np.int64).ravel()))
    return np.unique(np.asarray(block, np.int64))


def _label_array(data: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``data`` with an integer dtype: integers kept, bool as uint8, floats rounded to the smallest unsigned type."""
    if data.dtype == np.bool_:
        return data.astype(np.uint8)
    if np.issubdtype(data.dtype, np.integer):
        return data
    out = np.empty(data.shape, np.min_scalar_type(int(values[-1]) if values.size else 0))
    step = _block_step(data)
    for start in range(0, data.shape[0], step):
        out[start : start + step] = np.rint(data[start : start + step])
    return out


def as_labels(data) -> np.ndarray | None:
    """Return ``data`` as an integer label array if it holds few non-negative integer values.

    Parameters
    ----------
    data : ndarray
        In-memory or memory-mapped image (lazy arrays of other kinds are not inspected).

    Returns
    -------
    ndarray or None
        The data with an integer dtype (integer input keeps its dtype, bool becomes
        uint8, integral floats are rounded into the smallest unsigned type holding their
        maximum), or None when :func:`label_values` says it is no label map.
    """
    values = label_values(data)
    return None if values is None else _label_array(data, values)


def is_label_map(data, name: str, intent: str = "none", *, lazy: bool = False) -> np.ndarray | None:
    """Decide whether an image read from a file is a mask or label map; return its label array if so.

    The rule: the data holds non-negative integer values (see :func:`label_values`), at
    most :data:`MAX_LABELS` distinct ones, and either something says it is a
    segmentation (NIfTI intent "label", or a name with one of :data:`LABEL_WORDS`) or it
    has between 2 and :data:`FEW_LABELS` distinct values, which no scanned intensity
    image has (an integer CT or MRI has hundreds to thousands; a binary mask stored as
    float, or a 0-4 tumour map, qualifies by its values alone). A memory-mapped file
    without such a hint is not scanned, so opening a big intensity volume stays lazy.

    Parameters
    ----------
    data : ndarray
    name : str
        File stem.
    intent : str
        NIfTI intent name ("label" marks a label map).
    lazy : bool
        Whether ``data`` is memory-mapped.

    Returns
    -------
    ndarray or None
        The integer label array, or None for an image.
    """
    hint = intent == "label" or _names_labels(name)
    if lazy and not hint:
        return None
    values = label_values(data)
    if values is None or not (hint or 2 <= values.size <= FEW_LABELS):
        return None
    return _label_array(data, values)


def _select_affine(header) -> tuple[np.ndarray, str]:
    sform, sform_code = header.get_sform(coded=True)
    if sform_code > 0:
        return sform, "sform"
    qform, qform_code = header.get_qform(coded=True)
    if qform_code > 0:
        return qform, "qform"
    return header.get_base_affine(), "fallback"


def _intent_name(header) -> str:
    code = int(header["intent_code"])
    try:
        return nib.nifti1.intent_codes.label[code]
    except KeyError:
        return f"unknown ({code})"


def _text(value) -> str:
    raw = np.asarray(value).item()
    if isinstance(raw, bytes):
        raw = raw.split(b"\0", 1)[0].decode("latin-1")
    return str(raw).strip()


@contextlib.contextmanager
def nibabel_quiet():
    """Silence nibabel's log meanwhile: it reports header fixes of a corrupt file line by line on stderr."""
    logger = logging.getLogger("nibabel.global")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def check_declared_size(path: Path, header, offset: int) -> None:
    """Refuse a file whose header declares more data than the file holds, or than the memory budget allows.

    Parameters
    ----------
    path : Path
        The file (named in the error).
    header : nibabel header
        Its NIfTI header.
    offset : int
        Byte offset of the voxel data in the file.

    Raises
    ------
    ReadError
        If the data is truncated, or larger than the memory budget.

    Notes
    -----
    A plain .nii is compared with its size (and read into memory only under the budget);
    a .nii.gz is refused up front when the declared data exceeds the budget, then its
    decompressed stream is counted (in blocks, nothing kept) and refused when it ends early.
    """
    try:
        shape = tuple(int(n) for n in header.get_data_shape())
        itemsize = header.get_data_dtype().itemsize
        slope, inter = header.get_slope_inter()
    except NIBABEL_ERRORS as exc:
        raise ReadError(path, f"invalid NIfTI header ({exc})") from exc
    if any(n < 0 for n in shape):
        raise ReadError(path, f"invalid NIfTI header (negative dimension in {shape})")
    declared = float(np.prod(shape, dtype=np.float64)) * itemsize
    scaled = (slope is not None and slope != 1) or (inter is not None and inter != 0)
    in_memory = float(np.prod(shape, dtype=np.float64)) * (max(itemsize, 4) if scaled else itemsize)
    if not path.name.lower().endswith(".gz"):
        present = path.stat().st_size - offset
        check_data_size(path, declared, present, f"the header ({'x'.join(map(str, shape))} {header.get_data_dtype()})")
        if path.stat().st_size < EAGER_READ_BYTES:
            check_budget(path, in_memory, f"the {'x'.join(map(str, shape))} image")
        return
    check_budget(path, in_memory, f"the {'x'.join(map(str, shape))} image")
    needed = offset + int(declared)
    seen = 0
    try:
        with gzip.open(path, "rb") as stream:
            while seen < needed:
                block = stream.read(min(16 * 2**20, needed - seen))
                if not block:
                    break
                seen += len(block)
    except (OSError, EOFError, zlib.error) as exc:
        raise ReadError(path, f"truncated or corrupt: the compressed stream breaks off ({exc})") from exc
    check_data_size(
        path, declared, max(0, seen - offset), f"the header ({'x'.join(map(str, shape))} {header.get_data_dtype()})"
    )


def read_nifti(path) -> list[ImageRecord]:
    """Read a NIfTI-1 or NIfTI-2 image (.nii or .nii.gz).

    The affine is the sform when its code is positive, else the qform when its code is
    positive, else nibabel's fallback (voxel sizes only); ``metadata["affine_source"]``
    says which. It is converted to the LPS napari-order frame and the array axes are
    permuted/flipped (no interpolation) to run along the world axes, so axial slices
    show in napari; any obliquity stays in the affine. Scaling (``scl_slope``,
    ``scl_inter``) is applied and spatial units are converted to millimetres.

    Parameters
    ----------
    path : str or Path
        The file.

    Returns
    -------
    list of ImageRecord
        One record. 3D data has shape (Z, Y, X) (a 2D file gets one slice); 4D data has
        its 4th NIfTI axis first, as time (``axis_labels`` ``("t", "z", "y", "x")``) or,
        for vector intents and 5D files with a singleton time axis, as channels
        (``channel_axis=0``). A 3D mask or label map (see :func:`is_label_map`: few
        non-negative integer values, and a name with "mask", "label", "seg", ..., the
        intent "label", or at most :data:`FEW_LABELS` values) is returned as
        ``layer_type="labels"`` with an integer dtype.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ReadError
        If the file is not a valid NIfTI image, its data is truncated or unreadable,
        its affine is degenerate, or it has more than 4 non-singleton axes.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such NIfTI file: {path}")
    try:
        with nibabel_quiet():
            image = nib.load(str(path))
    except NIBABEL_ERRORS as exc:
        raise ReadError(path, f"not a NIfTI file, or truncated or corrupt ({exc})") from exc
    if not isinstance(image.header, nib.Nifti1Header):
        raise ReadError(path, f"not a NIfTI image (nibabel sees {type(image).__name__})")
    header = image.header
    check_declared_size(path, header, int(getattr(image.dataobj, "offset", 0)))  # the header copy says 0
    try:
        nifti_affine, affine_source = _select_affine(header)
        space_unit, time_unit = header.get_xyzt_units()
        intent = _intent_name(header)
        data = np.asanyarray(image.dataobj)  # decompresses .nii.gz; memory-maps plain .nii
        if isinstance(data, np.memmap) and path.stat().st_size < EAGER_READ_BYTES:
            data = np.array(data)
        lazy = isinstance(data, np.memmap)
    except NIBABEL_ERRORS as exc:
        raise ReadError(path, f"image data could not be read ({exc})") from exc

    nifti_affine = np.array(nifti_affine, dtype=np.float64)
    nifti_affine[:3] *= _SPACE_SCALE.get(space_unit, 1.0)
    vector = intent in _VECTOR_INTENTS
    if data.dtype.names:  # RGB24 / RGBA32 records -> trailing channel axis
        data = np.stack([data[field] for field in data.dtype.names], axis=-1)
        if data.ndim == 3:  # a 2D image of records: add the slice axis before the channels
            data = data[:, :, np.newaxis]
        vector = True
    if data.ndim == 2:
        data = data[..., np.newaxis]
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 5 and data.shape[3] == 1:  # NIfTI vectors: dim5 holds the components
        data, vector = data[:, :, :, 0], True
    if data.ndim > 4:
        raise ReadError(path, f"{data.ndim}D images are not supported (3 spatial axes plus time or channels at most)")
    leading = data.ndim - 3
    if leading:
        data = np.moveaxis(data, 3, 0)

    affine = affine_from_nifti(nifti_affine)
    grid = file_grid(data.shape[leading:], affine, fastest_first=True)
    try:
        original_orientation = orientation_code(affine)
        data, affine = reorient_to_nearest(data, affine, first_axis=leading)
    except ValueError as exc:
        raise ReadError(path, f"invalid {affine_source} affine ({exc})") from exc
    if not lazy:
        data = np.ascontiguousarray(data)

    name = stem(path, SUFFIXES)
    channel_axis = 0 if leading and vector else None
    layer_type = "image"
    if channel_axis is None:
        labels = is_label_map(data, name, intent, lazy=lazy)
        if labels is not None:
            data, layer_type = labels, "labels"
    metadata = {
        "source_path": str(path),
        "spacing": tuple(float(s) for s in spacing_of(affine)),
        "orientation": orientation_code(affine),
        "original_orientation": original_orientation,
        "grid": grid,
        "affine_source": affine_source,
        "sform_code": int(header["sform_code"]),
        "qform_code": int(header["qform_code"]),
        "descrip": _text(header["descrip"]),
        "intent": intent,
        "non_finite_voxels": report_non_finite(data, path),
    }
    modality = guess_modality(name)
    if modality is not None and layer_type == "image":
        metadata["modality"] = modality
    axis_labels = ("z", "y", "x")
    if leading and channel_axis is None:
        axis_labels = ("t",) + axis_labels
        metadata["time_step"] = float(header.get_zooms()[3])
        metadata["time_units"] = time_unit
    return [
        ImageRecord(
            data=data,
            affine=affine,
            name=name,
            units="mm",
            metadata=metadata,
            channel_axis=channel_axis,
            layer_type=layer_type,
            axis_labels=axis_labels,
        )
    ]


def _nifti_dtype(data: np.ndarray, labels: bool) -> np.ndarray:
    if data.dtype == np.bool_:
        return data.astype(np.uint8)
    if labels:
        if np.issubdtype(data.dtype, np.floating):
            if not np.all(np.isfinite(data)) or np.any(np.modf(data)[0]):
                raise ValueError("labels=True needs integer-valued data")
        elif not np.issubdtype(data.dtype, np.integer):
            raise ValueError(f"labels=True needs integer data, got {data.dtype}")
        if data.dtype.itemsize <= 4 and np.issubdtype(data.dtype, np.integer):
            return data
        low, high = (int(data.min()), int(data.max())) if data.size else (0, 0)
        dtype = np.result_type(np.min_scalar_type(low), np.min_scalar_type(high), np.uint8)
        if dtype.itemsize > 4:
            raise ValueError(f"label values {low}..{high} do not fit a 32-bit integer")
        return data.astype(dtype)
    if data.dtype == np.float16:
        return data.astype(np.float32)
    if data.dtype in (np.int64, np.uint64):
        low, high = (int(data.min()), int(data.max())) if data.size else (0, 0)
        dtype = np.result_type(np.min_scalar_type(low), np.min_scalar_type(high))
        return data.astype(dtype if dtype.itemsize <= 4 else np.float64)
    return data


def write_nifti(
    path, data, affine, *, overwrite: bool = False, metadata: dict | None = None, labels: bool = False
) -> Path:
    """Write an image as NIfTI-1 with scanner (code 1) sform and qform.

    Parameters
    ----------
    path : str or Path
        Output file; must end in ``.nii`` or ``.nii.gz`` (compressed).
    data : array-like
        Shape (Y, X), (Z, Y, X) or (T, Z, Y, X) (time first), numpy axis order.
    affine : ndarray, shape (4, 4), or (3, 3) for 2D data
        Spatial index -> world affine, LPS frame, napari order. 2D data is written as
        one slice; a 3x3 affine is embedded with a 1 mm slice spacing at z = 0.
    overwrite : bool
        Replace an existing file.
    metadata : dict, optional
        ``"descrip"`` (at most 80 characters are kept) and, for 4D data,
        ``"time_step"`` (pixdim[4], seconds) are written when present.
    labels : bool
        Write a label image: integer dtype (int64 data is narrowed to the smallest
        type holding its values) and intent "label".

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    ValueError
        Wrong suffix, unsupported number of axes, affine of the wrong size, or
        non-integer data with ``labels=True``.
    FileExistsError
        If ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    if not path.name.lower().endswith(SUFFIXES):
        raise ValueError(f"a NIfTI file name must end in .nii or .nii.gz: {path}")
    refuse_overwrite(path, overwrite)
    data = np.asarray(data)
    affine = np.asarray(affine, dtype=np.float64)
    if data.ndim == 2:
        data = data[np.newaxis]
        if affine.shape == (3, 3):
            embedded = np.eye(4)
            embedded[1:, 1:] = affine
            affine = embedded
    if data.ndim not in (3, 4):
        raise ValueError(f"write_nifti takes 2D, 3D or 4D (time first) data, got {data.ndim}D")
    if affine.shape != (4, 4):
        raise ValueError(f"a {data.ndim}D image needs a 4x4 spatial affine, got {affine.shape}")
    nifti_affine = nifti_from_affine(affine)
    data = _nifti_dtype(data, labels)
    if data.ndim == 4:
        data = np.moveaxis(data, 0, -1)

    image = nib.Nifti1Image(data, nifti_affine)
    header = image.header
    header.set_data_dtype(data.dtype)
    header.set_sform(nifti_affine, code=1)
    header.set_qform(nifti_affine, code=1)
    header.set_xyzt_units("mm", "sec")
    metadata = metadata or {}
    if data.ndim == 4 and "time_step" in metadata:
        header["pixdim"][4] = float(metadata["time_step"])
    if "descrip" in metadata:
        header["descrip"] = str(metadata["descrip"])[:80].encode("latin-1", "replace")
    if labels:
        header.set_intent("label")
    from .atomic import atomic_output

    with atomic_output(path, overwrite=overwrite) as temporary:  # the final name is renamed into place whole
        nib.save(image, str(temporary))
    return path
