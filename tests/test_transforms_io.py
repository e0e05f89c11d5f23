"""io.transforms: ITK .tfm / JSON / displacement fields mean the same to SimpleITK as to us."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from napari_mmfuse.core import space
from napari_mmfuse.core.register import apply_transform, transform_from_parameters
from napari_mmfuse.io.transforms import (
    read_displacement_field,
    read_itk_transform,
    read_json_transform,
    read_transform,
    write_displacement_field,
    write_itk_transform,
    write_json_transform,
)


def _oblique(ndim, spacing, origin, angles):
    rotation = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()[:ndim, :ndim]
    return space.affine_from_itk(spacing, origin, rotation)


def _to_sitk(data, affine):
    image = sitk.GetImageFromArray(np.ascontiguousarray(data, np.float32))
    spacing, origin, direction = space.itk_from_affine(affine)
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(origin.tolist())
    image.SetDirection(direction.ravel().tolist())
    return image


def _case(ndim):
    rng = np.random.default_rng(ndim)
    shape = (20, 22, 18)[:ndim] if ndim == 3 else (40, 36)
    moving = rng.random(shape).astype(np.float32)
    moving_affine = _oblique(ndim, (1.1, 0.9, 1.3)[:ndim], (-9.0, 6.0, 4.0)[:ndim], (0, 0, 20) if ndim == 2 else (10, -15, 25))
    fixed_affine = _oblique(ndim, (1.0, 1.2, 0.8)[:ndim], (-8.0, 5.0, 2.0)[:ndim], (0, 0, -10) if ndim == 2 else (-5, 8, 12))
    transform = transform_from_parameters(
        ndim=ndim,
        rotation_deg=7.0 if ndim == 2 else (4.0, -6.0, 5.0),
        translation=(1.5, -2.0, 1.0)[:ndim],
        center=(3.0, 2.0, 1.0)[:ndim],
    )
    transform[:ndim, :ndim] = transform[:ndim, :ndim] @ np.diag((1.05, 0.95, 1.02)[:ndim])
    return shape, moving, moving_affine, fixed_affine, transform


def _interior(shape, margin=3):
    return tuple(slice(margin, s - margin) for s in shape)


@pytest.mark.parametrize("ndim", [2, 3])
def test_tfm_round_trip_and_simpleitk_resampling(tmp_path, ndim):
    shape, moving, moving_affine, fixed_affine, transform = _case(ndim)
    path = write_itk_transform(tmp_path / "t.tfm", transform)
    assert f"AffineTransform_double_{ndim}_{ndim}" in path.read_text()
    np.testing.assert_allclose(read_itk_transform(path), transform, atol=1e-12)
    ours = apply_transform(moving, moving_affine, transform, shape, fixed_affine, device="cpu")
    reference = _to_sitk(np.zeros(shape), fixed_affine)
    theirs = sitk.GetArrayFromImage(
        sitk.Resample(_to_sitk(moving, moving_affine), reference, sitk.ReadTransform(str(path)), sitk.sitkLinear, 0.0)
    )
    inner = _interior(shape)
    assert np.count_nonzero(ours[inner]) > 0.3 * ours[inner].size
    np.testing.assert_allclose(ours[inner], theirs[inner], atol=1e-4)


def test_write_refuses_overwrite_and_bad_input(tmp_path):
    path = write_itk_transform(tmp_path / "t.tfm", np.eye(4))
    with pytest.raises(FileExistsError, match="overwrite"):
        write_itk_transform(path, np.eye(4))
    write_itk_transform(path, np.eye(4), overwrite=True)
    with pytest.raises(ValueError, match="tfm"):
        write_itk_transform(tmp_path / "t.mat", np.eye(4))
    with pytest.raises(ValueError, match="3x3"):
        write_itk_transform(tmp_path / "u.tfm", np.eye(5))
    bad = tmp_path / "bad.tfm"
    bad.write_text("hello\n")
    with pytest.raises(ValueError, match="not an ITK transform"):
        read_itk_transform(bad)
    with pytest.raises(FileNotFoundError):
        read_itk_transform(tmp_path / "missing.tfm")


def _sitk_matrix(transform, ndim):
    points = np.random.default_rng(0).uniform(-50, 50, (6, ndim))
    return points, np.array([transform.TransformPoint(tuple(p)) for p in points])


@pytest.mark.parametrize(
    "make",
    [
        lambda: sitk.Euler3DTransform((1.0, 2.0, 3.0), 0.1, -0.2, 0.3, (4.0, -5.0, 6.0)),
        lambda: sitk.VersorRigid3DTransform((0.1, 0.05, -0.08, float(np.sqrt(1 - 0.0189))), (1.0, -2.0, 3.0), (5.0, 6.0, 7.0)),
        lambda: sitk.Similarity3DTransform(1.2, (0.0, 0.6, 0.0), 0.3, (1.0, 2.0, 3.0), (4.0, 5.0, 6.0)),
        lambda: sitk.TranslationTransform(3, (1.0, -2.0, 3.5)),
        lambda: sitk.Similarity2DTransform(0.8, 0.4, (2.0, 1.0), (3.0, -4.0)),
        lambda: sitk.CompositeTransform([sitk.Euler3DTransform((0.0, 0.0, 0.0), 0.2, 0.0, 0.1, (1.0, 2.0, 3.0))]),
    ],
    ids=["euler3d", "versor", "similarity3d", "translation", "similarity2d", "composite"],
)
def test_reads_other_linear_itk_types(tmp_path, make):
    transform = make()
    path = tmp_path / "other.tfm"
    sitk.WriteTransform(transform, str(path))
    ndim = transform.GetDimension()
    points, expected = _sitk_matrix(transform, ndim)
    matrix = read_itk_transform(path)  # napari order
    ours = points[:, ::-1] @ matrix[:ndim, :ndim].T + matrix[:ndim, ndim]
    np.testing.assert_allclose(ours[:, ::-1], expected, atol=1e-9)


def test_reads_affine_with_centre_and_mat(tmp_path):
    affine = sitk.AffineTransform(3)
    affine.SetMatrix([1.1, 0.1, 0.0, -0.1, 0.9, 0.05, 0.0, 0.02, 1.0])
    affine.SetTranslation((1.0, 2.0, 3.0))
    affine.SetCenter((10.0, -20.0, 30.0))
    points, expected = _sitk_matrix(affine, 3)
    for name in ("centred.tfm", "binary.mat"):
        sitk.WriteTransform(affine, str(tmp_path / name))
        matrix = read_itk_transform(tmp_path / name)
        np.testing.assert_allclose((points[:, ::-1] @ matrix[:3, :3].T + matrix[:3, 3])[:, ::-1], expected, atol=1e-9)


def test_non_linear_transform_is_refused(tmp_path):
    field = sitk.Image([5, 5, 5], sitk.sitkVectorFloat64, 3)
    field[2, 2, 2] = (1.0, 0.0, 0.0)
    path = tmp_path / "field.tfm"
    sitk.WriteTransform(sitk.DisplacementFieldTransform(field), str(path))
    with pytest.raises(ValueError, match="not linear"):
        read_itk_transform(path)


def test_json_round_trip(tmp_path):
    transform = transform_from_parameters(ndim=3, rotation_deg=(1, 2, 3), translation=(4, 5, 6))
    path = write_json_transform(tmp_path / "t.json", transform, metadata={"model": "rigid"})
    np.testing.assert_allclose(read_json_transform(path), transform)
    np.testing.assert_allclose(read_transform(path), transform)
    text = path.read_text()
    assert "LPS" in text and "fixed-world points to moving-world points" in text
    with pytest.raises(FileExistsError):
        write_json_transform(path, transform)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="JSON transform"):
        read_json_transform(tmp_path / "bad.json")


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_displacement_field_means_the_same_to_simpleitk(tmp_path, ndim, suffix):
    shape, moving, moving_affine, fixed_affine, transform = _case(ndim)
    rng = np.random.default_rng(7)
    grid = np.indices(shape).astype(np.float64)
    displacement = np.stack([np.sin(grid[(a + 1) % ndim] / 4.0 + a) * (0.8 + 0.3 * a) for a in range(ndim)], axis=-1)
    displacement = (displacement + rng.normal(0, 0.05, displacement.shape)).astype(np.float32)
    path = write_displacement_field(tmp_path / f"field{suffix}", displacement, fixed_affine)
    back, back_affine = read_displacement_field(path)
    np.testing.assert_allclose(back, displacement, atol=1e-5)
    np.testing.assert_allclose(back_affine, fixed_affine, atol=1e-5)

    field = sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkVectorFloat64)
    linear_path = write_itk_transform(tmp_path / "linear.tfm", transform)
    composite = sitk.CompositeTransform([sitk.ReadTransform(str(linear_path)), sitk.DisplacementFieldTransform(field)])
    # at voxel centres: x -> T(x + u(x))
    index = np.array([[3, 4, 5][:ndim], [10, 7, 2][:ndim]])
    points = space.voxel_to_world(fixed_affine, index)
    expected = (points + displacement[tuple(index.T)]) @ transform[:ndim, :ndim].T + transform[:ndim, ndim]
    for point, target in zip(points, expected):
        np.testing.assert_allclose(composite.TransformPoint(tuple(point[::-1])), target[::-1], atol=1e-4)
    ours = apply_transform(moving, moving_affine, transform, shape, fixed_affine, displacement=displacement, device="cpu")
    theirs = sitk.GetArrayFromImage(sitk.Resample(_to_sitk(moving, moving_affine), _to_sitk(np.zeros(shape), fixed_affine), composite, sitk.sitkLinear, 0.0))
    inner = _interior(shape)
    np.testing.assert_allclose(ours[inner], theirs[inner], atol=1e-3)
    with pytest.raises(FileExistsError):
        write_displacement_field(path, displacement, fixed_affine)


def test_transform_result_saves_reads_and_describes_itself(tmp_path):
    """The Transform the register operations give: .save by suffix (plus its field), .read back, .describe for provenance."""
    from napari_mmfuse.io.transforms import Transform, field_path

    matrix = transform_from_parameters(ndim=2, rotation_deg=5.0, translation=(2.0, -1.0), center=(10.0, 10.0))
    field = np.random.default_rng(0).normal(0, 0.5, (12, 14, 2)).astype(np.float32)
    affine = space.affine_from_itk((0.5, 0.5), (3.0, -4.0))
    result = Transform(matrix, field, affine)
    assert result.kind == "transform" and result.ndim == 2
    for suffix in (".tfm", ".txt", ".json"):
        path = tmp_path / f"t{suffix}"
        result.save(path)
        np.testing.assert_allclose(read_transform(path), matrix, atol=1e-12)
        with pytest.raises(FileExistsError):
            result.save(path)
    path = tmp_path / "warp.tfm"
    result.save(path, displacement_path=field_path(path))
    loaded = Transform.read(path, field_path(path))
    np.testing.assert_allclose(loaded.matrix, matrix, atol=1e-12)
    np.testing.assert_allclose(loaded.displacement, field, atol=1e-6)
    np.testing.assert_allclose(loaded.displacement_affine, affine, atol=1e-9)
    described = loaded.describe()
    assert described["kind"] == "transform" and described["hash"].startswith("sha256:")
    assert described["source"]["path"] == str(path.resolve()) and "displacement_hash" in described
    assert json.loads(json.dumps(described)) == described
    assert Transform.from_source(described["source"]).describe()["hash"] == described["hash"]
