"""The one list of file formats napari-mmfuse reads and writes.

Every other place that needs a suffix list (the reader dispatch, the writers, the
napari manifest ``napari.yaml``, checked by ``tests/test_formats.py``) takes it from
:data:`FORMATS`. This module imports only the standard library, so napari can ask
which files we open without loading any reader.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from pathlib import Path


@dataclass(frozen=True)
class Format:
    """One file format.

    Attributes
    ----------
    name : str
        Identifier; the napari writer commands are ``write_<name>_<layer type>``.
    label : str
        Name shown to users (napari writer display name).
    suffixes : tuple of str
        Lower-case suffixes the reader opens, longest first (``".nii.gz"`` before ``".nii"``).
    reader : str
        ``"module:function"`` of the reader (path -> list of ImageRecord); "" when not read.
    writes : tuple of str
        Suffixes :func:`napari_mmfuse.io.write` writes in this format.
    layer_types : tuple of str
        napari layer types the napari writer contribution saves; () for no napari writer.
    napari_extensions : tuple of str
        Suffixes offered by the napari writer (default: ``writes``).
    sniff : str
        ``"module:function"`` recognising the format by content (path -> bool), "" for none.
    sniff_only : bool
        The suffix alone does not decide (the sniffer must agree).
    only_folders : bool
        The sniffer applies to folders only.
    streamed : bool
        The writer takes a dask array as it is and computes it block by block.
    """

    name: str
    label: str
    suffixes: tuple[str, ...] = ()
    reader: str = ""
    writes: tuple[str, ...] = ()
    layer_types: tuple[str, ...] = ()
    napari_extensions: tuple[str, ...] | None = None
    sniff: str = ""
    sniff_only: bool = False
    only_folders: bool = False
    streamed: bool = False

    @property
    def writer_extensions(self) -> tuple[str, ...]:
        """Suffixes offered by the napari writer contribution."""
        return self.writes if self.napari_extensions is None else self.napari_extensions

    def load_reader(self):
        """Import and return the reader function."""
        return _load(self.reader)

    def load_sniffer(self):
        """Import and return the content check, or None when the format has none."""
        return _load(self.sniff) if self.sniff else None


def _load(target: str):
    module, _, function = target.partition(":")
    return getattr(import_module(module), function)


_IO = "napari_mmfuse.io"

#: Every format, in the order the reader dispatch tries them (content checks last).
FORMATS: tuple[Format, ...] = (
    Format(
        "nifti", "NIfTI", (".nii.gz", ".nii"), f"{_IO}.nifti:read_nifti",
        writes=(".nii.gz", ".nii"), layer_types=("image", "labels"),
    ),
    Format(
        "itk", "MetaImage/NRRD", (".mha", ".mhd", ".nrrd", ".nhdr"), f"{_IO}.itkimage:read_itk_image",
        writes=(".mha", ".mhd", ".nrrd"),
    ),
    Format(
        "ome_tiff", "OME-TIFF", (".ome.tiff", ".ome.tif"), f"{_IO}.tiff:read_tiff",
        writes=(".ome.tif", ".ome.tiff"), layer_types=("image", "labels"), streamed=True,
    ),
    Format(
        "tiff", "TIFF/SVS", (".tiff", ".tif", ".svs", ".qptiff", ".ndpi", ".btf"), f"{_IO}.tiff:read_tiff",
        writes=(".tif", ".tiff"), streamed=True,
    ),
    Format(
        "picture", "PNG/JPEG", (".png", ".jpg", ".jpeg", ".bmp"), f"{_IO}.plain:read_plain",
        writes=(".png", ".jpg", ".jpeg"),
    ),
    Format(
        "ome_zarr", "OME-Zarr", (".ome.zarr", ".zarr"), f"{_IO}.omezarr:read_ome_zarr",
        writes=(".ome.zarr", ".zarr"), layer_types=("image", "labels"), napari_extensions=(".ome.zarr",),
        sniff=f"{_IO}.omezarr:is_ome_zarr", sniff_only=True, only_folders=True, streamed=True,
    ),
    Format(
        "dicom", "DICOM", (".dcm", ".dicom", ".ima"), f"{_IO}.dicom:read_dicom",
        sniff=f"{_IO}.dicom:is_dicom",
    ),
)

#: Suffixes made of two parts, kept whole by :func:`file_suffix`.
DOUBLE_SUFFIXES = tuple(
    sorted({s for f in FORMATS for s in f.suffixes + f.writes if s.count(".") > 1}, key=len, reverse=True)
)


def get_format(name: str) -> Format:
    """The format called ``name``.

    Raises
    ------
    KeyError
        If no format has that name.
    """
    for fmt in FORMATS:
        if fmt.name == name:
            return fmt
    raise KeyError(f"no format {name!r}; known: {', '.join(f.name for f in FORMATS)}")


def suffixes(*names: str) -> tuple[str, ...]:
    """Read suffixes of the formats ``names``, in the given order."""
    return tuple(s for name in names for s in get_format(name).suffixes)


def file_suffix(path) -> str:
    """Lower-case suffix of a file name, double suffixes such as ".nii.gz" and ".ome.tif" kept whole."""
    path = Path(path)
    name = path.name.lower()
    for double in DOUBLE_SUFFIXES:
        if name.endswith(double):
            return double
    return path.suffix.lower()


def stem(path, known: tuple[str, ...]) -> str:
    """File name without the first of the ``known`` suffixes it ends with (any case), else without its suffix."""
    path = Path(path)
    for suffix in known:
        if path.name.lower().endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def read_format(path) -> Format | None:
    """The format whose suffix ``path`` has, None when no reader claims the suffix."""
    suffix = file_suffix(path)
    return next((f for f in FORMATS if f.reader and suffix in f.suffixes), None)


def write_format(path) -> Format | None:
    """The format :func:`napari_mmfuse.io.write` uses for ``path``, None when none writes it."""
    suffix = file_suffix(path)
    return next((f for f in FORMATS if suffix in f.writes), None)


def writable_suffixes() -> tuple[str, ...]:
    """Every suffix :func:`napari_mmfuse.io.write` accepts."""
    return tuple(s for f in FORMATS for s in f.writes)


def reader_patterns() -> list[str]:
    """napari reader ``filename_patterns``: every read suffix, in lower and upper case."""
    return [f"*{case}" for f in FORMATS for s in f.suffixes for case in (s, s.upper())]


def napari_writers() -> list[dict]:
    """napari writer contributions: one per format and layer type (command id, layer type, extensions, name)."""
    return [
        {
            "command": f"napari-mmfuse.write_{f.name}_{layer}",
            "layer_types": [layer],
            "filename_extensions": list(f.writer_extensions),
            "display_name": f.label if layer == "image" else f"{f.label} {layer}",
        }
        for f in FORMATS
        for layer in f.layer_types
    ]
