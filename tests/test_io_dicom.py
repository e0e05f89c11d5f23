"""DICOM reader: slice order, world coordinates and HU against analytic ground truth."""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.pixels import iter_pixels
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DSfloat

from napari_mmfuse.core.space import voxel_to_world
from napari_mmfuse.io._common import ReadError
from napari_mmfuse.io.dicom import WSI_SOP_CLASS, is_dicom, read_dicom

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PYDICOM_FILES = DATA / "misc" / "pip_wheel_samples" / "pydicom"
WSI_FILE = DATA / "slides" / "multiplex_dicom" / "small_dicom.dcm"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"

# ground-truth geometry of the synthetic series: K slices of R rows x C columns
K, R, C = 7, 6, 5
ROW_SPACING, COL_SPACING, SLICE_SPACING = 0.7, 0.8, 2.5  # PixelSpacing = [0.7, 0.8]
ORIGIN = np.array([-30.5, 12.25, 40.75])  # LPS position of voxel (0, 0, 0)
INTERCEPT = -1024.0


def rotation(axis: int, degrees: float) -> np.ndarray:
    """3x3 rotation about physical axis 0, 1 or 2."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


# coronal-like acquisition (rows run left, columns run inferior, slices posterior),
# tilted 15 degrees about z and 15 degrees about x
TILT = rotation(2, 15) @ rotation(0, 15)
ROWCOS = TILT @ np.array([1.0, 0.0, 0.0])
COLCOS = TILT @ np.array([0.0, 0.0, -1.0])
NORMAL = np.cross(ROWCOS, COLCOS)


def raw_values() -> np.ndarray:
    """Stored value of voxel (k, r, c): 2000 + 100 k + 10 r + c, unique per voxel."""
    k, r, c = np.indices((K, R, C))
    return (2000 + 100 * k + 10 * r + c).astype(np.uint16)


def decode(hu: np.ndarray) -> np.ndarray:
    """Original (k, r, c) of voxels from their HU value, shape (..., 3)."""
    value = np.rint(hu - INTERCEPT - 2000).astype(int)
    return np.stack([value // 100, (value % 100) // 10, value % 10], axis=-1)


def patient_position(kji: np.ndarray) -> np.ndarray:
    """Analytic LPS (x, y, z) of original voxels (k, r, c), shape (..., 3)."""
    kji = np.asarray(kji, dtype=np.float64)
    return (
        ORIGIN
        + kji[..., 2:3] * COL_SPACING * ROWCOS
        + kji[..., 1:2] * ROW_SPACING * COLCOS
        + kji[..., 0:1] * SLICE_SPACING * NORMAL
    )


def ds_value(value: float) -> DSfloat:
    return DSfloat(float(value), auto_format=True)


def new_dataset(path: Path, sop_class: str) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = "SYNTH01"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    return ds


def set_pixels(ds: Dataset, pixels: np.ndarray) -> None:
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype("<u2").tobytes()


def write_series(
    folder: Path,
    *,
    uid: str = "1.2.826.0.1.3680043.8.498.10",
    number: int = 3,
    description: str = "oblique CT",
    skip: tuple[int, ...] = (),
    seed: int = 0,
) -> list[Path]:
    """Write the synthetic oblique series, one file per slice, in shuffled order.

    Returns the file of each slice k (None for skipped slices).
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = rng.permutation(K) * 7 + 11  # file names do not sort by position
    instances = rng.permutation(K) + 1  # nor do InstanceNumbers
    raw = raw_values()
    files = [None] * K
    for k in rng.permutation(K):
        if k in skip:
            continue
        path = folder / f"IMG{uid[-2:]}_{names[k]:03d}.dcm"
        ds = new_dataset(path, CTImageStorage)
        ds.Modality = "CT"
        ds.SeriesInstanceUID = uid
        ds.SeriesNumber = number
        ds.SeriesDescription = description
        ds.InstanceNumber = int(instances[k])
        ds.ImagePositionPatient = [ds_value(v) for v in patient_position([k, 0, 0])]
        ds.ImageOrientationPatient = [ds_value(v) for v in np.concatenate([ROWCOS, COLCOS])]
        ds.PixelSpacing = [ds_value(ROW_SPACING), ds_value(COL_SPACING)]
        ds.SliceThickness = ds_value(SLICE_SPACING)
        ds.RescaleIntercept = ds_value(INTERCEPT)
        ds.RescaleSlope = ds_value(1.0)
        set_pixels(ds, raw[k])
        ds.save_as(path, enforce_file_format=True)
        files[k] = path
    return files


def write_axial_series(folder: Path, *, uid: str, number: int) -> None:
    """A second, plain axial 3-slice series of 4 x 4 pixels, slice k filled with k."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(3):
        path = folder / f"axial_{k}.dcm"
        ds = new_dataset(path, CTImageStorage)
        ds.Modality = "CT"
        ds.SeriesInstanceUID = uid
        ds.SeriesNumber = number
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [0, 0, 3 * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [1, 1]
        set_pixels(ds, np.full((4, 4), k))
        ds.save_as(path, enforce_file_format=True)


def check_world(record) -> None:
    """Every voxel's world position equals the analytic position of its original voxel."""
    index = np.indices(record.data.shape).reshape(3, -1).T
    kji = decode(record.data.reshape(-1))
    expected = patient_position(kji)[:, ::-1]  # napari order (z, y, x)
    np.testing.assert_allclose(voxel_to_world(record.affine, index), expected, atol=1e-6)


def test_is_dicom(tmp_path):
    write_axial_series(tmp_path / "series", uid="1.2.3.4", number=1)
    (tmp_path / "empty").mkdir()
    text = tmp_path / "notes.txt"
    text.write_text("not DICOM " * 20)
    short = tmp_path / "short.dcm"
    short.write_bytes(b"DICM")
    assert is_dicom(tmp_path / "series" / "axial_0.dcm")
    assert is_dicom(tmp_path / "series")
    assert not is_dicom(text)
    assert not is_dicom(short)
    assert not is_dicom(tmp_path / "empty")
    assert not is_dicom(tmp_path / "missing")


def test_oblique_series_hu_order_and_world(tmp_path):
    files = write_series(tmp_path)
    assert sorted(f.name for f in files) != [f.name for f in files]  # names do not follow position
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (record,) = read_dicom(tmp_path)

    assert record.data.dtype == np.float32
    assert record.data.shape == (R, K, C)  # reoriented to (S, P, L): rows, slices, columns
    assert record.metadata["orientation"] == "SPL"
    np.testing.assert_allclose(record.metadata["spacing"], (ROW_SPACING, SLICE_SPACING, COL_SPACING))
    # values are raw + intercept, and each voxel lands where its original voxel was
    assert sorted(record.data.reshape(-1) - INTERCEPT) == sorted(raw_values().reshape(-1))
    check_world(record)
    # the reorientation flipped rows (columns run inferior) and put slices second
    np.testing.assert_array_equal(decode(record.data[0, 0, 0]), [0, R - 1, 0])
    np.testing.assert_array_equal(decode(record.data[R - 1, K - 1, C - 1]), [K - 1, 0, C - 1])
    np.testing.assert_allclose(voxel_to_world(record.affine, [0, 0, 0]), patient_position([0, R - 1, 0])[::-1])

    meta = record.metadata
    assert record.name == "oblique CT"
    assert record.units == "mm" and meta["frame"] == "LPS" and meta["modality"] == "CT"
    assert meta["n_slices"] == K and meta["rescale_applied"] and meta["rescale_intercept"] == INTERCEPT
    assert meta["series_uid"] == "1.2.826.0.1.3680043.8.498.10" and meta["patient_id"] == "SYNTH01"
    assert meta["irregular_spacing"] is False and meta["value_units"] == "HU"


def test_same_grid_as_nifti(tmp_path):
    from napari_mmfuse.io.nifti import read_nifti

    write_series(tmp_path / "dicom")
    (dicom,) = read_dicom(tmp_path / "dicom")

    hu = (raw_values().astype(np.int16) + int(INTERCEPT)).transpose(2, 1, 0)  # NIfTI (i, j, k) = (col, row, slice)
    lps = np.eye(4)
    lps[:3, :3] = np.column_stack([COL_SPACING * ROWCOS, ROW_SPACING * COLCOS, SLICE_SPACING * NORMAL])
    lps[:3, 3] = ORIGIN
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    image = nib.Nifti1Image(hu, ras)
    image.set_qform(ras, code=1)
    image.set_sform(ras, code=1)
    nib.save(image, tmp_path / "oblique.nii.gz")
    (nifti,) = read_nifti(tmp_path / "oblique.nii.gz")

    assert nifti.data.shape == dicom.data.shape
    np.testing.assert_array_equal(np.asarray(nifti.data, dtype=np.float32), dicom.data)
    np.testing.assert_allclose(nifti.affine, dicom.affine, atol=1e-6)
    index = np.indices(dicom.data.shape).reshape(3, -1).T
    np.testing.assert_allclose(voxel_to_world(nifti.affine, index), voxel_to_world(dicom.affine, index), atol=1e-6)


def test_two_series_and_single_file(tmp_path):
    write_series(tmp_path, number=3)
    write_axial_series(tmp_path, uid="1.2.826.0.1.3680043.8.498.20", number=2)
    (tmp_path / "README.txt").write_text("skipped")

    records = read_dicom(tmp_path)
    assert [r.metadata["series_number"] for r in records] == [2, 3]
    axial, oblique = records
    assert axial.name == "CT 2" and axial.data.shape == (3, 4, 4) and oblique.data.shape == (R, K, C)
    np.testing.assert_array_equal(axial.data[:, 0, 0], [0, 1, 2])
    np.testing.assert_allclose(axial.metadata["spacing"], (3.0, 1.0, 1.0))
    assert axial.data.dtype == np.uint16 and not axial.metadata["rescale_applied"]

    (only,) = read_dicom(tmp_path / "axial_1.dcm")
    assert only.metadata["series_uid"] == "1.2.826.0.1.3680043.8.498.20"
    assert only.data.shape == (3, 4, 4)


def test_missing_slice_warns_and_loads(tmp_path):
    write_series(tmp_path, skip=(3,))
    with pytest.warns(UserWarning, match=r"gap of 5 mm .*1 missing slice") as caught:
        (record,) = read_dicom(tmp_path)
    assert "oblique CT" in str(caught[0].message)
    assert record.metadata["irregular_spacing"] is True
    assert record.data.shape == (R, K - 1, C)
    np.testing.assert_allclose(record.metadata["slice_spacing"], SLICE_SPACING)


def test_duplicate_position_keeps_one(tmp_path):
    files = write_series(tmp_path)
    copy = tmp_path / "zz_copy.dcm"
    copy.write_bytes(files[2].read_bytes())
    with pytest.warns(UserWarning, match="repeat an earlier position"):
        (record,) = read_dicom(tmp_path)
    assert record.data.shape == (R, K, C)
    check_world(record)


def test_mixed_orientation_splits(tmp_path):
    write_series(tmp_path)
    path = tmp_path / "other_orientation.dcm"
    ds = pydicom.dcmread(next(tmp_path.glob("*.dcm")))
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.save_as(path)
    with pytest.warns(UserWarning, match="mixes 2 orientations"):
        records = read_dicom(tmp_path)
    assert sorted(r.metadata["n_slices"] for r in records) == [1, K]
    assert [r.name for r in records] == ["oblique CT [1]", "oblique CT [2]"]


def test_enhanced_multiframe_per_frame_geometry(tmp_path):
    rng = np.random.default_rng(1)
    order = rng.permutation(K)  # frame f holds slice order[f]
    intercepts = INTERCEPT - 10.0 * np.arange(K)  # per-frame rescale
    raw = raw_values().astype(np.int32) + 10 * np.arange(K)[:, None, None]  # so HU stay raw + INTERCEPT
    path = tmp_path / "enhanced.dcm"
    ds = new_dataset(path, ENHANCED_CT)
    ds.Modality = "CT"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.30"
    ds.SeriesNumber = 5
    ds.NumberOfFrames = K
    shared = Dataset()
    orientation = Dataset()
    orientation.ImageOrientationPatient = [ds_value(v) for v in np.concatenate([ROWCOS, COLCOS])]
    measures = Dataset()
    measures.PixelSpacing = [ds_value(ROW_SPACING), ds_value(COL_SPACING)]
    measures.SliceThickness = ds_value(SLICE_SPACING)
    shared.PlaneOrientationSequence = Sequence([orientation])
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    groups = []
    for k in order:
        group, position, transform = Dataset(), Dataset(), Dataset()
        position.ImagePositionPatient = [ds_value(v) for v in patient_position([k, 0, 0])]
        transform.RescaleIntercept = ds_value(intercepts[k])
        transform.RescaleSlope = ds_value(1.0)
        group.PlanePositionSequence = Sequence([position])
        group.PixelValueTransformationSequence = Sequence([transform])
        groups.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(groups)
    set_pixels(ds, raw[order])
    ds.save_as(path, enforce_file_format=True)

    (record,) = read_dicom(path)
    assert record.data.shape == (R, K, C)
    assert record.metadata["rescale_intercept"] == "per slice"
    check_world(record)


def test_single_slice_uses_thickness(tmp_path):
    files = write_series(tmp_path / "all")
    (tmp_path / "one").mkdir()
    single = tmp_path / "one" / files[4].name
    single.write_bytes(files[4].read_bytes())
    (record,) = read_dicom(single)
    assert record.metadata["n_slices"] == 1
    assert record.data.shape == (R, 1, C)
    np.testing.assert_allclose(sorted(record.metadata["spacing"]), sorted((ROW_SPACING, SLICE_SPACING, COL_SPACING)))
    check_world(record)


def test_truncated_file_and_empty_folder(tmp_path):
    files = write_series(tmp_path / "series")
    victim = files[5]
    victim.write_bytes(victim.read_bytes()[:-25])
    with pytest.raises(ReadError, match="pixel data") as error:
        read_dicom(tmp_path / "series")
    assert error.value.path.name == victim.name and victim.name in str(error.value)

    garbage = tmp_path / "garbage" / "x.dcm"
    garbage.parent.mkdir()
    garbage.write_bytes(b"\0" * 128 + b"DICM" + bytes(range(256)) * 3)
    with pytest.raises(ReadError, match="x.dcm.*header is corrupt"):
        read_dicom(garbage.parent)

    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "a.txt").write_text("x")
    with pytest.raises(ReadError, match="no DICOM files"):
        read_dicom(tmp_path / "nothing")


def write_slide(path: Path, truth: np.ndarray, tile: tuple[int, int], *, per_frame: bool, seed: int = 2) -> None:
    """A VL whole-slide image of ``truth`` (paths, rows, cols[, 3]) uint8, tiled."""
    n_paths = truth.shape[0]
    rows, cols = truth.shape[1:3]
    rgb = truth.ndim == 4
    tiles = []
    for p in range(n_paths):
        for r0 in range(0, rows, tile[0]):
            for c0 in range(0, cols, tile[1]):
                frame = np.zeros(tile + truth.shape[3:], np.uint8)
                block = truth[p, r0 : r0 + tile[0], c0 : c0 + tile[1]]
                frame[: block.shape[0], : block.shape[1]] = block
                tiles.append((p, r0, c0, frame))
    if per_frame:
        tiles = [tiles[i] for i in np.random.default_rng(seed).permutation(len(tiles))]
    ds = new_dataset(path, WSI_SOP_CLASS)
    ds.Modality = "SM"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.40"
    ds.SeriesNumber = 1
    ds.SeriesDescription = "synthetic slide"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.TotalPixelMatrixRows, ds.TotalPixelMatrixColumns = rows, cols
    ds.NumberOfFrames = len(tiles)
    paths = []
    for p in range(n_paths):
        item = Dataset()
        item.OpticalPathIdentifier = str(p + 1)
        item.OpticalPathDescription = f"stain{p + 1}"
        paths.append(item)
    ds.OpticalPathSequence = Sequence(paths)
    ds.NumberOfOpticalPaths = n_paths
    shared, measures = Dataset(), Dataset()
    measures.PixelSpacing = [ds_value(0.0005), ds_value(0.00025)]  # 0.5 um between rows, 0.25 um between columns
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    if per_frame:
        ds.DimensionOrganizationType = "TILED_SPARSE"
        groups = []
        for p, r0, c0, _ in tiles:
            group, position, optical = Dataset(), Dataset(), Dataset()
            position.RowPositionInTotalImagePixelMatrix = r0 + 1
            position.ColumnPositionInTotalImagePixelMatrix = c0 + 1
            optical.OpticalPathIdentifier = str(p + 1)
            group.PlanePositionSlideSequence = Sequence([position])
            group.OpticalPathIdentificationSequence = Sequence([optical])
            groups.append(group)
        ds.PerFrameFunctionalGroupsSequence = Sequence(groups)
    else:
        ds.DimensionOrganizationType = "TILED_FULL"
    ds.Rows, ds.Columns = tile
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = "RGB" if rgb else "MONOCHROME2"
    if rgb:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.stack([t[3] for t in tiles]).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_slide_per_frame_positions_two_paths(tmp_path):
    truth = np.random.default_rng(3).integers(0, 256, (2, 7, 10), dtype=np.uint8)
    write_slide(tmp_path / "slide.dcm", truth, (4, 4), per_frame=True)
    (record,) = read_dicom(tmp_path / "slide.dcm")
    np.testing.assert_array_equal(record.data, truth)
    assert record.channel_axis == 0 and record.channel_names == ["stain1", "stain2"] and not record.rgb
    assert record.units == "um" and record.metadata["modality"] == "microscopy"
    np.testing.assert_allclose(record.affine, np.diag([0.5, 0.25, 1.0]))


def test_slide_tiled_full_rgb(tmp_path):
    truth = np.random.default_rng(4).integers(0, 256, (1, 9, 6, 3), dtype=np.uint8)
    write_slide(tmp_path / "slide.dcm", truth, (4, 4), per_frame=False)
    (record,) = read_dicom(tmp_path / "slide.dcm")
    np.testing.assert_array_equal(record.data, truth[0])
    assert record.rgb and record.channel_axis is None and record.name == "synthetic slide"
    assert record.affine.shape == (3, 3)


@pytest.mark.skipif(not PYDICOM_FILES.is_dir(), reason="shared pydicom sample files are absent")
def test_real_ct_and_mr_files():
    (ct,) = read_dicom(PYDICOM_FILES / "CT_small.dcm")
    assert ct.data.shape == (1, 128, 128) and ct.data.dtype == np.float32
    assert ct.metadata["modality"] == "CT" and ct.metadata["orientation"] == "SPL"
    np.testing.assert_allclose(ct.metadata["spacing"], (5.0, 0.661468, 0.661468))
    np.testing.assert_allclose(voxel_to_world(ct.affine, [0, 0, 0]), [-75.699997, -179.035797, -158.135803])
    assert -1024 <= ct.data.min() < ct.data.max() < 3072  # HU

    (mr,) = read_dicom(PYDICOM_FILES / "MR_small.dcm")
    assert mr.data.shape == (1, 64, 64) and mr.data.dtype == np.int16
    assert mr.metadata["modality"] == "MR" and not mr.metadata["rescale_applied"]
    np.testing.assert_allclose(mr.metadata["spacing"], (0.8, 0.3125, 0.3125))

    records = read_dicom(PYDICOM_FILES)  # the licence and README files are skipped
    assert sorted(r.metadata["modality"] for r in records) == ["CT", "MR"]


@pytest.mark.skipif(not WSI_FILE.is_file(), reason="shared DICOM whole-slide sample is absent")
@pytest.mark.filterwarnings("ignore:The value length:UserWarning", "ignore:.*JFIF APP marker:UserWarning")
def test_real_whole_slide_image():
    # the file declares no frame organisation and stores its 7 x 6 tiles column by
    # column; it has no PixelSpacing either
    with pytest.warns(UserWarning) as caught:
        (record,) = read_dicom(WSI_FILE)
    messages = " ".join(str(w.message) for w in caught)
    assert "column by column" in messages and "no PixelSpacing" in messages
    assert record.data.shape == (2638, 3236, 3) and record.data.dtype == np.uint8 and record.rgb
    assert record.metadata["modality"] == "microscopy" and record.units == "pixel"
    np.testing.assert_array_equal(record.affine, np.eye(3))
    frames = list(iter_pixels(pydicom.dcmread(WSI_FILE), indices=[0, 1, 6]))
    np.testing.assert_array_equal(record.data[:500, :500], frames[0])
    np.testing.assert_array_equal(record.data[500:1000, :500], frames[1])
    np.testing.assert_array_equal(record.data[:500, 500:1000], frames[2])
