"""Saving layers from the viewer keeps their world placement; existing files are never replaced."""

import numpy as np
import pytest

from napari_mmfuse.io import read


@pytest.mark.parametrize("suffix", [".nii.gz", ".ome.tif", ".ome.zarr"])
@pytest.mark.parametrize("kind", ["image", "labels"])
def test_layer_round_trip_through_plugin_writers(make_napari_viewer, tmp_path, suffix, kind):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    if kind == "image":
        data = rng.normal(size=(5, 6, 7)).astype(np.float32)
        layer = viewer.add_image(data, scale=(2.5, 0.8, 0.7), translate=(-30, 10, 5), name="vol")
    else:
        data = rng.integers(0, 4, size=(5, 6, 7)).astype(np.uint8)
        layer = viewer.add_labels(data, scale=(2.5, 0.8, 0.7), translate=(-30, 10, 5), name="seg")
    rotation = np.eye(4)
    rotation[1:3, 1:3] = [[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]]
    layer.affine = rotation
    expected_affine = np.asarray(layer.affine.affine_matrix) @ np.asarray(
        layer._transforms["data2physical"].affine_matrix
    )
    path = tmp_path / f"out{suffix}"
    from napari_mmfuse import _writer

    write = getattr(_writer, {".nii.gz": "write_nifti", ".ome.tif": "write_ome_tiff", ".ome.zarr": "write_ome_zarr"}[suffix] + f"_{kind}")
    assert write(str(path), layer.data, layer._get_state())
    (record,) = read(path)
    assert record.layer_type == kind
    values = np.asarray(record.level0)
    # every voxel lands where it was: resample the read-back onto the original grid
    from napari_mmfuse.core import space

    back = space.resample(values, record.affine, data.shape, expected_affine, interpolation="nearest", device="cpu")
    np.testing.assert_array_equal(back, data)


def test_writers_refuse_to_overwrite(make_napari_viewer, tmp_path):
    from napari_mmfuse import _writer

    viewer = make_napari_viewer()
    layer = viewer.add_image(np.zeros((4, 5, 6), np.float32))
    path = tmp_path / "exists.nii.gz"
    _writer.write_nifti_image(str(path), layer.data, layer._get_state())
    with pytest.raises(FileExistsError):
        _writer.write_nifti_image(str(path), layer.data, layer._get_state())


def test_viewer_save_uses_plugin(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_image(np.arange(60, dtype=np.float32).reshape(3, 4, 5), scale=(3, 2, 1), name="vol")
    path = tmp_path / "saved.nii.gz"
    viewer.layers.save(str(path), plugin="napari-mmfuse")
    (record,) = read(path)
    np.testing.assert_allclose(record.affine, np.diag([3.0, 2.0, 1.0, 1.0]), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(record.data), np.arange(60).reshape(3, 4, 5))


@pytest.mark.parametrize("suffix", [".nii.gz", ".ome.tif", ".ome.zarr"])
def test_layer_with_provenance_gets_its_sidecar(tmp_path, suffix):
    from napari_mmfuse import _writer
    from napari_mmfuse.provenance import Provenance, sidecar_path

    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    record = Provenance(
        operation="denoise/gaussian",
        params={"sigma": 1.0},
        outputs={"image": {"hash": "0", "shape": [4, 5, 6], "dtype": "float32"}},
        output="image",
    ).to_dict()
    write = getattr(_writer, {".nii.gz": "write_nifti", ".ome.tif": "write_ome_tiff", ".ome.zarr": "write_ome_zarr"}[suffix] + "_image")
    path = tmp_path / f"out{suffix}"
    written = write(str(path), data, {"metadata": {"mmfuse": record}, "scale": np.ones(3)})
    assert written == [str(path), str(sidecar_path(path))]
    saved = Provenance.load(sidecar_path(path))
    assert saved.operation == "denoise/gaussian" and saved.params == {"sigma": 1.0}
    assert saved.outputs["image"]["path"] == str(path)
    # a layer without a pipeline record (or with an older ad-hoc one) is written alone
    other = tmp_path / f"plain{suffix}"
    assert write(str(other), data, {"metadata": {"mmfuse": {"step": "fuse"}}}) == [str(other)]
    assert not sidecar_path(other).exists()
