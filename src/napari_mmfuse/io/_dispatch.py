"""Pick the reader for a path by its name (and, for folders, by what they hold)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ._common import ImageRecord, ReadError

_NIFTI = (".nii", ".nii.gz")
_ITK = (".mha", ".mhd", ".nrrd", ".nhdr")
_TIFF = (".tif", ".tiff", ".svs", ".qptiff", ".ndpi", ".btf")
_PLAIN = (".png", ".jpg", ".jpeg", ".bmp")
_DICOM = (".dcm", ".dicom", ".ima")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for double in (".nii.gz", ".ome.tiff", ".ome.tif", ".ome.zarr"):
        if name.endswith(double):
            return double
    return path.suffix.lower()


def reader_for(path) -> Callable[[Path], list[ImageRecord]] | None:
    """Return the function that reads ``path``, or None when no reader of ours handles it.

    Never raises and never reads more than a file header.
    """
    try:
        path = Path(path)
        suffix = _suffix(path)
        if suffix in _NIFTI:
            from .nifti import read_nifti

            return read_nifti
        if suffix in _ITK:
            from .itkimage import read_itk_image

            return read_itk_image
        if suffix in (".ome.tif", ".ome.tiff") or suffix in _TIFF:
            from .tiff import read_tiff

            return read_tiff
        if suffix in _PLAIN:
            from .plain import read_plain

            return read_plain
        if suffix in (".zarr", ".ome.zarr") or path.is_dir():
            from .omezarr import is_ome_zarr, read_ome_zarr

            if is_ome_zarr(path):
                return read_ome_zarr
        from .dicom import is_dicom, read_dicom

        if suffix in _DICOM or is_dicom(path):
            return read_dicom
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
        raise ReadError(path, "not a format napari-mmfuse reads (NIfTI, DICOM, MHA/NRRD, TIFF/SVS, OME-Zarr, PNG/JPEG)")
    return reader(path)
