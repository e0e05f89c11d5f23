"""Low-level DICOM access shared by the series reader (:mod:`.dicom`) and the slide reader (:mod:`.dicom_slide`).

Besides header helpers, :func:`read_frame_table` locates every frame of a multi-frame
file without reading its pixels, and :func:`decode_frame` reads and decodes one frame.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.encaps import encapsulate
from pydicom.pixels import as_pixel_options, get_decoder, iter_pixels
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

        first = next(generate_frames(dataset.PixelData, number_of_frames=declared_frames))
    except Exception:  # a malformed stream: the decoder reports it
        return
    check_jpeg_size(file, first, int(dataset.Rows), int(dataset.Columns))


def check_jpeg_size(file: Path, frame: bytes, rows: int, columns: int) -> None:
    """Refuse a JPEG-family frame whose own header gives another size than the DICOM header.

    A decoder allocates what the codestream declares: a few corrupt bytes could ask for
    gigabytes. Frames that are not JPEG or JPEG-LS codestreams pass.
    """
    try:
        from pydicom.pixels.utils import _get_jpg_parameters

        params = _get_jpg_parameters(frame)
    except Exception:  # a private helper or a malformed stream: the decoder reports it
        return
    height, width = params.get("height"), params.get("width")
    if height and width and (height, width) != (rows, columns):
        raise ReadError(
            file, f"corrupt: the header declares {rows}x{columns} frames, its JPEG data holds {height}x{width}"
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


_ITEM, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE0DD
_LONG_VRS = (b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN", b"UC", b"UR", b"UT", b"SQ")


@dataclass
class FrameTable:
    """Where each frame of one file's pixel data lies, so that a frame is read and decoded alone.

    Attributes
    ----------
    file : Path
    syntax : UID
        Transfer syntax of the pixel data.
    offsets, lengths : ndarray of int64
        File offset and length of each fragment (native data: one fragment per frame).
    first : ndarray of int64, shape (n_frames + 1,)
        Frame ``k`` is made of fragments ``first[k]:first[k + 1]``.
    options : dict
        Decoding options of one frame (rows, columns, samples, photometric interpretation, ...).
    """

    file: Path
    syntax: UID
    offsets: np.ndarray
    lengths: np.ndarray
    first: np.ndarray
    options: dict

    @property
    def n_frames(self) -> int:
        return len(self.first) - 1


def read_frame_table(file: Path):
    """The header of a multi-frame file and the :class:`FrameTable` of its pixel data; no pixel is read.

    Native pixel data must hold every declared frame. Encapsulated data is scanned once,
    item header by item header; its frames come from the Extended Offset Table, else the
    Basic Offset Table, else one fragment per frame. Every fragment must end inside the file.

    Returns
    -------
    dataset : pydicom.Dataset
        Everything before the pixel data.
    table : FrameTable

    Raises
    ------
    ReadError
        On a corrupt or truncated file, or pixel data whose frames cannot be located.
    """
    with CappedFile(file, "r") as stream:
        try:
            dataset = pydicom.dcmread(stream, stop_before_pixels=True)
        except Exception as error:  # pydicom raises many types on corrupt files
            raise ReadError(file, f"invalid DICOM file ({type(error).__name__}: {error})") from error
        dataset.filename = str(file)
        meta = getattr(dataset, "file_meta", None)
        syntax = UID(str(meta.get("TransferSyntaxUID") or "1.2.840.10008.1.2")) if meta is not None else None
        if syntax is None or syntax.is_deflated or not syntax.is_transfer_syntax:
            raise ReadError(file, f"frames cannot be read one by one in transfer syntax {syntax}")
        order = "<" if syntax.is_little_endian else ">"
        size = os.fstat(stream.fileno()).st_size
        head = stream.read(8)
        if len(head) < 8 or struct.unpack(order + "HH", head[:4]) != (0x7FE0, 0x0010):
            raise ReadError(file, "no pixel data element (the file may be truncated)")
        if syntax.is_implicit_VR:
            (length,) = struct.unpack(order + "L", head[4:])
        elif head[4:6] in _LONG_VRS:
            (length,) = struct.unpack(order + "L", stream.read(4))
        else:
            (length,) = struct.unpack(order + "H", head[6:])
        start = stream.tell()
        n_frames = int(dataset.get("NumberOfFrames") or 1)
        if n_frames < 1:
            raise ReadError(file, f"corrupt: {n_frames} frames declared")
        frame_bytes = declared_frame_bytes(dataset)
        options = {  # the options of one frame, decoded alone
            key: value for key, value in as_pixel_options(dataset).items()
            if key not in ("number_of_frames", "extended_offsets")
        }
        options["pixel_keyword"] = "PixelData"
        if not syntax.is_encapsulated:
            bits = int(dataset.get("BitsAllocated") or 8)
            if bits % 8 or length == 0xFFFFFFFF or min(length, size - start) < n_frames * frame_bytes:
                raise ReadError(
                    file,
                    f"truncated or corrupt: {n_frames} frame(s) of {dataset.Rows}x{dataset.Columns} need "
                    f"{format_bytes(n_frames * frame_bytes)} of pixel data, the file holds "
                    f"{format_bytes(min(length, size - start))}",
                )
            offsets = start + frame_bytes * np.arange(n_frames, dtype=np.int64)
            first = np.arange(n_frames + 1, dtype=np.int64)
            return dataset, FrameTable(file, syntax, offsets, np.full(n_frames, frame_bytes, np.int64), first, options)
        table = _offset_table(file, stream, order, size)
        offsets, lengths = _fragments(file, stream, order, size, n_frames)
    first = _frame_starts(file, dataset, table, offsets - offsets[0], n_frames)
    return dataset, FrameTable(file, syntax, offsets, lengths, first, options)


def _offset_table(file: Path, stream, order: str, size: int) -> np.ndarray:
    """The Basic Offset Table: the first item of encapsulated pixel data (empty in most slides)."""
    head = stream.read(8)
    if len(head) < 8:
        raise ReadError(file, "truncated: the pixel data ends before its offset table")
    group, element, length = struct.unpack(order + "HHL", head)
    tag = group << 16 | element
    if tag != _ITEM or length % 4 or stream.tell() + length > size:
        raise ReadError(file, "corrupt: the encapsulated pixel data does not start with an offset table")
    return np.frombuffer(stream.read(length), dtype=order + "u4").astype(np.int64)


def _fragments(file: Path, stream, order: str, size: int, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """(value offset, length) of each fragment item, scanned up to the sequence delimiter.

    The item headers are read through a buffered file (the stream reads unbuffered):
    thousands of tiles take a fraction of a second.
    """
    offsets, lengths = [], []
    position = stream.tell()
    with open(file, "rb") as buffered:
        while True:
            buffered.seek(position)
            head = buffered.read(8)
            if len(head) < 8:
                break
            group, element, length = struct.unpack(order + "HHL", head)
            tag = group << 16 | element
            if tag == _SEQUENCE_END:
                break
            position += 8
            if tag != _ITEM or length == 0xFFFFFFFF or position + length > size:
                raise ReadError(
                    file, f"truncated or corrupt: pixel data fragment {len(offsets) + 1} at byte {position - 8} "
                    f"{'runs past the end of the file' if tag == _ITEM else 'is not an item'}"
                )
            offsets.append(position)
            lengths.append(length)
            position += length
    if len(offsets) < n_frames:
        raise ReadError(file, f"truncated or corrupt: {n_frames} frames declared, {len(offsets)} fragment(s) found")
    return np.array(offsets, np.int64), np.array(lengths, np.int64)


def _frame_starts(file: Path, dataset, table: np.ndarray, relative: np.ndarray, n_frames: int) -> np.ndarray:
    """Index of each frame's first fragment (and the fragment count at the end).

    ``relative`` are the fragments' item offsets counted from the first fragment's item,
    as offset tables count them.
    """
    n_fragments = len(relative)
    extended = dataset.get("ExtendedOffsetTable")
    if extended is not None:
        table = np.frombuffer(bytes(extended), dtype="<u8").astype(np.int64)
    if n_fragments == n_frames:
        starts = np.arange(n_frames, dtype=np.int64)
    elif n_frames == 1:
        starts = np.zeros(1, np.int64)
    elif len(table) == n_frames:
        starts = np.searchsorted(relative, table)
        if np.any(starts >= n_fragments) or np.any(relative[np.minimum(starts, n_fragments - 1)] != table):
            raise ReadError(file, "corrupt: the pixel data offset table does not point at fragments")
    else:
        raise ReadError(
            file, f"{n_fragments} pixel data fragments for {n_frames} frames and no offset table: frames cannot be told apart"
        )
    return np.append(starts, n_fragments)


def decode_frame(table: FrameTable, index: int) -> np.ndarray:
    """Frame ``index`` of a :class:`FrameTable`, read from its file and decoded alone.

    Returns
    -------
    ndarray, shape (rows, columns[, samples])

    Raises
    ------
    ReadError
        When the frame's bytes are gone or do not decode.
    """
    file = table.file
    parts = []
    try:
        with CappedFile(file, "r") as stream:
            for fragment in range(int(table.first[index]), int(table.first[index + 1])):
                stream.seek(int(table.offsets[fragment]))
                parts.append(stream.read(int(table.lengths[fragment])))
    except OSError as error:
        raise ReadError(file, f"frame {index + 1} cannot be read ({error.strerror or error})") from error
    if sum(map(len, parts)) != table.lengths[table.first[index] : table.first[index + 1]].sum():
        raise ReadError(file, f"truncated: frame {index + 1} runs past the end of the file")
    data = b"".join(parts)
    rows, columns = int(table.options["rows"]), int(table.options["columns"])
    if table.syntax.is_encapsulated:
        check_jpeg_size(file, data, rows, columns)
        data = encapsulate([data])
    try:
        frame, _ = get_decoder(table.syntax).as_array(data, number_of_frames=1, **table.options)
    except Exception as error:  # pydicom and its decoders raise many types
        raise ReadError(file, f"frame {index + 1} cannot be decoded ({type(error).__name__}: {error})") from error
    samples = int(table.options.get("samples_per_pixel") or 1)
    expected = (rows, columns) + ((samples,) if samples > 1 else ())
    if frame.shape != expected:
        raise ReadError(file, f"frame {index + 1} decodes to {frame.shape}, the header declares {expected}")
    return frame
