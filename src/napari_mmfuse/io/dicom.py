"""DICOM reader: CT/MR/PET/SPECT series (single- or multi-frame) and whole-slide images.

Volumes are placed in the LPS patient frame from each slice's ImagePositionPatient and
ImageOrientationPatient (or the per-frame functional groups of enhanced multi-frame
files): slices are ordered by their position along the slice normal, never by file
name or InstanceNumber, and the slice spacing comes from those positions. The
whole-slide images (VL Whole Slide Microscopy) of a series open as one lazy multiscale
slide in micrometres (see :mod:`.dicom_slide`). PET series in Bq/ml are converted to
body-weight SUV (see :func:`pet_suv`).
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from pydicom.uid import UID
from pydicom.valuerep import DA, DT, TM

from ..core.display import suv_bw_factor
from ..core.space import affine_from_itk, orientation_code, reorient_to_nearest, spacing_of
from ._common import ImageRecord, ReadError, check_budget, file_grid
from .dicom_frames import (
    MODALITIES,
    SeriesInfo,
    as_list,
    dcmread,
    decode_frames,
    find_value,
    first_item,
    floats,
)
from .dicom_slide import build_slides

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
_DUPLICATE_MM = 1e-3  # slices closer than this along the normal share a position
_IRREGULAR = 0.01  # relative deviation from the median slice spacing that is reported
_SHEAR = 0.1  # in-plane drift of slice positions, in pixels, that is reported


@dataclass
class _Slice:
    path: Path
    frame: int
    shape: tuple[int, int]
    position: np.ndarray | None
    orientation: np.ndarray | None
    pixel_spacing: tuple[float, float] | None  # (between rows, between columns), mm
    thickness: float | None
    spacing_between: float | None
    slope: float
    intercept: float
    instance: int


def _has_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _candidates(folder: Path) -> list[Path]:
    return [f for f in sorted(folder.iterdir()) if f.is_file() and not f.name.startswith(".")]


def is_dicom(path) -> bool:
    """Tell whether ``path`` is a DICOM file or a folder holding at least one.

    Only the 132-byte preamble of each file is read (``DICM`` at offset 128).

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    bool
        False as well when the path cannot be read.
    """
    path = Path(path)
    try:
        if path.is_dir():
            return any(_has_preamble(f) for f in _candidates(path))
        return path.is_file() and _has_preamble(path)
    except OSError:
        return False


def read_dicom(path) -> list[ImageRecord]:
    """Read DICOM series and whole-slide images into records in the LPS world frame.

    Parameters
    ----------
    path : str or Path
        A folder (every DICOM file directly in it is read, other files are skipped) or
        one file, in which case the files of its folder that share its
        SeriesInstanceUID are read.

    Returns
    -------
    list of ImageRecord
        One per series, sorted by SeriesNumber. A series that mixes orientations or
        frame sizes gives one record per stack. Volumes are 3D ``(slice, row, column)``
        arrays reoriented to the nearest world axes (see
        :func:`~napari_mmfuse.core.space.reorient_to_nearest`), in millimetres, with
        RescaleSlope/RescaleIntercept applied per slice (float32, e.g. HU for CT, when
        they are not 1 and 0); PET (Modality PT) in body-weight SUV, g/ml, when its tags
        allow (:func:`pet_suv`), else as stored with ``metadata["suv_note"]``. Whole-slide
        images are 2D (RGB or with a channel axis per optical path) in micrometres (in
        pixels when the file has no PixelSpacing).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ReadError
        If the folder holds no DICOM files, a file is not DICOM, or a file is corrupt
        or truncated (the error names the file).

    Warns
    -----
    UserWarning
        Irregular slice spacing (gaps, duplicate positions, varying steps), slices off
        the slice normal, mixed orientations in one series, a slide without pixel
        spacing, or focal planes left out.
    """
    with warnings.catch_warnings():
        # pydicom's validation notes (a UID one character too long, ...) are noise here: a file
        # that cannot be read gives one ReadError line
        warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")
        try:
            return _read_dicom(Path(path))
        except (ReadError, FileNotFoundError, MemoryError):
            raise
        except Exception as error:  # pydicom converts values lazily: a corrupt one fails where it is first used
            raise ReadError(path, f"corrupt DICOM data ({type(error).__name__}: {error})") from error


def _read_dicom(path: Path) -> list[ImageRecord]:
    if path.is_dir():
        files = [f for f in _candidates(path) if _has_preamble(f)]
        if not files:
            raise ReadError(path, "no DICOM files")
    elif path.is_file():
        if not _has_preamble(path):
            raise ReadError(path, "not a DICOM file (no 'DICM' marker at byte 128)")
        files = _same_series(path)
    else:
        raise FileNotFoundError(f"no such file or folder: {path}")

    series: dict[str, SeriesInfo] = {}
    headers: dict[str, object] = {}  # the first header of each series: its series-level tags
    acquired: dict[str, datetime] = {}  # the earliest AcquisitionDate/Time of each series
    stacks: dict[tuple, list[_Slice]] = defaultdict(list)
    slides: list[tuple[str, Path]] = []
    for file in files:
        header = _read_header(file)
        if not _is_image(header):
            continue
        uid = str(header.get("SeriesInstanceUID", ""))
        series.setdefault(uid, _series_of(header))
        headers.setdefault(uid, header)
        when = _when(header.get("AcquisitionDate") or header.get("SeriesDate"), header.get("AcquisitionTime"))
        if when is not None and (uid not in acquired or when < acquired[uid]):
            acquired[uid] = when
        if _is_slide(header):
            slides.append((uid, file))
            continue
        for item in _slices_of(header, file):
            spacing = None if item.pixel_spacing is None else tuple(np.round(item.pixel_spacing, 4))
            orientation = None if item.orientation is None else tuple(np.round(item.orientation, 3))
            stacks[(uid, orientation, item.shape, spacing)].append(item)
    if not stacks and not slides:
        raise ReadError(path, "no DICOM images (only non-image objects such as reports or a DICOMDIR)")

    by_series: dict[str, list[list[_Slice]]] = defaultdict(list)
    for (uid, *_), items in stacks.items():
        by_series[uid].append(items)

    records = []
    for uid, groups in by_series.items():
        info = series[uid]
        if len(groups) > 1:
            warnings.warn(
                f"DICOM series {info.name!r} ({uid}) mixes {len(groups)} orientations, frame sizes or "
                "pixel spacings; each is read as a separate volume",
                stacklevel=3,
            )
        for part, items in enumerate(groups, start=1):
            name = info.name if len(groups) == 1 else f"{info.name} [{part}]"
            records.append(_build_volume(info, items, name, path, headers[uid], acquired.get(uid)))
    for uid in dict.fromkeys(uid for uid, _ in slides):
        records.extend(build_slides(series[uid], [file for other, file in slides if other == uid], path))
    records.sort(key=lambda r: (_number_key(r.metadata.get("series_number")), r.name))
    return records


def _number_key(number) -> float:
    return math.inf if number is None else float(number)


def _same_series(file: Path) -> list[Path]:
    try:
        wanted = dcmread(file, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
    except Exception as error:  # pydicom raises many types on corrupt headers
        raise ReadError(file, f"invalid DICOM header ({type(error).__name__}: {error})") from error
    uid = wanted.get("SeriesInstanceUID")
    if uid is None:
        return [file]
    same = []
    for other in _candidates(file.parent):
        if other == file:
            same.append(other)
        elif _has_preamble(other):
            try:
                header = dcmread(other, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
            except Exception:  # an unreadable sibling belongs to no series we read
                continue
            if header.get("SeriesInstanceUID") == uid:
                same.append(other)
    return same


def _read_header(file: Path):
    try:
        return dcmread(file, stop_before_pixels=True)
    except Exception as error:  # pydicom raises many types on corrupt headers
        raise ReadError(file, f"invalid DICOM header ({type(error).__name__}: {error})") from error


def _is_image(header) -> bool:
    """True for images; False for other objects (reports, DICOMDIR); ReadError when broken."""
    if "Rows" in header and "Columns" in header:
        return True
    sop = header.get("SOPClassUID") or header.file_meta.get("MediaStorageSOPClassUID")
    if not sop:
        raise ReadError(header.filename, "no SOP Class UID and no image size; the header is corrupt")
    if "Image" in UID(str(sop)).name:
        raise ReadError(header.filename, "image header is incomplete (no Rows/Columns); the file may be truncated")
    return False


def _is_slide(header) -> bool:
    image_type = [str(v).upper() for v in as_list(header.get("ImageType"))]
    return (
        header.get("Modality") == "SM"
        or header.get("SOPClassUID") == WSI_SOP_CLASS
        or ("VOLUME" in image_type and "TotalPixelMatrixColumns" in header)
    )


def _series_of(header) -> SeriesInfo:
    number = header.get("SeriesNumber")
    return SeriesInfo(
        uid=str(header.get("SeriesInstanceUID", "")),
        number=None if number in (None, "") else int(number),
        description=str(header.get("SeriesDescription", "") or "").strip(),
        modality=str(header.get("Modality", "") or ""),
        patient_id=str(header.get("PatientID", "") or ""),
    )


def _slices_of(header, file: Path) -> list[_Slice]:
    """One entry per frame, with its own geometry and rescale where the file has them."""
    shape = (int(header.Rows), int(header.Columns))
    n_frames = int(header.get("NumberOfFrames") or 1)
    instance = int(header.get("InstanceNumber") or 0)
    shared = first_item(header, "SharedFunctionalGroupsSequence")
    datasets = (header, first_item(header, "DetectorInformationSequence"))
    per_frame = header.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None or len(per_frame) != n_frames:
        per_frame = [None] * n_frames

    slices = []
    for frame, group in enumerate(per_frame):
        groups = (group, shared)
        pixel_spacing = floats(find_value(groups, datasets, "PixelMeasuresSequence", "PixelSpacing"))
        if pixel_spacing is None:
            pixel_spacing = floats(header.get("ImagerPixelSpacing"))
        thickness = find_value(groups, datasets, "PixelMeasuresSequence", "SliceThickness")
        between = find_value(groups, datasets, "PixelMeasuresSequence", "SpacingBetweenSlices")
        slope = find_value(groups, datasets, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = find_value(groups, datasets, "PixelValueTransformationSequence", "RescaleIntercept")
        slices.append(
            _Slice(
                path=file,
                frame=frame,
                shape=shape,
                position=floats(find_value(groups, datasets, "PlanePositionSequence", "ImagePositionPatient")),
                orientation=floats(find_value(groups, datasets, "PlaneOrientationSequence", "ImageOrientationPatient")),
                pixel_spacing=None if pixel_spacing is None else (float(pixel_spacing[0]), float(pixel_spacing[1])),
                thickness=None if thickness is None else float(thickness),
                spacing_between=None if between is None else float(between),
                slope=1.0 if slope is None else float(slope),
                intercept=0.0 if intercept is None else float(intercept),
                instance=instance,
            )
        )
    if n_frames > 1 and all(s.position is not None for s in slices):
        same = all(np.allclose(s.position, slices[0].position) for s in slices)
        if same and slices[0].orientation is not None:
            # classic multi-frame (e.g. NM): one position, frames stacked along the normal
            step = slices[0].spacing_between or slices[0].thickness or 1.0
            normal = _normal(slices[0].orientation)
            for k, item in enumerate(slices):
                item.position = slices[0].position + k * step * normal
    return slices


def _normal(orientation: np.ndarray) -> np.ndarray:
    row, col = _cosines(orientation)
    normal = np.cross(row, col)
    return normal / np.linalg.norm(normal)


def _cosines(orientation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    row = orientation[:3] / np.linalg.norm(orientation[:3])
    col = orientation[3:6] / np.linalg.norm(orientation[3:6])
    return row, col


def _stack_geometry(items: list[_Slice], label: str):
    """Order slices along their normal; return (ordered slices, affine, slice spacing, irregular)."""
    first = items[0]
    row, col = _cosines(first.orientation)
    normal = _normal(first.orientation)
    if first.pixel_spacing is None:
        warnings.warn(f"{label}: no PixelSpacing; 1 mm pixels assumed", stacklevel=5)
    row_spacing, col_spacing = first.pixel_spacing or (1.0, 1.0)
    depth = np.array([item.position @ normal for item in items])
    order = np.argsort(depth, kind="stable")

    kept = [order[0]]
    for index in order[1:]:
        if depth[index] - depth[kept[-1]] < _DUPLICATE_MM:
            continue
        kept.append(index)
    problems = []
    if len(kept) < len(items):
        problems.append(f"{len(items) - len(kept)} slice(s) repeat an earlier position (the first one is kept)")

    kept_depth = depth[kept]
    if len(kept) == 1:
        step = first.spacing_between or first.thickness or 1.0
    else:
        steps = np.diff(kept_depth)
        step = float(np.median(steps))
        for k in np.flatnonzero(np.abs(steps - step) > _IRREGULAR * step):
            where = f"{steps[k]:.4g} mm between slices at {kept_depth[k]:.4g} and {kept_depth[k + 1]:.4g} mm"
            missing = int(round(steps[k] / step)) - 1
            problems.append(f"gap of {where} ({missing} missing slice(s)?)" if missing >= 1 else f"step of {where}")
    if problems:
        warnings.warn(
            f"{label}: irregular slice spacing along the normal (median {step:.4g} mm): " + "; ".join(problems)
            + ". Loaded on a regular grid with the median spacing.",
            stacklevel=5,
        )

    origin = items[kept[0]].position
    offsets = np.array([items[k].position for k in kept]) - origin
    lateral = offsets - np.outer(offsets @ normal, normal)
    drift = float(np.max(np.linalg.norm(lateral, axis=1)))
    if drift > _SHEAR * min(row_spacing, col_spacing):
        warnings.warn(
            f"{label}: slice positions drift up to {drift:.3g} mm off the slice normal (gantry tilt?); "
            "the volume is loaded without that shear",
            stacklevel=5,
        )
    direction = np.column_stack([row, col, normal])
    affine = affine_from_itk([col_spacing, row_spacing, step], origin, direction)
    return [items[k] for k in kept], affine, step, bool(problems)


def _build_volume(info: SeriesInfo, items: list[_Slice], name: str, source: Path, header,
                  acquired: datetime | None) -> ImageRecord:
    label = f"DICOM series {name!r} ({info.uid})"
    if all(item.position is not None and item.orientation is not None for item in items):
        ordered, affine, step, irregular = _stack_geometry(items, label)
    else:
        warnings.warn(
            f"{label}: no ImagePositionPatient/ImageOrientationPatient; slices are ordered by InstanceNumber "
            "and placed with an identity orientation at the origin",
            stacklevel=4,
        )
        ordered = sorted(items, key=lambda item: (item.instance, str(item.path), item.frame))
        step = items[0].spacing_between or items[0].thickness or 1.0
        row_spacing, col_spacing = items[0].pixel_spacing or (1.0, 1.0)
        affine = affine_from_itk([col_spacing, row_spacing, step], [0.0, 0.0, 0.0])
        irregular = False
    data, rescaled = _read_stack(ordered)
    rgb = data.ndim == 4
    grid = file_grid(data.shape[:3], affine)  # (slice, row, column): the series' own grid, as ITK reads it
    data, affine = reorient_to_nearest(data, affine)
    data = np.ascontiguousarray(data)

    slopes = {item.slope for item in ordered}
    intercepts = {item.intercept for item in ordered}
    metadata = {
        "source_path": str(source),
        "modality": MODALITIES.get(info.modality, info.modality),
        "dicom_modality": info.modality,
        "series_description": info.description,
        "series_uid": info.uid,
        "series_number": info.number,
        "patient_id": info.patient_id,
        "spacing": tuple(float(s) for s in spacing_of(affine)),
        "slice_spacing": float(step),
        "orientation": orientation_code(affine),
        "grid": grid,
        "n_slices": len(ordered),
        "rescale_applied": rescaled,
        "rescale_slope": slopes.pop() if len(slopes) == 1 else "per slice",
        "rescale_intercept": intercepts.pop() if len(intercepts) == 1 else "per slice",
        "irregular_spacing": irregular,
        "body_part": str(header.get("BodyPartExamined", "") or ""),
    }
    if info.modality == "CT" and not rgb:
        metadata["value_units"] = "HU"
    if info.modality == "PT" and not rgb:
        factor, notes = pet_suv(header, acquired)
        metadata.update(notes)
        if factor is not None:
            data = data.astype(np.float32, copy=False)
            data *= np.float32(factor)
    return ImageRecord(data=data, affine=affine, name=name, units="mm", metadata=metadata, rgb=rgb)


def _read_stack(ordered: list[_Slice]) -> tuple[np.ndarray, bool]:
    """Fill a (slice, row, column[, sample]) array file by file, rescaling each slice."""
    rescale = any(item.slope != 1.0 or item.intercept != 0.0 for item in ordered)
    by_file: dict[Path, list[tuple[int, _Slice]]] = defaultdict(list)
    for index, item in enumerate(ordered):
        by_file[item.path].append((index, item))
    out = None
    for file, entries in by_file.items():
        entries.sort(key=lambda entry: entry[1].frame)
        for (index, item), frame in zip(entries, decode_frames(file, [item.frame for _, item in entries])):
            if frame.shape[:2] != item.shape:
                raise ReadError(file, f"decoded frame has shape {frame.shape[:2]}, header says {item.shape}")
            if out is None:
                dtype = np.float32 if rescale and frame.ndim == 2 else frame.dtype
                check_budget(file, len(ordered) * frame.size * np.dtype(dtype).itemsize, f"the {len(ordered)}-slice stack")
                out = np.empty((len(ordered),) + frame.shape, dtype=dtype)
            elif frame.shape != out.shape[1:]:
                raise ReadError(file, f"frame shape {frame.shape} differs from the rest of its series {out.shape[1:]}")
            elif out.dtype != np.float32 and frame.dtype != out.dtype:
                out = out.astype(np.result_type(out.dtype, frame.dtype))
            if out.dtype == np.float32 and frame.ndim == 2:
                out[index] = frame * item.slope + item.intercept
            else:
                out[index] = frame
    return out, bool(rescale and out.ndim == 3)


def _when(date, time) -> datetime | None:
    """A DICOM date (DA) and time (TM) as a naive datetime, None when either is absent or invalid."""
    if date in (None, "") or time in (None, ""):
        return None
    try:
        return datetime.combine(DA(str(date).strip()), TM(str(time).strip()))
    except (TypeError, ValueError):
        return None


def _injection(drug, header) -> tuple[datetime | None, bool]:
    """Injection time: RadiopharmaceuticalStartDateTime, else the series' (or study's) date with
    RadiopharmaceuticalStartTime; the flag tells that only the time of day was given."""
    stamp = drug.get("RadiopharmaceuticalStartDateTime")
    if stamp not in (None, ""):
        try:
            return DT(str(stamp).strip()).replace(tzinfo=None), False
        except (TypeError, ValueError):
            pass
    date = header.get("SeriesDate") or header.get("StudyDate")
    return _when(date, drug.get("RadiopharmaceuticalStartTime")), True


def pet_suv(header, acquired: datetime | None = None) -> tuple[float | None, dict]:
    """Body-weight SUV factor of a PET series from its DICOM tags, and metadata saying how.

    ``SUVbw [g/ml] = C [Bq/ml] * PatientWeight [kg] * 1000 / (dose [Bq] * 2 ** (-dt / T_half))``
    with C the rescaled pixel value, dose = RadionuclideTotalDose and T_half =
    RadionuclideHalfLife (both in the first item of RadiopharmaceuticalInformationSequence),
    and dt the seconds from the injection (RadiopharmaceuticalStartDateTime, else
    SeriesDate + RadiopharmaceuticalStartTime, a day added when that time is after the
    reference) to the decay-correction reference: for DecayCorrection START the series start
    (SeriesDate + SeriesTime, or the earliest AcquisitionDate + AcquisitionTime of the series
    when that is earlier, as QIBA's vendor-neutral SUV calculation does); for ADMIN dt = 0.
    Units must be BQML; with Units GML the values already are SUVbw.

    Parameters
    ----------
    header : pydicom.Dataset
        A header of the series.
    acquired : datetime, optional
        The earliest acquisition date and time of the series.

    Returns
    -------
    (float or None, dict)
        The factor (None when the values stay as stored) and metadata: ``value_units``
        ("g/ml" for SUVbw), ``suv_type`` "SUVbw", ``suv_factor``, ``suv_elapsed_s`` when
        computed; ``suv_note`` naming the missing or unsupported tags when not.
    """
    units = str(header.get("Units", "") or "").strip().upper()
    if units == "GML":
        return None, {"value_units": "g/ml", "suv_type": "SUVbw", "suv_factor": 1.0,
                      "suv_note": "stored as SUVbw (Units GML)"}
    stored = {"value_units": "Bq/ml" if units == "BQML" else units or "unknown"}
    drug = first_item(header, "RadiopharmaceuticalInformationSequence") or {}
    weight = header.get("PatientWeight")
    dose, half_life = drug.get("RadionuclideTotalDose"), drug.get("RadionuclideHalfLife")
    injected, time_only = _injection(drug, header) if drug else (None, False)
    correction = str(header.get("DecayCorrection", "") or "").strip().upper()
    reference = None
    if correction == "ADMIN":
        reference = injected
    elif correction == "START":
        reference = _when(header.get("SeriesDate") or header.get("StudyDate"), header.get("SeriesTime"))
        if acquired is not None and (reference is None or acquired < reference):
            reference = acquired
    missing = [name for name, value in (
        ("Units BQML", units == "BQML" or None), ("PatientWeight", weight), ("RadionuclideTotalDose", dose),
        ("RadionuclideHalfLife", half_life),
        ("RadiopharmaceuticalStartDateTime or RadiopharmaceuticalStartTime", injected),
        ("DecayCorrection START or ADMIN", correction in ("START", "ADMIN") or None),
        ("SeriesTime or AcquisitionTime", reference if correction == "START" else True)) if value in (None, "")]
    if missing:
        return None, stored | {"suv_note": "SUVbw not computed, values as stored: missing or unsupported "
                                            + ", ".join(missing)}
    elapsed = (reference - injected).total_seconds()
    if elapsed < 0 and time_only:  # injected before midnight, scanned after
        elapsed += timedelta(days=1).total_seconds()
    try:
        factor = suv_bw_factor(weight_kg=float(weight), dose_bq=float(dose), half_life_s=float(half_life),
                               elapsed_s=elapsed)
    except ValueError as error:
        return None, stored | {"suv_note": f"SUVbw not computed, values as stored: {error}"}
    return factor, {"value_units": "g/ml", "suv_type": "SUVbw", "suv_factor": factor, "suv_elapsed_s": elapsed,
                    "suv_decay_correction": correction}
