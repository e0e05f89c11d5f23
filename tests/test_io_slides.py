"""Slide and picture I/O: OME-TIFF / OME-Zarr round trips, real slide files, plain pictures."""

from __future__ import annotations

import json
from pathlib import Path

import dask.array as da
import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_mmfuse.io import ReadError, read
from napari_mmfuse.io import tiff as tiff_module
from napari_mmfuse.io.omezarr import is_ome_zarr, read_ome_zarr, write_ome_zarr
from napari_mmfuse.io.plain import read_plain
from napari_mmfuse.io.tiff import read_tiff, write_ome_tiff

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SVS = DATA / "slides" / "wsi_svs"
QPTIFF = DATA / "slides" / "multiplex_dicom" / "small_vectra.qptiff"
WHEELS = DATA / "misc" / "pip_wheel_samples"
HISTOLOGY = DATA / "registration" / "histology" / "images"

SCALE = np.array([[0.25, 0.0, 12.5], [0.0, 0.25, -3.0], [0.0, 0.0, 1.0]])
ANGLE = 0.3
OBLIQUE = np.array(
    [
        [0.5 * np.cos(ANGLE), -0.7 * np.sin(ANGLE), 3.3],
        [0.5 * np.sin(ANGLE) + 0.1, 0.7 * np.cos(ANGLE), 1 / 3],
        [0.0, 0.0, 1.0],
    ]
)
VOLUME_MM = np.array([[0.0, 0.0, 1.5, 10.0], [0.0, 0.8, 0.0, -20.0], [-0.8, 0.0, 0.0, 30.0], [0, 0, 0, 1.0]])


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"test data absent: {path}")
    return path


def _mean2(image: np.ndarray) -> np.ndarray:
    """Reference 2x2 block mean of the first two axes, rounded to the input dtype."""
    ny, nx = image.shape[0] // 2, image.shape[1] // 2
    blocks = image[: ny * 2, : nx * 2].reshape(ny, 2, nx, 2, *image.shape[2:])
    return blocks.mean(axis=(1, 3)).round().astype(image.dtype)


# ----------------------------------------------------------------------------- OME-TIFF


@pytest.mark.parametrize("affine", [SCALE, OBLIQUE], ids=["scale", "oblique"])
def test_ome_tiff_round_trip_affine(tmp_path, affine):
    image = np.random.default_rng(0).integers(0, 4096, (300, 200), dtype=np.uint16)
    write_ome_tiff(tmp_path / "a.ome.tif", image, affine)
    (record,) = read_tiff(tmp_path / "a.ome.tif")
    assert isinstance(record.data, np.ndarray)
    np.testing.assert_array_equal(record.data, image)
    np.testing.assert_array_equal(record.affine, affine)  # exact, not approximately
    assert record.units == "um" and record.metadata["vendor"] == "ome"
    assert record.name == "a"
    np.testing.assert_allclose(record.metadata["pixel_size_um"], np.linalg.norm(affine[:2, :2], axis=0))


def test_ome_tiff_physical_size_without_our_annotation(tmp_path):
    """A foreign OME-TIFF: PhysicalSize in nm and Plane positions in mm give the affine."""
    image = np.arange(40 * 30, dtype=np.uint8).reshape(40, 30)
    metadata = {
        "axes": "YX",
        "PhysicalSizeX": 250.0,
        "PhysicalSizeXUnit": "nm",
        "PhysicalSizeY": 500.0,
        "PhysicalSizeYUnit": "nm",
        "Plane": {"PositionX": [1.5], "PositionXUnit": ["mm"], "PositionY": [2.0], "PositionYUnit": ["mm"]},
    }
    tifffile.imwrite(tmp_path / "foreign.ome.tif", image, ome=True, metadata=metadata)
    (record,) = read_tiff(tmp_path / "foreign.ome.tif")
    np.testing.assert_allclose(record.affine, [[0.5, 0, 2000.0], [0, 0.25, 1500.0], [0, 0, 1]])
    assert record.units == "um" and record.metadata["calibration"] == "ome"


def test_ome_tiff_multichannel_names(tmp_path):
    image = np.random.default_rng(1).random((3, 64, 80)).astype(np.float32)
    names = ["DAPI", "CD3", "CD20"]
    write_ome_tiff(tmp_path / "m.ome.tif", image, SCALE, channel_axis=0, channel_names=names, metadata={"stain": "IF"})
    (record,) = read_tiff(tmp_path / "m.ome.tif")
    np.testing.assert_array_equal(record.data, image)
    assert record.channel_axis == 0 and record.channel_names == names
    assert record.metadata["modality"] == "fluorescence" and record.metadata["stain"] == "IF"
    assert record.axis_labels == ("y", "x")


def test_ome_tiff_channels_last_are_moved_first(tmp_path):
    image = np.random.default_rng(2).integers(0, 255, (50, 40, 2), dtype=np.uint8)
    write_ome_tiff(tmp_path / "c.ome.tif", image, SCALE, channel_axis=-1, channel_names=["a", "b"])
    (record,) = read_tiff(tmp_path / "c.ome.tif")
    assert record.channel_axis == 0 and not record.rgb
    np.testing.assert_array_equal(record.data, np.moveaxis(image, -1, 0))


def test_ome_tiff_rgb(tmp_path):
    image = np.random.default_rng(3).integers(0, 255, (120, 90, 3), dtype=np.uint8)
    write_ome_tiff(tmp_path / "rgb.ome.tif", image, SCALE, rgb=True)
    (record,) = read_tiff(tmp_path / "rgb.ome.tif")
    assert record.rgb and record.channel_axis is None
    np.testing.assert_array_equal(record.data, image)
    assert record.metadata["modality"] == "brightfield"


def test_ome_tiff_labels_3d(tmp_path):
    labels = np.zeros((4, 40, 50), np.int64)
    labels[1, 5:20, 5:30] = 7
    labels[2, 10:, :10] = 70_000
    affine = np.diag([2.0, 0.5, 0.5, 1.0])
    affine[:3, 3] = [1.0, 2.0, 3.0]
    write_ome_tiff(tmp_path / "lab.ome.tif", labels, affine, layer_type="labels")
    (record,) = read_tiff(tmp_path / "lab.ome.tif")
    assert record.layer_type == "labels" and record.spatial_ndim == 3
    assert np.issubdtype(record.data.dtype, np.integer)
    np.testing.assert_array_equal(record.data, labels)
    np.testing.assert_array_equal(record.affine, affine)
    assert record.axis_labels == ("z", "y", "x")


def test_ome_tiff_pyramid(tmp_path):
    image = (np.add.outer(np.arange(3000), 3 * np.arange(2500)) % 251).astype(np.uint8)
    write_ome_tiff(tmp_path / "big.ome.tif", image, SCALE)
    (record,) = read_tiff(tmp_path / "big.ome.tif")
    assert record.multiscale
    assert [level.shape for level in record.data] == [(3000, 2500), (1500, 1250), (750, 625)]
    assert all(isinstance(level, da.Array) for level in record.data)
    np.testing.assert_array_equal(record.data[0].compute(), image)
    np.testing.assert_array_equal(record.data[1].compute(), _mean2(image))
    np.testing.assert_array_equal(record.affine, SCALE)
    with tifffile.TiffFile(tmp_path / "big.ome.tif") as tif:
        assert tif.pages[0].is_tiled and len(tif.pages[0].subifds) == 2


def test_ome_tiff_streams_dask_input(tmp_path, monkeypatch):
    """Dask input above the in-memory limit is written band by band, pyramid included."""
    monkeypatch.setattr(tiff_module, "IN_MEMORY_WRITE_BYTES", 0)
    image = np.random.default_rng(4).integers(0, 255, (2100, 300, 3), dtype=np.uint8)
    write_ome_tiff(tmp_path / "d.ome.tif", da.from_array(image, chunks=(500, 100, 3)), SCALE, rgb=True)
    (record,) = read_tiff(tmp_path / "d.ome.tif")
    assert record.rgb and [level.shape for level in record.data] == [(2100, 300, 3), (1050, 150, 3), (525, 75, 3)]
    np.testing.assert_array_equal(record.data[0].compute(), image)
    np.testing.assert_array_equal(record.data[1].compute(), _mean2(image))


def test_ome_tiff_overwrite_refused(tmp_path):
    image = np.zeros((8, 8), np.uint8)
    path = write_ome_tiff(tmp_path / "o.ome.tif", image, SCALE)
    with pytest.raises(FileExistsError):
        write_ome_tiff(path, image + 1, SCALE)
    write_ome_tiff(path, image + 1, SCALE, overwrite=True)
    assert read_tiff(path)[0].data.max() == 1


def test_truncated_tiff_raises_read_error(tmp_path):
    image = np.random.default_rng(5).integers(0, 255, (200, 200), dtype=np.uint8)
    path = write_ome_tiff(tmp_path / "cut.ome.tif", image, SCALE)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ReadError, match="cut.ome.tif"):
        read_tiff(path)


def test_non_tiff_raises_read_error(tmp_path):
    path = tmp_path / "fake.tif"
    iio.imwrite(path.with_suffix(".png"), np.zeros((4, 4), np.uint8))
    path.write_bytes(path.with_suffix(".png").read_bytes())
    with pytest.raises(ReadError, match="fake.tif"):
        read_tiff(path)


# ----------------------------------------------------------------------------- OME-Zarr


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_ome_zarr_round_trip_multichannel(tmp_path, zarr_format):
    image = np.random.default_rng(6).integers(0, 1000, (2, 300, 200), dtype=np.uint16)
    affine = np.array([[0.5, 0.0, 1.0], [0.0, 0.25, 2.0], [0.0, 0.0, 1.0]])
    path = write_ome_zarr(
        tmp_path / "c.ome.zarr", image, affine, channel_axis=0, channel_names=["dapi", "cd3"], levels=3,
        zarr_format=zarr_format,
    )  # fmt: skip
    assert is_ome_zarr(path)
    if zarr_format == 2:
        multiscales = json.loads((path / ".zattrs").read_text())["multiscales"]
        assert multiscales[0]["version"] == "0.4"
    else:
        attributes = json.loads((path / "zarr.json").read_text())["attributes"]
        assert attributes["ome"]["version"] == "0.5" and "multiscales" in attributes["ome"]
    (record,) = read_ome_zarr(path)
    assert record.multiscale and all(isinstance(level, da.Array) for level in record.data)
    assert [level.shape for level in record.data] == [(2, 300, 200), (2, 150, 100), (2, 75, 50)]
    np.testing.assert_array_equal(record.data[0].compute(), image)
    np.testing.assert_array_equal(record.data[1][0].compute(), _mean2(image[0]))
    np.testing.assert_array_equal(record.affine, affine)
    assert record.units == "um" and record.channel_axis == 0 and record.channel_names == ["dapi", "cd3"]
    assert record.metadata["level_scales"] == [[0.5, 0.25], [1.0, 0.5], [2.0, 1.0]]


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_ome_zarr_round_trip_volume_mm(tmp_path, zarr_format):
    volume = np.random.default_rng(7).random((12, 30, 40)).astype(np.float32)
    path = write_ome_zarr(tmp_path / "v.zarr", volume, VOLUME_MM, units="mm", zarr_format=zarr_format)
    (record,) = read_ome_zarr(path)
    assert not record.multiscale and record.spatial_ndim == 3
    np.testing.assert_array_equal(record.data.compute(), volume)
    np.testing.assert_array_equal(record.affine, VOLUME_MM)
    assert record.units == "mm" and record.axis_labels == ("z", "y", "x")


def test_ome_zarr_labels_keep_values(tmp_path):
    labels = np.zeros((2100, 64), np.int32)
    labels[::3] = 5
    path = write_ome_zarr(tmp_path / "l.zarr", labels, SCALE, layer_type="labels")
    (record,) = read_ome_zarr(path)
    assert record.layer_type == "labels" and len(record.data) == 3
    np.testing.assert_array_equal(record.data[1].compute(), labels[::2, ::2])


def test_ome_zarr_foreign_scale_and_units(tmp_path):
    """A hand-made NGFF 0.4 group (no mmfuse attribute): scale/translation in millimetres."""
    import zarr

    group = zarr.open_group(str(tmp_path / "f.zarr"), mode="w", zarr_format=2)
    group.create_array("s0", shape=(20, 10), dtype="uint8", chunks=(10, 10))[:] = 3
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [
                {"name": "y", "type": "space", "unit": "millimeter"},
                {"name": "x", "type": "space", "unit": "millimeter"},
            ],
            "datasets": [{"path": "s0", "coordinateTransformations": [{"type": "scale", "scale": [0.002, 0.001]}]}],
            "coordinateTransformations": [{"type": "translation", "translation": [5.0, 6.0]}],
        }
    ]
    (record,) = read_ome_zarr(tmp_path / "f.zarr")
    np.testing.assert_allclose(record.affine, [[0.002, 0, 5.0], [0, 0.001, 6.0], [0, 0, 1]])
    assert record.units == "mm"
    np.testing.assert_allclose(record.metadata["pixel_size_um"], [2.0, 1.0])
    assert read(tmp_path / "f.zarr")[0].data.shape == (20, 10)  # through the dispatcher


def test_ome_zarr_overwrite_and_garbage(tmp_path):
    path = write_ome_zarr(tmp_path / "o.zarr", np.zeros((8, 8), np.uint8), SCALE)
    with pytest.raises(FileExistsError):
        write_ome_zarr(path, np.ones((8, 8), np.uint8), SCALE)
    write_ome_zarr(path, np.ones((8, 8), np.uint8), SCALE, overwrite=True)
    assert int(read_ome_zarr(path)[0].data.max().compute()) == 1

    garbage = tmp_path / "garbage.zarr"
    garbage.mkdir()
    (garbage / ".zgroup").write_text('{"zarr_format": 2}')
    (garbage / ".zattrs").write_text("{not json")
    assert not is_ome_zarr(garbage)
    with pytest.raises(ReadError, match="garbage.zarr"):
        read_ome_zarr(garbage)
    plain_group = tmp_path / "nomulti.zarr"
    plain_group.mkdir()
    (plain_group / ".zgroup").write_text('{"zarr_format": 2}')
    with pytest.raises(ReadError, match="nomulti.zarr"):
        read_ome_zarr(plain_group)


# ----------------------------------------------------------------------------- real slides


def test_svs_pixel_size_is_its_mpp():
    path = _need(SVS / "cmu-1-small-region.svs")
    with tifffile.TiffFile(path) as tif:
        description = tif.pages[0].description
    mpp = float(description.split("MPP = ")[1].split("|")[0])
    assert mpp == pytest.approx(0.499)
    (record,) = read_tiff(path)
    assert record.rgb and record.level0.shape == (2967, 2220, 3)
    assert record.metadata["pixel_size_um"] == [mpp, mpp]
    np.testing.assert_array_equal(record.affine, np.diag([mpp, mpp, 1.0]))
    assert record.units == "um" and record.metadata["vendor"] == "svs"
    assert record.metadata["magnification"] == 20.0


def test_tcga_svs_is_lazy_multiscale():
    path = _need(SVS / "tcga-cr-7395-01a-01-ts1.svs")
    (record,) = read_tiff(path)
    assert record.multiscale and len(record.data) >= 2
    assert [level.shape for level in record.data] == [(3567, 4443, 3), (1783, 2221, 3)]
    assert all(isinstance(level, da.Array) for level in record.data)
    tile = record.data[1][:256, :256].compute()  # JPEG 2000 tiles decode
    assert tile.dtype == np.uint8 and tile.std() > 0
    assert record.units == "pixel"  # this slide's description has no MPP and no resolution tags


def test_kidney_tiff_is_uncalibrated_rgb():
    (record,) = read_tiff(_need(SVS / "kidney-48-5.tif"))
    assert record.rgb and record.level0.shape == (901, 1493, 3)
    assert record.units == "pixel" and record.metadata["pixel_size_um"] is None


def test_qptiff_multichannel_names():
    (record,) = read_tiff(_need(QPTIFF))
    assert record.metadata["vendor"] == "qptiff"
    assert record.level0.shape == (3, 1440, 1920) and record.channel_axis == 0
    assert record.channel_names == ["DAPI", "FITC", "Cy3"]
    # XResolution 4294967295/213260 pixels per centimetre
    expected = 1e4 * 213260 / 4294967295
    np.testing.assert_allclose(record.metadata["pixel_size_um"], [expected, expected])
    assert record.metadata["modality"] == "fluorescence"


def test_stardist_tiff_ignores_unitless_resolution():
    (record,) = read_tiff(_need(WHEELS / "stardist" / "img2d.tif"))
    assert record.level0.shape == (512, 512) and record.level0.dtype == np.uint16
    assert record.units == "pixel"
    np.testing.assert_array_equal(record.affine, np.eye(3))


# ----------------------------------------------------------------------------- plain pictures


@pytest.mark.parametrize(
    ("relative", "shape"),
    [
        ("misc/pip_wheel_samples/skimage/ihc.png", (512, 512, 3)),
        ("misc/pip_wheel_samples/stardist/histo.jpg", (300, 500, 3)),
        ("registration/histology/images/artificial_reference.jpg", (600, 800, 3)),
    ],
)
def test_plain_real_pictures(relative, shape):
    (record,) = read_plain(_need(DATA / relative))
    assert record.data.shape == shape and record.rgb
    assert record.units == "pixel"
    np.testing.assert_array_equal(record.affine, np.eye(3))


def test_plain_grey_alpha_and_grey_as_rgb(tmp_path):
    grey = np.arange(60, dtype=np.uint8).reshape(6, 10)
    iio.imwrite(tmp_path / "grey.png", grey)
    (record,) = read_plain(tmp_path / "grey.png")
    assert not record.rgb
    np.testing.assert_array_equal(record.data, grey)

    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 255)])
    iio.imwrite(tmp_path / "rgba.png", rgba)
    (record,) = read_plain(tmp_path / "rgba.png")
    assert not record.rgb and record.data.shape == (6, 10)  # constant alpha dropped, grey stored as RGB is grey
    np.testing.assert_array_equal(record.data, grey)

    rgba[0, 0, 3] = 0
    iio.imwrite(tmp_path / "alpha.png", rgba)
    assert read_plain(tmp_path / "alpha.png")[0].data.shape == (6, 10, 4)


def test_plain_corrupt_raises_read_error(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(ReadError, match="broken.png"):
        read_plain(path)
