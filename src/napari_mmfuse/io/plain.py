"""PNG, JPEG and BMP reader: pixels only, world = pixel coordinates."""

from __future__ import annotations

import warnings
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from ._common import CappedFile, ImageRecord, ReadError, check_budget, format_bytes

def _name(path: Path) -> str:
    """Layer name: the file stem, prefixed by the folder when the stem is only a number ("MRI 11", "PET 11")."""
    return f"{path.parent.name} {path.stem}" if path.stem.isdigit() and path.parent.name else path.stem


def _achromatic(rgb: np.ndarray) -> bool:
    """Whether an (H, W, 3) picture has R == G == B at every pixel (compared row block by row block)."""
    step = max(1, (1 << 20) // max(1, rgb.shape[1]))
    for start in range(0, rgb.shape[0], step):
        block = rgb[start : start + step]
        if not (np.array_equal(block[..., 0], block[..., 1]) and np.array_equal(block[..., 0], block[..., 2])):
            return False
    return True


#: Deflate expands at most about 1032-fold: a PNG whose pixels would be larger than this
#: many times its file size cannot hold them.
PNG_MAX_RATIO = 1100


def _check_picture_size(path: Path) -> None:
    """The dimensions in the picture's header against the memory budget (and, for PNG, the file size), before decoding."""
    from PIL import Image

    try:
        with CappedFile(path, "r") as stream, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own checks follow
            with Image.open(stream) as picture:
                width, height = picture.size
                bands = len(picture.getbands())
                bits = {"I;16": 16, "I;16B": 16, "I": 32, "F": 32, "1": 8}.get(picture.mode, 8)
                kind = picture.format
    except Exception as exc:  # Pillow raises OSError, SyntaxError, DecompressionBombError, ...
        raise ReadError(path, f"not a readable picture ({type(exc).__name__}: {exc})") from exc
    nbytes = float(width) * height * max(bands, 1) * bits / 8
    check_budget(path, 2 * nbytes, f"the {width}x{height} picture")
    if kind == "PNG" and nbytes > PNG_MAX_RATIO * path.stat().st_size:
        raise ReadError(
            path,
            f"truncated or corrupt: the header declares {width}x{height} pixels ({format_bytes(nbytes)}), more "
            f"than a {format_bytes(path.stat().st_size)} PNG can hold",
        )


def read_plain(path) -> list[ImageRecord]:
    """Read a PNG, JPEG or BMP picture with imageio.

    These formats carry no physical calibration, so world = pixel coordinates
    (identity affine, units "pixel"). Grey pictures give a 2D array; RGB/RGBA give
    ``rgb=True`` (an alpha channel that is constant over the picture is dropped,
    grey-with-alpha is expanded to RGBA when its alpha varies). A grey picture stored
    as RGB (R == G == B at every pixel, exactly; constant or no alpha) is read as the
    grey 2D image it is, ``rgb=False`` and ``metadata["stored_as"] = "rgb"``: MRI/CT
    slices are often saved that way and must fuse, filter and measure as grey.

    Parameters
    ----------
    path : str or Path
        The file.

    Returns
    -------
    list of ImageRecord
        One record, named by the file stem (``"<folder> <stem>"`` when the stem is a bare
        number, as in image pairs kept in sibling folders); ``metadata`` holds ``source_path``, ``units`` ("pixel"),
        ``pixel_size_um`` (None) and ``format`` (the file suffix without dot).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ReadError
        If the file cannot be decoded, or decodes to something other than one grey,
        grey+alpha, RGB or RGBA picture.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such picture file: {path}")
    _check_picture_size(path)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Image size", Warning)  # Pillow's bomb warning: the budget was checked
            with CappedFile(path, "r") as stream:
                data = np.asarray(iio.imread(stream, extension=path.suffix.lower()))
    except Exception as exc:  # imageio/Pillow raise OSError, ValueError, SyntaxError, ...
        raise ReadError(path, f"not a readable picture ({type(exc).__name__}: {exc})") from exc
    if data.ndim == 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 3 and data.shape[-1] in (2, 4):
        alpha = data[..., -1]
        if alpha.min() == alpha.max():
            data = data[..., :-1]
        elif data.shape[-1] == 2:
            data = np.concatenate([np.repeat(data[..., :1], 3, axis=-1), data[..., 1:]], axis=-1)
    stored_as = None
    if data.ndim == 3 and data.shape[-1] == 3 and _achromatic(data):
        data, stored_as = np.ascontiguousarray(data[..., 0]), "rgb"
    if data.ndim == 3 and data.shape[-1] == 1:
        data = data[..., 0]
    rgb = data.ndim == 3 and data.shape[-1] in (3, 4)
    if data.ndim != 2 and not rgb:
        raise ReadError(path, f"expected one grey or colour picture, decoded an array of shape {data.shape}")
    metadata = {
        "source_path": str(path),
        "units": "pixel",
        "pixel_size_um": None,
        "format": path.suffix.lower().lstrip("."),
    }
    if stored_as:
        metadata["stored_as"] = stored_as
    record = ImageRecord(
        data=data,
        affine=np.eye(3),
        name=_name(path),
        units="pixel",
        metadata=metadata,
        rgb=rgb,
        axis_labels=("y", "x"),
    )
    return [record]
