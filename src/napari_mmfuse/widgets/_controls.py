"""Widget controls generated from an operation's declared parameters (magicgui).

:class:`ParameterForm` shows one control per :class:`~napari_mmfuse.operations.Param`:
a spin box bounded by its range, a combo box of its choices, a text field or a check box; a parameter
whose default is "estimated from the image" gets an *auto* box that leaves it unset.
The form holds no default of its own: it starts from, and resets to, the operation's.
"""

from __future__ import annotations

import math

from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, LineEdit, SpinBox

from ..operations import Operation, Param

#: Largest magnitude a spin box offers when a parameter is unbounded on that side.
_UNBOUNDED = 1e9


def control_for(param: Param):
    """A magicgui value widget for ``param``, set to its default (see :class:`ParameterForm` for None)."""
    common = {"name": param.name, "label": param.title, "tooltip": param.describe()}
    if param.type is bool:
        return CheckBox(value=bool(param.default), **common)
    if param.type is str and not param.choices:
        return LineEdit(value=param.default or "", **common)
    if param.type is str:
        return ComboBox(choices=list(param.choices), value=param.default or param.choices[0], **common)
    low = param.minimum if param.minimum is not None else -_UNBOUNDED
    high = param.maximum if param.maximum is not None else _UNBOUNDED
    if param.type is int:
        low = math.ceil(low + 1) if param.open_minimum else int(low)
        value = int(param.default) if param.default is not None else max(low, 0)
        return SpinBox(value=value, min=int(low), max=int(high), step=1, **common)
    if param.open_minimum:
        low = low + _step(param) / 10
    value = float(param.default) if param.default is not None else max(low, 0.0)
    widget = FloatSpinBox(value=value, min=float(low), max=float(high), step=_step(param), **common)
    widget.native.setDecimals(_decimals(param))
    widget.value = value
    return widget


def _step(param: Param) -> float:
    reference = abs(param.default) if param.default else (param.maximum or 1.0)
    return 10.0 ** math.floor(math.log10(reference)) / 10 if reference > 0 else 0.1


def _decimals(param: Param) -> int:
    return max(2, min(8, 1 - int(math.floor(math.log10(_step(param))))))


class ParameterForm(Container):
    """The controls of one operation's parameters.

    Parameters
    ----------
    operation : Operation
    """

    def __init__(self, operation: Operation, **kwargs):
        super().__init__(labels=True, **kwargs)
        self.operation = operation
        self._auto: dict[str, CheckBox] = {}
        for param in operation.params:
            control = control_for(param)
            if param.default is None:
                auto = CheckBox(value=True, name=f"{param.name}_auto", label=f"{param.title}: auto",
                                tooltip=param.describe())
                auto.changed.connect(lambda on, control=control: setattr(control, "enabled", not on))
                control.enabled = False
                self._auto[param.name] = auto
                self.append(auto)
            self.append(control)

    def values(self) -> dict:
        """The parameters as set (``None`` where *auto* is ticked), checked by the operation."""
        values = {}
        for param in self.operation.params:
            auto = self._auto.get(param.name)
            values[param.name] = None if auto is not None and auto.value else self[param.name].value
        return self.operation.check(values)

    def set_values(self, values: dict) -> None:
        """Set controls from ``values`` (``None`` ticks *auto*); names not declared are refused."""
        checked = self.operation.check(values)
        for name in values:
            value = checked[name]
            if name in self._auto:
                self._auto[name].value = value is None
            if value is not None:
                self[name].value = value

    def reset(self) -> None:
        """Every control back to the operation's default."""
        self.set_values(self.operation.defaults())
