"""PNG/JPEG/BMP pictures: grey stored as RGB reads as grey, colour stays RGB, napari opens them with our reader."""

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from napari_mmfuse._reader import get_reader
from napari_mmfuse.io import read
from napari_mmfuse.io.plain import read_plain

DATA = Path(__file__).parents[1].parent / "shared" / "data"
HARVARD = DATA / "fusion" / "harvard"


def _grey(shape=(12, 16)):
    return (np.arange(np.prod(shape)) % 251).astype(np.uint8).reshape(shape)


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".jpg"])
def test_grey_stored_as_rgb_reads_as_grey(tmp_path, suffix):
    grey = _grey()
    path = tmp_path / f"mri{suffix}"
    iio.imwrite(path, np.dstack([grey] * 3))
    (record,) = read(path)
    assert not record.rgb and record.data.shape == grey.shape and record.data.dtype == np.uint8
    assert record.metadata["stored_as"] == "rgb"
    if suffix != ".jpg":  # lossy: grey stays grey, the values move
        np.testing.assert_array_equal(record.data, grey)
    data, kwargs, layer_type = record.to_layer_data()
    assert layer_type == "image" and "rgb" not in kwargs and kwargs["units"] == ("pixel", "pixel")


def test_colour_stays_rgb_and_alpha_rules(tmp_path):
    grey = _grey()
    colour = np.dstack([grey, grey // 2, 255 - grey])
    iio.imwrite(tmp_path / "pet.png", colour)
    (record,) = read_plain(tmp_path / "pet.png")
    assert record.rgb and "stored_as" not in record.metadata
    np.testing.assert_array_equal(record.data, colour)
    # one pixel off grey is colour
    almost = np.dstack([grey] * 3)
    almost[5, 5, 2] ^= 1
    iio.imwrite(tmp_path / "almost.png", almost)
    assert read_plain(tmp_path / "almost.png")[0].rgb
    # grey RGBA with constant alpha: grey; with varying alpha: stays RGBA
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 255)])
    iio.imwrite(tmp_path / "rgba.png", rgba)
    (record,) = read_plain(tmp_path / "rgba.png")
    assert not record.rgb and record.data.shape == grey.shape
    rgba[0, 0, 3] = 0
    iio.imwrite(tmp_path / "alpha.png", rgba)
    (record,) = read_plain(tmp_path / "alpha.png")
    assert record.rgb and record.data.shape == (*grey.shape, 4)


def test_get_reader_and_manifest_take_pictures(tmp_path):
    import npe2

    grey = _grey()
    for name in ("a.png", "b.jpg", "c.jpeg", "d.bmp"):
        iio.imwrite(tmp_path / name, np.dstack([grey] * 3))
        reader = get_reader(str(tmp_path / name))
        assert reader is not None
        ((data, kwargs, layer_type),) = reader(str(tmp_path / name))
        assert layer_type == "image" and np.asarray(data).shape == grey.shape
    manager = npe2.PluginManager.instance()
    manager.discover()
    for name in ("a.png", "B.PNG", "c.jpg", "d.jpeg", "e.bmp"):
        readers = [r.plugin_name for r in manager.iter_compatible_readers([str(tmp_path / name)])]
        assert "napari-mmfuse" in readers, name


@pytest.mark.skipif(not HARVARD.is_dir(), reason="shared Harvard fusion pairs not available")
@pytest.mark.parametrize(("pair", "functional"), [("MRI_PET", "PET"), ("MRI_SPECT", "SPECT"), ("MRI_CT", "CT")])
def test_harvard_pairs_grey_anatomy_colour_function(pair, functional):
    name = sorted((HARVARD / pair / "MRI").glob("*.png"))[0].name
    (mri,) = read(HARVARD / pair / "MRI" / name)
    (other,) = read(HARVARD / pair / functional / name)
    assert not mri.rgb and mri.data.shape == (256, 256) and mri.metadata["stored_as"] == "rgb"
    assert (mri.name, other.name) == (f"MRI {Path(name).stem}", f"{functional} {Path(name).stem}")
    raw = iio.imread(HARVARD / pair / "MRI" / name)
    np.testing.assert_array_equal(mri.data, raw[..., 0] if raw.ndim == 3 else raw)
    if functional == "CT":
        assert not other.rgb and other.data.shape == (256, 256)
    else:
        assert other.rgb and other.data.shape == (256, 256, 3)
