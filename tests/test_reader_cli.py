"""npe2 reader glue and ``mmfuse info``: placement reaches napari layers and the command line."""

import json
from pathlib import Path

import numpy as np
import pytest

from napari_mmfuse._reader import get_reader
from napari_mmfuse.cli import main
from napari_mmfuse.core import space
from napari_mmfuse.io import ReadError, read
from napari_mmfuse.io.nifti import write_nifti

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _volume(tmp_path, name="t1.nii.gz"):
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    affine = np.diag([2.5, 1.0, 0.8, 1.0])
    affine[:3, 3] = [-30.0, 12.0, 4.0]
    path = write_nifti(tmp_path / name, data, affine)
    return path, data, affine


def test_get_reader_declines_unsupported_and_reads_supported(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    assert get_reader(str(text)) is None
    assert get_reader(str(tmp_path / "missing.xyz")) is None
    path, data, affine = _volume(tmp_path)
    reader = get_reader(str(path))
    assert reader is not None
    (layer_data, kwargs, layer_type), = reader(str(path))
    assert layer_type == "image"
    np.testing.assert_allclose(kwargs["affine"], affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(layer_data), data)
    assert kwargs["metadata"]["frame"] == "LPS"
    assert kwargs["metadata"]["source_path"] == str(path) and kwargs["metadata"]["series"] == 0


def test_layers_of_a_several_series_file_know_their_series(tmp_path):
    """Each layer names its series, so ``pipeline.read_image(source_path, series=...)`` gives it back."""
    from pydicom.data import get_testdata_file

    from napari_mmfuse import pipeline

    folder = tmp_path / "study"
    folder.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm"):
        (folder / name).write_bytes(Path(get_testdata_file(name)).read_bytes())
    layers = get_reader(str(folder))(str(folder))
    assert [kwargs["metadata"]["series"] for _, kwargs, _ in layers] == [0, 1]
    for data, kwargs, _ in layers:
        image = pipeline.read_image(kwargs["metadata"]["source_path"], series=kwargs["metadata"]["series"])
        np.testing.assert_array_equal(image.data, np.asarray(data))


def test_corrupt_file_raises_read_error_naming_it(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    reader = get_reader(str(bad))
    with pytest.raises(ReadError, match="broken.nii.gz"):
        reader(str(bad))
    with pytest.raises(FileNotFoundError):
        read(tmp_path / "absent.nii.gz")


def test_viewer_opens_with_world_placement(make_napari_viewer, tmp_path):
    path, data, affine = _volume(tmp_path)
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin="napari-mmfuse")
    np.testing.assert_allclose(layers[0].affine.affine_matrix, affine, atol=1e-5)
    # the centre voxel's world position is where the file says
    world = layers[0].data_to_world([2, 2, 3])
    np.testing.assert_allclose(world, space.voxel_to_world(affine, [2, 2, 3]), atol=1e-4)


def test_info_prints_geometry(tmp_path, capsys):
    path, data, affine = _volume(tmp_path)
    assert main(["info", str(path), "--json"]) == 0
    (info,) = json.loads(capsys.readouterr().out)
    assert info["shape"] == [4, 5, 6]
    np.testing.assert_allclose(info["spacing"], [2.5, 1.0, 0.8], atol=1e-5)
    assert info["orientation"] == "SPL"
    np.testing.assert_allclose(info["world_bounds"]["low"], [-31.25, 11.5, 3.6], atol=1e-4)
    np.testing.assert_allclose(info["world_bounds"]["high"], [-21.25, 16.5, 8.4], atol=1e-4)
    assert main(["info", str(path)]) == 0
    assert "orientation" in capsys.readouterr().out


def test_info_reports_bad_input_as_one_line(tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("x")
    assert main(["info", str(text)]) == 1
    err = capsys.readouterr().err
    assert "notes.txt" in err and "not a format" in err


@pytest.mark.skipif(not (DATA / "registration" / "ixi002_t1_t2").exists(), reason="shared data absent")
def test_info_on_real_t2(capsys):
    path = DATA / "registration" / "ixi002_t1_t2" / "hd_bet_IXI002-Guys-0828-T2.nii.gz"
    assert main(["info", str(path), "--json"]) == 0
    (info,) = json.loads(capsys.readouterr().out)
    assert info["orientation"] == "SPL"
    assert sorted(info["shape"]) == [130, 256, 256]


def test_viewer_opens_grey_picture_as_grey_and_label_maps_as_labels(make_napari_viewer, tmp_path):
    import imageio.v3 as iio
    from napari.layers import Image, Labels

    grey = (np.arange(20 * 30) % 200).astype(np.uint8).reshape(20, 30)
    iio.imwrite(tmp_path / "mri.png", np.dstack([grey] * 3))
    tumour = np.zeros((4, 5, 6), np.float32)
    tumour[1:3, 1:4, 2:5] = [1.0, 2.0, 4.0]
    write_nifti(tmp_path / "OTMultiClass.nii.gz", tumour, np.eye(4))
    viewer = make_napari_viewer()
    (picture,) = viewer.open(str(tmp_path / "mri.png"), plugin="napari-mmfuse")
    assert isinstance(picture, Image) and not picture.rgb and picture.data.shape == grey.shape
    (labels,) = viewer.open(str(tmp_path / "OTMultiClass.nii.gz"), plugin="napari-mmfuse")
    assert isinstance(labels, Labels) and np.issubdtype(labels.data.dtype, np.integer)
    np.testing.assert_array_equal(labels.data, tumour)
