"""Dock widget "Physical space": where each layer sits, the world-resliced 2D display, orthogonal views,
and resampling one layer onto another's grid."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..core import space
from ._dock import scroll_contents
from ._layers import original_data, spatial_affine
from ._reslice import reslice_display
from ._workers import start_worker

if TYPE_CHECKING:
    import napari


def describe_layer(layer) -> str:
    """Human-readable placement of a layer: grid, spacing, orientation, world box, provenance."""
    affine = spatial_affine(layer)
    n = affine.shape[0] - 1
    data = original_data(layer)
    shape = data[0].shape if layer.multiscale else data.shape
    spatial_shape = shape[: len(shape) - int(getattr(layer, "rgb", False))][-n:]
    low, high = space.world_bounds(spatial_shape, affine)
    meta = layer.metadata or {}
    lines = [
        f"shape        {tuple(shape)}  {getattr(data, 'dtype', '')}",
        f"spacing      {np.round(space.spacing_of(affine), 4).tolist()} {meta.get('units', layer.units[-1])}",
        f"orientation  {space.orientation_code(affine) if n == 3 else '2D'} (frame {meta.get('frame', space.FRAME)})",
        f"world low    {np.round(low, 2).tolist()}",
        f"world high   {np.round(high, 2).tolist()}",
    ]
    tilt = space.obliquity_deg(affine)
    if original_data(layer) is not layer.data:
        lines.append(f"oblique      axes tilted {tilt:.1f} deg: 2D views show it resliced on the display grid")
    elif tilt > 1.0:
        lines.append(
            f"oblique      axes tilted {tilt:.1f} deg: 2D slices show it untilted; use the 3D view, "
            "or resample onto a reference grid for an exact 2D overlay"
        )
    for key in ("modality", "source_path", "step", "method"):
        if meta.get(key) is not None:
            lines.append(f"{key:12s} {meta[key]}")
    return "\n".join(lines)


def _resample_layer_data(data, affine, reference_shape, reference_affine, interpolation, channel_axis):
    yield 0
    out = space.resample(
        np.asarray(data),
        affine,
        reference_shape,
        reference_affine,
        interpolation=interpolation,
        channel_axis=channel_axis,
    )
    yield 1
    return out


def _orthogonal_views():
    """napari-orthogonal-views' show/hide functions, or None when the plugin is not installed."""
    try:
        from napari_orthogonal_views.ortho_view_manager import hide_orthogonal_views, show_orthogonal_views
    except ImportError:
        return None
    return show_orthogonal_views, hide_orthogonal_views


CLICK_TOLERANCE_PX = 4
"""A press and release closer than this (canvas pixels) is a click, not a drag (pan, paint)."""


def click_moves_cursor(viewer_model, event):
    """Mouse callback: a click puts the viewer's cursor (its dims point) where it landed.

    With orthogonal views shown, every view follows the dims point, so a click in one view
    moves the others. napari-orthogonal-views' own *T* key ignores where the world range
    starts, which misplaces volumes placed in physical space, hence this callback.
    """
    start = np.asarray(event.pos, dtype=float)
    position = tuple(event.position)
    yield
    while event.type == "mouse_move":
        yield
    if np.abs(np.asarray(event.pos, dtype=float) - start).max() <= CLICK_TOLERANCE_PX:
        viewer_model.dims.point = position


class PhysicalSpaceWidget(QWidget):
    """Inspect layer placement in world space, choose the 2D display grid, and resample a layer.

    Differently oriented volumes are shown resliced on one world-aligned grid in 2D
    (:mod:`._reslice`, on by default); *Orthogonal views* shows linked axial, coronal and
    sagittal views (napari-orthogonal-views).

    Parameters
    ----------
    viewer : napari.viewer.Viewer
    """

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = viewer
        self.worker = None
        self.info = QPlainTextEdit(readOnly=True)
        self.info.setMinimumHeight(120)
        self.display = reslice_display(viewer)
        self.reslice_check = QCheckBox("Reslice oblique layers in 2D (exact overlay)")
        self.reslice_check.setChecked(self.display.enabled)
        self.reslice_check.setToolTip(
            "napari draws 2D slices without a layer's out-of-slice rotation; when the volumes are tilted "
            "differently, show them resampled on one world-aligned grid (their own data stays untouched)"
        )
        self.display_grid = QComboBox()
        self.display_grid.setToolTip("the layer whose world-aligned grid the 2D views use")
        self.display_status = QLabel()
        self.display_status.setWordWrap(True)
        self.ortho_button = QPushButton("Orthogonal views")
        self.ortho_button.setCheckable(True)
        if _orthogonal_views() is None:
            self.ortho_button.setEnabled(False)
            self.ortho_button.setToolTip("needs the napari-orthogonal-views plugin")
        else:
            self.ortho_button.setToolTip("linked axial/coronal/sagittal views: a click in one view moves the others")
        self.moving = QComboBox()
        self.reference = QComboBox()
        self.interpolation = QComboBox()
        self.interpolation.addItems(["linear", "nearest"])
        self.resample_button = QPushButton("Resample onto reference")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)

        form = QFormLayout()
        form.addRow("layer", self.moving)
        form.addRow("reference grid", self.reference)
        form.addRow("interpolation", self.interpolation)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Selected layer in world space"))
        layout.addWidget(self.info)
        display_form = QFormLayout()
        display_form.addRow(self.reslice_check)
        display_form.addRow("2D display grid", self.display_grid)
        layout.addLayout(display_form)
        layout.addWidget(self.display_status)
        layout.addWidget(self.ortho_button)
        layout.addWidget(QLabel("Resample a layer onto another's grid"))
        layout.addLayout(form)
        layout.addWidget(self.resample_button)
        layout.addWidget(self.cancel_button)
        layout.addWidget(self.progress)
        layout.addStretch()
        scroll_contents(self)

        self.resample_button.clicked.connect(self.start_resample)
        self.cancel_button.clicked.connect(self._cancel)
        self.reslice_check.toggled.connect(self.display.set_enabled)
        self.display_grid.currentTextChanged.connect(self._choose_display_grid)
        self.ortho_button.toggled.connect(self.show_orthogonal_views)
        self.display.on_change(self._show_display)
        viewer.layers.events.inserted.connect(self._refresh_choices)
        viewer.layers.events.removed.connect(self._refresh_choices)
        viewer.layers.selection.events.active.connect(self._show_active)
        self._refresh_choices()
        self._show_active()
        self._show_display()

    def _image_layers(self):
        return [layer for layer in self.viewer.layers if isinstance(layer, (Image, Labels))]

    def _refresh_choices(self, event=None):
        names = [layer.name for layer in self._image_layers()]
        for combo, default in ((self.moving, 0), (self.reference, 1)):
            current = combo.currentText()
            combo.clear()
            combo.addItems(names)
            if current in names:
                combo.setCurrentText(current)
            elif len(names) > default:
                combo.setCurrentIndex(default)
        volumes = [layer.name for layer in self._image_layers() if layer.ndim == 3]
        self.display_grid.blockSignals(True)
        self.display_grid.clear()
        self.display_grid.addItems(volumes)
        if self.display.reference in volumes:
            self.display_grid.setCurrentText(self.display.reference)
        self.display_grid.blockSignals(False)

    def _choose_display_grid(self, name: str) -> None:
        if name:
            self.display.set_reference(name)

    def _show_display(self) -> None:
        if not self.display.enabled:
            text = "2D display: each layer on its own grid (oblique layers are drawn untilted)"
        elif self.display.grid is None:
            text = "2D display: every volume shares one orientation (or the view is 3D); nothing resliced"
        else:
            shape, grid = self.display.grid
            names = ", ".join(layer.name for layer in self.display.resliced)
            spacing = np.round(space.spacing_of(grid), 3).tolist()
            text = f"2D display: {names} resliced on a {'x'.join(map(str, shape))} grid of {spacing} voxels"
            if any(isinstance(layer, Labels) for layer in self.display.resliced):
                text += " (resliced labels are read-only: switch reslicing off to paint them)"
        self.display_status.setText(text)
        self._show_active()

    def show_orthogonal_views(self, shown: bool = True) -> None:
        """Show (or hide) linked orthogonal views of the viewer (napari-orthogonal-views)."""
        functions = _orthogonal_views()
        if functions is None:
            show_error("Orthogonal views need the napari-orthogonal-views plugin (pip install napari-orthogonal-views)")
            return
        functions[0 if shown else 1](self.viewer)
        callbacks = self.viewer.mouse_drag_callbacks
        if shown and click_moves_cursor not in callbacks:
            callbacks.append(click_moves_cursor)
            QTimer.singleShot(0, self._link_orthogonal_clicks)  # after the plugin has built its views
        elif not shown and click_moves_cursor in callbacks:
            callbacks.remove(click_moves_cursor)
        if self.ortho_button.isChecked() != shown:
            self.ortho_button.blockSignals(True)
            self.ortho_button.setChecked(shown)
            self.ortho_button.blockSignals(False)

    def orthogonal_views(self) -> list:
        """The viewer models of the orthogonal views now shown (empty when hidden)."""
        from napari_orthogonal_views import OrthoViewWidget

        return [view.vm_container.viewer_model for view in self.viewer.window._qt_window.findChildren(OrthoViewWidget)]

    def _link_orthogonal_clicks(self) -> None:
        for model in self.orthogonal_views():
            if click_moves_cursor not in model.mouse_drag_callbacks:
                model.mouse_drag_callbacks.append(click_moves_cursor)

    def _show_active(self, event=None):
        layer = self.viewer.layers.selection.active
        if isinstance(layer, (Image, Labels)):
            self.info.setPlainText(f"{layer.name}\n{describe_layer(layer)}")
        else:
            self.info.setPlainText("select an image or labels layer")

    def start_resample(self):
        """Resample the chosen layer onto the reference layer's grid in a worker; returns the worker."""
        if not self.moving.currentText() or not self.reference.currentText():
            show_error("Resample needs two image or labels layers")
            return None
        layer = self.viewer.layers[self.moving.currentText()]
        reference = self.viewer.layers[self.reference.currentText()]
        if layer.multiscale or reference.multiscale:
            show_error("Resampling multiscale slides is not supported here; pick single-scale layers")
            return None
        rgb = getattr(layer, "rgb", False)
        data, reference_data = original_data(layer), original_data(reference)
        n_layer = data.ndim - int(rgb)
        n_reference = reference_data.ndim - int(getattr(reference, "rgb", False))
        if n_layer != n_reference or n_layer not in (2, 3):
            show_error(f"{layer.name} is {n_layer}D and {reference.name} {n_reference}D; both must be 2D or both 3D")
            return None
        affine, reference_affine = spatial_affine(layer, n_layer), spatial_affine(reference, n_layer)
        reference_shape = reference_data.shape[:n_reference]
        layer_shape = data.shape[:n_layer]
        if space.overlap_fraction(reference_shape, reference_affine, layer_shape, affine) == 0.0:
            show_error(f"{layer.name} and {reference.name} do not overlap in world space; register them first")
            return None
        interpolation = "nearest" if isinstance(layer, Labels) else self.interpolation.currentText()
        worker = create_worker(
            _resample_layer_data,
            data,
            affine,
            reference_shape,
            reference_affine,
            interpolation,
            -1 if rgb else None,
            _progress={"total": 1, "desc": "Resampling"},
        )
        worker.yielded.connect(self.progress.setValue)
        worker.returned.connect(lambda data: self._add_result(data, layer, reference, interpolation))
        worker.errored.connect(lambda error: show_error(f"Resampling failed: {error}"))
        worker.finished.connect(self._finished)
        self.worker = worker
        self.resample_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        start_worker(worker)
        return worker

    def _cancel(self):
        if self.worker is not None:
            self.worker.quit()

    def _finished(self):
        self.resample_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.worker = None

    def _add_result(self, data, layer, reference, interpolation):
        metadata = dict(layer.metadata or {})
        metadata.update(
            step="resample", method=interpolation, inputs=[layer.name, reference.name], reference=reference.name
        )
        kwargs = {
            "name": f"{layer.name} on {reference.name} grid",
            "affine": spatial_affine(reference, data.ndim - int(getattr(layer, "rgb", False))),
            "metadata": metadata,
        }
        if isinstance(layer, Labels):
            self.viewer.add_labels(data, **kwargs)
        else:
            self.viewer.add_image(data, colormap=layer.colormap, rgb=layer.rgb, **kwargs)
        show_info(f"Resampled {layer.name} onto the grid of {reference.name}")
