"""Declared ranges of numeric parameters, and the one check that enforces them.

Each capability declares its parameters as data next to its methods (for example
:data:`napari_mmfuse.core.denoise.PARAMETER_RANGES`); callers (the CLI now, an
operation registry later) check a value with :func:`check_parameter` before any work.
"""

from __future__ import annotations

import math
from typing import NamedTuple


class ParameterRange(NamedTuple):
    """Allowed values of one numeric parameter.

    Attributes
    ----------
    type : type
        ``int`` or ``float``.
    minimum, maximum : float or None
        Bounds (None: unbounded on that side).
    finite : bool
        Whether NaN and infinities are refused.
    open_minimum : bool
        The minimum itself is excluded (``sigma > 0``).
    """

    type: type
    minimum: float | None = None
    maximum: float | None = None
    finite: bool = True
    open_minimum: bool = False

    def describe(self) -> str:
        """The allowed range as text, e.g. ``an integer in [1, 16]`` or ``a finite number > 0``."""
        kind = "an integer" if self.type is int else ("a finite number" if self.finite else "a number")
        low, high = self.minimum, self.maximum
        if low is not None and high is not None:
            return f"{kind} in {'(' if self.open_minimum else '['}{low:g}, {high:g}]"
        if low is not None:
            return f"{kind} {'>' if self.open_minimum else '>='} {low:g}"
        if high is not None:
            return f"{kind} <= {high:g}"
        return kind


def check_parameter(name: str, value, spec: ParameterRange):
    """Return ``value`` converted to ``spec.type``, or raise one clear ``ValueError``.

    Parameters
    ----------
    name : str
        How the parameter is called where it was given (``--sigma``, ``levels``).
    value : number or str
    spec : ParameterRange

    Raises
    ------
    ValueError
        ``"<name> must be <range>, got <value>"``.
    """
    problem = f"{name} must be {spec.describe()}, got {value}"
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(problem) from None
    if spec.finite and not math.isfinite(number):
        raise ValueError(problem)
    if spec.type is int:
        if not math.isfinite(number) or number != int(number):
            raise ValueError(problem)
        number = int(number)
    if math.isnan(number):
        return number
    low, high = spec.minimum, spec.maximum
    if low is not None and (number < low or (spec.open_minimum and number == low)):
        raise ValueError(problem)
    if high is not None and number > high:
        raise ValueError(problem)
    return number


def check_parameters(values: dict, ranges: dict[str, ParameterRange], *, prefix: str = "") -> dict:
    """Check every value whose name is declared in ``ranges`` (others pass through unchanged).

    ``prefix`` is put before each name in messages (``"--"`` for CLI flags); names with
    underscores are shown with dashes then.
    """
    checked = dict(values)
    for key, value in values.items():
        if value is None or key not in ranges:
            continue
        shown = f"{prefix}{key.replace('_', '-')}" if prefix else key
        checked[key] = check_parameter(shown, value, ranges[key])
    return checked
