"""*Denoise & prepare* dock widget: denoise, normalise intensities, correct bias field or stains.

Thin: it reads the chosen layer on the main thread, runs :mod:`napari_mmfuse.core.denoise`
or :mod:`napari_mmfuse.core.normalize` in a ``thread_worker`` (progress, Cancel, Noise2Void
loss curve) and adds the result as a new layer placed like the input, with provenance in its
metadata. A live preview of the current 2D slice is recomputed as the parameters change.
"""

from __future__ import annotations

from dataclasses import dataclass

import napari
import numpy as np
from napari.layers import Image
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..core import denoise as dn
from ..core import normalize as nm
from ..core.space import spacing_of
from ._dock import scroll_contents
from ._plots import CurvePlot
from ._layers import geometry_of, world_affine
from ._workers import start_worker


@dataclass(frozen=True)
class Param:
    """One numeric control: keyword, label, default, range, and whether it is a distance."""

    key: str
    label: str
    default: float
    low: float
    high: float
    integer: bool = False
    decimals: int = 3
    distance: bool = False


PARAMS: dict[str, list[Param]] = {
    "gaussian": [Param("sigma", "sigma (world units)", 1.0, 0.01, 1e4, distance=True)],
    "median": [Param("radius", "radius (world units)", 1.0, 0.01, 1e4, distance=True)],
    "bilateral": [
        Param("sigma_spatial", "spatial sigma (world)", 1.5, 0.01, 1e4, distance=True),
        Param("sigma_range", "intensity sigma", 0.1, 1e-6, 1e9, decimals=4),
    ],
    "tv": [Param("weight", "weight", 0.1, 1e-6, 1e9, decimals=4)],
    "nlm": [
        Param("h", "h (cut-off)", 0.08, 1e-6, 1e9, decimals=4),
        Param("sigma", "noise sigma", 0.1, 0.0, 1e9, decimals=4),
        Param("patch_radius", "patch radius (world)", 2.0, 0.0, 1e4, distance=True),
        Param("search_radius", "search radius (world)", 6.0, 0.01, 1e4, distance=True),
    ],
    "diffusion": [
        Param("kappa", "kappa (edge)", 0.2, 1e-6, 1e9, decimals=4),
        Param("n_iter", "iterations", 10, 1, 1000, integer=True),
    ],
    "n2v": [
        Param("steps", "training steps", 400, 1, 100000, integer=True),
        Param("patch", "patch (pixels)", 64, 2, 512, integer=True),
    ],
    "percentile": [Param("low", "low percentile", 1.0, 0.0, 100.0), Param("high", "high percentile", 99.8, 0.0, 100.0)],
    "zscore": [],
    "histogram": [],
    "n4": [Param("degree", "field degree", 3, 1, 5, integer=True)],
    "macenko": [],
    "reinhard": [],
    "tissue": [Param("closing_radius", "closing radius (px)", 2, 0, 50, integer=True)],
}
DENOISE = tuple(m for m in dn.METHODS)
NORMALIZE = nm.METHODS
NEEDS_REFERENCE = ("histogram",)
OPTIONAL_REFERENCE = ("macenko", "reinhard")
RGB_ONLY = nm.RGB_METHODS + ("tissue",)
LABELS = {
    "gaussian": "Gaussian",
    "median": "Median",
    "bilateral": "Bilateral",
    "tv": "Total variation",
    "nlm": "Non-local means",
    "diffusion": "Anisotropic diffusion",
    "n2v": "Noise2Void (self-supervised)",
    "percentile": "Percentile normalisation",
    "zscore": "Z-score",
    "histogram": "Histogram matching",
    "n4": "Bias field (N4-like)",
    "macenko": "Stain: Macenko",
    "reinhard": "Stain: Reinhard",
    "tissue": "Tissue mask",
}


def compute(method: str, data: np.ndarray, *, params: dict, spacing=None, reference=None, device=None):
    """Generator for the worker: yields ``("progress", fraction)`` or ``("loss", step, loss)``, returns the result."""
    if method == "n2v":
        training = dn.n2v_train(data, device=device, **params)
        while True:
            try:
                step = next(training)
            except StopIteration as done:
                model = done.value
                break
            yield ("loss", step.step, step.loss)
        yield ("progress", 1.0)
        return model.predict(data, device=device)
    if method in DENOISE:
        return (yield from _progress(dn.denoise_steps(data, method, spacing=spacing, device=device, **params)))
    if method == "tissue":
        return nm.tissue_mask(data, **params)
    if method == "n4":
        params = dict(params, spacing=spacing)
    return nm.normalize(data, method, reference=reference, **params)


def _progress(steps):
    while True:
        try:
            fraction = next(steps)
        except StopIteration as done:
            return done.value
        yield ("progress", fraction)


class DenoiseWidget(QWidget):
    """Dock widget *Denoise & prepare*.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
    """

    def __init__(self, viewer: napari.viewer.Viewer, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self.worker = None
        self._preview_worker = None
        self._preview_pending = False
        self._controls: dict[str, QDoubleSpinBox | QSpinBox] = {}

        self.layer_box = QComboBox()
        self.method_box = QComboBox()
        for key in (*DENOISE, *NORMALIZE, "tissue"):
            self.method_box.addItem(LABELS[key], key)
        self.reference_box = QComboBox()
        self.reference_label = QLabel("reference")
        self.noise_label = QLabel("noise: -")
        self.estimate_button = QPushButton("Estimate noise → parameters")
        self.preview_check = QCheckBox("live preview (current slice)")
        self.preview_check.setChecked(True)
        self.run_button = QPushButton("Run")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.loss_plot = CurvePlot("Noise2Void training loss per step")
        self.params_form = QFormLayout()

        form = QFormLayout()
        form.addRow("image", self.layer_box)
        form.addRow("method", self.method_box)
        form.addRow(self.reference_label, self.reference_box)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        params_widget = QWidget()
        params_widget.setLayout(self.params_form)
        layout.addWidget(params_widget)
        layout.addWidget(self.noise_label)
        layout.addWidget(self.estimate_button)
        layout.addWidget(self.preview_check)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.loss_plot)
        layout.addStretch()
        scroll_contents(self)

        self._preview_timer = QTimer(self)
        self._preview_timer.setSingleShot(True)
        self._preview_timer.setInterval(250)
        self._preview_timer.timeout.connect(self.update_preview)

        self.method_box.currentIndexChanged.connect(self._method_changed)
        self.layer_box.currentIndexChanged.connect(self._layer_changed)
        self.estimate_button.clicked.connect(self.propose_parameters)
        self.preview_check.toggled.connect(self._preview_toggled)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed, viewer.layers.events.moved):
            event.connect(self._refresh_layers)
        viewer.dims.events.current_step.connect(self._schedule_preview)
        self._refresh_layers()
        self._method_changed()

    # ------------------------------------------------------------------ state

    @property
    def method(self) -> str:
        return self.method_box.currentData()

    def set_method(self, method: str) -> None:
        self.method_box.setCurrentIndex(self.method_box.findData(method))

    def _image_layers(self) -> list[Image]:
        return [layer for layer in self.viewer.layers if isinstance(layer, Image) and not layer.name.endswith(" preview")]

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
        self._layer_changed()

    @property
    def layer(self) -> Image | None:
        name = self.layer_box.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def set_layer(self, layer) -> None:
        self.layer_box.setCurrentText(layer.name)

    def parameters(self) -> dict:
        """Current parameter values (keyword -> number) for the chosen method."""
        return {key: box.value() for key, box in self._controls.items()}

    def set_parameters(self, **values) -> None:
        for key, value in values.items():
            if key in self._controls:
                self._controls[key].setValue(value)

    def _method_changed(self, index=None) -> None:
        while self.params_form.rowCount():
            self.params_form.removeRow(0)
        self._controls = {}
        for p in PARAMS[self.method]:
            if p.integer:
                box = QSpinBox()
                box.setRange(int(p.low), int(p.high))
            else:
                box = QDoubleSpinBox()
                box.setRange(p.low, p.high)
                box.setDecimals(p.decimals)
                box.setSingleStep(max(abs(p.default) / 10, 10.0**-p.decimals))
            box.setValue(p.default)
            box.valueChanged.connect(self._schedule_preview)
            self.params_form.addRow(p.label, box)
            self._controls[p.key] = box
        needs_reference = self.method in NEEDS_REFERENCE + OPTIONAL_REFERENCE
        self.reference_box.setVisible(needs_reference)
        self.reference_label.setVisible(needs_reference)
        self.reference_label.setText("reference" if self.method in NEEDS_REFERENCE else "target slide (optional)")
        self.loss_plot.setVisible(self.method == "n2v")
        self.estimate_button.setEnabled(self.method in DENOISE)
        if self.method in DENOISE and self.layer is not None and not self.layer.rgb:
            self.propose_parameters()
        self._schedule_preview()

    def _layer_changed(self, index=None) -> None:
        self._schedule_preview()

    # ------------------------------------------------------------------ data

    def _spacing(self, layer) -> np.ndarray:
        affine = world_affine(layer)
        n = affine.shape[0] - 1
        return spacing_of(affine)[-min(n, 3) :]

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

    def _check_layer(self, layer, method: str) -> None:
        if layer is None:
            raise ValueError("choose an image layer first")
        if method in RGB_ONLY and not layer.rgb:
            raise ValueError(f"{LABELS[method]} works on RGB H&E slides; {layer.name!r} is not RGB")
        if method not in RGB_ONLY and layer.rgb:
            raise ValueError(f"{LABELS[method]} needs a grey image; {layer.name!r} is RGB")
        if method in NEEDS_REFERENCE and self._reference() is None:
            raise ValueError(f"{LABELS[method]} needs a reference layer")

    def _reference(self):
        name = self.reference_box.currentText()
        if self.method not in NEEDS_REFERENCE + OPTIONAL_REFERENCE or name not in self.viewer.layers:
            return None
        reference = self.viewer.layers[name]
        data = reference.data[-1] if reference.multiscale else reference.data
        return np.asarray(data)

    @staticmethod
    def _uses_spacing(method: str) -> bool:
        return (method in DENOISE and method != "n2v") or method == "n4"

    # ------------------------------------------------------------------ noise estimate

    def propose_parameters(self) -> dict:
        """Estimate the noise on the current slice and fill in the proposed parameters."""
        layer = self.layer
        if layer is None or layer.rgb or self.method not in DENOISE:
            return {}
        full = layer.data[0] if layer.multiscale else layer.data
        try:
            if full.ndim not in (2, 3):
                raise ValueError(f"{layer.name!r} is {full.ndim}D; denoising needs a 2D or 3D grey image")
            image, _ = self._current_slice(layer)
            sigma = dn.estimate_noise(image)  # on the slice on screen: fast, and noise is stationary
            proposal = dn.suggest_parameters(full, self.method, spacing=self._spacing(layer), sigma=sigma)
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
        """Recompute the preview of the current slice in a worker (the latest request wins)."""
        layer, method = self.layer, self.method
        if layer is None or not self.preview_check.isChecked() or method == "n2v":
            return
        if self._preview_worker is not None:
            self._preview_pending = True
            return
        try:
            self._check_layer(layer, method)
            image, index = self._current_slice(layer)
            reference = self._reference()
        except ValueError:
            return
        spacing = self._spacing(layer)[-2:] if self._uses_spacing(method) else None
        params = self.parameters()

        def finish(result):
            self._show_preview(layer, method, result, index)

        def done():
            self._preview_worker = None
            if self._preview_pending:
                self._preview_pending = False
                self._schedule_preview()

        worker = thread_worker(_drain, start_thread=False)(
            method, np.array(image), params=params, spacing=spacing, reference=reference
        )
        worker.returned.connect(finish)
        worker.errored.connect(lambda error: self.noise_label.setText(f"preview: {error}"))
        worker.finished.connect(done)
        self._preview_worker = worker
        start_worker(worker)

    def _show_preview(self, layer, method: str, result: np.ndarray, index: int | None) -> None:
        if layer not in self.viewer.layers:
            return
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
        kwargs = {"affine": affine, "metadata": {"preview_of": layer.name, "method": method}}
        name = f"{layer.name} preview"
        labels = method == "tissue"
        rgb = bool(layer.rgb) and method in RGB_ONLY and not labels
        if name in self.viewer.layers:
            preview = self.viewer.layers[name]
            same_kind = isinstance(preview, Image) != labels and getattr(preview, "rgb", False) == rgb
            if same_kind and preview.ndim == affine.shape[0] - 1:
                preview.data = result.astype(np.uint8) if labels else result
                preview.affine = affine
                self.viewer.layers.selection.active = layer
                return
            self.viewer.layers.remove(preview)
        if labels:
            self.viewer.add_labels(result.astype(np.uint8), name=name, **kwargs)
        elif rgb:
            self.viewer.add_image(result, name=name, rgb=True, **kwargs)
        else:
            self.viewer.add_image(result, name=name, rgb=False, colormap="gray", **kwargs)
        self.viewer.layers.selection.active = layer

    # ------------------------------------------------------------------ full run

    def make_worker(self, layer=None, method: str | None = None):
        """Validate, copy the layer data and return an unstarted worker for the full run."""
        layer = layer or self.layer
        method = method or self.method
        self._check_layer(layer, method)
        data = layer.data[0] if layer.multiscale else layer.data
        data = np.array(data)  # a private copy: the input layer is never touched
        params = self.parameters()
        spacing = self._spacing(layer) if self._uses_spacing(method) else None
        if method in DENOISE:
            dn.check_image(data)
        if method == "n2v":
            dn.n2v_patch_shape(data.shape, patch=int(params["patch"]))
        reference = self._reference()
        provenance = {"step": "denoise" if method in DENOISE else "normalize", "method": method, "params": params, "input": layer.name}
        if reference is not None:
            provenance["reference"] = self.reference_box.currentText()
        total = params.get("steps", 100) if method == "n2v" else 100
        worker = thread_worker(compute, progress={"total": int(total), "desc": LABELS[method]}, start_thread=False)(
            method, data, params=params, spacing=spacing, reference=reference
        )
        worker.yielded.connect(self._on_yielded)
        worker.returned.connect(lambda result: self._add_result(layer, method, result, provenance))
        worker.errored.connect(lambda error: show_error(f"{LABELS[method]}: {error}"))
        worker.aborted.connect(lambda: show_info(f"{LABELS[method]} cancelled"))
        worker.finished.connect(self._finished)
        self.loss_plot.clear()
        self.progress.setRange(0, int(total))
        self.progress.setValue(0)
        return worker

    def run(self) -> None:
        """The Run button: start the full computation on the chosen layer."""
        if self.worker is not None:
            return
        try:
            worker = self.make_worker()
        except ValueError as error:
            show_error(f"{LABELS[self.method]}: {error}")
            return
        self.worker = worker
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        start_worker(worker)

    def cancel(self) -> None:
        if self.worker is not None:
            self.worker.quit()

    def _on_yielded(self, item) -> None:
        if item[0] == "loss":
            _, step, loss = item
            self.loss_plot.add(loss)
            self.progress.setValue(step)
        else:
            self.progress.setValue(int(round(item[1] * self.progress.maximum())))

    def _finished(self) -> None:
        self.worker = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    def _add_result(self, layer, method: str, result: np.ndarray, provenance: dict):
        geometry = geometry_of(layer, name=f"{layer.name} {method}", metadata={"mmfuse": provenance})
        if method == "tissue":
            return self.viewer.add_labels(result.astype(np.uint8), **geometry)
        rgb = result.ndim == layer.data[0].ndim if layer.multiscale else result.ndim == layer.data.ndim
        return self.viewer.add_image(result, rgb=bool(layer.rgb and rgb), **geometry)


def _drain(method: str, data: np.ndarray, **kwargs):
    steps = compute(method, data, **kwargs)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value
