"""Length units of slide formats (OME, OME-NGFF, ImageJ, TIFF) and the project's world units."""

from __future__ import annotations

#: World units the writers accept (project units).
WRITE_UNITS = ("um", "mm", "pixel")

# micrometres per unit; keys are lower-case spellings found in OME, NGFF, ImageJ and TIFF
_UM_PER_UNIT = {
    "pm": 1e-6, "picometer": 1e-6,
    "å": 1e-4, "angstrom": 1e-4,
    "nm": 1e-3, "nanometer": 1e-3,
    "µm": 1.0, "μm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0,
    "mm": 1e3, "millimeter": 1e3,
    "cm": 1e4, "centimeter": 1e4,
    "m": 1e6, "meter": 1e6,
    "inch": 25400.0, "in": 25400.0,
}  # fmt: skip


def um_per_unit(unit) -> float | None:
    """Micrometres in one ``unit`` (OME, OME-NGFF, ImageJ and TIFF spellings), None if unknown.

    Parameters
    ----------
    unit : str or None
        e.g. ``"µm"``, ``"micrometer"``, ``"micron"``, ``"\\u00B5m"`` (ImageJ), ``"mm"``.

    Returns
    -------
    float or None
    """
    if not isinstance(unit, str):
        return None
    key = unit.strip().lower().replace("\\u00b5", "µ")
    return _UM_PER_UNIT.get(key)


def project_units(um_per: list[float]) -> str:
    """Choose the project world unit for axes stored in file units of ``um_per`` micrometres.

    Parameters
    ----------
    um_per : list of float
        Micrometres per file unit of each axis (see :func:`um_per_unit`).

    Returns
    -------
    str
        "mm" when every axis is in millimetres or larger units, else "um".
    """
    return "mm" if um_per and min(um_per) >= 1e3 else "um"
