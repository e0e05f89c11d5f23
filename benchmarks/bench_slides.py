"""DICOM whole-slide benchmark: a large pyramid opened lazily (ours), by wsidicom, and decoded whole.

Data: a synthetic VL Whole Slide Microscopy pyramid of ``--size`` x ``--size`` RGB pixels
(16384 by default; levels 1, 1/4, 1/16 of it), JPEG baseline tiles of 256 x 256 in TILED_FULL
order, written tile by tile into a temporary folder (the slide is never whole in memory).
Its pixels are a smooth colour pattern with noise, computed from each tile's place.

Each method runs in its own process, after its imports, and does what a viewer does on
opening a slide: open the series, read the whole coarsest level (the overview) and one
1024 x 1024 region of level 0 at the slide's centre (16 tiles).

* ours: ``napari_mmfuse.io.read`` on the folder, then ``np.asarray`` on slices of its dask
  levels (dask's threaded scheduler, default workers);
* wsidicom 0.36: ``WsiDicom.open`` and ``read_region`` (the maintained reference reader);
* full decode: what the reader did before (pydicom ``dcmread`` and ``iter_pixels`` over every
  frame of level 0, assembled into the whole matrix), then the same region sliced from it.

Reported per method: seconds to open, to read the overview and the region, and the
resident-set peak (``ru_maxrss``) above the RSS after the imports (dask's first compute,
which imports distributed, is done before them too). A second process per method measures
the tracemalloc peak (Python and numpy allocations) of the same steps; the times come from
the first, untraced one. Accuracy: our region and overview against the full decode's
(pydicom decodes both: they must be equal) and against wsidicom's (its own JPEG decoder:
mean absolute difference).

Usage::

    nice -n 10 python benchmarks/bench_slides.py [--size 16384] [--quick] [--keep DIR]
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import resource
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
TILE = 256
REGION = 1024
LEVEL_STEP = 4
SPACING_UM = 0.25


def tile_pixels(row: int, col: int, factor: int, rng: np.random.Generator) -> np.ndarray:
    """The pattern on the tile whose first pixel is (row, col) of a level downsampled ``factor`` times."""
    y = (row + np.arange(TILE))[:, None] * float(factor)
    x = (col + np.arange(TILE))[None, :] * float(factor)
    red = 128 + 100 * np.sin(y / 370.0) * np.cos(x / 530.0)
    green = 128 + 120 * np.sin(x / 2900.0 + y / 4100.0)
    blue = 128 + 120 * np.cos(y / 3300.0)
    rgb = np.stack(np.broadcast_arrays(red, green, blue), axis=-1) + rng.normal(0, 6, (TILE, TILE, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def write_level(path: Path, size: int, factor: int, uids: tuple[str, str]) -> None:
    """One pyramid level: the header through pydicom, then the encapsulated JPEG tiles appended one by one."""
    from PIL import Image
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import JPEGBaseline8Bit, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = WSI_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = WSI_SOP_CLASS, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uids
    ds.FrameOfReferenceUID = generate_uid()
    ds.PatientID, ds.Modality, ds.SeriesNumber, ds.SeriesDescription = "BENCH", "SM", 1, "benchmark slide"
    ds.ImageType = ["ORIGINAL" if factor == 1 else "DERIVED", "PRIMARY", "VOLUME", "NONE"]
    ds.TotalPixelMatrixRows = ds.TotalPixelMatrixColumns = size
    ds.ImagedVolumeWidth = ds.ImagedVolumeHeight = size * SPACING_UM * factor / 1000
    ds.ImageOrientationSlide = [0, -1, 0, -1, 0, 0]
    origin = Dataset()
    origin.XOffsetInSlideCoordinateSystem, origin.YOffsetInSlideCoordinateSystem = 20.0, 40.0
    ds.TotalPixelMatrixOriginSequence = Sequence([origin])
    shared, measures = Dataset(), Dataset()
    measures.PixelSpacing = [SPACING_UM * factor / 1000] * 2
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    optical = Dataset()
    optical.OpticalPathIdentifier, optical.OpticalPathDescription = "1", "brightfield"
    ds.OpticalPathSequence, ds.NumberOfOpticalPaths = Sequence([optical]), 1
    ds.DimensionOrganizationType, ds.TotalPixelMatrixFocalPlanes = "TILED_FULL", 1
    across = -(-size // TILE)
    ds.NumberOfFrames, ds.Rows, ds.Columns = across * across, TILE, TILE
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL_422", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.LossyImageCompression, ds.LossyImageCompressionMethod = "01", "ISO_10918_1"
    ds.save_as(path, enforce_file_format=True)
    rng = np.random.default_rng(factor)
    with open(path, "ab") as handle:
        handle.write(struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF))
        handle.write(struct.pack("<HHL", 0xFFFE, 0xE000, 0))  # empty Basic Offset Table
        for row in range(0, size, TILE):
            for col in range(0, size, TILE):
                buffer = io.BytesIO()
                Image.fromarray(tile_pixels(row, col, factor, rng)).save(buffer, "JPEG", quality=90)
                data = buffer.getvalue() + b"\0" * (len(buffer.getvalue()) % 2)
                handle.write(struct.pack("<HHL", 0xFFFE, 0xE000, len(data)) + data)
        handle.write(struct.pack("<HHL", 0xFFFE, 0xE0DD, 0))


def write_pyramid(folder: Path, size: int) -> list[int]:
    """Levels of ``size``, ``size / 4``, ... down to at least 1024 pixels; their sizes."""
    from pydicom.uid import generate_uid

    uids = (generate_uid(), generate_uid())
    sizes, factor = [], 1
    while size // factor >= REGION:
        write_level(folder / f"level{len(sizes)}.dcm", size // factor, factor, uids)
        sizes.append(size // factor)
        factor *= LEVEL_STEP
    return sizes


def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _decode_all(file: Path, size: int) -> np.ndarray:
    """Every frame of a TILED_FULL level decoded by pydicom into the whole matrix (the reader's former way)."""
    import pydicom
    from pydicom.pixels import iter_pixels

    out = np.empty((size, size, 3), np.uint8)
    across = size // TILE
    for index, frame in enumerate(iter_pixels(pydicom.dcmread(file))):
        row, col = divmod(index, across)
        out[row * TILE : (row + 1) * TILE, col * TILE : (col + 1) * TILE] = frame
    return out


def worker(method: str, folder: Path, sizes: list[int], out: Path, trace: bool) -> None:
    """Open, overview and centre region with one method; arrays saved to ``out``, numbers printed as JSON."""
    import warnings

    warnings.simplefilter("ignore")
    from wsidicom import WsiDicom

    from napari_mmfuse.io import read, reader_for

    for module in ("pydicom.pixels", "napari_mmfuse.io.dicom"):  # everything imported before the measurement
        importlib.import_module(module)
    reader_for(folder)
    importlib.import_module("dask.array").zeros(2).sum().compute()  # dask's first compute imports distributed

    start_region = sizes[0] // 2 - REGION // 2
    rss0 = _rss_bytes()
    if trace:
        tracemalloc.start()
    times = {}
    clock = time.perf_counter()
    if method == "ours":
        (record,) = read(folder)
        times["open"] = time.perf_counter() - clock
        clock = time.perf_counter()
        overview = np.asarray(record.data[-1])
        times["overview"] = time.perf_counter() - clock
        clock = time.perf_counter()
        region = np.asarray(record.data[0][start_region : start_region + REGION, start_region : start_region + REGION])
    elif method == "wsidicom":
        slide = WsiDicom.open(folder)
        times["open"] = time.perf_counter() - clock
        clock = time.perf_counter()
        coarsest = slide.levels[-1].level  # wsidicom numbers levels by log2 of their downsampling
        overview = np.asarray(slide.read_region((0, 0), coarsest, (sizes[-1], sizes[-1])).convert("RGB"))
        times["overview"] = time.perf_counter() - clock
        clock = time.perf_counter()
        region = np.asarray(slide.read_region((start_region, start_region), 0, (REGION, REGION)).convert("RGB"))
    else:
        full = _decode_all(folder / "level0.dcm", sizes[0])
        times["open"] = time.perf_counter() - clock
        clock = time.perf_counter()
        overview = _decode_all(folder / f"level{len(sizes) - 1}.dcm", sizes[-1])
        times["overview"] = time.perf_counter() - clock
        clock = time.perf_counter()
        region = full[start_region : start_region + REGION, start_region : start_region + REGION].copy()
    times["region"] = time.perf_counter() - clock
    peak = tracemalloc.get_traced_memory()[1] if trace else 0
    tracemalloc.stop()
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    np.savez(out, region=region, overview=overview)
    print(json.dumps({**times, "traced_peak": peak, "rss_peak_above_imports": max(0, rss_peak - rss0)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=16384, help="level-0 side in pixels (multiple of 1024)")
    parser.add_argument("--quick", action="store_true", help="a 4096-pixel slide")
    parser.add_argument("--keep", type=Path, help="write (or reuse) the pyramid in this folder")
    parser.add_argument("--worker", nargs=5, metavar=("METHOD", "FOLDER", "SIZES", "OUT", "TRACE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        method, folder, sizes, out, trace = args.worker
        worker(method, Path(folder), [int(s) for s in sizes.split(",")], Path(out), trace == "traced")
        return
    size = 4096 if args.quick else args.size
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch) / "slide"
        folder.mkdir(parents=True, exist_ok=True)
        clock = time.perf_counter()
        if not (folder / "level0.dcm").is_file():
            write_pyramid(folder, size)
        sizes = []
        while size // LEVEL_STEP ** len(sizes) >= REGION:
            sizes.append(size // LEVEL_STEP ** len(sizes))
        on_disk = sum(f.stat().st_size for f in folder.iterdir())
        print(f"slide: {size} x {size} RGB ({size * size * 3 / 2**20:.0f} MB decoded at level 0), levels {sizes}, "
              f"{TILE}x{TILE} JPEG tiles, {on_disk / 2**20:.0f} MB on disk; written in {time.perf_counter() - clock:.1f} s")
        results, arrays = {}, {}
        for method in ("ours", "wsidicom", "full decode"):
            out = Path(scratch) / f"{method.replace(' ', '_')}.npz"
            runs = [
                subprocess.run(
                    [sys.executable, __file__, "--worker", method, str(folder), ",".join(map(str, sizes)), str(out), trace],
                    capture_output=True, text=True, check=True,
                )
                for trace in ("untraced", "traced")
            ]
            timed, traced = (json.loads(run.stdout.strip().splitlines()[-1]) for run in runs)
            results[method] = {**timed, "traced_peak": traced["traced_peak"]}
            with np.load(out) as saved:
                arrays[method] = {key: saved[key] for key in saved.files}
    print(f"{'method':<12} {'open s':>8} {'overview s':>11} {'region s':>9} {'traced peak MB':>15} {'RSS peak MB':>12}")
    for method, row in results.items():
        print(f"{method:<12} {row['open']:>8.2f} {row['overview']:>11.2f} {row['region']:>9.2f} "
              f"{row['traced_peak'] / 2**20:>15.1f} {row['rss_peak_above_imports'] / 2**20:>12.1f}")
    ours, full = results["ours"], results["full decode"]
    print(f"ours / full decode: traced peak {ours['traced_peak'] / full['traced_peak']:.4f}, "
          f"RSS peak {ours['rss_peak_above_imports'] / max(1, full['rss_peak_above_imports']):.4f}, "
          f"time to the region {(ours['open'] + ours['region']) / (full['open'] + full['region']):.4f}")
    for key in ("region", "overview"):
        same = np.array_equal(arrays["ours"][key], arrays["full decode"][key])
        diff = np.abs(arrays["ours"][key].astype(np.float64) - arrays["wsidicom"][key]).mean()
        print(f"{key}: ours == full decode: {same}; mean |ours - wsidicom| = {diff:.3f} grey levels")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    main()
