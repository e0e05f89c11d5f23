"""Intensity windows: each modality's intensities scaled robustly to [0, 1] before fusion."""

from __future__ import annotations

import numpy as np

CT_WINDOW = (-450.0, 1050.0)
"""Bone window (level 300 HU, width 1500 HU) applied to CT in Hounsfield units."""

_PERCENTILE_SAMPLE = 1 << 20

MODALITIES = ("MR", "MRI", "CT", "PET", "SPECT", "NM", "US", "XR", "CR", "DX", "MG", "OT")
"""Modality names the CLI accepts (case-insensitive); :func:`intensity_window` gives CT, PET,
SPECT and NM their own windows, the others percentiles."""


def check_modality(name: str | None) -> None:
    """Refuse a modality name that is not one of :data:`MODALITIES` (None: unknown, allowed)."""
    if name is not None and name.upper() not in MODALITIES:
        raise ValueError(f"unknown modality {name!r}; choose one of {', '.join(MODALITIES)}")


def intensity_window(
    image: np.ndarray,
    *,
    modality: str | None = None,
    low: float = 1.0,
    high: float = 99.0,
) -> tuple[float, float]:
    """The (lower, upper) intensities :func:`normalise_intensity` maps to 0 and 1.

    Parameters
    ----------
    image : ndarray, shape (*spatial)
    modality, low, high
        As in :func:`normalise_intensity`.

    Returns
    -------
    (float, float)
        A non-empty window (the full range when the percentiles coincide).

    Raises
    ------
    ValueError
        If the image holds NaN/Inf or is constant, or the percentiles are out of order.
    """
    data = np.asarray(image, dtype=np.float32)
    finite = np.isfinite(data)
    if not finite.all():
        raise ValueError(
            f"image has {data.size - int(finite.sum())} NaN/Inf pixels; fill them first (e.g. numpy.nan_to_num)"
        )
    if not 0 <= low < high <= 100:
        raise ValueError(f"percentiles need 0 <= low < high <= 100, got low={low}, high={high}")
    kind = (modality or "").upper()
    sample = data.ravel()[:: max(1, data.size // _PERCENTILE_SAMPLE)]
    minimum, maximum = float(data.min()), float(data.max())
    if kind == "CT" and minimum < -200:
        lower, upper = CT_WINDOW
    elif kind in ("PET", "SPECT", "NM") and minimum >= 0:
        lower, upper = 0.0, float(np.percentile(sample, high))
    else:
        lower, upper = (float(v) for v in np.percentile(sample, [low, high]))
    if upper <= lower:
        lower, upper = minimum, maximum
    if upper <= lower:
        raise ValueError(f"image is constant (every pixel = {lower:g}): it has nothing to contribute to a fusion")
    return lower, upper


def normalise_intensity(
    image: np.ndarray,
    *,
    modality: str | None = None,
    low: float = 1.0,
    high: float = 99.0,
    window: tuple[float, float] | None = None,
) -> np.ndarray:
    """Scale one modality's intensities robustly to [0, 1].

    Parameters
    ----------
    image : ndarray, shape (*spatial)
    modality : str, optional
        "CT" in Hounsfield units (minimum below -200) gets :data:`CT_WINDOW`; "PET"/"SPECT"
        keep 0 as black (SUV or counts) and clip at the ``high`` percentile; anything
        else is clipped between the ``low`` and ``high`` percentiles.
    low, high : float
        Percentiles (0-100) mapped to 0 and 1.
    window : (float, float), optional
        Explicit (lower, upper) intensity window; overrides ``modality`` and percentiles.

    Returns
    -------
    ndarray, shape (*spatial), float32 in [0, 1]

    Raises
    ------
    ValueError
        If the image holds NaN/Inf, is constant, or the window is empty.
    """
    data = np.asarray(image, dtype=np.float32)
    if window is None:
        lower, upper = intensity_window(data, modality=modality, low=low, high=high)
    else:
        lower, upper = (float(v) for v in window)
        if upper <= lower:
            raise ValueError(f"window must have lower < upper, got {window}")
        if not np.isfinite(data).all():
            raise ValueError("image has NaN/Inf pixels; fill them first (e.g. numpy.nan_to_num)")
    return np.clip((data - lower) / (upper - lower), 0, 1).astype(np.float32)


