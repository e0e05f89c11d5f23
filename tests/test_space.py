"""core.space against analytic cases and scipy.ndimage."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial.transform import Rotation

from napari_mmfuse.core import space
from napari_mmfuse.core.device import get_device, with_oom_retry


def _oblique_affine(spacing=(2.5, 0.8, 0.7), origin=(-40.0, 12.0, 5.0), angles=(14, -9, 22)):
    rotation = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    return space.affine_from_itk(spacing[::-1], origin[::-1], rotation)


def test_core_does_not_import_qt():
    """core/ is pure compute: importing it (in a fresh interpreter) loads no Qt and no napari."""
    code = (
        "import sys, napari_mmfuse.core.space, napari_mmfuse.core.device;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'napari')];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_affine_from_itk_matches_itk_index_to_point():
    sitk = pytest.importorskip("SimpleITK")
    rotation = Rotation.from_euler("xyz", [10, 20, -5], degrees=True).as_matrix()
    image = sitk.Image(7, 6, 5, sitk.sitkFloat32)
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((-3.0, 4.0, 11.0))
    image.SetDirection(rotation.ravel().tolist())
    affine = space.affine_from_itk(image.GetSpacing(), image.GetOrigin(), rotation)
    for ijk in [(0, 0, 0), (6, 5, 4), (3, 1, 2)]:
        lps = image.TransformIndexToPhysicalPoint(ijk)
        world = space.voxel_to_world(affine, ijk[::-1])
        np.testing.assert_allclose(world, lps[::-1], atol=1e-9)
    spacing, origin, direction = space.itk_from_affine(affine)
    np.testing.assert_allclose(spacing, image.GetSpacing())
    np.testing.assert_allclose(origin, image.GetOrigin())
    np.testing.assert_allclose(direction, rotation, atol=1e-12)


def test_nifti_conversion_flips_x_and_y():
    ras = np.diag([2.0, 3.0, 4.0, 1.0])
    ras[:3, 3] = [10, 20, 30]
    affine = space.affine_from_nifti(ras)
    # voxel (1, 1, 1) in RAS is (12, 23, 34) -> LPS (-12, -23, 34) -> napari (34, -23, -12)
    np.testing.assert_allclose(space.voxel_to_world(affine, [1, 1, 1]), [34, -23, -12])
    np.testing.assert_allclose(space.nifti_from_affine(affine), ras)


def test_world_voxel_round_trip_and_bounds():
    affine = _oblique_affine()
    index = np.random.default_rng(0).uniform(0, 20, size=(50, 3))
    np.testing.assert_allclose(space.world_to_voxel(affine, space.voxel_to_world(affine, index)), index, atol=1e-9)
    low, high = space.world_bounds((3, 4, 5), np.diag([2.0, 1.0, 0.5, 1.0]))
    np.testing.assert_allclose(low, [-1.0, -0.5, -0.25])
    np.testing.assert_allclose(high, [5.0, 3.5, 2.25])
    assert space.overlap_fraction((4, 4), np.eye(3), (4, 4), np.eye(3)) == pytest.approx(1.0)
    shifted = np.eye(3)
    shifted[:2, 2] = 100
    assert space.overlap_fraction((4, 4), np.eye(3), (4, 4), shifted) == 0.0


def test_orientation_code():
    assert space.orientation_code(np.eye(4)) == "SPL"
    assert space.orientation_code(np.diag([-1.0, -1.0, -1.0, 1.0])) == "IAR"


@pytest.mark.parametrize("first_axis", [0, 1])
def test_reorient_keeps_every_voxel_in_place(first_axis):
    rng = np.random.default_rng(1)
    permuted = np.zeros((4, 4))
    permuted[:3, :3] = _oblique_affine()[:3, :3][:, [2, 0, 1]] * [[-1, 1, -1]]
    permuted[:3, 3] = [5, -7, 3]
    permuted[3, 3] = 1
    shape = (5, 6, 7)
    data = rng.normal(size=((2,) if first_axis else ()) + shape)
    out, new_affine = space.reorient_to_nearest(data, permuted, first_axis=first_axis)
    linear = new_affine[:3, :3] / space.spacing_of(new_affine)
    assert np.all(np.argmax(np.abs(linear), axis=0) == [0, 1, 2])
    assert np.all(np.diag(linear) > 0)
    for old_index in [(0, 0, 0), (4, 5, 6), (2, 3, 1)]:
        value = data[(slice(None),) * first_axis + old_index]
        world = space.voxel_to_world(permuted, old_index)
        new_index = np.rint(space.world_to_voxel(new_affine, world)).astype(int)
        np.testing.assert_allclose(out[(slice(None),) * first_axis + tuple(new_index)], value)


def test_resample_identity_is_exact():
    data = np.random.default_rng(2).normal(size=(6, 7, 8)).astype(np.float32)
    affine = _oblique_affine()
    out = space.resample(data, affine, data.shape, affine, device="cpu")
    np.testing.assert_allclose(out, data, atol=1e-5)


@pytest.mark.parametrize("ndim", [2, 3])
def test_resample_matches_scipy_affine_transform(ndim):
    rng = np.random.default_rng(3)
    shape = (20, 24, 22)[:ndim]
    data = ndimage.gaussian_filter(rng.normal(size=shape), 2).astype(np.float32)
    if ndim == 3:
        moving_affine = _oblique_affine()
        reference_affine = _oblique_affine(spacing=(2.0, 1.0, 1.2), origin=(-38.0, 10.0, 7.0), angles=(4, 3, 15))
    else:
        moving_affine = space.affine_from_itk((0.7, 0.9), (3.0, -2.0), Rotation.from_euler("z", 17, degrees=True).as_matrix()[:2, :2])
        reference_affine = space.affine_from_itk((1.1, 0.8), (1.0, 0.0), np.eye(2))
    out_shape = (16, 18, 20)[:ndim]
    ours = space.resample(data, moving_affine, out_shape, reference_affine, device="cpu")
    mapping = np.linalg.inv(moving_affine) @ reference_affine
    expected = ndimage.affine_transform(data, mapping, output_shape=out_shape, order=1, mode="constant", cval=-99)
    inside = expected != -99
    assert inside.sum() > 0.3 * inside.size
    np.testing.assert_allclose(ours[inside], expected[inside], atol=1e-4)

    nearest = space.resample(data, moving_affine, out_shape, reference_affine, interpolation="nearest", device="cpu")
    expected_nearest = ndimage.affine_transform(data, mapping, output_shape=out_shape, order=0, mode="constant", cval=-99)
    # rounding ties may differ at exact half voxels; almost all must agree exactly
    agree = np.isclose(nearest[inside], expected_nearest[inside])
    assert agree.mean() > 0.999


def test_resample_translation_is_analytic():
    """A pure world shift by 2 voxels moves the content by exactly 2 voxels."""
    data = np.zeros((10, 10, 10), np.float32)
    data[4, 5, 6] = 1.0
    moving_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    reference_affine = moving_affine.copy()
    reference_affine[:3, 3] = [4.0, 0.0, -2.0]  # reference voxel i sits at moving voxel i + (2, 0, -1)
    out = space.resample(data, moving_affine, data.shape, reference_affine, device="cpu")
    assert out[2, 5, 7] == pytest.approx(1.0)
    assert out.sum() == pytest.approx(1.0)


def test_resample_labels_keep_dtype_and_channels():
    labels = np.zeros((8, 8), np.uint16)
    labels[2:6, 3:7] = 513
    out = space.resample(labels, np.eye(3), (8, 8), np.eye(3), interpolation="nearest", device="cpu")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, labels)
    rgb = np.random.default_rng(4).uniform(size=(8, 9, 3)).astype(np.float32)
    out_rgb = space.resample(rgb, np.eye(3), (8, 9), np.eye(3), channel_axis=-1, device="cpu")
    assert out_rgb.shape == (8, 9, 3)
    np.testing.assert_allclose(out_rgb, rgb, atol=1e-6)


def test_resample_chunking_matches_one_pass():
    data = np.random.default_rng(5).normal(size=(9, 10, 11)).astype(np.float32)
    affine = _oblique_affine()
    ref = _oblique_affine(spacing=(1.5, 1.0, 1.0), angles=(0, 0, 5))
    whole = space.resample(data, affine, (12, 10, 10), ref, device="cpu")
    chunked = space.resample(data, affine, (12, 10, 10), ref, device="cpu", max_chunk_voxels=100)
    np.testing.assert_allclose(whole, chunked, atol=1e-6)


def test_resample_rejects_bad_input():
    with pytest.raises(ValueError, match="2D or 3D"):
        space.resample(np.zeros(5), np.eye(2), (5,), np.eye(2))
    with pytest.raises(ValueError, match="spatial axes"):
        space.resample(np.zeros((5, 5)), np.eye(3), (5, 5, 5), np.eye(4))
    with pytest.raises(ValueError, match="singular"):
        space.resample(np.zeros((5, 5)), np.zeros((3, 3)), (5, 5), np.eye(3))
    with pytest.raises(ValueError, match="interpolation"):
        space.resample(np.zeros((5, 5)), np.eye(3), (5, 5), np.eye(3), interpolation="cubic")


def test_device_choice(monkeypatch):
    monkeypatch.setenv("MMFUSE_DEVICE", "cpu")
    assert get_device() == torch.device("cpu")
    assert get_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            get_device("cuda")


def test_oom_retry_halves_tiles():
    tried = []

    def run(tile):
        tried.append(tile)
        if tile > 64:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return tile

    assert with_oom_retry(run, tile=256) == 64
    assert tried == [256, 128, 64]
    with pytest.raises(ValueError):
        with_oom_retry(lambda tile: (_ for _ in ()).throw(ValueError("other")), tile=64)


def test_obliquity():
    assert space.obliquity_deg(np.diag([2.0, 1.0, 0.5, 1.0])) == pytest.approx(0.0)
    tilted = space.affine_from_itk((1.0, 1.0, 1.0), (0, 0, 0), Rotation.from_euler("x", 7, degrees=True).as_matrix())
    assert space.obliquity_deg(tilted) == pytest.approx(7.0)
