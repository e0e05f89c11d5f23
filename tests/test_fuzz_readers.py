"""Fuzz the readers: valid small files of every format we read, then corrupted.

Each format is written with our writers or its own library, then truncated at several
offsets, has bytes flipped (seeded), gets a header that lies about its size (huge, and
large but under the memory budget), or is emptied. Every read must either succeed or
raise :class:`~napari_mmfuse.io.ReadError` with a one-line message: no other exception,
no allocation beyond :data:`PEAK_BYTES` (``tracemalloc``), no hang (``timeout``). A few
lying files also go through ``mmfuse info`` in a subprocess whose address space is
capped, which must fail with one line on stderr and no traceback.
"""

from __future__ import annotations

import gzip
import json
import resource
import shutil
import struct
import subprocess
import sys
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import tifffile
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from napari_mmfuse.io import ReadError, memory_budget, read, write
from napari_mmfuse.io._common import materialize
from napari_mmfuse.io.transforms import read_displacement_field

#: Most bytes Python/numpy may allocate while reading one corrupted small file.
PEAK_BYTES = 64 * 2**20
#: Address space of the ``mmfuse info`` subprocesses.
CLI_ADDRESS_SPACE = 2 * 2**30
SEED = 17
CT_SOP = "1.2.840.10008.5.1.4.1.1.2"
WSI_SOP = "1.2.840.10008.5.1.4.1.1.77.1.6"


# --- valid files ---------------------------------------------------------------------------


def _pixels(shape, dtype=np.int16) -> np.ndarray:
    return (np.random.default_rng(SEED).random(shape) * 200).astype(dtype)


def _nifti(path: Path) -> None:
    nib.save(nib.Nifti1Image(_pixels((6, 7, 5)), np.diag([1.5, 1.0, 2.0, 1.0])), str(path))


def _dicom_dataset(path: Path, sop_class: str) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    return ds


def _dicom(path: Path) -> None:
    ds = _dicom_dataset(path, CT_SOP)
    ds.Modality = "CT"
    ds.Rows, ds.Columns = 16, 20
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.ImagePositionPatient = [0.0, 0.0, 0.0]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing, ds.SliceThickness = [0.5, 0.5], 1.0
    ds.PixelData = _pixels((16, 20)).tobytes()
    ds.save_as(path, enforce_file_format=True)


def _slide(path: Path) -> None:
    """A 32x48 RGB whole-slide image of 16x16 tiles with per-frame positions (TILED_SPARSE)."""
    tile, rows, cols = 16, 32, 48
    truth = _pixels((rows, cols, 3), np.uint8)
    ds = _dicom_dataset(path, WSI_SOP)
    ds.Modality, ds.ImageType = "SM", ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.TotalPixelMatrixRows, ds.TotalPixelMatrixColumns = rows, cols
    ds.DimensionOrganizationType = "TILED_SPARSE"
    groups, frames = [], []
    for r0 in range(0, rows, tile):
        for c0 in range(0, cols, tile):
            group, position = Dataset(), Dataset()
            position.RowPositionInTotalImagePixelMatrix = r0 + 1
            position.ColumnPositionInTotalImagePixelMatrix = c0 + 1
            group.PlanePositionSlideSequence = Sequence([position])
            groups.append(group)
            frames.append(truth[r0 : r0 + tile, c0 : c0 + tile])
    ds.PerFrameFunctionalGroupsSequence = Sequence(groups)
    ds.NumberOfFrames = len(frames)
    ds.Rows = ds.Columns = tile
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.stack(frames).tobytes()
    ds.save_as(path, enforce_file_format=True)


def _tiff_strips(path: Path) -> None:
    tifffile.imwrite(path, _pixels((40, 56), np.uint8))


def _tiff_tiles(path: Path) -> None:
    tifffile.imwrite(path, _pixels((40, 56), np.uint16), tile=(16, 16), compression="zlib")


def _ome_tiff(path: Path) -> None:
    write(path, _pixels((3, 40, 56), np.uint16), np.diag([2.0, 0.5, 0.5, 1.0]), units="um")


def _itk(compressed: bool) -> Callable[[Path], None]:
    def writer(path: Path) -> None:
        image = sitk.GetImageFromArray(_pixels((5, 12, 14)))
        image.SetSpacing((0.5, 0.5, 2.0))
        sitk.WriteImage(image, str(path), compressed)

    return writer


def _png(path: Path) -> None:
    import imageio.v3 as iio

    iio.imwrite(path, _pixels((40, 56, 3), np.uint8))


#: name -> (file name, writer)
FORMATS: dict[str, tuple[str, Callable[[Path], None]]] = {
    "nii": ("img.nii", _nifti),
    "nii.gz": ("img.nii.gz", _nifti),
    "dicom": ("ct.dcm", _dicom),
    "dicom-wsi": ("slide.dcm", _slide),
    "tiff": ("strips.tif", _tiff_strips),
    "tiff-tiled": ("tiles.tif", _tiff_tiles),
    "ome-tiff": ("img.ome.tif", _ome_tiff),
    "mha": ("img.mha", _itk(False)),
    "mha-zlib": ("packed.mha", _itk(True)),
    "nrrd": ("img.nrrd", _itk(False)),
    "nrrd-gzip": ("packed.nrrd", _itk(True)),
    "png": ("img.png", _png),
}


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> dict[str, bytes]:
    """Each format's valid file, as bytes (each is checked to read)."""
    folder = tmp_path_factory.mktemp("originals")
    out = {}
    for key, (name, writer) in FORMATS.items():
        path = folder / key / name
        path.parent.mkdir()
        writer(path)
        assert read(path), key
        out[key] = path.read_bytes()
    return out


# --- lying headers -------------------------------------------------------------------------


def _lie_nifti(raw: bytes, n: int) -> bytes:
    gz = raw[:2] == b"\x1f\x8b"
    data = bytearray(gzip.decompress(raw) if gz else raw)
    struct.pack_into("<3h", data, 42, n, n, n)  # dim[1..3] of the NIfTI-1 header
    return gzip.compress(bytes(data)) if gz else bytes(data)


def _lie_dicom(raw: bytes, n: int, tmp: Path) -> bytes:
    path = tmp / "lie_source.dcm"
    path.write_bytes(raw)
    ds = pydicom.dcmread(path)
    if "TotalPixelMatrixRows" in ds:
        ds.TotalPixelMatrixRows = ds.TotalPixelMatrixColumns = n
    else:
        ds.Rows = ds.Columns = n
    ds.save_as(path)
    data = path.read_bytes()
    path.unlink()
    return data


def _lie_tiff(raw: bytes, n: int, tmp: Path) -> bytes:
    path = tmp / "lie_source.tif"
    path.write_bytes(raw)
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        places = [(tags[name].valueoffset, tags[name].dtype) for name in ("ImageWidth", "ImageLength")]
    path.unlink()
    data = bytearray(raw)
    for offset, dtype in places:
        struct.pack_into("<I" if dtype == 4 else "<H", data, offset, n if dtype == 4 else min(n, 65535))
    return bytes(data)


def _lie_itk(raw: bytes, n: int) -> bytes:
    if raw.startswith(b"NRRD"):
        end = raw.index(b"\n\n")
        header = raw[:end].replace(b"sizes: 14 12 5", f"sizes: {n} {n} {n}".encode())
        return header + raw[end:]
    return raw.replace(b"DimSize = 14 12 5", f"DimSize = {n} {n} {n}".encode())


def _lie_png(raw: bytes, n: int) -> bytes:
    data = bytearray(raw)
    struct.pack_into(">II", data, 16, n, n)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))  # a valid IHDR checksum
    return bytes(data)


def lie(key: str, raw: bytes, n: int, tmp: Path) -> bytes:
    """``raw`` with its header declaring ``n`` along every spatial axis."""
    if key.startswith("nii"):
        return _lie_nifti(raw, n)
    if key.startswith("dicom"):
        return _lie_dicom(raw, n, tmp)
    if "tif" in key:
        return _lie_tiff(raw, n, tmp)
    if key.startswith(("mha", "nrrd")):
        return _lie_itk(raw, n)
    return _lie_png(raw, n)


#: (name, n): a 3D header of ``n`` per axis; a 2D one for slides, TIFF and PNG.
LIES = {"huge": 30000, "large": 1400}


# --- corruptions ---------------------------------------------------------------------------


def corrupt(key: str, raw: bytes, how: str, tmp: Path) -> bytes:
    """One corruption of ``raw``: "empty", "cut<fraction>", "cutat<bytes>", "flip<seed>", "lie-<size>"."""
    if how == "empty":
        return b""
    if how.startswith("cutat"):
        return raw[: int(how[5:])]
    if how.startswith("cut"):
        return raw[: int(len(raw) * float(how[3:]))]
    if how.startswith("flip"):
        rng = np.random.default_rng(int(how[4:]))
        data = bytearray(raw)
        # half the flips in the first 512 bytes (the header), the rest anywhere
        spots = np.concatenate([rng.integers(0, min(512, len(data)), 4), rng.integers(0, len(data), 4)])
        for spot in spots:
            data[spot] ^= int(rng.integers(1, 256))
        return bytes(data)
    if how.startswith("lie-"):
        size = LIES[how[4:]]
        two_d = key in ("dicom-wsi", "png") or "tif" in key
        return lie(key, raw, size * 20 if two_d and how == "lie-large" else size, tmp)
    raise ValueError(how)


CORRUPTIONS = [
    "empty", "cutat8", "cutat200", "cut0.5", "cut0.9", "cut0.99",
    *(f"flip{seed}" for seed in range(1, 13)),
    "flip38", "flip57", "flip165", "flip284",  # found by a longer sweep: TIFF tile size, PNG chunk, NIfTI unit, MHA crash
    "lie-huge", "lie-large",
]


def check_read(path: Path, reader=read) -> object:
    """Read ``path`` under tracemalloc: a result or a one-line ReadError, and a bounded peak."""
    tracemalloc.start()
    try:
        try:
            result = reader(path)
        except ReadError as error:
            message = str(error)
            assert "\n" not in message.strip(), message
            assert str(path.name) in message
            return error
        for record in result if isinstance(result, list) else []:
            level0 = record.level0
            assert len(level0.shape) >= 2
            if level0.size * level0.dtype.itemsize < 16 * 2**20:
                np.asarray(level0)
        return result
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < PEAK_BYTES, f"{path.name}: reading allocated {peak / 2**20:.0f} MB"


@pytest.mark.timeout(20)
@pytest.mark.parametrize("how", CORRUPTIONS)
@pytest.mark.parametrize("key", list(FORMATS))
def test_corrupted_file_reads_or_refuses(key, how, originals, tmp_path):
    name = FORMATS[key][0]
    path = tmp_path / key / name  # alone in its folder: DICOM reads the file's whole series
    path.parent.mkdir()
    path.write_bytes(corrupt(key, originals[key], how, tmp_path))
    outcome = check_read(path)
    # pixels last in the file: any cut loses some (TIFF and PNG may end in metadata)
    pixels_last = key.startswith(("nii", "dicom", "mha", "nrrd"))
    if how in ("empty", "cutat8", "lie-huge") or (how.startswith("cut") and pixels_last):
        assert isinstance(outcome, ReadError), f"{key} {how}: read as {outcome}"


def test_gzip_nrrd_declaring_more_than_it_holds_is_refused_before_allocating(originals, tmp_path):
    """SimpleITK allocates what a gzip NRRD declares before inflating it (seconds for 1400^3, at
    times past the test timeout): the stream's inflated size is checked first."""
    path = tmp_path / "lie.nrrd"
    path.write_bytes(corrupt("nrrd-gzip", originals["nrrd-gzip"], "lie-large", tmp_path))
    outcome = check_read(path)
    assert isinstance(outcome, ReadError) and "1400x1400x1400" in str(outcome), outcome


# --- OME-Zarr ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ome_zarr(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("zarr") / "img.ome.zarr"
    write(path, _pixels((2, 40, 56), np.uint16), np.diag([1.0, 0.5, 0.5, 1.0]), units="um")
    assert read(path)
    return path


def _zarr_files(root: Path) -> tuple[Path, list[Path]]:
    array_meta = next(p for p in sorted(root.rglob("*")) if p.name in (".zarray", "zarr.json") and p.parent != root)
    chunks = [p for p in sorted(array_meta.parent.rglob("*")) if p.is_file() and not p.name.startswith((".", "zarr."))]
    return array_meta, chunks


def _set_shape(meta: Path, shape: list[int]) -> None:
    content = json.loads(meta.read_text())
    content["shape"] = shape
    meta.write_text(json.dumps(content))


ZARR_CORRUPTIONS = [
    "shape-huge", "shape-large", "meta-empty", "meta-garbage", "attrs-garbage",
    "chunk-empty", "chunk-cut", "chunk-flip", "chunk-missing",
]


@pytest.mark.timeout(20)
@pytest.mark.parametrize("how", ZARR_CORRUPTIONS)
def test_corrupted_ome_zarr_reads_or_refuses(how, ome_zarr, tmp_path, monkeypatch):
    monkeypatch.setenv("MMFUSE_MEMORY_BUDGET", "1G")  # "shape-large" is over it on any machine
    path = tmp_path / "img.ome.zarr"
    shutil.copytree(ome_zarr, path)
    meta, chunks = _zarr_files(path)
    if how == "shape-huge":
        _set_shape(meta, [10**7, 10**7, 10**7])
    elif how == "shape-large":
        _set_shape(meta, [2, 40000, 40000])  # 6 GB: under a large budget, but its chunks are absent
    elif how == "meta-empty":
        meta.write_bytes(b"")
    elif how == "meta-garbage":
        meta.write_bytes(b"{not json")
    elif how == "attrs-garbage":
        (path / ".zattrs" if (path / ".zattrs").exists() else path / "zarr.json").write_bytes(b"\x00\xff")
    elif how == "chunk-empty":
        chunks[0].write_bytes(b"")
    elif how == "chunk-cut":
        chunks[0].write_bytes(chunks[0].read_bytes()[:7])
    elif how == "chunk-flip":
        data = bytearray(chunks[0].read_bytes())
        for spot in np.random.default_rng(SEED).integers(0, len(data), 8):
            data[spot] ^= 0xA5
        chunks[0].write_bytes(bytes(data))
    elif how == "chunk-missing":
        chunks[0].unlink()
    try:
        outcome = check_read(path)
    except Exception as error:  # corrupt chunks surface when the lazy array is computed
        assert how.startswith("chunk"), f"{how}: {type(error).__name__}: {error}"
        return
    if how in ("shape-huge", "shape-large", "meta-empty", "meta-garbage", "attrs-garbage"):
        assert isinstance(outcome, ReadError), f"{how}: read as {outcome}"


def test_lazy_zarr_level_materializes_only_under_the_budget(ome_zarr, monkeypatch):
    (record,) = read(ome_zarr)
    assert materialize(record.level0, ome_zarr).shape == (2, 40, 56)
    monkeypatch.setenv("MMFUSE_MEMORY_BUDGET", "4K")
    with pytest.raises(ReadError, match="budget"):
        materialize(record.level0, ome_zarr)


@pytest.mark.parametrize(
    ("text", "expected"), [("4096", 4096), ("512M", 512 * 2**20), ("4G", 4 * 2**30), ("1.5 GiB", int(1.5 * 2**30))]
)
def test_memory_budget_from_the_environment(text, expected, monkeypatch):
    monkeypatch.setenv("MMFUSE_MEMORY_BUDGET", text)
    assert memory_budget() == expected


def test_memory_budget_default_is_half_the_available_memory(monkeypatch):
    monkeypatch.delenv("MMFUSE_MEMORY_BUDGET", raising=False)
    assert 0 < memory_budget() < 2**50
    monkeypatch.setenv("MMFUSE_MEMORY_BUDGET", "lots")
    with pytest.raises(ValueError, match="MMFUSE_MEMORY_BUDGET"):
        memory_budget()


# --- displacement fields -------------------------------------------------------------------


@pytest.mark.timeout(20)
@pytest.mark.parametrize("how", ["cut0.5", "cut0.9", "cutat200", "flip1", "lie-huge", "lie-large"])
def test_corrupted_displacement_field(how, tmp_path):
    source = tmp_path / "field.nii.gz"
    field = sitk.GetImageFromArray(np.zeros((6, 7, 8, 3), np.float32), isVector=True)
    sitk.WriteImage(field, str(source))
    path = tmp_path / "bad" / "field.nii.gz"
    path.parent.mkdir()
    path.write_bytes(corrupt("nii.gz", source.read_bytes(), how, tmp_path))
    outcome = check_read(path, read_displacement_field)
    if how.startswith(("cut0", "lie")):  # cut at 200 bytes, zeros compress whole: only the gzip trailer is lost
        assert isinstance(outcome, ReadError)
        assert "truncated or corrupt" in str(outcome) or "budget" in str(outcome)


# --- the command line ----------------------------------------------------------------------


def _cap_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CLI_ADDRESS_SPACE, CLI_ADDRESS_SPACE))


@pytest.mark.timeout(120)
def test_cli_info_refuses_lying_files_in_one_line(originals, tmp_path):
    """``mmfuse info`` on lying and truncated files, its address space capped: rc 1, one line, no traceback."""
    cases = [("nii.gz", "lie-large"), ("nii", "lie-huge"), ("dicom-wsi", "lie-large"), ("tiff-tiled", "lie-huge"),
             ("mha", "lie-large"), ("png", "lie-large"), ("nrrd-gzip", "cut0.5")]
    paths = []
    for key, how in cases:
        path = tmp_path / f"{key}-{how}" / FORMATS[key][0]
        path.parent.mkdir()
        path.write_bytes(corrupt(key, originals[key], how, tmp_path))
        paths.append(path)
    # one interpreter for all the files: each start costs seconds on a busy machine
    script = (
        "import sys\nfrom napari_mmfuse.cli import main\n"
        "for p in sys.argv[1:]:\n"
        "    rc = main(['info', p])\n"
        "    print(f'rc={rc}', flush=True)\n"
        "    sys.stderr.write('--end--\\n'); sys.stderr.flush()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, *map(str, paths)],
        capture_output=True, text=True, timeout=110, preexec_fn=_cap_address_space,
    )
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["rc=1"] * len(paths), done.stdout
    messages = done.stderr.split("--end--\n")[:-1]
    for (key, how), message in zip(cases, messages, strict=True):
        lines = message.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mmfuse info: error: cannot read"), (key, how, message)
