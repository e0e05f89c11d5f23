"""Operations as data: every method of every capability is declared once, here.

An :class:`Operation` names a method, documents it, declares its typed parameters
(:class:`Param`: default, range, unit, choices), its input and output ports, and one
generator function that yields :class:`Progress` and returns the result. The widgets build
their controls from the parameters, ``mmfuse`` builds its choices and flags from them, and
recipes are validated against them; :mod:`napari_mmfuse.pipeline` runs them and records
provenance.

Entries live in one module per method family under ``napari_mmfuse.operations.<capability>``;
each module defines ``OPERATIONS``, a tuple of entries. Adding a method is adding such a
module (plus its test): :func:`operations` finds it. Entry modules import only the standard
library, numpy and this package at import time (``mmfuse --help`` must not load torch); the
compute modules are imported inside the run functions.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from ..core.params import ParameterRange, check_parameter

#: Capabilities, in the order a study usually applies them.
CAPABILITIES = ("denoise", "normalize", "register", "transform", "fuse", "segment", "explain")

#: Units a parameter may carry: a pixel count, a world distance (the image's mm or µm),
#: an intensity (the image's values), a percentage, or none.
UNITS = ("", "px", "world", "intensity", "%")

#: How a boolean parameter may be written (CLI flags, recipes), lower case.
BOOLEAN_WORDS = {"true": True, "yes": True, "1": True, "on": True, "false": False, "no": False, "0": False, "off": False}

#: Kinds of data an operation takes or gives.
KINDS = ("image", "images", "labels", "transform", "model", "map", "table")


@dataclass
class Image:
    """An array placed in world space: what operations take and give.

    Attributes
    ----------
    data : numpy or dask array
        Spatial axes last (then RGB when ``rgb``); a leading channel axis is not allowed.
    affine : ndarray, shape (n + 1, n + 1)
        Spatial index -> world (LPS, napari axis order), ``n`` spatial axes.
    name : str
    kind : str
        "image", "labels" or "map".
    rgb : bool
    units : str
        World units ("mm", "um" or "pixel").
    metadata : dict
        ``modality``; ``source`` (``{"path", "series"}``) when read from a file;
        ``provenance`` when an operation made it.
    """

    data: Any
    affine: np.ndarray
    name: str = ""
    kind: str = "image"
    rgb: bool = False
    units: str = "mm"
    metadata: dict = field(default_factory=dict)

    @property
    def spatial_ndim(self) -> int:
        return self.data.ndim - int(self.rgb)

    @property
    def spacing(self) -> np.ndarray:
        """World distance between neighbouring voxels along each spatial axis."""
        return np.linalg.norm(np.asarray(self.affine, dtype=float)[:-1, :-1], axis=0)

    def like(self, data, **changes) -> "Image":
        """A new image on this one's grid (same affine, units, modality) holding ``data``."""
        kept = {"modality": self.metadata["modality"]} if "modality" in self.metadata else {}
        fields = {"affine": self.affine, "name": self.name, "kind": self.kind, "rgb": self.rgb,
                  "units": self.units, "metadata": kept}
        return Image(data, **(fields | changes))


class Cancelled(Exception):
    """Raised by :func:`drive` when the caller asked the work to stop."""


@dataclass(frozen=True)
class Param:
    """One typed parameter of an operation.

    Attributes
    ----------
    name : str
        Keyword of the run function (``sigma_spatial``).
    type : type
        ``int``, ``float``, ``str`` or ``bool``.
    default : object
        The one default; ``None`` means "estimated from the data" (say how in ``doc``).
    doc : str
        One line, shown as the widget's tooltip and in ``mmfuse ... --help``.
    minimum, maximum : float, optional
        Numeric bounds; ``open_minimum`` excludes the minimum itself.
    unit : str
        One of :data:`UNITS`.
    choices : tuple
        Allowed values of a ``str`` parameter.
    flag : str, optional
        The CLI flag's name when it differs from ``name`` (``iterations`` for ``n_iter``).
    label : str, optional
        The widget's label (default: ``name`` with spaces).
    auto : str
        What an unset (``None``) value means, for help texts.
    """

    name: str
    type: type
    default: Any
    doc: str = ""
    minimum: float | None = None
    maximum: float | None = None
    open_minimum: bool = False
    unit: str = ""
    choices: tuple = ()
    flag: str | None = None
    label: str | None = None
    auto: str = "estimated from the image"

    def __post_init__(self):
        if self.unit not in UNITS:
            raise ValueError(f"{self.name}: unit must be one of {UNITS}, not {self.unit!r}")
        if self.default is not None:
            object.__setattr__(self, "default", self.check(self.default))

    @property
    def range(self) -> ParameterRange | None:
        """The numeric range (None for text and booleans)."""
        if self.type not in (int, float):
            return None
        return ParameterRange(self.type, self.minimum, self.maximum, open_minimum=self.open_minimum)

    @property
    def cli_flag(self) -> str:
        """``--sigma-spatial``: the flag ``mmfuse`` gives this parameter."""
        return "--" + (self.flag or self.name).replace("_", "-")

    @property
    def title(self) -> str:
        """The widget's label, with the unit when there is one."""
        text = self.label or self.name.replace("_", " ")
        unit = {"px": "px", "world": "world units", "%": "%"}.get(self.unit)
        return f"{text} ({unit})" if unit else text

    def check(self, value, *, shown: str | None = None):
        """``value`` converted to :attr:`type`, or one clear ``ValueError`` naming ``shown``."""
        shown = shown or self.name
        if value is None:
            return None
        if self.type is bool:
            if isinstance(value, str) and value.lower() in BOOLEAN_WORDS:
                return BOOLEAN_WORDS[value.lower()]
            if isinstance(value, (bool, int)) and value in (0, 1):
                return bool(value)
            raise ValueError(f"{shown} must be true or false, got {value!r}")
        if self.type is str:
            if self.choices and value not in self.choices:
                raise ValueError(f"{shown} must be one of {', '.join(map(str, self.choices))}, got {value!r}")
            return str(value)
        return check_parameter(shown, value, self.range)

    def describe(self) -> str:
        """Help text: the doc line, then the default."""
        default = self.auto if self.default is None else f"{self.default}"
        return f"{self.doc} (default: {default})" if self.doc else f"default: {default}"


@dataclass(frozen=True)
class Port:
    """An input or output of an operation: its name and kind (one of :data:`KINDS`)."""

    name: str
    kind: str
    doc: str = ""
    optional: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"port {self.name}: kind must be one of {KINDS}, not {self.kind!r}")


@dataclass(frozen=True)
class Progress:
    """How far a running operation is: ``done`` of ``total`` units, an optional message and values.

    ``values`` carries numbers a front end may plot (a training loss, a metric).
    """

    done: float
    total: float = 1.0
    message: str = ""
    values: dict = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        """``done / total`` clipped to [0, 1]."""
        return 0.0 if self.total <= 0 else min(max(self.done / self.total, 0.0), 1.0)


@dataclass(frozen=True)
class Operation:
    """One method of one capability, declared once.

    Attributes
    ----------
    capability : str
        One of :data:`CAPABILITIES`.
    name : str
        The method's name (``--method`` choice, recipe ``method:``).
    doc : str
        One line.
    params : tuple of Param
    inputs, outputs : tuple of Port
    run : callable
        ``run(**inputs, device=..., seed=..., **params)``: a generator that yields
        :class:`Progress` and returns a dict ``{output port name: value}``.
    label : str
        Human name for menus (default: ``name``).
    deterministic : bool
        False when the result depends on a random seed (trained methods).
    core : str
        ``"module:function"`` of the core function the run function calls, when its keyword
        defaults overlap the parameters (``tests/test_operation_defaults.py`` compares them).
    """

    capability: str
    name: str
    doc: str
    params: tuple[Param, ...]
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]
    run: Callable[..., Iterator[Progress]]
    label: str = ""
    deterministic: bool = True
    core: str = ""

    def __post_init__(self):
        if self.capability not in CAPABILITIES:
            raise ValueError(f"{self.name}: capability must be one of {CAPABILITIES}")
        names = [p.name for p in self.params]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.capability}/{self.name}: a parameter is declared twice")

    @property
    def key(self) -> str:
        """``capability/name``."""
        return f"{self.capability}/{self.name}"

    def param(self, name: str) -> Param:
        """The parameter called ``name``."""
        for param in self.params:
            if param.name == name:
                return param
        raise KeyError(f"{self.key} has no parameter {name!r}")

    def defaults(self) -> dict:
        """Every parameter's default."""
        return {p.name: p.default for p in self.params}

    def check(self, params: dict | None = None, *, cli: bool = False) -> dict:
        """All parameters, checked, with defaults filled in.

        Parameters
        ----------
        params : dict, optional
            Values by parameter name; ``None`` values take the default.
        cli : bool
            Name parameters by their CLI flag in messages.

        Raises
        ------
        ValueError
            An unknown name, or a value outside its declared range or choices.
        """
        params = dict(params or {})
        known = {p.name for p in self.params}
        unknown = sorted(set(params) - known)
        if unknown:
            allowed = ", ".join(sorted(known)) or "none"
            raise ValueError(f"{self.key} has no parameter {unknown[0]!r} (parameters: {allowed})")
        checked = {}
        for param in self.params:
            value = params.get(param.name)
            shown = param.cli_flag if cli else param.name
            checked[param.name] = param.default if value is None else param.check(value, shown=shown)
        return checked


def drive(steps, *, on_progress: Callable[[Progress], None] | None = None, cancelled: Callable[[], bool] | None = None):
    """Run an operation's generator to its end and return its result: the one progress loop.

    Parameters
    ----------
    steps : generator
        Yields :class:`Progress`, returns the result.
    on_progress : callable, optional
        Called with every :class:`Progress`.
    cancelled : callable, optional
        Polled after every step; when it returns True the generator is closed and
        :class:`Cancelled` raised.
    """
    while True:
        try:
            progress = next(steps)
        except StopIteration as done:
            return done.value
        if on_progress is not None:
            on_progress(progress)
        if cancelled is not None and cancelled():
            steps.close()
            raise Cancelled("cancelled")


def relay(steps, to_progress: Callable[[Any], Progress]):
    """Re-yield each item a core generator yields as ``to_progress(item)``; return the generator's result.

    How a run function turns a core loop's own progress (fractions, registration steps,
    training steps) into :class:`Progress`: ``result = yield from relay(steps, convert)``.
    """
    while True:
        try:
            item = next(steps)
        except StopIteration as done:
            return done.value
        yield to_progress(item)


_REGISTRY: dict[str, dict[str, Operation]] = {}


def operations(capability: str) -> dict[str, Operation]:
    """Every operation of ``capability`` by name, in declaration order (entry modules by name)."""
    if capability not in CAPABILITIES:
        raise ValueError(f"unknown capability {capability!r}; one of {', '.join(CAPABILITIES)}")
    if capability not in _REGISTRY:
        package = importlib.import_module(f"{__name__}.{capability}")
        found: dict[str, Operation] = {}
        for module in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            entries = importlib.import_module(f"{package.__name__}.{module.name}").OPERATIONS
            for operation in entries:
                if operation.capability != capability or operation.name in found:
                    raise ValueError(f"{module.name}: {operation.key} is misplaced or declared twice")
                found[operation.name] = operation
        _REGISTRY[capability] = dict(sorted(found.items(), key=lambda item: _order(package, item[0])))
    return _REGISTRY[capability]


def _order(package, name: str) -> tuple:
    """Sort key: the package's ``ORDER`` (menus list common methods first), then the name."""
    order = getattr(package, "ORDER", ())
    return (order.index(name) if name in order else len(order), name)


def get(capability: str, name: str) -> Operation:
    """The operation ``name`` of ``capability``; a clear ``ValueError`` when there is none."""
    found = operations(capability)
    if name not in found:
        raise ValueError(f"unknown {capability} method {name!r}; choose one of {', '.join(found)}")
    return found[name]


def all_operations() -> list[Operation]:
    """Every operation of every capability."""
    return [op for capability in CAPABILITIES for op in operations(capability).values()]
