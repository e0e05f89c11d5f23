"""*Fuse* dock widget: pick layers and a reference, choose a method, preview, click Fuse.

Thin: the layers' data and world affines are read on the main thread; resampling onto
the reference grid, normalisation, fusion and the metrics run in
:mod:`napari_mmfuse.core.fuse` / :mod:`napari_mmfuse.core.quality` inside a
``create_worker`` generator (progress, Cancel). The result comes back as new layers
placed like the reference: the fused image and one contribution map per input, with
provenance in their metadata. A live preview of the current plane follows the parameters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import napari

import time

import numpy as np
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core import fuse as fz
from ..core.space import world_to_voxel
from ._dock import scroll_contents
from ._layers import geometry_of, spatial_affine
from ._workers import start_worker

PREVIEW_NAME = "fusion preview"
CONTRIBUTION_COLORMAPS = ("red", "green", "blue", "magenta", "cyan", "yellow")
#: The method entry that picks the method from the checked layers (the default).
AUTO = "auto"
#: Layers this widget adds; they are listed but not checked by default.
OWN_STEPS = ("fuse", "fuse contribution", "fusion preview")
#: Metrics that add one value per source (their range grows with the number of sources).
SUMMED_METRICS = {"MI": (0.0, None), "SSIM": (0.0, 1.0), "SCD": (-1.0, 1.0), "VIF": (0.0, None)}
_METRIC_NOTES = {
    "EN": "entropy of the fused image, bits (0..8)",
    "SD": "standard deviation of the fused image, grey levels (0..255)",
    "SF": "spatial frequency of the fused image, grey levels",
    "Qabf": "edge information carried from the sources (0..1; 0.97 at most)",
}


def metric_note(name: str, n_sources: int) -> str:
    """What a metric's value means for ``n_sources`` sources (the table's third column and tooltip)."""
    if name in SUMMED_METRICS:
        low, high = SUMMED_METRICS[name]
        if high is None:
            span = "bits, each <= entropy" if name == "MI" else "each about 0..1"
            return f"sum over the {n_sources} sources ({span})"
        return f"sum over the {n_sources} sources ({low * n_sources:g}..{high * n_sources:g})"
    return _METRIC_NOTES.get(name, "")


def _raw(layer):
    """The layer object behind napari's public-only proxy (a new proxy on every access)."""
    return getattr(layer, "__wrapped__", layer)


def _fusion_job(images, affines, options: dict, metrics_plane: int | None):
    """Worker generator: resample, fuse (yielding progress), then measure one plane or the whole result."""
    prepared = fz.resample_to_reference(
        images,
        affines,
        reference_index=options["reference_index"],
        rgb=options["rgb"],
        modalities=options["modalities"],
    )
    result = yield from fz.fuse_steps(
        prepared, method=options["method"], rgb=options["rgb"], normalise=False, **options["params"]
    )
    if metrics_plane is None:
        yield fz.FusionProgress(0, 0, "Measuring the fused image")
        metrics = fz.result_metrics(result.fused, prepared, options["rgb"])
    else:
        planes = [p[metrics_plane] for p in prepared]
        metrics = fz.result_metrics(result.fused[metrics_plane], planes, options["rgb"])
    return result, metrics


class FuseWidget(QWidget):
    """Fuse 2..N image layers on a reference layer's grid.

    Parameters
    ----------
    viewer : napari.Viewer
    """

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = viewer
        self.worker = None
        self.last_preview_seconds: float | None = None
        self._windows: dict[int, tuple[int, tuple[float, float]]] = {}
        self._param_widgets: dict[str, QWidget] = {}
        self._listed: list = []  # the layers behind the list rows, unwrapped, in row order
        self._named: list = []  # layers whose name events we follow
        self._inputs_key: tuple | None = None

        self.layer_list = QListWidget()
        self.layer_list.setToolTip("Images to fuse (at least two); visible images are checked when they appear")
        self.layer_list.setMaximumHeight(120)
        self.reference_combo = QComboBox()
        self.reference_combo.setToolTip("The fused image is computed on this layer's grid")
        self.method_combo = QComboBox()
        self.method_combo.addItems([AUTO, *fz.method_names()])
        self.method_combo.setCurrentText(AUTO)
        self.method_combo.setToolTip(
            f"auto: 'colour' (luminance by {fz.DEFAULT_METHOD}, colour of the colour image) when a checked "
            f"layer is colour, else {fz.DEFAULT_METHOD}"
        )
        self.description = QLabel()
        self.description.setWordWrap(True)
        self.params_form = QFormLayout()
        self.preview_check = QCheckBox("Live preview of the current plane")
        self.preview_check.setChecked(False)
        self.volume_metrics_check = QCheckBox("Metrics of the whole volume (slower)")
        self.volume_metrics_check.setToolTip(
            "Measure every voxel of a 3D result; unchecked, the metrics are of the current plane"
        )
        self.fuse_button = QPushButton("Fuse")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.metrics_label = QLabel("Metrics of the result")
        self.metrics_table = QTableWidget(0, 3)
        self.metrics_table.setHorizontalHeaderLabels(["metric", "value", "scale"])
        self.metrics_table.horizontalHeaderItem(2).setToolTip(
            "MI, SSIM, SCD and VIF add one term per source: with two sources SSIM lies in 0..2"
        )
        self.metrics_table.verticalHeader().setVisible(False)
        self.metrics_table.horizontalHeader().setStretchLastSection(True)

        form = QFormLayout()
        form.addRow("Reference", self.reference_combo)
        form.addRow("Method", self.method_combo)
        buttons = QHBoxLayout()
        buttons.addWidget(self.fuse_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Layers to fuse"))
        layout.addWidget(self.layer_list)
        layout.addLayout(form)
        layout.addWidget(self.description)
        layout.addLayout(self.params_form)
        layout.addWidget(self.preview_check)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.metrics_label)
        layout.addWidget(self.volume_metrics_check)
        layout.addWidget(self.metrics_table)
        scroll_contents(self)

        self._preview_timer = QTimer(self)
        self._preview_timer.setSingleShot(True)
        self._preview_timer.setInterval(40)
        self._preview_timer.timeout.connect(self.update_preview)

        self.method_combo.currentTextChanged.connect(self._method_changed)
        self.reference_combo.currentIndexChanged.connect(self._selection_changed)
        self.layer_list.itemChanged.connect(self._selection_changed)
        self.preview_check.toggled.connect(self._preview_toggled)
        self.fuse_button.clicked.connect(self.start_fusion)
        self.cancel_button.clicked.connect(self.cancel)
        viewer.layers.events.inserted.connect(self._refresh_layers)
        viewer.layers.events.removed.connect(self._refresh_layers)
        viewer.layers.events.moved.connect(self._refresh_layers)
        viewer.dims.events.current_step.connect(self._schedule_preview)

        self._refresh_layers()
        self._method_changed(self.method_combo.currentText())

    # ------------------------------------------------------------------ layers

    def _candidates(self) -> list[Image]:
        """The image layers that can be fused (unwrapped), in layer-list order."""
        return [
            _raw(layer)
            for layer in self.viewer.layers
            if isinstance(layer, Image) and layer.metadata.get("step") != "fusion preview"
        ]

    def _refresh_layers(self, event=None):
        """Rebuild the list from the viewer's layers, keeping each layer's tick and the reference (by layer)."""
        ticks = {id(layer): self.layer_list.item(row).checkState() for row, layer in enumerate(self._listed)}
        reference = self.reference_layer()
        candidates = self._candidates()
        self.layer_list.blockSignals(True)
        self.reference_combo.blockSignals(True)
        self.layer_list.clear()
        self.reference_combo.clear()
        for layer in candidates:
            item = QListWidgetItem(layer.name)
            item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
            default = Qt.Checked if layer.visible and layer.metadata.get("step") not in OWN_STEPS else Qt.Unchecked
            item.setCheckState(ticks.get(id(layer), default))
            self.layer_list.addItem(item)
            self.reference_combo.addItem(layer.name)
        self._listed = candidates
        index = next((i for i, layer in enumerate(candidates) if layer is reference), 0 if candidates else -1)
        self.reference_combo.setCurrentIndex(index)
        self.layer_list.blockSignals(False)
        self.reference_combo.blockSignals(False)
        self._follow_names(candidates)
        self._selection_changed()

    def _follow_names(self, layers):
        for layer in self._named:
            if not any(layer is other for other in layers):
                layer.events.name.disconnect(self._refresh_layers)
        for layer in layers:
            if not any(layer is other for other in self._named):
                layer.events.name.connect(self._refresh_layers)
        self._named = list(layers)

    def _selection_changed(self, *args):
        """The checked layers or the reference changed: forget metrics of other inputs, update the preview."""
        key = (tuple(id(layer) for layer in self.checked_layers()), id(self.reference_layer()))
        if key != self._inputs_key:
            self._inputs_key = key
            self.clear_metrics()
        self._schedule_preview()

    def reference_layer(self):
        """The reference layer (unwrapped), or None."""
        index = self.reference_combo.currentIndex()
        return self._listed[index] if 0 <= index < len(self._listed) else None

    def checked_layers(self) -> list[Image]:
        """The checked layers (unwrapped), in list order."""
        return [layer for row, layer in enumerate(self._listed) if self.layer_list.item(row).checkState() == Qt.Checked]

    def set_checked(self, names) -> None:
        """Check exactly the layers called ``names`` (names, or layers) in the list."""
        wanted = [_raw(n) for n in names]
        for row, layer in enumerate(self._listed):
            hit = layer.name in wanted or any(layer is w for w in wanted)
            self.layer_list.item(row).setCheckState(Qt.Checked if hit else Qt.Unchecked)

    def set_reference(self, layer) -> None:
        """Make ``layer`` (a layer or a name) the reference."""
        target = _raw(layer)
        for index, candidate in enumerate(self._listed):
            if candidate is target or candidate.name == target:
                self.reference_combo.setCurrentIndex(index)
                return
        raise ValueError(f"{layer!r} is not one of the image layers listed")

    def selected_layers(self) -> list[Image]:
        """The checked layers and the reference, reference first (unwrapped layers)."""
        layers = self.checked_layers()
        reference = self.reference_layer()
        if reference is None:
            return layers
        return [reference] + [layer for layer in layers if layer is not reference]

    # ------------------------------------------------------------------ parameters

    def _method_changed(self, method: str):
        while self.params_form.rowCount():
            self.params_form.removeRow(0)
        self._param_widgets = {}
        if method == AUTO:
            defaults = fz.method_defaults(fz.DEFAULT_METHOD)
            self.description.setText(
                f"Chosen by the checked layers: a colour layer (PET/SPECT pseudo-colour) gives colour fusion, "
                f"its luminance fused with the others by {fz.DEFAULT_METHOD!r} and its colour kept; grey layers "
                f"give {fz.DEFAULT_METHOD!r}. {fz.METHODS[fz.DEFAULT_METHOD].description}"
            )
        else:
            defaults = fz.method_defaults(method)
        if method == fz.COLOUR_METHOD:
            defaults = {**defaults, **fz.method_defaults(defaults["inner"])}
            self.description.setText(
                "Colour of the functional image (RGB, or the colormap on the last grey image) over the "
                "anatomical detail; the luminance is fused by the inner method."
            )
        elif method != AUTO:
            self.description.setText(fz.METHODS[method].description)
        for key, default in defaults.items():
            if default is None:
                continue
            widget = self._control(key, default)
            self._param_widgets[key] = widget
            self.params_form.addRow(key, widget)
        self._schedule_preview()

    def _control(self, key: str, default) -> QWidget:
        if key in fz.PARAMETER_CHOICES:
            widget = QComboBox()
            widget.addItems(list(fz.PARAMETER_CHOICES[key]))
            widget.setCurrentText(str(default))
            widget.currentTextChanged.connect(self._schedule_preview)
        elif isinstance(default, int):
            widget = QSpinBox()
            widget.setRange(0, 100_000)
            widget.setValue(default)
            widget.valueChanged.connect(self._schedule_preview)
        else:
            widget = QDoubleSpinBox()
            widget.setDecimals(6)
            widget.setRange(0.0, 1e4)
            widget.setSingleStep(max(abs(default) / 10, 1e-6))
            widget.setValue(default)
            widget.valueChanged.connect(self._schedule_preview)
        return widget

    def parameters(self) -> dict:
        """The method's parameters as set in the controls."""
        params = {}
        for key, widget in self._param_widgets.items():
            if isinstance(widget, QComboBox):
                params[key] = widget.currentText()
            else:
                params[key] = widget.value()
        return params

    # ------------------------------------------------------------------ inputs

    def _inputs(self, layers):
        """Data, affines and options of the chosen layers (reference first); ValueError if unusable."""
        if len(layers) < 2:
            raise ValueError(f"check at least two image layers to fuse (checked: {len(layers)})")
        images, affines, rgb, modalities = [], [], [], []
        for layer in layers:
            if layer.multiscale:
                raise ValueError(f"layer {layer.name!r} is multiscale; Fuse works on single-resolution images")
            n_spatial = layer.ndim
            if n_spatial not in (2, 3):
                raise ValueError(f"layer {layer.name!r} has {n_spatial} axes; Fuse handles 2D and 3D images")
            images.append(np.asarray(layer.data))
            affines.append(spatial_affine(layer, n_spatial))
            rgb.append(bool(layer.rgb))
            modalities.append(layer.metadata.get("modality"))
        shapes = [img.shape[:-1] if flag else img.shape for img, flag in zip(images, rgb)]
        fz.check_overlap(shapes, affines, reference_index=0)
        method = self.method_combo.currentText()
        if method == AUTO:
            method = fz.auto_method(images, rgb)
        colour = [fz.is_colour(image, flag) for image, flag in zip(images, rgb)]
        if any(colour) and method != fz.COLOUR_METHOD:
            names = [layer.name for layer, flag in zip(layers, colour) if flag]
            raise ValueError(
                f"{', '.join(names)} is colour; method {method!r} fuses grey images: choose 'auto' or 'colour' "
                "(keeps the colour) or convert the layer to grey"
            )
        options = {
            "reference_index": 0,
            "rgb": rgb,
            "modalities": modalities,
            "method": method,
            "params": self.parameters(),
        }
        return images, affines, options

    def _window(self, layer, image) -> tuple[float, float] | None:
        """Intensity window of a grey layer, cached while its data object is unchanged."""
        if layer.rgb:
            return None
        key = id(layer)
        cached = self._windows.get(key)
        if cached is not None and cached[0] == id(layer.data):
            return cached[1]
        window = fz.intensity_window(image, modality=layer.metadata.get("modality"))
        self._windows[key] = (id(layer.data), window)
        return window

    def _current_plane(self, reference, affine) -> int | None:
        """Index along the reference's first axis at the viewer's current position (3D only)."""
        if reference.ndim != 3:
            return None
        point = np.asarray(self.viewer.dims.point)[-3:]
        index = int(np.round(world_to_voxel(affine, point)[0]))
        return int(np.clip(index, 0, reference.data.shape[0] - 1))

    # ------------------------------------------------------------------ preview

    def _schedule_preview(self, *args):
        if self.preview_check.isChecked():
            self._preview_timer.start()

    def _preview_toggled(self, on: bool):
        if on:
            self._schedule_preview()
        elif PREVIEW_NAME in self.viewer.layers:
            self.viewer.layers.remove(PREVIEW_NAME)

    def update_preview(self) -> bool:
        """Fuse the current plane and show it in the single preview layer; True when shown."""
        if not self.preview_check.isChecked():
            self._remove_preview()
            return False
        method = self.method_combo.currentText()
        inner = self.parameters().get("inner") if method == fz.COLOUR_METHOD else method
        inner = fz.DEFAULT_METHOD if inner == AUTO else inner
        if inner in fz.METHODS and not fz.METHODS[inner].interactive:
            self.status.setText(f"No live preview for {inner!r} (it trains a network): click Fuse.")
            self._remove_preview()
            return False
        layers = self.selected_layers()
        try:
            images, affines, options = self._inputs(layers)
            method = options["method"]
            plane = self._current_plane(layers[0], affines[0])
            windows = [self._window(layer, image) for layer, image in zip(layers, images)]
            start = time.perf_counter()
            prepared = fz.resample_to_reference(
                images, affines, rgb=options["rgb"], modalities=options["modalities"], plane=plane, windows=windows
            )
            result = fz.fuse(prepared, method=method, rgb=options["rgb"], normalise=False, **options["params"])
            self.last_preview_seconds = time.perf_counter() - start
        except ValueError as error:
            self.status.setText(f"Preview: {error}")
            self._remove_preview()
            return False
        affine = affines[0]
        data = result.fused
        if plane is not None:
            shift = np.eye(4)
            shift[0, 3] = plane
            affine = affine @ shift
            data = data[None]
        self._show_preview(data, layers[0], affine, result)
        self.status.setText(f"Preview ({method}) in {1000 * self.last_preview_seconds:.0f} ms")
        return True

    def _remove_preview(self):
        if PREVIEW_NAME in self.viewer.layers:
            self.viewer.layers.remove(PREVIEW_NAME)

    def _show_preview(self, data, reference, spatial, result):
        full = np.eye(reference.ndim + 1)
        n = spatial.shape[0] - 1
        full[-n - 1 :, -n - 1 :] = spatial
        metadata = {"step": "fusion preview", "method": result.method, "params": result.params}
        rgb = data.ndim == reference.ndim + 1
        existing = self.viewer.layers[PREVIEW_NAME] if PREVIEW_NAME in self.viewer.layers else None
        if existing is not None and existing.rgb == rgb and existing.data.shape == data.shape:
            existing.data = data
            existing.affine = full
            existing.metadata = metadata
            return
        if existing is not None:
            self.viewer.layers.remove(existing)
        self.viewer.add_image(
            data,
            name=PREVIEW_NAME,
            affine=full,
            rgb=rgb,
            metadata=metadata,
            units=tuple(str(u) for u in reference.units),
            contrast_limits=None if rgb else (0.0, 1.0),
        )

    # ------------------------------------------------------------------ full fusion

    def start_fusion(self):
        """Fuse the whole images in a worker; returns the worker (None when the inputs are unusable)."""
        layers = self.selected_layers()
        try:
            images, affines, options = self._inputs(layers)
        except ValueError as error:
            show_error(f"Fuse: {error}")
            return None
        reference = layers[0]
        self.clear_metrics()
        plane = None if self.volume_metrics_check.isChecked() else self._current_plane(reference, affines[0])
        names = [layer.name for layer in layers]
        learned = "learned" in (options["method"], options["params"].get("inner"))
        total = int(options["params"]["n_iter"]) if learned else 0
        worker = create_worker(
            _fusion_job,
            images,
            affines,
            options,
            plane,
            _progress={"total": total, "desc": f"Fusing ({options['method']})"},
        )
        self.progress.setRange(0, total)
        self.progress.setValue(0)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(lambda out: self._add_result(out, reference, names, options, plane))
        worker.errored.connect(lambda error: show_error(f"Fuse: {error}"))
        worker.finished.connect(self._finished)
        self.fuse_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.status.setText(f"Fusing {len(layers)} layers with {options['method']!r}...")
        self.worker = worker
        start_worker(worker)
        return worker

    def cancel(self):
        """Stop the running fusion (at its next progress tick)."""
        if self.worker is not None:
            self.worker.quit()
            self.status.setText("Cancelled")

    def _on_progress(self, tick):
        self.progress.setRange(0, tick.total)
        self.progress.setValue(tick.step)
        self.status.setText(tick.message)

    def _finished(self):
        self.worker = None
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.fuse_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    def _add_result(self, out, reference, names, options, plane):
        result, metrics = out
        geometry = geometry_of(reference)
        provenance = {
            "step": "fuse",
            "method": result.method,
            "params": result.params,
            "inputs": names,
            "reference": names[0],
        }
        rgb = result.fused.ndim == reference.ndim + 1
        self.viewer.add_image(
            result.fused,
            name=f"fused ({result.method})",
            rgb=rgb,
            metadata=dict(provenance),
            contrast_limits=None if rgb else (0.0, 1.0),
            **geometry,
        )
        for i, name in enumerate(names):
            self.viewer.add_image(
                result.weights[i],
                name=f"contribution: {name}",
                colormap=CONTRIBUTION_COLORMAPS[i % len(CONTRIBUTION_COLORMAPS)],
                blending="additive",
                opacity=0.6,
                contrast_limits=(0.0, 1.0),
                visible=False,
                metadata=dict(provenance, step="fuse contribution", input=name),
                **geometry,
            )
        self._show_metrics(metrics, len(names), f"fused ({result.method})")
        if plane is not None:
            where = f" (metrics on plane {plane})"
        else:
            where = " (metrics of the whole volume)" if reference.ndim == 3 else ""
        self.status.setText(f"Fused {len(names)} layers with {result.method!r}{where}")
        show_info(f"Fused {', '.join(names)} with {result.method}")

    def clear_metrics(self) -> None:
        """Empty the metrics table (a run starts, or the inputs changed)."""
        self.metrics_table.setRowCount(0)
        self.metrics_label.setText("Metrics of the result")

    def _show_metrics(self, metrics: dict, n_sources: int, layer_name: str):
        self.metrics_table.setRowCount(len(metrics))
        for row, (name, value) in enumerate(metrics.items()):
            note = metric_note(name, n_sources)
            cells = (name, f"{value:.4g}", note)
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(f"{name}: {note}" if note else name)
                self.metrics_table.setItem(row, column, item)
        self.metrics_table.resizeColumnToContents(0)
        self.metrics_label.setText(f"Metrics of {layer_name!r} against its {n_sources} sources")
