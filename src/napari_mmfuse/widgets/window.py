"""Dock widget "Window": CT window presets and a robust auto window for the selected image, with keys.

Keys (bound on the viewer when the dock opens; napari binds none of them): Alt+1 .. Alt+6
the presets of :data:`~napari_mmfuse.core.display.CT_PRESETS` in their order (brain,
subdural, stroke, bone, lung, soft tissue), Alt+0 the auto window (0.5-99.5 percentiles of
the non-zero voxels). Plain number keys are napari's layer modes, so they stay napari's.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from napari.layers import Image
from napari.utils.notifications import show_info
from qtpy.QtWidgets import QGridLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from ..core.display import CT_PRESETS, PERCENTILES, WindowPreset, percentile_window
from ._dock import scroll_contents
from ._layers import original_data

if TYPE_CHECKING:
    import napari

#: Key of the auto window; preset ``i`` (0-based) is on ``Alt-{i + 1}``.
AUTO_KEY = "Alt-0"


def preset_key(index: int) -> str:
    """napari key of the ``index``-th preset of :data:`~napari_mmfuse.core.display.CT_PRESETS`."""
    return f"Alt-{index + 1}"


def _grey_image(viewer):
    """The selected layer when it is a grey image, else None (with a notification)."""
    layer = viewer.layers.selection.active
    if isinstance(layer, Image) and not layer.rgb:
        return layer
    show_info("Window: select one grey image layer first")
    return None


def apply_preset(viewer, preset: WindowPreset) -> None:
    """Set the selected image's contrast limits to ``preset`` (level -/+ width / 2)."""
    layer = _grey_image(viewer)
    if layer is not None:
        layer.contrast_limits = preset.limits


def preset_action(preset: WindowPreset):
    """A napari key-binding function (it needs a ``__name__``) that applies ``preset``."""

    def action(viewer) -> None:
        apply_preset(viewer, preset)

    action.__name__ = action.__qualname__ = f"window_{preset.name.replace(' ', '_')}"
    action.__doc__ = f"CT {preset.name} window (W{preset.width:g} L{preset.level:g})"
    return action


def apply_auto(viewer) -> None:
    """Set the selected image's contrast limits to the robust percentile window of its data.

    A multiscale image is measured on its coarsest level.
    """
    layer = _grey_image(viewer)
    if layer is not None:
        data = original_data(layer)  # a resliced layer's own voxels, not its 2D view
        layer.contrast_limits = percentile_window(data[-1] if layer.multiscale else data)


class WindowWidget(QWidget):
    """Window presets (CT) and an auto window for the selected image, on buttons and keys.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
    """

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = viewer
        self._watched = None
        layout = QVBoxLayout(self)
        self.current = QLabel()
        layout.addWidget(self.current)
        grid = QGridLayout()
        self.buttons: dict[str, QPushButton] = {}
        for index, preset in enumerate(CT_PRESETS):
            key = preset_key(index)
            button = QPushButton(f"{preset.name}  W{preset.width:g} L{preset.level:g}")
            low, high = preset.limits
            button.setToolTip(f"{key.replace('-', '+')}: contrast limits {low:g} .. {high:g} HU")
            button.clicked.connect(partial(apply_preset, viewer, preset))
            grid.addWidget(button, index // 2, index % 2)
            self.buttons[preset.name] = button
            viewer.bind_key(key, preset_action(preset), overwrite=True)
        auto = QPushButton(f"auto  {PERCENTILES[0]:g}-{PERCENTILES[1]:g} %")
        auto.setToolTip(f"{AUTO_KEY.replace('-', '+')}: percentiles of the non-zero voxels (MR, PET, SPECT)")
        auto.clicked.connect(partial(apply_auto, viewer))
        grid.addWidget(auto, len(CT_PRESETS) // 2 + len(CT_PRESETS) % 2, 0, 1, 2)
        self.buttons["auto"] = auto
        viewer.bind_key(AUTO_KEY, apply_auto, overwrite=True)
        layout.addLayout(grid)
        keys = QLabel(f"Keys: Alt+1 .. Alt+{len(CT_PRESETS)} presets in this order, Alt+0 auto")
        keys.setWordWrap(True)
        layout.addWidget(keys)
        layout.addStretch()
        viewer.layers.selection.events.active.connect(self._follow)
        self._follow()
        scroll_contents(self)

    def _follow(self, event=None) -> None:
        """Show the window of the selected layer, and keep showing it when its limits change."""
        if self._watched is not None:
            self._watched.events.contrast_limits.disconnect(self._show)
        layer = self.viewer.layers.selection.active
        self._watched = layer if isinstance(layer, Image) and not layer.rgb else None
        if self._watched is not None:
            self._watched.events.contrast_limits.connect(self._show)
        self._show()

    def _show(self, event=None) -> None:
        layer = self._watched
        if layer is None:
            self.current.setText("Select a grey image layer")
            return
        low, high = (float(v) for v in layer.contrast_limits)
        self.current.setText(f"{layer.name}: W{high - low:.4g} L{(low + high) / 2:.4g}  ({low:.4g} .. {high:.4g})")
