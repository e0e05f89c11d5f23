"""*Denoise & prepare* dock widget: denoise, normalise intensities, correct bias field or stains.

Thin: its methods and their controls come from the operation registry
(:mod:`napari_mmfuse.operations.denoise` and ``.normalize``: one :class:`ParameterForm` per
method), the chosen layer goes through :func:`napari_mmfuse.pipeline.run_steps` in the
:class:`JobPanel` (progress, Cancel, errors as notifications, Noise2Void's loss curve from
``Progress.values["loss"]``) and the result is added as a new layer placed like the input,
its provenance record in the layer's metadata. A live preview runs the same operation on the
current 2D slice whenever the parameters change.
"""

from __future__ import annotations

import napari
import numpy as np
from napari.layers import Image
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QCheckBox, QComboBox, QFormLayout, QLabel, QPushButton, QStackedWidget, QVBoxLayout, QWidget

from .. import operations as registry
from .. import pipeline
from ..operations.inputs import check_input
from ._controls import ParameterForm
from ._dock import scroll_contents
from ._jobs import JobPanel
from ._layers import add_image_layer, image_of, spatial_affine, world_affine
from ._plots import CurvePlot
from ._workers import start_worker

#: The capabilities whose methods this widget offers, in menu order.
CAPABILITIES = ("denoise", "normalize")


class DenoiseWidget(QWidget):
    """Dock widget *Denoise & prepare*.

    Parameters
    ----------
    viewer : napari.viewer.Viewer

    Attributes
    ----------
    forms : dict
        Method name -> :class:`ParameterForm` of that operation.
    jobs : JobPanel
    """

    def __init__(self, viewer: napari.viewer.Viewer, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self._preview_worker = None
        self._preview_pending = False
        self.operations = {name: op for capability in CAPABILITIES
                           for name, op in registry.operations(capability).items()}
        self.forms = {name: ParameterForm(op) for name, op in self.operations.items()}

        self.layer_box = QComboBox()
        self.method_box = QComboBox()
        self.form_stack = QStackedWidget()
        for name, op in self.operations.items():
            self.method_box.addItem(op.label or name, name)
            self.form_stack.addWidget(self.forms[name].native)
            self.forms[name].changed.connect(self._schedule_preview)
        self.reference_box = QComboBox()
        self.reference_label = QLabel("reference")
        self.noise_label = QLabel("noise: -")
        self.estimate_button = QPushButton("Estimate noise → parameters")
        self.preview_check = QCheckBox("live preview (current slice)")
        self.preview_check.setChecked(True)
        self.jobs = JobPanel("Run", self.run)
        self.run_button, self.cancel_button = self.jobs.run_button, self.jobs.cancel_button
        self.progress = self.jobs.progress
        self.loss_plot = CurvePlot("Noise2Void training loss per step")

        form = QFormLayout()
        form.addRow("image", self.layer_box)
        form.addRow("method", self.method_box)
        form.addRow(self.reference_label, self.reference_box)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.form_stack)
        layout.addWidget(self.noise_label)
        layout.addWidget(self.estimate_button)
        layout.addWidget(self.preview_check)
        layout.addWidget(self.jobs)
        layout.addWidget(self.loss_plot)
        layout.addStretch()
        scroll_contents(self)

        self._preview_timer = QTimer(self)
        self._preview_timer.setSingleShot(True)
        self._preview_timer.setInterval(250)
        self._preview_timer.timeout.connect(self.update_preview)

        self.method_box.currentIndexChanged.connect(self._method_changed)
        self.layer_box.currentIndexChanged.connect(self._schedule_preview)
        self.reference_box.currentIndexChanged.connect(self._schedule_preview)
        self.estimate_button.clicked.connect(self.propose_parameters)
        self.preview_check.toggled.connect(self._preview_toggled)
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed, viewer.layers.events.moved):
            event.connect(self._refresh_layers)
        viewer.dims.events.current_step.connect(self._schedule_preview)
        self._refresh_layers()
        self._method_changed()

    # ------------------------------------------------------------------ state

    @property
    def method(self) -> str:
        return self.method_box.currentData()

    @property
    def operation(self) -> registry.Operation:
        """The chosen method's operation."""
        return self.operations[self.method]

    @property
    def worker(self):
        """The running job's worker, or None."""
        return self.jobs.worker

    def set_method(self, method: str) -> None:
        self.method_box.setCurrentIndex(self.method_box.findData(method))

    def _image_layers(self) -> list[Image]:
        return [layer for layer in self.viewer.layers
                if isinstance(layer, Image) and not layer.name.endswith(" preview")]

    def _refresh_layers(self, event=None) -> None:
        names = [layer.name for layer in self._image_layers()]
        for box in (self.layer_box, self.reference_box):
            current = box.currentText()
            box.blockSignals(True)
            box.clear()
            box.addItems(names)
            if current in names:
                box.setCurrentText(current)
            box.blockSignals(False)
        self._schedule_preview()

    @property
    def layer(self) -> Image | None:
        name = self.layer_box.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def set_layer(self, layer) -> None:
        self.layer_box.setCurrentText(layer.name)

    def parameters(self) -> dict:
        """The chosen method's parameters as set (None where *auto* is ticked)."""
        return self.forms[self.method].values()

    def set_parameters(self, **values) -> None:
        """Set the chosen method's controls (None ticks *auto*)."""
        self.forms[self.method].set_values(values)

    def _reference_port(self):
        return next((port for port in self.operation.inputs if port.name == "reference"), None)

    def _method_changed(self, index=None) -> None:
        self.form_stack.setCurrentWidget(self.forms[self.method].native)
        port = self._reference_port()
        self.reference_box.setVisible(port is not None)
        self.reference_label.setVisible(port is not None)
        self.reference_label.setText("target slide (optional)" if port is not None and port.optional else "reference")
        self.loss_plot.setVisible(any(port.kind == "model" for port in self.operation.outputs))
        self.estimate_button.setEnabled(self.operation.capability == "denoise")
        self._schedule_preview()

    # ------------------------------------------------------------------ inputs

    def _reference(self) -> Image | None:
        name = self.reference_box.currentText()
        if self._reference_port() is None or name not in self.viewer.layers:
            return None
        return self.viewer.layers[name]

    def _inputs(self, image) -> dict:
        """The operation's inputs around ``image`` (the reference layer when the method takes one)."""
        inputs = {"image": image}
        port = self._reference_port()
        reference = self._reference()
        if port is not None and reference is not None:
            inputs["reference"] = image_of(reference)
        elif port is not None and not port.optional:
            raise ValueError(f"{self.operation.label} needs a reference layer")
        return inputs

    def _current_slice(self, layer) -> tuple[np.ndarray, int | None]:
        """The 2D data on screen (RGB kept; coarsest level of a pyramid), and its index along axis 0 for 3D data."""
        data = layer.data[-1] if layer.multiscale else layer.data
        grey_ndim = data.ndim - int(layer.rgb)
        if grey_ndim <= 2:
            return np.asarray(data), None
        full = layer.data[0].shape if layer.multiscale else data.shape
        point = np.asarray(layer.world_to_data(self.viewer.dims.point))[: grey_ndim - 2]
        factor = np.asarray(full[: grey_ndim - 2]) / np.asarray(data.shape[: grey_ndim - 2])
        lead = tuple(int(np.clip(round(p / f), 0, s - 1)) for p, f, s in zip(point, factor, data.shape))
        return np.asarray(data[lead]), lead[-1] if grey_ndim == 3 else None

    # ------------------------------------------------------------------ noise estimate

    def propose_parameters(self) -> dict:
        """Estimate the noise on the current slice and fill in the proposed parameters."""
        from ..core import denoise as dn

        layer = self.layer
        if layer is None or layer.rgb or self.operation.capability != "denoise":
            return {}
        full = layer.data[0] if layer.multiscale else layer.data
        try:
            if full.ndim not in (2, 3):
                raise ValueError(f"{layer.name!r} is {full.ndim}D; denoising needs a 2D or 3D grey image")
            image, _ = self._current_slice(layer)
            sigma = dn.estimate_noise(image)  # on the slice on screen: fast, and noise is stationary
            spacing = image_of(layer, copy=False).spacing
            proposal = dn.suggest_parameters(full, self.method, spacing=spacing, sigma=sigma)
        except ValueError as error:
            show_error(f"Denoise: {error}")
            return {}
        self.noise_label.setText(f"estimated noise σ ≈ {sigma:.4g} (image units)")
        self.set_parameters(**proposal)
        return proposal

    # ------------------------------------------------------------------ preview

    @property
    def preview_layer(self):
        layer = self.layer
        name = f"{layer.name} preview" if layer is not None else None
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def _schedule_preview(self, *args) -> None:
        if self.preview_check.isChecked():
            self._preview_timer.start()

    def _preview_toggled(self, checked: bool) -> None:
        if self.preview_layer is not None:
            self.preview_layer.visible = checked
        if checked:
            self._schedule_preview()

    def update_preview(self) -> None:
        """Run the chosen operation on the current slice in a worker (the latest request wins)."""
        layer, operation = self.layer, self.operation
        if layer is None or not self.preview_check.isChecked() or not operation.deterministic:
            return
        if self._preview_worker is not None:
            self._preview_pending = True
            return
        try:
            data, index = self._current_slice(layer)
            image = registry.Image(np.array(data), spatial_affine(layer, 2), name=layer.name, rgb=bool(layer.rgb))
            check_input(operation.capability, operation.name, image, operation.label)
            inputs = self._inputs(image)
            params = self.parameters()
        except ValueError:
            return

        def finish(result):
            outputs, _ = result
            self._show_preview(layer, operation, outputs[operation.outputs[0].name], index)

        def done():
            self._preview_worker = None
            if self._preview_pending:
                self._preview_pending = False
                self._schedule_preview()

        worker = thread_worker(pipeline.run, start_thread=False)(operation.capability, operation.name, inputs, params)
        worker.returned.connect(finish)
        worker.errored.connect(lambda error: self.noise_label.setText(f"preview: {error}"))
        worker.finished.connect(done)
        self._preview_worker = worker
        start_worker(worker)

    def _show_preview(self, layer, operation, output, index: int | None) -> None:
        if layer not in self.viewer.layers:
            return
        result = np.asarray(output.data)
        affine = world_affine(layer)
        if index is not None:
            shift = np.eye(affine.shape[0])
            shift[0, -1] = index
            affine = affine @ shift
            result = result[None]
        if layer.multiscale:
            scale = np.ones(affine.shape[0])
            scale[-3:-1] = np.array(layer.data[0].shape[-2 - int(layer.rgb) :][:2]) / np.array(
                layer.data[-1].shape[-2 - int(layer.rgb) :][:2]
            )
            affine = affine @ np.diag(scale)
        kwargs = {"affine": affine, "metadata": {"preview_of": layer.name, "method": operation.name}}
        name = f"{layer.name} preview"
        labels = output.kind == "labels"
        rgb = bool(output.rgb)
        if name in self.viewer.layers:
            preview = self.viewer.layers[name]
            same_kind = isinstance(preview, Image) != labels and getattr(preview, "rgb", False) == rgb
            if same_kind and preview.ndim == affine.shape[0] - 1:
                preview.data = result
                preview.affine = affine
                self.viewer.layers.selection.active = layer
                return
            self.viewer.layers.remove(preview)
        if labels:
            self.viewer.add_labels(result, name=name, **kwargs)
        elif rgb:
            self.viewer.add_image(result, name=name, rgb=True, **kwargs)
        else:
            self.viewer.add_image(result, name=name, rgb=False, colormap="gray", **kwargs)
        self.viewer.layers.selection.active = layer

    # ------------------------------------------------------------------ full run

    def run(self) -> None:
        """The Run button: check the chosen layer, then run the operation on it in the job panel."""
        operation = self.operation
        if self.jobs.busy:
            return
        try:
            layer = self.layer
            if layer is None:
                raise ValueError("choose an image layer first")
            image = image_of(layer)  # a private copy: the input layer is never touched
            check_input(operation.capability, operation.name, image, operation.label)
            inputs = self._inputs(image)
            params = self.parameters()
        except ValueError as error:
            self.jobs.fail(operation.label, str(error))
            return
        self.loss_plot.clear()
        self.jobs.start(pipeline.run_steps, operation.capability, operation.name, inputs, params,
                        title=operation.label, on_progress=self._on_progress,
                        on_result=lambda result: self._add_result(layer, operation, result))

    def _on_progress(self, progress) -> None:
        if "loss" in progress.values:
            self.loss_plot.add(progress.values["loss"])

    def _add_result(self, layer, operation, result):
        outputs, _ = result
        output = outputs[operation.outputs[0].name]
        return add_image_layer(self.viewer, output, like=layer, name=f"{layer.name} {operation.name}")
