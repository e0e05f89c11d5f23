"""Lazy DICOM whole-slide pyramids: one multiscale layer whose tiles are decoded only when read."""

from __future__ import annotations

import io
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import iter_pixels
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

from napari_mmfuse import _reader
from napari_mmfuse.core.lazy import level_affine
from napari_mmfuse.io import dicom_frames, dicom_slide, dicom_wsi
from napari_mmfuse.io._common import ReadError
from napari_mmfuse.io.dicom import WSI_SOP_CLASS, read_dicom
from napari_mmfuse.io.dicom_frames import read_frame_table
from napari_mmfuse.io.dicom_wsi import TiledLevel

SERIES_UID = "1.2.826.0.1.3680043.8.498.77"
TILE = (256, 256)
SHAPE = (700, 1000)  # rows, columns of level 0: edge tiles are partial
SPACING_UM = 0.25
ORIGIN_MM = (20.0, 40.0)
ORIENTATION = [0, -1, 0, -1, 0, 0]  # rows run along -Y of the slide, columns along -X


def slide_pixels(shape=SHAPE, seed: int = 0) -> np.ndarray:
    """A smooth RGB uint8 test pattern (JPEG keeps it close) with some texture."""
    rows, cols = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    rng = np.random.default_rng(seed)
    red = 128 + 100 * np.sin(rows / 37.0) * np.cos(cols / 53.0)
    green = 255 * cols / shape[1]
    blue = 255 * rows / shape[0]
    rgb = np.stack([red, green, blue], axis=-1) + rng.normal(0, 4, shape + (3,))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def downsample(pixels: np.ndarray, factor: int) -> np.ndarray:
    """Mean of ``factor`` x ``factor`` blocks (edges cropped), uint8."""
    rows, cols = pixels.shape[0] // factor, pixels.shape[1] // factor
    blocks = pixels[: rows * factor, : cols * factor].reshape(rows, factor, cols, factor, -1)
    return blocks.mean(axis=(1, 3)).round().astype(np.uint8)


def _tiles(pixels: np.ndarray, tile) -> list[tuple[int, int, np.ndarray]]:
    """(row, column, tile padded with zeros) row by row."""
    out = []
    for r0 in range(0, pixels.shape[0], tile[0]):
        for c0 in range(0, pixels.shape[1], tile[1]):
            frame = np.zeros(tile + pixels.shape[2:], pixels.dtype)
            block = pixels[r0 : r0 + tile[0], c0 : c0 + tile[1]]
            frame[: block.shape[0], : block.shape[1]] = block
            out.append((r0, c0, frame))
    return out


def write_instance(
    path: Path, pixels: np.ndarray, *, spacing_um: float, flavour: str = "VOLUME", jpeg: bool = False,
    sparse: bool = False, tile=TILE, seed: int = 1,
) -> None:
    """One VL whole-slide instance of RGB ``pixels``: TILED_FULL, or TILED_SPARSE with shuffled frames."""
    tiles = _tiles(pixels, tile)
    if sparse:
        tiles = [tiles[i] for i in np.random.default_rng(seed).permutation(len(tiles))]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = WSI_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit if jpeg else ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = WSI_SOP_CLASS, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.76", SERIES_UID
    ds.Modality, ds.SeriesNumber, ds.SeriesDescription = "SM", 4, "synthetic pyramid"
    ds.ImageType = ["DERIVED" if spacing_um > SPACING_UM else "ORIGINAL", "PRIMARY", flavour, "NONE"]
    ds.TotalPixelMatrixRows, ds.TotalPixelMatrixColumns = pixels.shape[:2]
    ds.ImagedVolumeWidth, ds.ImagedVolumeHeight = pixels.shape[1] * spacing_um / 1000, pixels.shape[0] * spacing_um / 1000
    origin = Dataset()
    origin.XOffsetInSlideCoordinateSystem, origin.YOffsetInSlideCoordinateSystem = ORIGIN_MM
    ds.TotalPixelMatrixOriginSequence = Sequence([origin])
    ds.ImageOrientationSlide = ORIENTATION
    shared, measures = Dataset(), Dataset()
    measures.PixelSpacing = [spacing_um / 1000, spacing_um / 1000]
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.DimensionOrganizationType = "TILED_SPARSE" if sparse else "TILED_FULL"
    if sparse:
        groups = []
        for r0, c0, _ in tiles:
            group, position = Dataset(), Dataset()
            position.RowPositionInTotalImagePixelMatrix, position.ColumnPositionInTotalImagePixelMatrix = r0 + 1, c0 + 1
            group.PlanePositionSlideSequence = Sequence([position])
            groups.append(group)
        ds.PerFrameFunctionalGroupsSequence = Sequence(groups)
    ds.NumberOfFrames = len(tiles)
    ds.Rows, ds.Columns = tile
    ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if jpeg:
        encoded = []
        for _, _, frame in tiles:
            buffer = io.BytesIO()
            Image.fromarray(frame).save(buffer, "JPEG", quality=95)
            encoded.append(buffer.getvalue())
        ds.PhotometricInterpretation = "YBR_FULL_422"
        ds.PixelData = encapsulate(encoded)
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
    else:
        ds.PhotometricInterpretation = "RGB"
        ds.PixelData = np.stack([t[2] for t in tiles]).tobytes()
    ds.save_as(path, enforce_file_format=True)


def write_pyramid(
    folder: Path, *, shape=SHAPE, tile=TILE, jpeg: bool = False, sparse: bool = False
) -> list[np.ndarray]:
    """Three levels (1, 1/2, 1/4), a label and a thumbnail in ``folder``; the levels' pixels."""
    folder.mkdir()
    levels = [slide_pixels(shape)]
    levels += [downsample(levels[0], 2), downsample(levels[0], 4)]
    for k, pixels in enumerate(levels):
        write_instance(folder / f"level{k}.dcm", pixels, spacing_um=SPACING_UM * 2**k, jpeg=jpeg, sparse=sparse, tile=tile)
    write_instance(folder / "label.dcm", slide_pixels((120, 200), seed=5), spacing_um=1.0, flavour="LABEL", tile=(120, 200))
    thumbnail = downsample(levels[0], 8)
    write_instance(folder / "thumbnail.dcm", thumbnail, spacing_um=2.0, flavour="THUMBNAIL", tile=thumbnail.shape[:2])
    return levels


@pytest.fixture(scope="module")
def native(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    folder = tmp_path_factory.mktemp("wsi") / "native"
    return folder, write_pyramid(folder)


@pytest.fixture(scope="module")
def jpeg_sparse(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    folder = tmp_path_factory.mktemp("wsi") / "jpeg"
    return folder, write_pyramid(folder, jpeg=True, sparse=True)


@pytest.fixture
def decodes(monkeypatch) -> list[tuple[str, int]]:
    """Every tile decode as (file name, frame index): on opening (frame order) and on reading."""
    calls: list[tuple[str, int]] = []
    decode = dicom_frames.decode_frame

    def counting(table, index):
        calls.append((table.file.name, index))
        return decode(table, index)

    monkeypatch.setattr(dicom_slide, "decode_frame", counting)
    monkeypatch.setattr(dicom_wsi, "decode_frame", counting)
    return calls


def test_pyramid_opens_as_one_lazy_multiscale_layer(native, decodes):
    folder, levels = native
    layers = _reader.get_reader(str(folder))(str(folder))
    assert len(layers) == 1  # label and thumbnail are left out
    data, kwargs, layer_type = layers[0]
    assert layer_type == "image" and kwargs["multiscale"] and kwargs["rgb"]
    assert [level.shape for level in data] == [(700, 1000, 3), (350, 500, 3), (175, 250, 3)]
    assert data[0].chunksize == (256, 256, 3)
    assert decodes == []  # opening decodes no tile
    meta = kwargs["metadata"]
    assert sorted(meta["associated_images"]) == ["label 200x120", "thumbnail 125x87"]
    assert meta["units"] == "um" and meta["modality"] == "microscopy"

    # rows run along -Y of the slide, columns along -X: the first pixel sits at (-X0, -Y0)
    affine = np.array([[SPACING_UM, 0, -ORIGIN_MM[0] * 1000], [0, SPACING_UM, -ORIGIN_MM[1] * 1000], [0, 0, 1]])
    np.testing.assert_allclose(kwargs["affine"], affine)
    for k, level in enumerate(data):
        # each level's pixels are where its own PixelSpacing puts them (corner-aligned)
        spacing = SPACING_UM * 2**k
        expected = np.array([[spacing, 0, affine[0, 2] + (spacing - SPACING_UM) / 2],
                             [0, spacing, affine[1, 2] + (spacing - SPACING_UM) / 2], [0, 0, 1]])
        np.testing.assert_allclose(level_affine(affine, data[0].shape[:2], level.shape[:2]), expected)

    region = np.asarray(data[0][300:400, 600:700])  # inside tile (1, 2)
    np.testing.assert_array_equal(region, levels[0][300:400, 600:700])
    assert decodes == [("level0.dcm", 6)]
    np.testing.assert_array_equal(np.asarray(data[0][250:260, 250:260]), levels[0][250:260, 250:260])
    assert len(decodes) == 5  # the four tiles around a corner
    for k in (1, 2):
        np.testing.assert_array_equal(np.asarray(data[k]), levels[k])


def test_jpeg_sparse_pyramid_reads_the_source_tiles(jpeg_sparse, decodes):
    folder, levels = jpeg_sparse
    (record,) = read_dicom(folder / "level1.dcm")  # one file opens its whole series
    assert record.multiscale and len(record.data) == 3 and decodes == []
    source = pydicom.dcmread(folder / "level0.dcm")
    frames = list(iter_pixels(source))
    expected = np.full(SHAPE + (3,), 255, np.uint8)
    for frame, group in zip(frames, source.PerFrameFunctionalGroupsSequence, strict=True):
        position = group.PlanePositionSlideSequence[0]
        r0, c0 = position.RowPositionInTotalImagePixelMatrix - 1, position.ColumnPositionInTotalImagePixelMatrix - 1
        block = expected[r0 : r0 + TILE[0], c0 : c0 + TILE[1]]
        block[:] = frame[: block.shape[0], : block.shape[1]]
    level0 = np.asarray(record.data[0])
    np.testing.assert_array_equal(level0, expected)  # exactly pydicom's decoding of each tile
    assert len(decodes) == len(frames)
    assert np.abs(level0.astype(float) - levels[0]).mean() < 6  # and close to the pixels encoded
    np.testing.assert_array_equal(np.asarray(record.data[2][100:150, 200:250]), _decoded(folder / "level2.dcm")[100:150, 200:250])


def _decoded(file: Path) -> np.ndarray:
    (frame,) = iter_pixels(pydicom.dcmread(file))
    return frame[:175, :250]


def test_tiled_level_indexes_like_numpy_and_pastes_tiles_off_the_grid(native, decodes):
    folder, levels = native
    _, table = read_frame_table(folder / "level0.dcm")
    origins = [divmod(k, 4) for k in range(table.n_frames)]  # TILED_FULL: 4 tiles across
    grid = np.stack([np.zeros((1, 3, 4), np.int32), np.arange(12, dtype=np.int32).reshape(1, 3, 4)], axis=-1)
    level = TiledLevel([table], grid, {}, TILE, SHAPE, 3, np.uint8, 255)
    truth = levels[0]
    keys = [(slice(None),), (5, slice(10, 600, 7)), (slice(690, 100, -13), 999, 1), (Ellipsis, 0),
            (slice(-300, None, 2), slice(None, None, -1)), (slice(10, 10),)]
    for key in keys:
        np.testing.assert_array_equal(level[key], truth[key])

    shift = (128, 100)  # every tile moved off the tile grid
    moved = {}
    for k, (i, j) in enumerate(origins):
        row, col = i * TILE[0] + shift[0], j * TILE[1] + shift[1]
        moved.setdefault((0, row // TILE[0], col // TILE[1]), []).append((row, col, 0, k))
    total = (SHAPE[0] + shift[0], SHAPE[1] + shift[1])
    expected = np.full(total + (3,), 255, np.uint8)
    expected[shift[0] :, shift[1] :] = truth
    decodes.clear()
    empty = np.full((1, 4, 5, 2), -1, np.int32)
    np.testing.assert_array_equal(TiledLevel([table], empty, moved, TILE, total, 3, np.uint8, 255)[:], expected)
    assert sorted(k for _, k in decodes) == list(range(table.n_frames))  # each tile decoded once


@pytest.mark.parametrize("layout", ["one fragment per frame", "basic offsets", "extended offsets"])
def test_frames_are_found_from_offset_tables(jpeg_sparse, tmp_path, layout):
    folder, _ = jpeg_sparse
    source = pydicom.dcmread(folder / "level0.dcm")
    frames = list(generate_frames(source.PixelData, number_of_frames=int(source.NumberOfFrames)))
    split = layout != "one fragment per frame"  # else two fragments per frame, found through an offset table
    data = encapsulate(frames, fragments_per_frame=1 + split)
    if layout == "extended offsets":  # the Basic Offset Table's values moved to an Extended one
        bot = np.frombuffer(data[8 : 8 + int.from_bytes(data[4:8], "little")], "<u4").astype("<u8")
        data = data[:4] + bytes(4) + data[8 + 4 * len(bot) :]
        lengths = np.diff(np.append(bot, len(data) - 8 - 8)).astype("<u8")  # items up to the delimiter
        source.ExtendedOffsetTable, source.ExtendedOffsetTableLengths = bot.tobytes(), lengths.tobytes()
    source.PixelData = data
    source["PixelData"].VR = "OB"
    source.save_as(tmp_path / "level0.dcm")
    _, table = read_frame_table(tmp_path / "level0.dcm")
    assert table.n_frames == len(frames) and len(table.offsets) == len(frames) * (1 + split)
    (record,) = read_dicom(tmp_path / "level0.dcm")
    (original,) = read_dicom(folder / "level0.dcm")  # no offset table, one fragment per frame
    np.testing.assert_array_equal(np.asarray(record.data[0] if record.multiscale else record.data),
                                  np.asarray(original.data[0]))


def test_opening_and_one_tile_stay_far_below_the_slide(native, tmp_path):
    folder, _ = native
    read_dicom(folder)  # imports and first-use caches outside the measurement
    np.asarray(read_dicom(folder)[0].data[0][:10, :10])
    pixels = np.random.default_rng(3).integers(0, 256, (2048, 2048, 3), dtype=np.uint8)
    write_instance(tmp_path / "big.dcm", pixels, spacing_um=SPACING_UM)
    tracemalloc.start()
    try:
        (record,) = read_dicom(tmp_path / "big.dcm")
        opened = tracemalloc.get_traced_memory()[1]
        tile = np.asarray(record.data[1024:1280, 512:768])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(tile, pixels[1024:1280, 512:768])
    assert opened < tile.nbytes, f"opening took {opened / 2**10:.0f} KB"
    assert peak < pixels.nbytes / 10, f"peak {peak / 2**20:.2f} MB for a {pixels.nbytes / 2**20:.1f} MB slide"


def test_truncated_jpeg_slide_is_refused_when_opened(jpeg_sparse, tmp_path):
    folder, _ = jpeg_sparse
    raw = (folder / "level0.dcm").read_bytes()
    cut = tmp_path / "cut" / "level0.dcm"
    cut.parent.mkdir()
    cut.write_bytes(raw[: len(raw) - 5000])
    with pytest.raises(ReadError, match="level0.dcm.*(truncated|fragment)"):
        read_dicom(cut)


@pytest.mark.parametrize("seed", range(6))
def test_corrupt_jpeg_slide_reads_or_refuses_in_one_line(jpeg_sparse, tmp_path, seed):
    folder, _ = jpeg_sparse
    data = bytearray((folder / "level0.dcm").read_bytes())
    rng = np.random.default_rng(seed)
    if seed % 2:
        data = data[: int(len(data) * rng.uniform(0.3, 0.99))]
    for spot in np.concatenate([rng.integers(0, 2048, 3), rng.integers(0, len(data), 5)]):
        data[spot] ^= int(rng.integers(1, 256))
    victim = tmp_path / "corrupt" / "level0.dcm"  # alone in its folder
    victim.parent.mkdir()
    victim.write_bytes(bytes(data))
    try:
        for record in read_dicom(victim):
            np.asarray(record.level0)  # tiles decode now: a broken one is a ReadError too
    except ReadError as error:
        assert "\n" not in str(error) and "level0.dcm" in str(error)


def test_optical_paths_in_separate_files_make_channels(tmp_path):
    """Fluorescence: one monochrome instance per optical path, all of one level; no PixelSpacing."""
    truth = np.random.default_rng(7).integers(0, 4000, (2, 300, 260), dtype=np.uint16)
    for p in range(2):
        _monochrome(tmp_path / f"path{p}.dcm", truth[p], str(p + 1))
    with pytest.warns(UserWarning, match="no PixelSpacing"):
        (record,) = read_dicom(tmp_path)
    assert record.channel_axis == 0 and record.channel_names == ["stain1", "stain2"] and not record.multiscale
    assert record.units == "pixel" and record.data.chunksize == (1, 128, 128)
    np.testing.assert_array_equal(np.asarray(record.data), truth)


def _monochrome(path: Path, pixels: np.ndarray, identifier: str) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = WSI_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = WSI_SOP_CLASS, meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID, ds.Modality, ds.ImageType = SERIES_UID, "SM", ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.TotalPixelMatrixRows, ds.TotalPixelMatrixColumns = pixels.shape
    ds.DimensionOrganizationType = "TILED_FULL"
    path_item = Dataset()
    path_item.OpticalPathIdentifier, path_item.OpticalPathDescription = identifier, f"stain{identifier}"
    ds.OpticalPathSequence = Sequence([path_item])
    tiles = _tiles(pixels, (128, 128))
    ds.NumberOfFrames, ds.Rows, ds.Columns = len(tiles), 128, 128
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.stack([t[2] for t in tiles]).astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_viewer_decodes_only_the_tiles_in_view(decodes, make_napari_viewer, qtbot, tmp_path, shots_dir):
    import imageio.v3 as iio

    write_pyramid(tmp_path / "big", shape=(1536, 2048), tile=(128, 128))  # 192 tiles at level 0
    viewer = make_napari_viewer(show=True)
    (layer,) = viewer.open(str(tmp_path / "big"), plugin="napari-mmfuse")
    assert layer.multiscale and layer.rgb and len(layer.data) == 3
    viewer.reset_view()
    whole = _settled_screenshot(viewer, qtbot)
    assert layer.data_level > 0 and not any(name == "level0.dcm" for name, _ in decodes)
    decodes.clear()
    viewer.camera.zoom *= 8  # a 1/8 wide view of the slide's centre: level 0, a few tiles
    viewer.camera.center = tuple(layer.data_to_world((800, 1000)))
    detail = _settled_screenshot(viewer, qtbot)
    assert layer.data_level == 0
    assert 0 < len(decodes) <= 16 and {name for name, _ in decodes} == {"level0.dcm"}  # of 192
    iio.imwrite(shots_dir / "dicom_pyramid_whole_and_detail.png", np.concatenate([whole, detail], axis=1))
    assert whole.std() > 10 and detail.std() > 10


def _settled_screenshot(viewer, qtbot) -> np.ndarray:
    """The canvas once a draw has picked the pyramid level and the next draw shows its pixels."""
    viewer.screenshot(canvas_only=True, flash=False)
    qtbot.wait(50)
    return viewer.screenshot(canvas_only=True, flash=False)[..., :3]


REAL_SLIDE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "slides" / "multiplex_dicom" / "small_dicom.dcm"


@pytest.mark.skipif(not REAL_SLIDE.is_file(), reason="shared DICOM whole-slide sample is absent")
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_real_slide_shows_in_the_viewer(decodes, make_napari_viewer, qtbot, shots_dir):
    import imageio.v3 as iio

    viewer = make_napari_viewer(show=True)
    (layer,) = viewer.open(str(REAL_SLIDE), plugin="napari-mmfuse")
    assert layer.rgb and layer.data.shape == (2638, 3236, 3) and layer.data.chunksize == (500, 500, 3)
    viewer.reset_view()
    shot = _settled_screenshot(viewer, qtbot)
    iio.imwrite(shots_dir / "real_small_dicom.png", shot)
    # its frame order is not declared: the edges of 16 frames decide it on opening; then the
    # one level, all in view, has each of its 42 tiles decoded once
    assert len(decodes) == 16 + 42
    assert shot.std() > 20
