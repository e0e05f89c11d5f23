"""A slider for coarse moves linked to a spin box for exact numbers (Manual correction's direct controls)."""

from __future__ import annotations

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QDoubleSpinBox, QHBoxLayout, QSlider, QWidget


class SliderSpin(QWidget):
    """A slider for coarse moves linked to a spin box for exact numbers.

    Parameters
    ----------
    minimum, maximum : float
        Range of both controls.
    step : float
        Slider resolution (and spin box step).
    value : float
        Initial value.
    decimals : int
        Spin box decimals.

    Attributes
    ----------
    valueChanged : Signal(float)
        Emitted on every user change (dragging included).
    committed : Signal()
        Emitted when a change is finished (slider released, spin box edited).
    """

    valueChanged = Signal(float)
    committed = Signal()

    def __init__(self, minimum: float, maximum: float, step: float, value: float, decimals: int = 3):
        super().__init__()
        self.step = step
        self.slider = QSlider(Qt.Horizontal)
        self.slider.setRange(round(minimum / step), round(maximum / step))
        self.spin = QDoubleSpinBox(decimals=decimals, minimum=minimum, maximum=maximum, singleStep=step)
        self.spin.setKeyboardTracking(False)
        self.spin.setMinimumWidth(80)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.slider, 1)
        layout.addWidget(self.spin)
        self.set_value(value)
        self.slider.valueChanged.connect(self._from_slider)
        self.slider.sliderReleased.connect(self.committed)
        self.spin.valueChanged.connect(self._from_spin)

    def value(self) -> float:
        """The exact value (the spin box's)."""
        return self.spin.value()

    def set_value(self, value: float) -> None:
        """Show ``value`` without emitting any signal."""
        for widget in (self.slider, self.spin):
            widget.blockSignals(True)
        self.spin.setValue(value)
        self.slider.setValue(round(value / self.step))
        for widget in (self.slider, self.spin):
            widget.blockSignals(False)

    def _from_slider(self, position: int) -> None:
        self.spin.blockSignals(True)
        self.spin.setValue(position * self.step)
        self.spin.blockSignals(False)
        self.valueChanged.emit(self.spin.value())
        if not self.slider.isSliderDown():
            self.committed.emit()

    def _from_spin(self, value: float) -> None:
        self.slider.blockSignals(True)
        self.slider.setValue(round(value / self.step))
        self.slider.blockSignals(False)
        self.valueChanged.emit(value)
        self.committed.emit()
