"""Pick the reader for a path by its name (and, for folders, by what they hold)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ._common import ImageRecord, ReadError, on_file_grid, refuse_overwrite
from .formats import FORMATS, file_suffix, get_format, writable_suffixes, write_format


def reader_for(path) -> Callable[[Path], list[ImageRecord]] | None:
    """Return the function that reads ``path``, or None when no reader of ours handles it.

    The formats of :data:`~napari_mmfuse.io.formats.FORMATS` are tried in order: by
    suffix, then by content where a format has a content check. Never raises and never
    reads more than a file header.
    """
    try:
        path = Path(path)
        suffix = file_suffix(path)
        for fmt in FORMATS:
            if not fmt.reader:
                continue
            if suffix in fmt.suffixes and not fmt.sniff_only:
                return fmt.load_reader()
            if fmt.sniff and (path.is_dir() or not fmt.only_folders) and fmt.load_sniffer()(path):
                return fmt.load_reader()
    except (OSError, ValueError):
        return None
    return None


def read(path) -> list[ImageRecord]:
    """Read any supported file or folder into image records placed in world space (LPS).

    Parameters
    ----------
    path : str or Path
        NIfTI, DICOM (file or folder), MetaImage/NRRD, TIFF/OME-TIFF/SVS, OME-Zarr, PNG/JPEG.

    Returns
    -------
    list of ImageRecord

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ReadError
        If the format is not supported, or the file is corrupt.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    reader = reader_for(path)
    if reader is None:
        known = ", ".join(f.label for f in FORMATS if f.reader)
        raise ReadError(path, f"not a format napari-mmfuse reads ({known})")
    try:
        return reader(path)
    except MemoryError as exc:  # a size the checks let through but the machine cannot hold
        raise ReadError(path, "out of memory while reading (corrupt sizes, or set MMFUSE_MEMORY_BUDGET lower)") from exc


def check_writable(path, overwrite: bool = False) -> Path:
    """Fail early, before any long computation, when ``path`` cannot be written.

    Raises
    ------
    ValueError
        If no writer handles the suffix.
    FileExistsError
        If ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    if write_format(path) is None:
        writable = ", ".join(writable_suffixes())
        raise ValueError(f"cannot write {path.name}: the output must end in one of {writable}")
    refuse_overwrite(path, overwrite)
    return path


def write(
    path,
    data,
    affine,
    *,
    overwrite: bool = False,
    rgb: bool = False,
    labels: bool = False,
    units: str = "mm",
    provenance: dict | None = None,
    grid=None,
) -> Path:
    """Write an image with its world affine, choosing the format by the file suffix.

    Parameters
    ----------
    path : str or Path
        ``.nii``/``.nii.gz``, ``.mha``/``.mhd``/``.nrrd``, ``.tif``/``.ome.tif``,
        ``.ome.zarr`` or a 2D picture (``.png``/``.jpg``, world = pixels).
    data : ndarray or dask array
        2D or 3D image (RGB last when ``rgb``). Pictures need uint8 (or uint16 PNG) data:
        convert before writing. TIFF and Zarr writers stream a dask array block by block;
        the other formats compute it first.
    affine : ndarray, shape (n + 1, n + 1)
        Index -> world affine (LPS, napari order).
    overwrite, rgb, labels : bool
    units : str
        "mm", "um" or "pixel" (TIFF and Zarr record it).
    provenance : dict, optional
        What produced the image (step, method, ...); stored where the format allows.
    grid : dict or sequence of dict, optional
        The voxel grid of the file the image was resampled onto (its reader's
        ``metadata["grid"]``). When ``data`` lies on it, the file gets exactly that grid:
        the reference file's array order, shape and affine (a NIfTI the same sform and
        data shape, an ITK image the same size, spacing, origin and direction), as
        SimpleITK/ANTs write resampled images. Of several (the grids of all the inputs),
        the first ``data`` lies on is taken; none when it lies on none.

    Returns
    -------
    Path
    """
    import dask.array as da

    path = check_writable(path, overwrite)
    suffix = file_suffix(path)
    fmt = write_format(path)
    if not (isinstance(data, da.Array) and fmt.streamed):
        data = np.asarray(data)
    # nibabel writes a volume's first array axis as the file's fastest one (i); a 2D image becomes one slice
    fastest_first = fmt.name == "nifti" and np.shape(affine) == (4, 4)
    placed = on_file_grid(data, affine, grid, rgb=rgb, fastest_first=fastest_first) if grid else None
    if placed is not None:
        data, affine = placed
    units = units if units in ("mm", "um", "pixel") else "pixel"
    if fmt.name == "nifti":
        from .nifti import write_nifti

        if rgb:
            raise ValueError(f"{path.name}: NIfTI does not hold RGB here; write .png or .tif")
        descrip = f"mmfuse {provenance.get('step', '')} {provenance.get('method', '')}".strip() if provenance else None
        metadata = {"descrip": descrip} if descrip else None
        return write_nifti(path, data, affine, overwrite=overwrite, metadata=metadata, labels=labels)
    if fmt.name == "itk":
        from .itkimage import write_itk_image

        return write_itk_image(path, data, affine, overwrite=overwrite)
    layer_type = "labels" if labels else "image"
    metadata = {"mmfuse": provenance} if provenance else None
    if fmt.name == "ome_zarr":
        from .omezarr import write_ome_zarr

        if rgb:
            data = np.moveaxis(data, -1, 0)
        return write_ome_zarr(
            path, data, affine, overwrite=overwrite, channel_axis=0 if rgb else None, units=units, layer_type=layer_type
        )
    if fmt.name == "picture":
        import imageio.v3 as iio

        if data.ndim - int(rgb) != 2:
            raise ValueError(f"{path.name}: a picture holds one 2D image; write volumes to .nii.gz or .tif")
        if data.dtype not in (np.uint8, np.uint16) or (data.dtype == np.uint16 and suffix != ".png"):
            raise ValueError(f"{path.name}: pictures hold 8-bit (or 16-bit PNG) pixels, not {data.dtype}")
        from .atomic import atomic_output

        with atomic_output(path, overwrite=overwrite) as temporary:
            iio.imwrite(temporary, data, extension=suffix)
        return path
    from .tiff import write_ome_tiff

    return write_ome_tiff(
        path, data, affine, overwrite=overwrite, rgb=rgb, units=units, metadata=metadata, layer_type=layer_type
    )


def as_picture(data, like) -> np.ndarray:
    """Round and clip ``data`` into the integer type ``like`` of the input picture, for PNG/JPEG output.

    Raises
    ------
    ValueError
        If ``like`` is not an 8- or 16-bit unsigned integer type.
    """
    like = np.dtype(like)
    if like not in (np.uint8, np.uint16):
        raise ValueError(f"pictures hold 8- or 16-bit pixels but the input is {like}; write .nii.gz or .tif")
    info = np.iinfo(like)
    return np.clip(np.rint(data), info.min, info.max).astype(like)


def is_picture(path) -> bool:
    """Whether ``path`` names a plain 2D picture format (PNG/JPEG/BMP)."""
    return file_suffix(path) in get_format("picture").suffixes
