"""Low-level DICOM access shared by the series reader (:mod:`.dicom`) and the slide reader (:mod:`.dicom_slide`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import iter_pixels
from pydicom.uid import UID

from ._common import CappedFile, ReadError, check_budget, format_bytes

#: DICOM Modality -> the modality name records carry.
MODALITIES = {"PT": "PET", "NM": "SPECT", "SM": "microscopy"}


@dataclass
class SeriesInfo:
    """What the records of one DICOM series share (UID, number, description, modality, patient)."""

    uid: str
    number: int | None
    description: str
    modality: str
    patient_id: str

    @property
    def name(self) -> str:
        """Layer name: the series description, else modality and series number."""
        if self.description:
            return self.description
        return f"{self.modality or 'DICOM'} {self.number if self.number is not None else ''}".strip()


def dcmread(file, **options):
    """``pydicom.dcmread`` through a :class:`~napari_mmfuse.io._common.CappedFile` (the dataset keeps the file name)."""
    with CappedFile(file, "r") as stream:
        dataset = pydicom.dcmread(stream, **options)
    dataset.filename = str(file)
    return dataset


def as_list(value) -> list:
    """A DICOM value as a list: [] for None, one item for a string, else its items."""
    if value is None:
        return []
    if isinstance(value, (str, bytes)):
        return [value]
    return list(value)


def first_item(dataset, keyword):
    """The first item of sequence ``keyword`` of ``dataset``, None when absent or empty."""
    if dataset is None or keyword not in dataset:
        return None
    sequence = dataset[keyword].value
    return sequence[0] if sequence else None


def find_value(groups, datasets, macro: str, keyword: str):
    """A value from a functional-group macro (per-frame, then shared) or else a plain dataset."""
    for group in groups:
        item = first_item(group, macro)
        if item is not None and item.get(keyword) not in (None, ""):
            return item.get(keyword)
    for dataset in datasets:
        if dataset is not None and dataset.get(keyword) not in (None, ""):
            return dataset.get(keyword)
    return None


def floats(value) -> np.ndarray | None:
    """A (multi-)value as a float64 array, None for None."""
    return None if value is None else np.array([float(v) for v in as_list(value)], dtype=np.float64)


def declared_frame_bytes(dataset) -> int:
    """Bytes of one decoded frame as the header declares it (Rows x Columns x samples x bytes per sample)."""
    try:
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        samples = int(dataset.get("SamplesPerPixel") or 1)
        bits = int(dataset.get("BitsAllocated") or 8)
    except (AttributeError, TypeError, ValueError) as error:
        raise ReadError(dataset.filename, f"invalid image size in the header ({error})") from error
    if min(rows, columns, samples, bits) <= 0:
        raise ReadError(dataset.filename, f"invalid image size in the header ({rows}x{columns}, {samples} samples)")
    return rows * columns * samples * max(1, -(-bits // 8))


def check_pixel_header(file: Path, dataset, n_frames: int) -> None:
    """Compare Rows x Columns x frames x bits with the pixel data present, and the decoded size with the budget.

    Native pixel data must hold every declared byte; for JPEG-family encapsulated data the
    first frame's own JPEG header must give the declared Rows and Columns (the
    compressed length bounds nothing exactly).
    """
    if "PixelData" not in dataset:
        raise ReadError(file, "no pixel data element (the file may be truncated)")
    frame_bytes = declared_frame_bytes(dataset)
    declared_frames = int(dataset.get("NumberOfFrames") or 1)
    check_budget(file, n_frames * frame_bytes, f"{n_frames} decoded {dataset.Rows}x{dataset.Columns} frame(s)")
    meta = getattr(dataset, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is None or not UID(syntax).is_encapsulated:
        bits = int(dataset.get("BitsAllocated") or 8)
        pixels = int(dataset.Rows) * int(dataset.Columns) * int(dataset.get("SamplesPerPixel") or 1) * declared_frames
        needed = -(-pixels * bits // 8)
        present = len(dataset.PixelData)
        if present < needed:
            raise ReadError(
                file,
                f"truncated or corrupt: {declared_frames} frame(s) of {dataset.Rows}x{dataset.Columns} need "
                f"{format_bytes(needed)} of pixel data, the file holds {format_bytes(present)}",
            )
        return
    if not str(syntax).startswith("1.2.840.10008.1.2.4."):
        return
    try:
        from pydicom.encaps import generate_frames
        from pydicom.pixels.utils import _get_jpg_parameters

        first = next(generate_frames(dataset.PixelData, number_of_frames=declared_frames))
        params = _get_jpg_parameters(first)
    except Exception:  # a private helper or a malformed stream: the decoder reports it
        return
    height, width = params.get("height"), params.get("width")
    if height and width and (height, width) != (int(dataset.Rows), int(dataset.Columns)):
        raise ReadError(
            file,
            f"corrupt: the header declares {dataset.Rows}x{dataset.Columns} frames, its JPEG data holds {height}x{width}",
        )


def decode_frames(file: Path, indices: list[int]):
    """Decoded frames ``indices`` (sorted) of one file, as ReadError on any failure."""
    try:
        dataset = dcmread(file)
    except Exception as error:  # pydicom raises many types on corrupt files
        raise ReadError(file, f"invalid DICOM file ({type(error).__name__}: {error})") from error
    check_pixel_header(file, dataset, len(indices))
    try:
        frames = list(iter_pixels(dataset, indices=indices))
    except Exception as error:  # pydicom and its decoders raise many types
        raise ReadError(file, f"pixel data cannot be read ({type(error).__name__}: {error})") from error
    if len(frames) != len(indices):
        raise ReadError(file, f"expected {len(indices)} frame(s), decoded {len(frames)}")
    return frames
