"""NIfTI and MetaImage/NRRD readers and writers: world coordinates against ground truth."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from napari_mmfuse.core.space import nifti_from_affine, resample, voxel_to_world
from napari_mmfuse.io import nifti
from napari_mmfuse.io._common import ReadError
from napari_mmfuse.io.itkimage import read_itk_image, write_itk_image
from napari_mmfuse.io.nifti import guess_modality, read_nifti, write_nifti

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
IXI = DATA / "registration" / "ixi002_t1_t2"


def rotation(axis: int, degrees: float) -> np.ndarray:
    """3x3 rotation about physical axis 0, 1 or 2."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def oblique_ras_affine(shift=(12.5, -30.0, 45.0)) -> np.ndarray:
    """RAS affine: axis 0 ~ inferior, 1 ~ left, 2 ~ posterior; 20 deg about x and z; anisotropic."""
    axes = np.array([[0, -1, 0], [0, 0, -1], [-1, 0, 0]], dtype=float)  # columns: I, L, P in RAS
    affine = np.eye(4)
    affine[:3, :3] = rotation(0, 20) @ rotation(2, 20) @ axes @ np.diag([2.5, 0.8, 1.5])
    affine[:3, 3] = shift
    return affine


def oblique_lps_affine() -> np.ndarray:
    """Napari-order LPS affine whose array axes are permuted, flipped and rotated from the world."""
    affine = np.eye(4)
    axes = np.array([[0, 0, -1], [1, 0, 0], [0, 1, 0]], dtype=float)  # columns: P, L, I in napari order
    affine[:3, :3] = rotation(1, 15) @ rotation(0, -25) @ axes @ np.diag([1.1, 0.6, 2.0])
    affine[:3, 3] = (-40.0, 7.5, 101.0)
    return affine


def napari_point_from_ras(ras_affine: np.ndarray, index) -> np.ndarray:
    """Ground truth: the LPS point of a voxel, in napari (z, y, x) order, from a RAS affine."""
    x, y, z = (ras_affine @ np.append(np.asarray(index, float), 1.0))[:3]
    return np.array([z, -y, -x])


def world_of_value(record, value) -> np.ndarray:
    """World position of the single voxel holding ``value`` in a read record."""
    where = np.argwhere(np.asarray(record.data) == value)
    assert len(where) == 1
    return voxel_to_world(record.affine, where[0])


def unique_volume(shape, dtype=np.float32) -> np.ndarray:
    return np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)


SAMPLE_INDICES = [(0, 0, 0), (6, 8, 10), (3, 1, 7), (5, 8, 0), (0, 4, 9)]


@pytest.fixture
def oblique_file(tmp_path):
    data = unique_volume((7, 9, 11))
    image = nib.Nifti1Image(data, oblique_ras_affine())
    image.set_sform(oblique_ras_affine(), code=2)
    image.set_qform(oblique_ras_affine(shift=(0.0, 5.0, -5.0)), code=1)
    path = tmp_path / "oblique_t2.nii.gz"
    nib.save(image, path)
    return path, data


def test_oblique_world_coordinates_match_nibabel(oblique_file):
    path, data = oblique_file
    (record,) = read_nifti(path)
    ras = nib.load(path).header.get_sform()
    assert record.metadata["affine_source"] == "sform"
    assert record.metadata["original_orientation"] == "ILP"
    assert record.metadata["orientation"] == "SPL"
    assert record.data.shape == (7, 11, 9)
    np.testing.assert_allclose(record.metadata["spacing"], (2.5, 1.5, 0.8), rtol=1e-6)
    assert record.metadata["modality"] == "MR-T2"
    assert record.axis_labels == ("z", "y", "x") and record.units == "mm"
    assert record.metadata["source_path"] == str(path) and record.metadata["frame"] == "LPS"
    for index in SAMPLE_INDICES:
        np.testing.assert_allclose(world_of_value(record, data[index]), napari_point_from_ras(ras, index), atol=1e-4)


def test_sform_then_qform_then_fallback(oblique_file, tmp_path):
    path, data = oblique_file
    image = nib.load(path)
    index = (3, 1, 7)

    image.set_sform(None, code=0)
    nib.save(image, tmp_path / "qform.nii")
    (record,) = read_nifti(tmp_path / "qform.nii")
    qform = nib.load(tmp_path / "qform.nii").header.get_qform()
    assert record.metadata["affine_source"] == "qform"
    np.testing.assert_allclose(world_of_value(record, data[index]), napari_point_from_ras(qform, index), atol=1e-4)
    sform = nib.load(path).header.get_sform()
    assert np.abs(napari_point_from_ras(sform, index) - napari_point_from_ras(qform, index)).max() > 4

    image.set_qform(None, code=0)
    nib.save(image, tmp_path / "fallback.nii")
    (record,) = read_nifti(tmp_path / "fallback.nii")
    base = nib.load(tmp_path / "fallback.nii").header.get_base_affine()
    assert record.metadata["affine_source"] == "fallback"
    np.testing.assert_allclose(world_of_value(record, data[index]), napari_point_from_ras(base, index), atol=1e-4)


def test_lazy_large_file_path_gives_same_geometry(oblique_file, tmp_path, monkeypatch):
    path, data = oblique_file
    nib.save(nib.load(path), tmp_path / "plain.nii")
    monkeypatch.setattr(nifti, "EAGER_READ_BYTES", 0)
    (record,) = read_nifti(tmp_path / "plain.nii")
    assert isinstance(record.data, np.memmap)
    ras = nib.load(path).header.get_sform()
    expected = napari_point_from_ras(ras, (6, 8, 10))
    np.testing.assert_allclose(world_of_value(record, data[6, 8, 10]), expected, atol=1e-4)


def test_units_in_metres_become_mm(tmp_path):
    affine = np.diag([0.001, 0.002, 0.003, 1.0])
    affine[:3, 3] = (0.01, 0.02, 0.03)
    image = nib.Nifti1Image(unique_volume((2, 3, 4)), affine)
    image.header.set_xyzt_units("meter")
    nib.save(image, tmp_path / "metres.nii")
    (record,) = read_nifti(tmp_path / "metres.nii")
    np.testing.assert_allclose(record.metadata["spacing"], (3.0, 2.0, 1.0), rtol=1e-6)
    np.testing.assert_allclose(record.affine[:3, 3], (30.0, -20.0 - 2 * 2.0, -10.0 - 1 * 1.0), rtol=1e-6)


def test_round_trip_3d_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    affine = np.eye(4)
    affine[:3, :3] = rotation(0, 8) @ np.diag([2.0, 0.9, 0.7])
    affine[:3, 3] = (5.0, -60.0, 80.0)
    image = rng.normal(size=(4, 5, 6)).astype(np.float32)
    out = write_nifti(tmp_path / "image.nii.gz", image, affine, metadata={"descrip": "round trip"})
    assert out == tmp_path / "image.nii.gz"
    (record,) = read_nifti(out)
    np.testing.assert_array_equal(record.data, image)
    np.testing.assert_allclose(record.affine, affine, atol=1e-4)
    assert record.layer_type == "image" and record.metadata["descrip"] == "round trip"
    assert record.metadata["sform_code"] == 1 and record.metadata["qform_code"] == 1

    labels = rng.integers(0, 5, size=(4, 5, 6)).astype(np.int64)
    (record,) = read_nifti(write_nifti(tmp_path / "parcels.nii", labels, affine, labels=True))
    assert record.layer_type == "labels" and record.metadata["intent"] == "label"
    assert np.issubdtype(record.data.dtype, np.integer) and record.data.dtype.itemsize == 1
    np.testing.assert_array_equal(record.data, labels)


def test_float_mask_by_name_becomes_integer_labels(tmp_path):
    mask = np.zeros((3, 4, 5), dtype=np.float32)
    mask[1, 1:3, 2:4] = 2.0
    (record,) = read_nifti(write_nifti(tmp_path / "brain_mask_t1.nii.gz", mask, np.eye(4)))
    assert record.layer_type == "labels" and record.data.dtype == np.uint8
    assert "modality" not in record.metadata
    np.testing.assert_array_equal(record.data, mask)


def test_round_trip_2d(tmp_path):
    affine2d = np.array([[0.5, 0.0, 10.0], [0.0, 0.25, -3.0], [0.0, 0.0, 1.0]])
    plane = unique_volume((6, 8), np.int16)
    (record,) = read_nifti(write_nifti(tmp_path / "plane.nii", plane, affine2d))
    assert record.data.shape == (1, 6, 8)
    np.testing.assert_array_equal(record.data[0], plane)
    np.testing.assert_allclose(record.affine[1:, 1:], affine2d, atol=1e-6)
    np.testing.assert_allclose(record.affine[0], (1, 0, 0, 0), atol=1e-6)

    nib.save(nib.Nifti1Image(plane.T.copy(), np.eye(4)), tmp_path / "flat.nii")
    (record,) = read_nifti(tmp_path / "flat.nii")
    assert record.data.ndim == 3 and 1 in record.data.shape


def test_overwrite_and_suffix(tmp_path):
    path = write_nifti(tmp_path / "a.nii", np.zeros((2, 2, 2), np.float32), np.eye(4))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_nifti(path, np.ones((2, 2, 2), np.float32), np.eye(4))
    write_nifti(path, np.ones((2, 2, 2), np.float32), np.eye(4), overwrite=True)
    assert read_nifti(path)[0].data.min() == 1
    with pytest.raises(ValueError, match=".nii"):
        write_nifti(tmp_path / "a.img", np.zeros((2, 2, 2)), np.eye(4))
    write_itk_image(tmp_path / "b.mha", np.zeros((2, 2)), np.eye(3))
    with pytest.raises(FileExistsError):
        write_itk_image(tmp_path / "b.mha", np.zeros((2, 2)), np.eye(3))
    with pytest.raises(ValueError, match=".mha"):
        write_itk_image(tmp_path / "b.png", np.zeros((2, 2)), np.eye(3))


def test_4d_time_axis_first(tmp_path):
    series = unique_volume((3, 4, 5, 6))
    affine = np.diag([2.0, 1.0, 1.5, 1.0])
    (record,) = read_nifti(write_nifti(tmp_path / "fmri.nii.gz", series, affine, metadata={"time_step": 2.5}))
    assert record.data.shape == (3, 4, 5, 6) and record.axis_labels == ("t", "z", "y", "x")
    assert record.channel_axis is None and record.metadata["time_step"] == 2.5
    np.testing.assert_array_equal(record.data, series)
    np.testing.assert_allclose(record.affine, affine, atol=1e-6)
    assert record.layer_affine().shape == (5, 5)

    oblique = unique_volume((7, 9, 11, 2))
    nib.save(nib.Nifti1Image(oblique, oblique_ras_affine()), tmp_path / "oblique_series.nii")
    (record,) = read_nifti(tmp_path / "oblique_series.nii")
    assert record.data.shape == (2, 7, 11, 9)
    ras = nib.load(tmp_path / "oblique_series.nii").affine
    where = np.argwhere(record.data == oblique[3, 1, 7, 1])[0]
    assert where[0] == 1
    expected = napari_point_from_ras(ras, (3, 1, 7))
    np.testing.assert_allclose(voxel_to_world(record.affine, where[1:]), expected, atol=1e-4)


def test_vectors_rgb24_and_intents(tmp_path):
    vectors = unique_volume((4, 5, 6, 1, 3))
    nib.save(nib.Nifti1Image(vectors, np.eye(4)), tmp_path / "field.nii")
    (record,) = read_nifti(tmp_path / "field.nii")
    assert record.channel_axis == 0 and record.data.shape[0] == 3 and record.data.shape[1:] == (6, 5, 4)
    rgb = np.zeros((4, 5, 6), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["G"] = 7
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), tmp_path / "rgb24.nii")
    (record,) = read_nifti(tmp_path / "rgb24.nii")
    assert record.channel_axis == 0 and record.data.shape == (3, 6, 5, 4) and record.data[1].min() == 7
    odd = nib.Nifti1Image(unique_volume((2, 3, 4)), np.eye(4))
    odd.header["intent_code"] = 9999
    nib.save(odd, tmp_path / "odd_intent.nii")
    assert read_nifti(tmp_path / "odd_intent.nii")[0].metadata["intent"] == "unknown (9999)"
    nib.save(nib.Nifti1Image(unique_volume((2, 2, 2, 2, 2)), np.eye(4)), tmp_path / "five.nii")
    with pytest.raises(ReadError, match="five.nii"):
        read_nifti(tmp_path / "five.nii")


def test_truncated_and_garbage_files(tmp_path):
    rng = np.random.default_rng(1)
    full = write_nifti(tmp_path / "full.nii.gz", rng.normal(size=(20, 20, 20)).astype(np.float32), np.eye(4))
    raw = full.read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ReadError, match="cut.nii.gz"):
        read_nifti(tmp_path / "cut.nii.gz")
    plain = write_nifti(tmp_path / "plain.nii", np.zeros((20, 20, 20), np.float32), np.eye(4))
    (tmp_path / "short.nii").write_bytes(plain.read_bytes()[:20000])
    with pytest.raises(ReadError, match="short.nii"):
        read_nifti(tmp_path / "short.nii")
    (tmp_path / "garbage.nii").write_bytes(rng.integers(0, 256, 2000, dtype=np.uint8).tobytes())
    with pytest.raises(ReadError, match="garbage.nii"):
        read_nifti(tmp_path / "garbage.nii")
    (tmp_path / "garbage.mha").write_bytes(b"ObjectType = Image\nNDims = 3\n" + bytes(100))
    with pytest.raises(ReadError, match="garbage.mha"):
        read_itk_image(tmp_path / "garbage.mha")
    with pytest.raises(FileNotFoundError):
        read_nifti(tmp_path / "missing.nii")


def test_nan_voxels_kept_and_counted(tmp_path):
    volume = np.ones((3, 4, 5), np.float32)
    volume[0, 0, 0] = volume[2, 3, 4] = np.nan
    volume[1, 2, 3] = np.inf
    path = write_nifti(tmp_path / "nan.nii", volume, np.eye(4))
    with pytest.warns(UserWarning, match="3 NaN/Inf"):
        (record,) = read_nifti(path)
    assert record.metadata["non_finite_voxels"] == 3
    assert np.isnan(record.data[0, 0, 0]) and np.isnan(record.data[2, 3, 4]) and np.isinf(record.data[1, 2, 3])


def test_itk_round_trip_mha_and_nrrd(tmp_path):
    affine = np.eye(4)
    affine[:3, :3] = rotation(2, 10) @ np.diag([1.5, 0.5, 0.75])
    affine[:3, 3] = (-7.0, 3.0, 12.0)
    volume = unique_volume((4, 5, 6), np.int16)
    for name in ("vol.mha", "vol.nrrd"):
        (record,) = read_itk_image(write_itk_image(tmp_path / name, volume, affine))
        np.testing.assert_array_equal(record.data, volume)
        np.testing.assert_allclose(record.affine, affine, atol=1e-9)
        assert record.name == "vol" and record.axis_labels == ("z", "y", "x")


def test_itk_world_matches_transform_index_to_physical_point(tmp_path):
    array = unique_volume((5, 6, 7))
    image = sitk.GetImageFromArray(array)
    direction = rotation(0, 20) @ rotation(1, -20) @ np.array([[0, 0, 1], [-1, 0, 0], [0, 1, 0]], dtype=float)
    image.SetDirection(direction.ravel().tolist())
    image.SetSpacing((0.7, 1.3, 2.1))
    image.SetOrigin((-5.0, 10.0, 33.3))
    sitk.WriteImage(image, str(tmp_path / "rotated_ct.nrrd"))
    (record,) = read_itk_image(tmp_path / "rotated_ct.nrrd")
    assert record.metadata["orientation"] == "SPL" and record.metadata["modality"] == "CT"
    for itk_index in [(0, 0, 0), (6, 5, 4), (3, 1, 2), (6, 0, 4)]:
        expected = np.array(image.TransformIndexToPhysicalPoint(itk_index))[::-1]
        np.testing.assert_allclose(world_of_value(record, array[itk_index[::-1]]), expected, atol=1e-9)


def test_itk_vector_and_rgb(tmp_path):
    rgb = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "photo.mha"))
    (record,) = read_itk_image(tmp_path / "photo.mha")
    assert record.rgb and record.channel_axis is None and record.data.shape == (4, 5, 3)
    np.testing.assert_array_equal(record.data, rgb)
    field = unique_volume((3, 4, 5, 2))
    sitk.WriteImage(sitk.GetImageFromArray(field, isVector=True), str(tmp_path / "field.mha"))
    (record,) = read_itk_image(tmp_path / "field.mha")
    assert record.channel_axis == 0 and not record.rgb
    np.testing.assert_array_equal(record.data, np.moveaxis(field, -1, 0))


def test_nifti_and_mha_agree(tmp_path):
    volume = unique_volume((7, 9, 11))
    affine = oblique_lps_affine()
    (from_nifti,) = read_nifti(write_nifti(tmp_path / "same.nii.gz", volume, affine))
    (from_mha,) = read_itk_image(write_itk_image(tmp_path / "same.mha", volume, affine))
    np.testing.assert_array_equal(from_nifti.data, from_mha.data)
    np.testing.assert_allclose(from_nifti.affine, from_mha.affine, atol=1e-4)
    assert from_nifti.metadata["orientation"] == from_mha.metadata["orientation"] == "SPL"
    for index in SAMPLE_INDICES:
        expected = voxel_to_world(affine, index)
        np.testing.assert_allclose(world_of_value(from_nifti, volume[index]), expected, atol=1e-4)
        np.testing.assert_allclose(world_of_value(from_mha, volume[index]), expected, atol=1e-9)


def test_guess_modality():
    assert guess_modality("sub-01_T1w.nii.gz") == "MR-T1"
    assert guess_modality("BraTS_flair") == "MR-FLAIR"
    assert guess_modality("patient_CT_arterial") == "CT"
    assert guess_modality("t1_to_t2") is None
    assert guess_modality("label_t1") is None
    assert guess_modality("scan") is None


@pytest.mark.skipif(not IXI.is_dir(), reason="shared IXI002 T1/T2 data not available")
def test_ixi_masks_overlap_in_world_space():
    (t1_mask,) = read_nifti(IXI / "hd_bet_mask_IXI002-Guys-0828-T1.nii.gz")
    (t2_mask,) = read_nifti(IXI / "hd_bet_mask_IXI002-Guys-0828-T2.nii.gz")
    assert t1_mask.layer_type == t2_mask.layer_type == "labels"
    assert t1_mask.metadata["orientation"] == t2_mask.metadata["orientation"] == "SPL"
    (t1,) = read_nifti(IXI / "hd_bet_IXI002-Guys-0828-T1.nii.gz")
    assert t1.layer_type == "image" and t1.metadata["modality"] == "MR-T1"
    assert t1.metadata["original_orientation"] == "LAS" and t1.metadata["orientation"] == "SPL"
    np.testing.assert_allclose(t1.affine, t1_mask.affine)
    # every second T1 voxel along each axis: the same voxel centres, 8x less work (Dice 0.9761 vs 0.9762 in full)
    grid, grid_affine = t1_mask.data[::2, ::2, ::2], t1_mask.affine @ np.diag([2.0, 2.0, 2.0, 1.0])
    on_t1 = resample(t2_mask.data, t2_mask.affine, grid.shape, grid_affine, interpolation="nearest")
    a, b = grid > 0, on_t1 > 0
    dice = 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))
    print(f"IXI002 T1/T2 brain mask Dice in world space: {dice:.4f}")
    assert dice > 0.9


BRATS = DATA / "segmentation" / "brats2015_case"


def test_label_maps_without_a_name_hint_and_scaled_integer_masks(tmp_path):
    rng = np.random.default_rng(5)
    tumour = rng.integers(0, 5, size=(6, 7, 8)).astype(np.float32)  # 0-4 as float, no name hint
    (record,) = read_nifti(write_nifti(tmp_path / "OTMultiClass.nii.gz", tumour, np.eye(4)))
    assert record.layer_type == "labels" and record.data.dtype == np.uint8
    np.testing.assert_array_equal(record.data, tumour)
    assert record.to_layer_data()[2] == "labels"

    # an int32 mask stored with a scale factor reads back as 0 and 0.99999997
    mask = np.zeros((6, 7, 8), np.int32)
    mask[2:4, 2:5, 3:6] = 1
    raw = np.where(mask == 1, 2147483520, -2147483648).astype(np.int32)
    image = nib.Nifti1Image(raw, nifti_from_affine(np.eye(4)))  # napari-order identity, as write_nifti stores it
    image.header.set_slope_inter(2.3283064365386963e-10, 0.5)
    nib.save(image, tmp_path / "brainmask.nii.gz")
    (record,) = read_nifti(tmp_path / "brainmask.nii.gz")
    assert record.layer_type == "labels" and np.issubdtype(record.data.dtype, np.integer)
    np.testing.assert_array_equal(record.data, mask)


@pytest.mark.parametrize(
    ("name", "data"),
    [
        # an int16 CT: negative values and thousands of levels
        ("scan.nii.gz", np.random.default_rng(1).integers(-1000, 2000, size=(6, 20, 20)).astype(np.int16)),
        # an 8-bit MRI with many grey levels and no name hint
        ("t1.nii.gz", np.random.default_rng(2).integers(0, 200, size=(6, 20, 20)).astype(np.uint8)),
        # a float intensity image with a mask-like name is still not integral
        ("masked_t1.nii.gz", np.random.default_rng(3).normal(size=(6, 20, 20)).astype(np.float32)),
        # a constant volume is no label map without a hint
        ("blank.nii.gz", np.zeros((4, 5, 6), np.float32)),
        # negative labels are not label maps
        ("signs.nii.gz", np.random.default_rng(4).integers(-2, 3, size=(4, 5, 6)).astype(np.int16)),
    ],
)
def test_intensity_images_stay_images(tmp_path, name, data):
    (record,) = read_nifti(write_nifti(tmp_path / name, data, np.eye(4)))
    assert record.layer_type == "image"
    np.testing.assert_array_equal(record.data, data)


def test_label_scan_rejects_early_and_converts_block_by_block(monkeypatch):
    monkeypatch.setattr(nifti, "SCAN_ELEMENTS", 20)  # several blocks along the first axis
    labels = np.zeros((10, 4, 5), np.float64)
    labels[7:, 1, 1] = 300.0
    labels[2, 2, 2] = 3.0
    out = nifti.is_label_map(labels, "x")
    assert out is not None and out.dtype == np.uint16
    np.testing.assert_array_equal(out, labels)
    many = np.arange(10 * 4 * 5, dtype=np.float32).reshape(10, 4, 5)
    assert nifti.label_values(many, limit=100) is None
    assert nifti.label_values(many, limit=400).size == 200
    assert nifti.is_label_map(many, "seg") is not None  # named, 200 values: labels
    assert nifti.is_label_map(many, "x") is None  # unnamed, more than FEW_LABELS values
    assert nifti.is_label_map(np.ones((3, 3, 3), np.uint8), "x", lazy=True) is None  # lazy, no hint: not scanned


@pytest.mark.skipif(not BRATS.is_dir(), reason="shared BraTS case not available")
def test_brats_masks_and_labels_open_as_labels_images_stay_images():
    kinds = {}
    for stem in ("OTMultiClass", "brainmask", "Flair_subtrMeanDivStd", "T1c_subtrMeanDivStd"):
        (record,) = read_nifti(BRATS / f"{stem}.nii.gz")
        kinds[stem] = record.layer_type
        if record.layer_type == "labels":
            assert np.issubdtype(record.data.dtype, np.integer)
            values = set(np.unique(record.data).tolist())
            assert values == ({0, 1, 2, 3, 4} if stem == "OTMultiClass" else {0, 1})
    assert kinds == {
        "OTMultiClass": "labels",
        "brainmask": "labels",
        "Flair_subtrMeanDivStd": "image",
        "T1c_subtrMeanDivStd": "image",
    }
