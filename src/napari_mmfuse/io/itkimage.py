"""MetaImage (.mha/.mhd) and NRRD (.nrrd/.nhdr) via SimpleITK, in the LPS napari-order world frame."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.space import affine_from_itk, itk_from_affine, orientation_code, reorient_to_nearest, spacing_of
from ._common import (
    ImageRecord,
    ReadError,
    check_budget,
    check_data_size,
    file_grid,
    refuse_overwrite,
    report_non_finite,
)
from .formats import file_suffix, get_format, stem
from .nifti import guess_modality, is_label_map

SUFFIXES = get_format("itk").suffixes


def _itk_reason(exc: RuntimeError) -> str:
    """The ITK error sentence, without source locations and object addresses."""
    lines = [line for line in str(exc).splitlines() if "ERROR" in line] or str(exc).splitlines()[-1:]
    return re.sub(r"^.*ERROR: (\w+\(0x[0-9a-fA-F]+\): )?", "", lines[-1]).strip()


#: Header keys naming compressed or detached pixel data (then the file size bounds nothing).
_MHA_PACKED = re.compile(rb"^\s*CompressedData\s*=\s*True", re.IGNORECASE | re.MULTILINE)
_NRRD_ENCODING = re.compile(rb"^\s*encoding\s*:\s*(\w+)", re.IGNORECASE | re.MULTILINE)


def _header_end(head: bytes, suffix: str) -> int | None:
    """Where the pixel data of a one-file MetaImage/NRRD starts, or None when it is compressed or elsewhere."""
    if suffix == ".mha":
        match = re.search(rb"^\s*ElementDataFile\s*=\s*LOCAL\s*?\r?\n", head, re.IGNORECASE | re.MULTILINE)
        if match is None or _MHA_PACKED.search(head[: match.start()]):
            return None
        return match.end()
    if suffix == ".nrrd":
        local = _nrrd_local_data(head)
        return local[0] if local is not None and local[1] == b"raw" else None
    return None


def _nrrd_local_data(head: bytes) -> tuple[int, bytes] | None:
    """``(start, encoding)`` of a one-file NRRD's pixel data (encoding lower case, raw when unsaid), or None."""
    end = head.find(b"\n\n")
    if end < 0:
        return None
    header = head[:end]
    if re.search(rb"^\s*data ?file\s*:", header, re.IGNORECASE | re.MULTILINE):
        return None
    encoding = _NRRD_ENCODING.search(header)
    return end + 2, b"raw" if encoding is None else encoding.group(1).lower()


_META_LINE = re.compile(rb"^([A-Za-z][A-Za-z0-9_]*)[ \t]*=[ \t]*(.*?)[ \t\r]*$")
_NUMBER = rb"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?"
_META_VALUES = {
    b"NDims": rb"\d+",
    b"DimSize": rb"\d+( +\d+)*",
    b"ElementNumberOfChannels": rb"\d+",
    b"HeaderSize": rb"-?\d+",
    b"CompressedData": rb"(?i:true|false)",
    b"CompressedDataSize": rb"\d+",
    b"BinaryData": rb"(?i:true|false)",
    b"ElementType": rb"MET_[A-Z0-9_]+",
    **{
        key: _NUMBER + rb"( +" + _NUMBER + rb")*"
        for key in (b"ElementSpacing", b"ElementSize", b"Offset", b"Position", b"Origin", b"CenterOfRotation",
                    b"TransformMatrix", b"Rotation", b"Orientation")
    },
}


def _check_metaimage_header(path: Path, head: bytes) -> None:
    """Parse a MetaImage header strictly before MetaIO sees it: a corrupt one can crash the process.

    Every line up to ``ElementDataFile`` must be ``Key = Value`` with a well-formed value for the
    keys that size and place the data; local compressed data must be exactly
    ``CompressedDataSize`` bytes long (when given) and inflate to the declared size.
    """
    lines = head.split(b"\n")
    values: dict[bytes, bytes] = {}
    offset = 0
    for number, line in enumerate(lines, start=1):
        if offset + len(line) >= len(head) and len(head) == 1 << 16:
            raise ReadError(path, "corrupt MetaImage header: no ElementDataFile line in its first 64 KB")
        offset += len(line) + 1
        match = _META_LINE.match(line)
        if match is None:
            raise ReadError(path, f"corrupt MetaImage header: line {number} is not 'Key = Value'")
        key, value = match.groups()
        pattern = _META_VALUES.get(key)
        if pattern is not None and not re.fullmatch(pattern, value):
            raise ReadError(path, f"corrupt MetaImage header: {key.decode()} = {value[:40]!r}")
        values[key] = value
        if key == b"ElementDataFile":
            break
    else:
        raise ReadError(path, "corrupt MetaImage header: no ElementDataFile line")
    data_file = values[b"ElementDataFile"]
    if not data_file.isascii() or not data_file.strip():
        raise ReadError(path, f"corrupt MetaImage header: ElementDataFile = {data_file[:40]!r}")
    if data_file != b"LOCAL":
        return
    if values.get(b"CompressedData", b"false").lower() != b"true":
        return
    remaining = path.stat().st_size - offset
    if b"CompressedDataSize" in values and int(values[b"CompressedDataSize"]) != remaining:
        raise ReadError(
            path,
            f"truncated or corrupt: CompressedDataSize is {int(values[b'CompressedDataSize'])} bytes, "
            f"the file holds {remaining} after its header",
        )


@contextlib.contextmanager
def native_stderr_muted():
    """Send what C++ code writes to file descriptor 2 (MetaIO's multi-line reports) to nowhere meanwhile.

    The reason of a failure still reaches the caller through SimpleITK's exception.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _inflated_size(path: Path, start: int, limit: float, wbits: int = zlib.MAX_WBITS) -> int:
    """Bytes the zlib stream from ``start`` inflates to (up to ``limit``), nothing kept; ReadError when corrupt.

    ``wbits`` as :func:`zlib.decompressobj` takes it (31: a gzip stream)."""
    inflate, size = zlib.decompressobj(wbits), 0
    try:
        with open(path, "rb") as stream:
            stream.seek(start)
            while size < limit:
                block = stream.read(1 << 20)
                if not block:
                    break
                size += len(inflate.decompress(block, 1 << 24))
                while inflate.unconsumed_tail and size < limit:
                    size += len(inflate.decompress(inflate.unconsumed_tail, 1 << 24))
                if inflate.eof:
                    break
    except zlib.error as exc:
        raise ReadError(path, f"truncated or corrupt: the compressed pixel data does not inflate ({exc})") from exc
    return size


def check_itk_file(path) -> "sitk.ImageFileReader":
    """Compare what an image file's header declares with its data and the memory budget, before any allocation.

    NIfTI files get :mod:`napari_mmfuse.io.nifti`'s check; MetaImage and NRRD files
    with raw pixel data in the same file are compared with the file size; every file
    is refused when its pixel buffer would exceed :func:`~napari_mmfuse.io.memory_budget`.

    Returns
    -------
    SimpleITK.ImageFileReader
        With the image information read.

    Raises
    ------
    ReadError
        Unreadable header, data shorter than declared (truncated or corrupt), or over budget.
    """
    path = Path(path)
    suffix = file_suffix(path)
    if suffix in get_format("nifti").suffixes:
        import nibabel as nib

        from .nifti import NIBABEL_ERRORS, check_declared_size, nibabel_quiet

        try:
            with nibabel_quiet():
                image = nib.load(str(path))
        except NIBABEL_ERRORS as exc:
            raise ReadError(path, f"not a NIfTI file, or truncated or corrupt ({exc})") from exc
        check_declared_size(path, image.header, int(getattr(image.dataobj, "offset", 0)))
    if suffix in (".mha", ".mhd"):
        with open(path, "rb") as stream:
            _check_metaimage_header(path, stream.read(1 << 16))
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with native_stderr_muted():
            reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ReadError(path, f"SimpleITK could not read its header ({_itk_reason(exc)})") from exc
    size = reader.GetSize()
    components = max(1, int(reader.GetNumberOfComponents()))
    try:
        item = sitk.Image([1] * len(size), reader.GetPixelID(), components).GetSizeOfPixelComponent()
    except RuntimeError:
        item = 8
    declared = float(np.prod(size, dtype=np.float64)) * components * item
    shape = "x".join(str(n) for n in size)
    with open(path, "rb") as stream:
        head = stream.read(1 << 16)
    start = _header_end(head, suffix)
    packed = re.search(rb"^\s*CompressedDataSize\s*=\s*(\d+)", head, re.MULTILINE) if suffix == ".mha" else None
    local = re.search(rb"^\s*ElementDataFile\s*=\s*LOCAL\s*?\r?\n", head, re.IGNORECASE | re.MULTILINE)
    if packed is not None and local is not None:  # MetaIO reports a bad stream on stderr only: check first
        check_data_size(path, int(packed.group(1)), path.stat().st_size - local.end(), "CompressedDataSize")
        check_data_size(path, declared, _inflated_size(path, local.end(), declared), f"the header ({shape})")
    if start is not None:
        check_data_size(path, declared, path.stat().st_size - start, f"the header ({shape}, {components} component(s))")
    local = _nrrd_local_data(head) if suffix == ".nrrd" else None
    if local is not None and local[1] in (b"gzip", b"gz"):  # SimpleITK would allocate all it declares first
        check_data_size(path, declared, _inflated_size(path, local[0], declared, wbits=31), f"the header ({shape})")
    check_budget(path, 2 * declared, f"the {shape} image")
    return reader


def _metadata(image) -> dict:
    """The image's ITK metadata dictionary, leaving out keys a corrupt header made undecodable."""
    out = {}
    for key in image.GetMetaDataKeys():
        try:
            out[key] = image.GetMetaData(key)
        except (TypeError, RuntimeError, UnicodeError):
            continue
    return out


def read_itk_image(path) -> list[ImageRecord]:
    """Read a 2D or 3D MetaImage or NRRD image with SimpleITK.

    ITK geometry is already LPS; spacing, origin and direction become a napari-order
    affine and the array axes are permuted/flipped (no interpolation) to run along the
    world axes, the obliquity staying in the affine.

    Parameters
    ----------
    path : str or Path
        A .mha, .mhd, .nrrd or .nhdr file.

    Returns
    -------
    list of ImageRecord
        One record. Scalar data has shape (Z, Y, X) or (Y, X). Vector pixels get their
        components on axis 0 (``channel_axis=0``), except 2D 8-bit images with 3 or 4
        components, which are returned as RGB(A) (``rgb=True``, components last). A
        scalar mask or label map (the rule of :func:`napari_mmfuse.io.nifti.is_label_map`)
        is returned as ``layer_type="labels"``.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ReadError
        If SimpleITK cannot read it, it is not 2D or 3D, or its geometry is degenerate.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such image file: {path}")
    check_itk_file(path)
    try:
        with native_stderr_muted():
            image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ReadError(path, f"SimpleITK could not read it ({_itk_reason(exc)})") from exc
    ndim = image.GetDimension()
    if ndim not in (2, 3):
        raise ReadError(path, f"{ndim}D images are not supported (2D or 3D only)")
    components = image.GetNumberOfComponentsPerPixel()
    data = sitk.GetArrayFromImage(image)
    affine = affine_from_itk(image.GetSpacing(), image.GetOrigin(), image.GetDirection())

    rgb = ndim == 2 and components in (3, 4) and image.GetPixelID() == sitk.sitkVectorUInt8
    channel_axis = None
    if components > 1 and not rgb:
        data = np.moveaxis(data, -1, 0)
        channel_axis = 0
    first = int(channel_axis is not None)
    grid = file_grid(data.shape[first : first + ndim], affine)
    try:
        original_orientation = orientation_code(affine)
        data, affine = reorient_to_nearest(data, affine, first_axis=first)
    except ValueError as exc:
        raise ReadError(path, f"invalid geometry ({exc})") from exc
    data = np.ascontiguousarray(data)

    name = stem(path, SUFFIXES)
    layer_type = "image"
    if components == 1:
        labels = is_label_map(data, name)
        if labels is not None:
            data, layer_type = labels, "labels"
    metadata = {
        "source_path": str(path),
        "spacing": tuple(float(s) for s in spacing_of(affine)),
        "orientation": orientation_code(affine),
        "original_orientation": original_orientation,
        "grid": grid,
        "itk_metadata": _metadata(image),
        "non_finite_voxels": report_non_finite(data, path),
    }
    modality = guess_modality(name)
    if modality is not None and layer_type == "image":
        metadata["modality"] = modality
    return [
        ImageRecord(
            data=data,
            affine=affine,
            name=name,
            units="mm",
            metadata=metadata,
            channel_axis=channel_axis,
            rgb=rgb,
            layer_type=layer_type,
            axis_labels=("z", "y", "x")[3 - ndim :],
        )
    ]


def write_itk_image(path, data, affine, *, overwrite: bool = False) -> Path:
    """Write a 2D or 3D scalar image as MetaImage or NRRD with SimpleITK (compressed).

    Parameters
    ----------
    path : str or Path
        Output file ending in .mha, .mhd, .nrrd or .nhdr.
    data : array-like, shape (Y, X) or (Z, Y, X)
        Numpy axis order (reversed ITK index order). bool is written as uint8.
    affine : ndarray, shape (ndim + 1, ndim + 1)
        Index -> world affine, LPS frame, napari order.
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    ValueError
        Wrong suffix, data not 2D/3D, or an affine of the wrong size.
    FileExistsError
        If ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"an ITK image file name must end in one of {', '.join(SUFFIXES)}: {path}")
    refuse_overwrite(path, overwrite)
    data = np.asarray(data)
    if data.ndim not in (2, 3):
        raise ValueError(f"write_itk_image takes 2D or 3D data, got {data.ndim}D")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (data.ndim + 1, data.ndim + 1):
        raise ValueError(f"a {data.ndim}D image needs a {data.ndim + 1}x{data.ndim + 1} affine, got {affine.shape}")
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    spacing, origin, direction = itk_from_affine(affine)
    image = sitk.GetImageFromArray(np.ascontiguousarray(data))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    image.SetDirection([float(d) for d in direction.ravel()])
    from .atomic import atomic_output

    # a detached header (.mhd/.nhdr) names its data file: both are written side by side, then moved
    detached = path.suffix.lower() in (".mhd", ".nhdr")
    with atomic_output(path, overwrite=overwrite, companions=detached) as temporary:
        sitk.WriteImage(image, str(temporary), True)
    return path
