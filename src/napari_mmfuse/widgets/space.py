"""Dock widget "Physical space": where each layer sits, and resampling one layer onto another's grid."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
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
from ._layers import spatial_affine
from ._workers import start_worker

if TYPE_CHECKING:
    import napari


def describe_layer(layer) -> str:
    """Human-readable placement of a layer: grid, spacing, orientation, world box, provenance."""
    affine = spatial_affine(layer)
    n = affine.shape[0] - 1
    shape = layer.data[0].shape if layer.multiscale else layer.data.shape
    spatial_shape = shape[: len(shape) - int(getattr(layer, "rgb", False))][-n:]
    low, high = space.world_bounds(spatial_shape, affine)
    meta = layer.metadata or {}
    lines = [
        f"shape        {tuple(shape)}  {getattr(layer.data, 'dtype', '')}",
        f"spacing      {np.round(space.spacing_of(affine), 4).tolist()} {meta.get('units', layer.units[-1])}",
        f"orientation  {space.orientation_code(affine) if n == 3 else '2D'} (frame {meta.get('frame', space.FRAME)})",
        f"world low    {np.round(low, 2).tolist()}",
        f"world high   {np.round(high, 2).tolist()}",
    ]
    tilt = space.obliquity_deg(affine)
    if tilt > 1.0:
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


class PhysicalSpaceWidget(QWidget):
    """Inspect layer placement in world space and resample a layer onto a reference grid.

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
        layout.addLayout(form)
        layout.addWidget(self.resample_button)
        layout.addWidget(self.cancel_button)
        layout.addWidget(self.progress)
        layout.addStretch()
        scroll_contents(self)

        self.resample_button.clicked.connect(self.start_resample)
        self.cancel_button.clicked.connect(self._cancel)
        viewer.layers.events.inserted.connect(self._refresh_choices)
        viewer.layers.events.removed.connect(self._refresh_choices)
        viewer.layers.selection.events.active.connect(self._show_active)
        self._refresh_choices()
        self._show_active()

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
        n_layer = layer.data.ndim - int(rgb)
        n_reference = reference.data.ndim - int(getattr(reference, "rgb", False))
        if n_layer != n_reference or n_layer not in (2, 3):
            show_error(f"{layer.name} is {n_layer}D and {reference.name} {n_reference}D; both must be 2D or both 3D")
            return None
        affine, reference_affine = spatial_affine(layer, n_layer), spatial_affine(reference, n_layer)
        reference_shape = reference.data.shape[:n_reference]
        layer_shape = layer.data.shape[:n_layer]
        if space.overlap_fraction(reference_shape, reference_affine, layer_shape, affine) == 0.0:
            show_error(f"{layer.name} and {reference.name} do not overlap in world space; register them first")
            return None
        interpolation = "nearest" if isinstance(layer, Labels) else self.interpolation.currentText()
        worker = create_worker(
            _resample_layer_data,
            layer.data,
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
