"""Outputs resampled for a reference lie on exactly the reference FILE's grid, as SimpleITK writes them.

An oblique, anisotropic NIfTI reference (array axes far from the world axes, so our reader
reorders them) and a synthetic oblique DICOM series; ``mmfuse transform``, ``register -o``
(rigid and deformable) and label transfer are compared voxel by voxel with
``SimpleITK.Resample(moving, fixed, T)``, and the .tfm files with ``SimpleITK.ReadTransform``.
"""

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from napari_mmfuse.cli import main
from napari_mmfuse.io.transforms import read_itk_transform, to_physical

SHAPE = (40, 32, 24)  # nibabel (i, j, k)
SPACING = (1.2, 1.5, 2.0)
CENTER_RAS = np.array([3.0, -5.0, 10.0])
#: the rigid truth, fixed -> moving (LPS, physical x, y, z), ITK's resampling convention
ANGLES, SHIFT = (0.06, -0.04, 0.08), (3.0, -2.0, 4.0)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def _fixed_affine() -> np.ndarray:
    """RAS affine: i runs inferior, j right-to-left, k anterior, all tilted by 10 and 7 degrees."""
    axes = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]])  # columns: i, j, k directions
    direction = _rotation(0, 10) @ _rotation(1, -7) @ axes
    affine = np.eye(4)
    affine[:3, :3] = direction * SPACING
    affine[:3, 3] = CENTER_RAS - affine[:3, :3] @ ((np.array(SHAPE) - 1) / 2)
    return affine


def _lps_points(ras_affine, shape) -> np.ndarray:
    """LPS (x, y, z) of every voxel of a NIfTI grid, shape (*shape, 3)."""
    index = np.indices(shape, dtype=np.float64).reshape(3, -1)
    ras = ras_affine[:3, :3] @ index + ras_affine[:3, 3:]
    return (ras * np.array([[-1.0], [-1.0], [1.0]])).T.reshape(*shape, 3)


def _scene(lps: np.ndarray) -> np.ndarray:
    """A smooth, asymmetric world-space intensity (LPS mm)."""
    centre = np.array([-3.0, 5.0, 10.0])  # the fixed volume's centre in LPS
    value = np.zeros(lps.shape[:-1])
    for offset, width, height in (((0, 0, 0), 14.0, 600.0), ((9, -6, 5), 6.0, 400.0), ((-8, 7, -6), 8.0, -250.0)):
        value += height * np.exp(-np.sum((lps - centre - offset) ** 2, axis=-1) / (2 * width**2))
    return (value + 300 + 4 * (lps[..., 0] - centre[0])).astype(np.float32)


def _truth() -> sitk.Euler3DTransform:
    centre = CENTER_RAS * np.array([-1.0, -1.0, 1.0])
    return sitk.Euler3DTransform(centre.tolist(), *ANGLES, SHIFT)


def _matrix(transform) -> np.ndarray:
    """4x4 physical matrix of a linear SimpleITK transform."""
    matrix = np.eye(4)
    matrix[:3, :3] = np.reshape(transform.GetMatrix(), (3, 3))
    matrix[:3, 3] = np.asarray(transform.TransformPoint((0.0, 0.0, 0.0)))
    return matrix


def _save_nifti(path, data, ras_affine, **kwargs):
    image = nib.Nifti1Image(data, ras_affine)
    image.header.set_sform(ras_affine, code=1)
    image.header.set_qform(ras_affine, code=1)
    for key, value in kwargs.items():
        image.header[key] = value
    nib.save(image, str(path))


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """fixed.nii.gz (oblique), moving.nii.gz and moving_seg.nii.gz (axis-aligned) with
    ``moving(T(p)) == fixed(p)``, and the truth T as an ITK file."""
    folder = tmp_path_factory.mktemp("grid")
    fixed_affine = _fixed_affine()
    _save_nifti(folder / "fixed.nii.gz", _scene(_lps_points(fixed_affine, SHAPE)), fixed_affine)
    moving_shape = (56, 56, 56)
    moving_affine = np.diag([1.25, 1.25, 1.25, 1.0])
    moving_affine[:3, 3] = CENTER_RAS - 1.25 * 27.5
    lps = _lps_points(moving_affine, moving_shape).reshape(-1, 3)
    inverse = np.linalg.inv(_matrix(_truth()))
    values = _scene((lps @ inverse[:3, :3].T + inverse[:3, 3]).reshape(*moving_shape, 3))
    _save_nifti(folder / "moving.nii.gz", values, moving_affine)
    labels = np.digitize(values, [400, 600, 800]).astype(np.uint8)
    _save_nifti(folder / "moving_seg.nii.gz", labels, moving_affine)
    sitk.WriteTransform(_truth(), str(folder / "truth.tfm"))
    return folder


def _sitk_resample(moving, reference, transform, interpolator=sitk.sitkLinear) -> np.ndarray:
    """SimpleITK's result as nibabel orders a NIfTI written from it: (i, j, k)."""
    return sitk.GetArrayFromImage(sitk.Resample(moving, reference, transform, interpolator, 0.0)).T


def _check_on_fixed_grid(out, fixed) -> np.ndarray:
    written, reference = nib.load(str(out)), nib.load(str(fixed))
    assert written.shape == reference.shape == SHAPE
    np.testing.assert_allclose(written.affine, reference.affine, atol=1e-5)
    np.testing.assert_allclose(written.header.get_sform(), reference.header.get_sform(), atol=1e-5)
    np.testing.assert_allclose(written.header.get_qform(), reference.header.get_qform(), atol=1e-5)
    return np.asarray(written.dataobj)


def _inner(array: np.ndarray, border: int = 2) -> np.ndarray:
    return array[(slice(border, -border),) * array.ndim]


def test_transform_writes_the_oblique_nifti_grid_as_simpleitk(scene, tmp_path):
    out = tmp_path / "out.nii.gz"
    args = ["transform", str(scene / "moving.nii.gz"), "--transform", str(scene / "truth.tfm"),
            "--reference", str(scene / "fixed.nii.gz"), "-o", str(out)]  # fmt: skip
    assert main(args) == 0
    ours = _check_on_fixed_grid(out, scene / "fixed.nii.gz")
    theirs = _sitk_resample(sitk.ReadImage(str(scene / "moving.nii.gz")), sitk.ReadImage(str(scene / "fixed.nii.gz")),
                            sitk.ReadTransform(str(scene / "truth.tfm")))
    np.testing.assert_allclose(_inner(ours), _inner(theirs), atol=0.05)
    # and both are the fixed image (the moving one was made from it through the truth), up to interpolation
    fixed = np.asarray(nib.load(str(scene / "fixed.nii.gz")).dataobj)
    assert np.abs(_inner(ours) - _inner(fixed)).mean() < 0.01 * np.ptp(fixed)

    # an ITK-format output takes the reference's size, spacing, origin and direction too
    mha = tmp_path / "out.mha"
    assert main([*args[:-1], str(mha)]) == 0
    written, reference = sitk.ReadImage(str(mha)), sitk.ReadImage(str(scene / "fixed.nii.gz"))
    assert written.GetSize() == reference.GetSize()
    for attribute in ("GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(written, attribute)(), getattr(reference, attribute)(), atol=1e-5)
    np.testing.assert_allclose(sitk.GetArrayFromImage(written).T, ours, atol=1e-4)


def test_2d_metaimage_reference_with_swapped_flipped_axes(tmp_path):
    """A 2D MetaImage whose columns run along -y and rows along +x: OUT has its size, direction and pixels."""
    pixels = np.random.default_rng(0).random((30, 40)).astype(np.float32)
    reference = sitk.GetImageFromArray(pixels)
    reference.SetSpacing((0.5, 0.7))
    reference.SetDirection((0.0, 1.0, -1.0, 0.0))
    reference.SetOrigin((3.0, 4.0))
    sitk.WriteImage(reference, str(tmp_path / "fixed.mha"))
    sitk.WriteTransform(sitk.TranslationTransform(2, (0.0, 0.0)), str(tmp_path / "identity.tfm"))
    assert main(["transform", str(tmp_path / "fixed.mha"), "--transform", str(tmp_path / "identity.tfm"),
                 "--reference", str(tmp_path / "fixed.mha"), "-o", str(tmp_path / "out.mha")]) == 0  # fmt: skip
    out = sitk.ReadImage(str(tmp_path / "out.mha"))
    assert out.GetSize() == reference.GetSize() and out.GetDirection() == reference.GetDirection()
    np.testing.assert_allclose(sitk.GetArrayFromImage(out), pixels, atol=1e-5)


def test_label_transfer_on_the_reference_grid_nearest(scene, tmp_path):
    out = tmp_path / "seg.nii.gz"
    assert main(["transform", str(scene / "moving_seg.nii.gz"), "--transform", str(scene / "truth.tfm"),
                 "--reference", str(scene / "fixed.nii.gz"), "-o", str(out)]) == 0  # fmt: skip
    ours = _check_on_fixed_grid(out, scene / "fixed.nii.gz")
    assert np.issubdtype(ours.dtype, np.integer)
    theirs = _sitk_resample(sitk.ReadImage(str(scene / "moving_seg.nii.gz")), sitk.ReadImage(str(scene / "fixed.nii.gz")),
                            sitk.ReadTransform(str(scene / "truth.tfm")), sitk.sitkNearestNeighbor)
    assert set(np.unique(ours)) == set(np.unique(theirs)) == {0, 1, 2, 3}
    assert np.mean(ours != theirs) < 2e-3  # only round-off ties between two neighbours may differ


def test_register_writes_the_fixed_grid_and_a_tfm_simpleitk_reads(scene, tmp_path):
    out, tfm = tmp_path / "registered.nii.gz", tmp_path / "t.tfm"
    assert main(["register", str(scene / "fixed.nii.gz"), str(scene / "moving.nii.gz"), "-o", str(out),
                 "--transform", str(tfm), "--iterations", "40"]) == 0  # fmt: skip
    ours = _check_on_fixed_grid(out, scene / "fixed.nii.gz")
    itk = sitk.ReadTransform(str(tfm))
    theirs = _sitk_resample(sitk.ReadImage(str(scene / "moving.nii.gz")), sitk.ReadImage(str(scene / "fixed.nii.gz")), itk)
    np.testing.assert_allclose(_inner(ours), _inner(theirs), atol=0.05)

    # the .tfm maps fixed LPS points to moving LPS points, as our matrix does, and as the truth does
    points = _lps_points(_fixed_affine(), SHAPE)[::6, ::6, ::6].reshape(-1, 3)
    by_itk = np.array([itk.TransformPoint(tuple(p)) for p in points])
    matrix = read_itk_transform(tfm)  # napari order (z, y, x)
    ours_napari = points[:, ::-1] @ matrix[:3, :3].T + matrix[:3, 3]
    np.testing.assert_allclose(by_itk, ours_napari[:, ::-1], atol=1e-6)
    np.testing.assert_allclose(to_physical(matrix), _matrix(itk), atol=1e-9)
    truth = np.array([_truth().TransformPoint(tuple(p)) for p in points])
    assert np.linalg.norm(by_itk - truth, axis=1).mean() < 0.5  # mm, on voxels of 1.2-2 mm


def test_antspy_applies_our_files_as_we_do(scene, tmp_path):
    """Where ANTsPy is installed: antsApplyTransforms with our .tfm (and our field, named first) gives our OUT."""
    ants = pytest.importorskip("ants")
    out, tfm, field = tmp_path / "warped.nii.gz", tmp_path / "t.tfm", tmp_path / "field.nii.gz"
    assert main(["register", str(scene / "fixed.nii.gz"), str(scene / "moving.nii.gz"), "-o", str(out),
                 "--model", "deformable", "--metric", "mse", "--iterations", "10", "--levels", "2",
                 "--transform", str(tfm), "--displacement", str(field)]) == 0  # fmt: skip
    fixed, moving = ants.image_read(str(scene / "fixed.nii.gz")), ants.image_read(str(scene / "moving.nii.gz"))
    ours = np.asarray(nib.load(str(out)).dataobj)
    for transforms, border in (([str(scene / "truth.tfm")], 2), ([str(field), str(tfm)], 3)):
        ants.image_write(ants.apply_transforms(fixed, moving, transformlist=transforms), str(tmp_path / "ants.nii.gz"))
        theirs = _check_on_fixed_grid(tmp_path / "ants.nii.gz", scene / "fixed.nii.gz")
        if len(transforms) == 1:  # the truth: compare with `mmfuse transform`
            assert main(["transform", str(scene / "moving.nii.gz"), "--transform", transforms[0], "--reference",
                         str(scene / "fixed.nii.gz"), "-o", str(tmp_path / "moved.nii.gz")]) == 0  # fmt: skip
            np.testing.assert_allclose(_inner(np.asarray(nib.load(str(tmp_path / "moved.nii.gz")).dataobj)),
                                       _inner(theirs), atol=0.05)
        else:
            np.testing.assert_allclose(_inner(ours, border), _inner(theirs, border), atol=0.05)


def test_register_deformable_on_the_fixed_grid(scene, tmp_path):
    out, tfm, field = tmp_path / "warped.nii.gz", tmp_path / "t.tfm", tmp_path / "field.nii.gz"
    assert main(["register", str(scene / "fixed.nii.gz"), str(scene / "moving.nii.gz"), "-o", str(out),
                 "--model", "deformable", "--metric", "mse", "--iterations", "10", "--levels", "2", "--transform", str(tfm),
                 "--displacement", str(field)]) == 0  # fmt: skip
    ours = _check_on_fixed_grid(out, scene / "fixed.nii.gz")
    composite = sitk.CompositeTransform(
        [sitk.ReadTransform(str(tfm)), sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(str(field)), sitk.sitkVectorFloat64))]
    )
    theirs = _sitk_resample(sitk.ReadImage(str(scene / "moving.nii.gz")), sitk.ReadImage(str(scene / "fixed.nii.gz")), composite)
    np.testing.assert_allclose(_inner(ours, 3), _inner(theirs, 3), atol=0.5)
    # the field lies voxel for voxel on the fixed file's grid too
    assert nib.load(str(field)).shape[:3] == SHAPE
    np.testing.assert_allclose(nib.load(str(field)).affine, nib.load(str(scene / "fixed.nii.gz")).affine, atol=1e-5)


def test_fuse_denoise_segment_and_replay_keep_the_input_file_grid(scene, tmp_path):
    """Outputs on an input's grid (fusion onto its reference, denoising, segmentation, a replay) keep its file order."""
    from skimage.filters import threshold_otsu

    from napari_mmfuse.provenance import sidecar_path

    fixed_path = scene / "fixed.nii.gz"
    fixed = np.asarray(nib.load(str(fixed_path)).dataobj)
    fused, smooth, mask = tmp_path / "fused.nii.gz", tmp_path / "smooth.nii.gz", tmp_path / "mask.nii.gz"
    assert main(["fuse", str(fixed_path), str(scene / "moving.nii.gz"), "--method", "average", "-o", str(fused)]) == 0
    assert np.corrcoef(_inner(_check_on_fixed_grid(fused, fixed_path)).ravel(), _inner(fixed).ravel())[0, 1] > 0.9
    assert main(["denoise", str(fixed_path), "--method", "gaussian", "--sigma", "0.5", "-o", str(smooth)]) == 0
    assert np.abs(_check_on_fixed_grid(smooth, fixed_path) - fixed).mean() < 0.01 * np.ptp(fixed)
    assert main(["segment", str(fixed_path), "--method", "otsu", "-o", str(mask)]) == 0
    assert np.mean((_check_on_fixed_grid(mask, fixed_path) > 0) == (fixed > threshold_otsu(fixed))) > 0.99

    out, again = tmp_path / "out.nii.gz", tmp_path / "again.nii.gz"
    assert main(["transform", str(scene / "moving.nii.gz"), "--transform", str(scene / "truth.tfm"),
                 "--reference", str(fixed_path), "-o", str(out)]) == 0  # fmt: skip
    assert main(["replay", str(sidecar_path(out)), "-o", str(again)]) == 0
    np.testing.assert_array_equal(_check_on_fixed_grid(again, fixed_path), np.asarray(nib.load(str(out)).dataobj))


def test_cohort_outputs_keep_the_subject_file_grid(scene, tmp_path):
    """A recipe's outputs on a subject's input (denoised, fused onto it) are written on that file's grid."""
    import shutil

    from napari_mmfuse.cohort.recipe import parse_recipe
    from napari_mmfuse.cohort.runner import run_subject
    from napari_mmfuse.cohort.subjects import find_subjects

    subject = tmp_path / "study" / "sub-01"
    subject.mkdir(parents=True)
    shutil.copy(scene / "fixed.nii.gz", subject / "sub-01_t1.nii.gz")
    shutil.copy(scene / "moving.nii.gz", subject / "sub-01_t2.nii.gz")
    recipe = parse_recipe({"recipe": 1, "name": "grid", "inputs": {"t1": "*_t1.nii.gz", "t2": "*_t2.nii.gz"},
                           "steps": [{"id": "smooth", "op": "denoise/gaussian", "inputs": {"image": "t1"}},
                                     {"id": "fused", "op": "fuse/average", "inputs": {"images": ["smooth", "t2"]}}]})
    run_subject(recipe, find_subjects(recipe, str(tmp_path / "study" / "sub-*"))[0], tmp_path / "out")
    for name in ("smooth", "fused"):
        _check_on_fixed_grid(tmp_path / "out" / "sub-01" / f"{name}.nii.gz", scene / "fixed.nii.gz")


def test_a_saved_deformable_transform_puts_its_field_on_the_fixed_file_grid(scene, tmp_path):
    """save_output of a deformable transform (cohorts, replay): the field file lies on FIXED's own grid."""
    from napari_mmfuse.commands._outputs import save_output
    from napari_mmfuse.io.transforms import Transform, read_displacement_field
    from napari_mmfuse.pipeline import read_image

    fixed = read_image(scene / "fixed.nii.gz")
    field = np.random.default_rng(0).normal(size=(*fixed.data.shape, 3)).astype(np.float32)
    transform = Transform(np.eye(4), field, fixed.affine)
    save_output(tmp_path / "t.tfm", transform, grid=[{"shape": [2, 2, 2], "affine": np.eye(4).tolist()},
                                                     fixed.metadata["grid"]])  # fmt: skip
    written = nib.load(str(tmp_path / "t_field.nii.gz"))
    assert written.shape[:3] == SHAPE
    np.testing.assert_allclose(written.affine, nib.load(str(scene / "fixed.nii.gz")).affine, atol=1e-5)
    # every vector sits at the voxel of the same world position, unchanged
    again, affine = read_displacement_field(tmp_path / "t_field.nii.gz")
    index = np.indices(fixed.data.shape).reshape(3, -1)
    world = fixed.affine[:3, :3] @ index + fixed.affine[:3, 3:]
    there = np.rint(np.linalg.solve(affine[:3, :3], world - affine[:3, 3:])).astype(int)
    np.testing.assert_allclose(again[tuple(there)], field.reshape(-1, 3), atol=1e-6)


IXI = Path(__file__).resolve().parents[2] / "shared" / "data" / "registration" / "ixi002_t1_t2"


def test_real_ixi_t2_onto_t1_has_the_t1_file_grid(tmp_path):
    """The issue's case: IXI002 T1 is stored (150, 256, 256); T2 resampled onto it used to come out (256, 256, 150)."""
    t1, t2 = IXI / "hd_bet_IXI002-Guys-0828-T1.nii.gz", IXI / "hd_bet_IXI002-Guys-0828-T2.nii.gz"
    if not (t1.is_file() and t2.is_file()):
        pytest.skip("the shared IXI002 T1/T2 images are absent")
    sitk.WriteTransform(sitk.Euler3DTransform(), str(tmp_path / "identity.tfm"))
    out = tmp_path / "t2_on_t1.nii.gz"
    assert main(["transform", str(t2), "--transform", str(tmp_path / "identity.tfm"), "--reference", str(t1),
                 "-o", str(out)]) == 0  # fmt: skip
    written, reference = nib.load(str(out)), nib.load(str(t1))
    assert written.shape == reference.shape == (150, 256, 256)
    np.testing.assert_allclose(written.affine, reference.affine, atol=1e-5)
    theirs = _sitk_resample(sitk.ReadImage(str(t2), sitk.sitkFloat32), sitk.ReadImage(str(t1)), sitk.Euler3DTransform())
    np.testing.assert_allclose(_inner(np.asarray(written.dataobj)), _inner(theirs), atol=0.05)


def _write_dicom_series(folder, values: np.ndarray, origin, rowcos, colcos, spacing) -> None:
    """One CT file per slice of ``values`` (slice, row, column), shuffled names; spacing (column, row, slice)."""
    folder.mkdir()
    normal = np.cross(rowcos, colcos)
    series = generate_uid()
    for k in np.random.default_rng(0).permutation(values.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"s{k * 7 % 11}_{k}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientID, ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "GRID01", "CT", series, 1
        ds.StudyInstanceUID, ds.InstanceNumber = "1.2.826.0.1.3680043.8.498.2", int(k) + 1
        ds.ImagePositionPatient = [f"{v:.6f}" for v in np.asarray(origin) + k * spacing[2] * normal]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in np.concatenate([rowcos, colcos])]
        ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]
        ds.SliceThickness = f"{spacing[2]:.6f}"
        ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
        ds.Rows, ds.Columns = values.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit, ds.PixelRepresentation = 15, 0
        ds.PixelData = values[k].astype("<u2").tobytes()
        ds.save_as(ds.filename, enforce_file_format=True)
    assert len(list(folder.glob("*.dcm"))) == values.shape[0] and pydicom.dcmread(next(folder.glob("*.dcm"))).Rows


def test_dicom_reference_output_takes_the_series_grid(scene, tmp_path):
    """A DICOM reference: OUT (NIfTI) has the series' grid as ITK reads it (columns, rows, slices in order)."""
    tilt = _rotation(2, 12) @ _rotation(0, -8)
    rowcos, colcos = tilt @ [0.0, 1.0, 0.0], tilt @ [0.0, 0.0, -1.0]  # a sagittal-like, oblique acquisition
    spacing = (1.1, 1.4, 2.0)  # column, row, slice
    shape = (20, 36, 30)  # slices, rows, columns
    centre = CENTER_RAS * np.array([-1.0, -1.0, 1.0])
    direction = np.column_stack([rowcos, colcos, np.cross(rowcos, colcos)])
    origin = centre - direction @ (np.array(spacing) * (np.array(shape[::-1]) - 1) / 2)
    index = np.indices(shape, dtype=np.float64).reshape(3, -1)[::-1]  # column, row, slice
    lps = (direction @ (index * np.array(spacing)[:, None]) + origin[:, None]).T.reshape(*shape, 3)
    _write_dicom_series(tmp_path / "series", np.rint(_scene(lps) + 1024), origin, rowcos, colcos, spacing)

    out = tmp_path / "on_series.nii.gz"
    assert main(["transform", str(scene / "moving.nii.gz"), "--transform", str(scene / "truth.tfm"),
                 "--reference", str(tmp_path / "series"), "-o", str(out)]) == 0  # fmt: skip
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "series")))
    series = reader.Execute()
    written = sitk.ReadImage(str(out))
    assert written.GetSize() == series.GetSize() == shape[::-1]
    for attribute in ("GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(written, attribute)(), getattr(series, attribute)(), atol=1e-4)
    theirs = sitk.GetArrayFromImage(sitk.Resample(sitk.ReadImage(str(scene / "moving.nii.gz")), series,
                                                  sitk.ReadTransform(str(scene / "truth.tfm")), sitk.sitkLinear, 0.0))
    np.testing.assert_allclose(_inner(sitk.GetArrayFromImage(written)), _inner(theirs), atol=0.05)
