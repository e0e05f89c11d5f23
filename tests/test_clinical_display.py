"""Clinical display on read: PET SUVbw against the analytic value, CT windows, MR/PET auto windows, Window dock."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, PositronEmissionTomographyImageStorage
from pydicom.uid import generate_uid

from napari_mmfuse._reader import STORED_UNITS_NOTE, read_layers
from napari_mmfuse.core.display import CT_PRESETS, percentile_window, preset, suv_bw_factor, window_limits
from napari_mmfuse.io import read, write
from napari_mmfuse.io.dicom import read_dicom

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SOP = {"PT": PositronEmissionTomographyImageStorage, "CT": CTImageStorage, "MR": MRImageStorage}
SHAPE = (5, 6, 7)  # slices, rows, columns
WEIGHT_KG, DOSE_BQ, HALF_LIFE_S = 72.5, 3.7e8, 6586.2  # 370 MBq of F-18
PET_TAGS = {
    "Units": "BQML", "DecayCorrection": "START", "PatientWeight": WEIGHT_KG,
    "SeriesDate": "20240102", "SeriesTime": "101500", "AcquisitionDate": "20240102", "AcquisitionTime": "101500",
}  # fmt: skip
DRUG_TAGS = {"RadionuclideTotalDose": DOSE_BQ, "RadionuclideHalfLife": HALF_LIFE_S, "RadiopharmaceuticalStartTime": "091500"}


def write_series(folder: Path, modality: str, stored: np.ndarray, slopes, intercept: float = 0.0,
                 tags: dict | None = None, drug: dict | None = None) -> None:
    """One file per slice of ``stored`` (uint16), axial, 2 mm voxels, with per-slice RescaleSlope."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    for k, pixels in enumerate(stored):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = SOP[modality]
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"{k:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = modality, series_uid, 1, k + 1
        ds.PatientID, ds.StudyInstanceUID = "SYNTH", "1.2.826.0.1.3680043.8.498.7"
        ds.ImagePositionPatient = [0.0, 0.0, 2.0 * k]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing, ds.SliceThickness = [2.0, 2.0], 2.0
        ds.RescaleSlope, ds.RescaleIntercept = f"{slopes[k]:.6g}", f"{intercept:g}"
        for keyword, value in (tags or {}).items():
            if value is not None:  # None: the tag is left out
                setattr(ds, keyword, value)
        if drug is not None:
            item = Dataset()
            for keyword, value in drug.items():
                if value is not None:
                    setattr(item, keyword, value)
            ds.RadiopharmaceuticalInformationSequence = Sequence([item])
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit, ds.PixelRepresentation = 15, 0
        ds.PixelData = pixels.astype("<u2").tobytes()
        ds.save_as(folder / f"{k:03d}.dcm", enforce_file_format=True)


def pet_series(folder: Path, tags: dict | None = None, drug: dict | None = None) -> np.ndarray:
    """A PET series in Bq/ml with distinct voxel values; returns the activity (Bq/ml) of its voxels."""
    stored = np.random.default_rng(1).permutation(np.arange(1, 1 + np.prod(SHAPE)) * 97).reshape(SHAPE)
    slopes = 0.5 + 0.25 * np.arange(SHAPE[0])  # per-slice scaling as PET scanners write it
    write_series(folder, "PT", stored, slopes, tags=PET_TAGS | (tags or {}), drug=DRUG_TAGS | (drug or {}))
    return stored * np.array([float(f"{s:.6g}") for s in slopes])[:, None, None]


def suv(activity: np.ndarray, elapsed_s: float) -> np.ndarray:
    """Analytic SUVbw of ``activity`` (Bq/ml) with the dose decayed over ``elapsed_s``."""
    return activity * WEIGHT_KG * 1000.0 / (DOSE_BQ * 0.5 ** (elapsed_s / HALF_LIFE_S))


@pytest.mark.parametrize(
    ("tags", "drug", "elapsed"),
    [
        ({}, {}, 3600.0),  # START: injection 09:15, series start 10:15
        ({"SeriesTime": "103000"}, {"RadiopharmaceuticalStartDateTime": "20240102091500"}, 3600.0),  # earliest acquisition
        ({"DecayCorrection": "ADMIN"}, {}, 0.0),  # decay-corrected to the injection
        ({"SeriesDate": "20240103", "SeriesTime": "003000", "AcquisitionDate": "20240103", "AcquisitionTime": "003000"},
         {"RadiopharmaceuticalStartTime": "233000"}, 3600.0),  # injected before midnight
    ],
    ids=["start", "acquisition-earlier", "admin", "midnight"],
)
def test_pet_suvbw_equals_the_analytic_value(tmp_path, tags, drug, elapsed):
    activity = pet_series(tmp_path / "pet", tags, drug)
    (record,) = read_dicom(tmp_path / "pet")
    expected = suv(activity, elapsed)
    # the stored values are distinct and the factor positive: sorted values pair voxel with voxel
    np.testing.assert_allclose(np.sort(record.data, axis=None), np.sort(expected, axis=None), rtol=1e-4)
    assert record.data.dtype == np.float32
    meta = record.metadata
    assert meta["value_units"] == "g/ml" and meta["suv_type"] == "SUVbw" and meta["modality"] == "PET"
    assert meta["suv_factor"] == pytest.approx(suv(1.0, elapsed), rel=1e-12)
    assert meta["suv_elapsed_s"] == pytest.approx(elapsed)
    assert "suv_note" not in meta


@pytest.mark.parametrize(
    ("tags", "drug", "missing"),
    [
        ({"PatientWeight": None}, {}, "PatientWeight"),
        ({}, {"RadionuclideTotalDose": None}, "RadionuclideTotalDose"),
        ({"Units": "CNTS"}, {}, "Units BQML"),
        ({"DecayCorrection": "NONE"}, {}, "DecayCorrection START or ADMIN"),
    ],
    ids=["weight", "dose", "counts", "no-decay-correction"],
)
def test_pet_without_the_tags_stays_in_stored_units_with_a_note(tmp_path, tags, drug, missing):
    activity = pet_series(tmp_path / "pet", tags, drug)
    (record,) = read_dicom(tmp_path / "pet")
    np.testing.assert_allclose(np.sort(record.data, axis=None), np.sort(activity, axis=None), rtol=1e-6)
    meta = record.metadata
    assert "suv_type" not in meta and "suv_factor" not in meta
    assert meta["value_units"] == ("CNTS" if tags.get("Units") == "CNTS" else "Bq/ml")
    assert meta["suv_note"].startswith("SUVbw not computed, values as stored") and missing in meta["suv_note"]


def test_suv_factor_refuses_impossible_quantities():
    assert suv_bw_factor(weight_kg=70, dose_bq=7e4, half_life_s=100.0, elapsed_s=100.0) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="patient weight"):
        suv_bw_factor(weight_kg=0, dose_bq=1e8, half_life_s=6586.2, elapsed_s=0)
    with pytest.raises(ValueError, match="before the injection"):
        suv_bw_factor(weight_kg=70, dose_bq=1e8, half_life_s=6586.2, elapsed_s=-5)


def test_pet_opens_hot_and_windowed_on_percentiles(tmp_path):
    pet_series(tmp_path / "pet")
    ((data, kwargs, kind),) = read_layers(str(tmp_path / "pet"))
    assert kind == "image" and kwargs["colormap"] == "hot" and kwargs["blending"] == "additive"
    high = np.percentile(data[data != 0], 99.5)
    np.testing.assert_allclose(kwargs["contrast_limits"], [0.0, high], rtol=1e-6)
    assert kwargs["metadata"]["value_units"] == "g/ml"


def test_nifti_pet_keeps_stored_units_with_a_note(tmp_path):
    values = np.random.default_rng(2).gamma(2.0, 3000.0, (12, 14, 10)).astype(np.float32)
    write(tmp_path / "sub-01_pet.nii.gz", values, np.diag([2.0, 2.0, 2.0, 1.0]))
    ((data, kwargs, _),) = read_layers(str(tmp_path / "sub-01_pet.nii.gz"))
    assert kwargs["metadata"]["modality"] == "PET"
    assert kwargs["metadata"]["value_units"] == "as stored" and kwargs["metadata"]["suv_note"] == STORED_UNITS_NOTE
    np.testing.assert_allclose(np.sort(data, axis=None), np.sort(values, axis=None))  # not rescaled
    assert kwargs["colormap"] == "hot"


def mr_values(shape=(10, 12, 9)) -> np.ndarray:
    """A head-like MR: zero background around positive tissue."""
    rng = np.random.default_rng(3)
    values = rng.normal(600.0, 150.0, shape).clip(1, None)
    values[:, :2] = 0
    values[:, :, -2:] = 0
    return values


def test_mr_opens_windowed_on_robust_percentiles_nifti_and_dicom(tmp_path):
    values = mr_values().astype(np.float32)
    write(tmp_path / "sub-01_FLAIR.nii.gz", values, np.diag([1.0, 1.2, 1.1, 1.0]))
    stored = np.rint(mr_values()).astype(np.uint16)
    write_series(tmp_path / "mr", "MR", stored, [1.0] * len(stored))
    for path, truth in ((tmp_path / "sub-01_FLAIR.nii.gz", values), (tmp_path / "mr", stored)):
        ((data, kwargs, _),) = read_layers(str(path))
        nonzero = truth[truth != 0].astype(np.float64)
        np.testing.assert_allclose(kwargs["contrast_limits"], np.percentile(nonzero, [0.5, 99.5]), rtol=1e-6)
        assert kwargs["colormap"] == "gray"
        assert kwargs["metadata"]["display_window"] == "percentiles 0.5-99.5 of non-zero voxels"


def test_real_mr_and_ct_open_with_their_windows():
    t1 = DATA / "registration" / "ixi002_t1_t2" / "hd_bet_IXI002-Guys-0828-T1.nii.gz"
    ct = DATA / "misc" / "pip_wheel_samples" / "pydicom" / "CT_small.dcm"
    if not (t1.exists() and ct.exists()):
        pytest.skip("shared IXI T1 or pydicom CT sample absent")
    ((data, kwargs, _),) = read_layers(str(t1))  # 256x256x150: percentiles of a strided sample
    nonzero = np.asarray(data)[np.asarray(data) != 0]
    exact = np.percentile(nonzero, [0.5, 99.5])
    np.testing.assert_allclose(kwargs["contrast_limits"], exact, atol=0.01 * (exact[1] - exact[0]))
    ((data, kwargs, _),) = read_layers(str(ct))  # a body CT slice in HU: soft tissue
    assert np.min(data) < -200 and kwargs["contrast_limits"] == list(preset("soft tissue").limits)


def ct_values() -> np.ndarray:
    values = np.full(SHAPE, 1000 + 40, dtype=np.uint16)  # stored = HU + 1000
    values[:, 0] = 0  # air, -1000 HU
    values[:, -1] = 1000 + 900  # bone
    return values


@pytest.mark.parametrize(("body_part", "window"), [("HEAD", "brain"), ("CHEST", "soft tissue"), (None, "soft tissue")])
def test_dicom_ct_opens_in_hu_with_the_region_window(tmp_path, body_part, window):
    tags = {"SeriesDescription": "CT axial"} | ({"BodyPartExamined": body_part} if body_part else {})
    write_series(tmp_path / "ct", "CT", ct_values(), [1.0] * SHAPE[0], intercept=-1000.0, tags=tags)
    ((data, kwargs, _),) = read_layers(str(tmp_path / "ct"))
    assert data.min() == -1000 and data.max() == 900 and kwargs["metadata"]["value_units"] == "HU"
    chosen = preset(window)
    assert kwargs["contrast_limits"] == [chosen.level - chosen.width / 2, chosen.level + chosen.width / 2]
    assert kwargs["metadata"]["display_window"].startswith(f"CT {window} (W")


def test_ct_not_in_hu_is_windowed_on_percentiles(tmp_path):
    noise = np.random.default_rng(4).normal(0.0, 5.0, SHAPE)
    values = (ct_values() + noise).astype(np.float32) + 24  # stored with an offset: no voxel below -200
    write(tmp_path / "ct.nii.gz", values, np.eye(4))
    ((_, kwargs, _),) = read_layers(str(tmp_path / "ct.nii.gz"))
    np.testing.assert_allclose(kwargs["contrast_limits"], percentile_window(values))
    assert "not HU" in kwargs["metadata"]["display_window"]


def test_presets_table():
    assert [p.name for p in CT_PRESETS] == ["brain", "subdural", "stroke", "bone", "lung", "soft tissue"]
    assert preset("lung").limits == (-1350.0, 150.0) and window_limits(80, 40) == (0.0, 80.0)
    with pytest.raises(ValueError, match="choose one of"):
        preset("liver")


def test_window_dock_sets_presets_by_button_and_key(make_napari_viewer, qtbot, tmp_path, shots_dir):
    from qtpy.QtCore import Qt

    from napari_mmfuse.sample_data import head_phantom
    from napari_mmfuse.widgets.window import AUTO_KEY, preset_key

    ct = next(r for r in head_phantom() if r.metadata["modality"] == "CT")
    write(tmp_path / "head_ct.nii.gz", ct.data, ct.affine)
    viewer = make_napari_viewer(show=True)
    (layer,) = viewer.open(str(tmp_path / "head_ct.nii.gz"), plugin="napari-mmfuse")
    assert tuple(layer.contrast_limits) == preset("brain").limits  # a head CT opens in the brain window
    _, widget = viewer.window.add_plugin_dock_widget("napari-mmfuse", "Window")
    viewer.layers.selection.active = layer

    widget.buttons["bone"].click()
    assert tuple(layer.contrast_limits) == (-500.0, 1500.0)
    assert "W2000 L500" in widget.current.text()
    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    for index, item in enumerate(CT_PRESETS):
        qtbot.keyClick(canvas, getattr(Qt, f"Key_{index + 1}"), Qt.AltModifier)
        assert tuple(layer.contrast_limits) == item.limits, preset_key(index)
    qtbot.keyClick(canvas, Qt.Key_0, Qt.AltModifier)
    np.testing.assert_allclose(layer.contrast_limits, percentile_window(np.asarray(layer.data)), rtol=1e-6)
    assert AUTO_KEY == "Alt-0"

    # the screenshot: the same axial slice in the bone and the brain window
    viewer.dims.set_point(0, float(viewer.dims.range[0].start + viewer.dims.range[0].stop) / 2)
    viewer.reset_view()
    shots = []
    viewer.text_overlay.visible, viewer.text_overlay.font_size = True, 14
    for name in ("bone", "brain"):
        widget.buttons[name].click()
        viewer.text_overlay.text = f"{name}  W{preset(name).width:g} L{preset(name).level:g}"
        shots.append(viewer.screenshot(canvas_only=True, flash=False))
    iio.imwrite(shots_dir / "ct_bone_brain.png", np.concatenate([shot[..., :3] for shot in shots], axis=1))
    widget.grab().save(str(shots_dir / "window_dock.png"))
    assert not np.array_equal(shots[0], shots[1])  # the windows show the same slice differently


def test_reader_sets_no_display_for_other_images(tmp_path):
    write(tmp_path / "plain.nii.gz", np.arange(60, dtype=np.float32).reshape(3, 4, 5), np.eye(4))
    ((_, kwargs, _),) = read_layers(str(tmp_path / "plain.nii.gz"))
    assert "contrast_limits" not in kwargs and "colormap" not in kwargs
    assert read(tmp_path / "plain.nii.gz")[0].metadata.get("modality") is None
