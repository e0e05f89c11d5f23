"""Clinical display: CT window presets, robust percentile windows, PET SUVbw, display on read.

Pure compute (numpy only): the reader turns :func:`clinical_display` into layer settings
and the Window widget offers :data:`CT_PRESETS`.

CT windows (width W, level L, in HU; the window shows ``L - W/2`` .. ``L + W/2``) follow
Radiopaedia's "Windowing (CT)" table (https://radiopaedia.org/articles/windowing-ct):
brain W80 L40; subdural W200 L80 (inside its W130-300 L50-100 range; the values widely
used for the RSNA 2019 intracranial haemorrhage data); stroke W40 L40 (the wider of its two
stroke windows, W8 L32 and W40 L40); bone W2000 L500; lung W1500 L-600; soft tissue W400 L40.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WindowPreset:
    """A CT display window.

    Attributes
    ----------
    name : str
    width, level : float
        Window width and centre, HU.
    """

    name: str
    width: float
    level: float

    @property
    def limits(self) -> tuple[float, float]:
        """``(level - width / 2, level + width / 2)``: the contrast limits, HU."""
        return window_limits(self.width, self.level)


#: The CT presets, in the order the Window widget shows them (and numbers their keys).
CT_PRESETS = (
    WindowPreset("brain", 80.0, 40.0),
    WindowPreset("subdural", 200.0, 80.0),
    WindowPreset("stroke", 40.0, 40.0),
    WindowPreset("bone", 2000.0, 500.0),
    WindowPreset("lung", 1500.0, -600.0),
    WindowPreset("soft tissue", 400.0, 40.0),
)
#: Robust window of MR, PET and SPECT: these percentiles of the non-zero voxels.
PERCENTILES = (0.5, 99.5)
#: Colormap of PET and SPECT: black-red-yellow-white, the hot-iron family of Slicer's and
#: ITK-SNAP's PET maps, and the map the colour fusion uses.
NUCLEAR_COLORMAP = "hot"
#: Words of a DICOM BodyPartExamined / description or a file name that make a CT a head CT.
HEAD_WORDS = ("head", "brain", "skull", "neuro", "cranial", "cranium")
#: CT whose lowest value is above this (HU) holds no air: not stored in HU.
HU_AIR = -200.0
#: Voxels sampled (with a stride) for percentiles of larger arrays.
PERCENTILE_SAMPLE = 1 << 22


def window_limits(width: float, level: float) -> tuple[float, float]:
    """Contrast limits of a window: ``(level - width / 2, level + width / 2)``."""
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    return float(level - width / 2), float(level + width / 2)


def preset(name: str) -> WindowPreset:
    """The CT preset called ``name`` (see :data:`CT_PRESETS`)."""
    for item in CT_PRESETS:
        if item.name == name:
            return item
    raise ValueError(f"unknown window {name!r}; choose one of {', '.join(p.name for p in CT_PRESETS)}")


def percentile_window(data, percentiles: tuple[float, float] = PERCENTILES) -> tuple[float, float]:
    """Robust contrast limits: the ``percentiles`` of the finite non-zero voxels.

    Arrays over :data:`PERCENTILE_SAMPLE` voxels are sampled with one regular stride along
    every axis (a memory-mapped volume is not read whole).

    Parameters
    ----------
    data : array-like, shape (*spatial)
    percentiles : (float, float)
        Lower and upper percentile, 0-100.

    Returns
    -------
    (float, float)
        Lower < upper; the data's range when the percentiles coincide, (0, 1) for an
        image without non-zero finite voxels.
    """
    data = np.asarray(data)
    if data.size > PERCENTILE_SAMPLE:
        step = int(np.ceil((data.size / PERCENTILE_SAMPLE) ** (1 / data.ndim)))
        data = data[(slice(None, None, step),) * data.ndim]
    flat = data.ravel()
    values = flat[np.isfinite(flat) & (flat != 0)] if flat.dtype.kind == "f" else flat[flat != 0]
    if values.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(values, percentiles))
    if high <= low:
        low, high = float(values.min()), float(values.max())
    if high <= low:
        high = low + 1.0
    return low, high


def suv_bw_factor(*, weight_kg: float, dose_bq: float, half_life_s: float, elapsed_s: float) -> float:
    """Factor from activity concentration (Bq/ml) to body-weight SUV (g/ml).

    ``SUVbw = C * weight_g / (dose * 2 ** (-elapsed / half_life))``: the injected dose is
    decayed to the time the image's activity is referred to (its decay-correction
    reference), ``elapsed`` seconds after the injection.

    Parameters
    ----------
    weight_kg : float
        Patient weight (DICOM PatientWeight, kg).
    dose_bq : float
        Injected activity at injection (RadionuclideTotalDose, Bq).
    half_life_s : float
        Radionuclide half-life (RadionuclideHalfLife, s).
    elapsed_s : float
        Seconds from injection to the decay-correction reference (0 when the image is
        decay-corrected to the injection).

    Returns
    -------
    float
        Multiply Bq/ml by it to get SUVbw in g/ml.

    Raises
    ------
    ValueError
        If a quantity is not positive, or ``elapsed_s`` is negative (injection after the scan).
    """
    for label, value in (("patient weight", weight_kg), ("injected dose", dose_bq), ("half-life", half_life_s)):
        if not value > 0:
            raise ValueError(f"{label} must be positive, got {value}")
    if elapsed_s < 0:
        raise ValueError(f"the decay reference is {-elapsed_s:.0f} s before the injection")
    return float(weight_kg * 1000.0 / (dose_bq * 2.0 ** (-elapsed_s / half_life_s)))


def _kind(modality) -> str | None:
    text = str(modality or "").upper()
    if text == "CT":
        return "CT"
    if text.startswith("MR"):
        return "MR"
    if text in ("PET", "PT", "SPECT", "NM"):
        return "nuclear"
    return None


def default_ct_preset(region: str = "") -> WindowPreset:
    """Brain for a head CT (a word of :data:`HEAD_WORDS` in ``region``), else soft tissue."""
    words = set(re.split(r"[^a-z]+", region.lower()))
    return preset("brain" if words & set(HEAD_WORDS) else "soft tissue")


def clinical_display(data, modality, *, region: str = "") -> tuple[dict, dict]:
    """Display settings of an image on read, by modality.

    * CT in HU (some voxel below :data:`HU_AIR`): the brain window for a head CT, else
      soft tissue (:func:`default_ct_preset`); CT without air is windowed like MR.
    * MR: grey, :func:`percentile_window` (0.5-99.5 % of non-zero voxels).
    * PET / SPECT: :data:`NUCLEAR_COLORMAP`, additive blending, from 0 (or the lowest
      value when negative) to the 99.5th percentile of the non-zero voxels.

    Parameters
    ----------
    data : ndarray, shape (*spatial)
        The image (in memory or memory-mapped).
    modality : str or None
        As readers record it ("CT", "MR", "MR-T1", "PET", "SPECT", ...).
    region : str
        Text naming the body region (BodyPartExamined, a description, the file name).

    Returns
    -------
    (dict, dict)
        napari layer settings (``colormap``, ``contrast_limits``, ``blending``) and metadata
        entries saying which window was chosen (``display_window``); both empty for
        other modalities.
    """
    kind = _kind(modality)
    if kind is None:
        return {}, {}
    if kind == "CT":
        if float(np.nanmin(data)) < HU_AIR:
            chosen = default_ct_preset(region)
            note = f"CT {chosen.name} (W{chosen.width:g} L{chosen.level:g})"
            return {"colormap": "gray", "contrast_limits": list(chosen.limits)}, {"display_window": note}
        low, high = percentile_window(data)
        note = f"percentiles {PERCENTILES[0]:g}-{PERCENTILES[1]:g} of non-zero voxels (no value below {HU_AIR:g}: not HU)"
        return {"colormap": "gray", "contrast_limits": [low, high]}, {"display_window": note}
    low, high = percentile_window(data)
    note = f"percentiles {PERCENTILES[0]:g}-{PERCENTILES[1]:g} of non-zero voxels"
    if kind == "MR":
        return {"colormap": "gray", "contrast_limits": [low, high]}, {"display_window": note}
    low = min(0.0, low)
    note = f"0 to the {PERCENTILES[1]:g}th percentile of non-zero voxels"
    settings = {"colormap": NUCLEAR_COLORMAP, "blending": "additive", "contrast_limits": [low, max(high, low + 1.0)]}
    return settings, {"display_window": note}
