"""*Fuse* dock widget: pick layers and a reference, choose a method, preview, click Fuse.

Thin: the layers become :class:`~napari_mmfuse.operations.Image` (data and world affine) on
the main thread; the ``fuse`` operation (resampling onto the reference grid, normalisation,
fusion) runs through :func:`napari_mmfuse.pipeline.run_steps` in the shared
:class:`~napari_mmfuse.widgets._jobs.JobPanel`, then the metrics of the result. The
parameter controls are the operations' :class:`~napari_mmfuse.widgets._controls.ParameterForm`.
The result comes back as new layers on the reference's grid: the fused image and one
contribution map per input, carrying the pipeline's provenance. A live preview of the
current plane follows the parameters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import napari

import time

import numpy as np
from napari.layers import Image
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .. import pipeline
from ..core import fuse as fz
from ..core.space import world_to_voxel
from ..operations import Operation, Progress, operations
from ..core._names import FUSE_DEFAULT_METHOD as DEFAULT_METHOD
from ..operations.fuse import core_parameters
from ..operations.fuse.colour import INNER_PARAMETERS
from ._controls import ParameterForm
from ._dock import scroll_contents
from ._jobs import JobPanel
from ._layers import add_image_layer, image_of, original_data

PREVIEW_NAME = "fusion preview"
CONTRIBUTION_COLORMAPS = ("red", "green", "blue", "magenta", "cyan", "yellow")
#: The method entry that picks the method from the checked layers (the default).
AUTO = "auto"
#: The ``metadata["step"]`` of the preview layer.
PREVIEW_STEP = "fusion preview"
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


def _made_here(layer) -> bool:
    """Whether a layer is a fusion result, contribution map or a live preview (ours or another widget's):
    listed, but not checked by default."""
    return (layer.metadata.get("step") == PREVIEW_STEP or "preview_of" in layer.metadata
            or (layer.metadata.get("mmfuse") or {}).get("step") == "fuse")


def _raw(layer):
    """The layer object behind napari's public-only proxy (a new proxy on every access)."""
    return getattr(layer, "__wrapped__", layer)


def _fusion_job(images, method: str, params: dict, metrics_plane: int | None):
    """Worker generator: the fuse operation (yielding progress), then the metrics of one plane or the whole result."""
    outputs, _ = yield from pipeline.run_steps("fuse", method, {"images": images}, params)
    yield Progress(1, 1, "measuring the fused image")
    fused = outputs["image"].data
    prepared = [image.data for image in outputs["resampled"]]
    rgb = [image.rgb for image in outputs["resampled"]]
    if metrics_plane is None:
        return outputs, fz.result_metrics(fused, prepared, rgb)
    return outputs, fz.result_metrics(fused[metrics_plane], [p[metrics_plane] for p in prepared], rgb)


class FusionForm(ParameterForm):
    """The :class:`ParameterForm` of a fusion method; colour's inner-method parameters hidden
    (the colour form takes them from the inner method's own form)."""

    def __init__(self, operation: Operation):
        super().__init__(operation)
        if operation.name == fz.COLOUR_METHOD:
            for name in INNER_PARAMETERS:
                self[name].visible = False
                self[f"{name}_auto"].visible = False


class FuseWidget(QWidget):
    """Fuse 2..N image layers on a reference layer's grid.

    Parameters
    ----------
    viewer : napari.Viewer

    Attributes
    ----------
    forms : dict of str -> ParameterForm
        One form per fusion method, built from its operation.
    jobs : JobPanel
        Fuse, Cancel, progress and status.
    """

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = viewer
        self.last_preview_seconds: float | None = None
        self._windows: dict[int, tuple[int, tuple[float, float]]] = {}
        self._listed: list = []  # the layers behind the list rows, unwrapped, in row order
        self._named: list = []  # layers whose name events we follow
        self._inputs_key: tuple | None = None

        self.layer_list = QListWidget()
        self.layer_list.setToolTip("Images to fuse (at least two); visible images are checked when they appear")
        self.layer_list.setMaximumHeight(120)
        self.reference_combo = QComboBox()
        self.reference_combo.setToolTip("The fused image is computed on this layer's grid")
        self.method_combo = QComboBox()
        self.method_combo.addItems([AUTO, *operations("fuse")])
        self.method_combo.setCurrentText(AUTO)
        self.method_combo.setToolTip(
            f"auto: 'colour' (luminance by {DEFAULT_METHOD}, colour of the colour image) when a checked "
            f"layer is colour, else {DEFAULT_METHOD}"
        )
        self.description = QLabel()
        self.description.setWordWrap(True)
        self.forms = {name: FusionForm(operation) for name, operation in operations("fuse").items()}
        self.preview_check = QCheckBox("Live preview of the current plane")
        self.preview_check.setChecked(False)
        self.volume_metrics_check = QCheckBox("Metrics of the whole volume (slower)")
        self.volume_metrics_check.setToolTip(
            "Measure every voxel of a 3D result; unchecked, the metrics are of the current plane"
        )
        self.jobs = JobPanel("Fuse", self.start_fusion)
        self.fuse_button = self.jobs.run_button
        self.cancel_button = self.jobs.cancel_button
        self.progress = self.jobs.progress
        self.status = self.jobs.status
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
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Layers to fuse"))
        layout.addWidget(self.layer_list)
        layout.addLayout(form)
        layout.addWidget(self.description)
        for name in sorted(self.forms, key=lambda name: name != fz.COLOUR_METHOD):  # colour's own, then inner's
            layout.addWidget(self.forms[name].native)
            self.forms[name].changed.connect(self._parameters_changed)
        layout.addWidget(self.preview_check)
        layout.addWidget(self.jobs)
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
        viewer.layers.events.inserted.connect(self._refresh_layers)
        viewer.layers.events.removed.connect(self._refresh_layers)
        viewer.layers.events.moved.connect(self._refresh_layers)
        viewer.dims.events.current_step.connect(self._schedule_preview)

        self._refresh_layers()
        self._method_changed(self.method_combo.currentText())

    @property
    def worker(self):
        """The running fusion's worker, or None."""
        return self.jobs.worker

    # ------------------------------------------------------------------ layers

    def _candidates(self) -> list[Image]:
        """The image layers that can be fused (unwrapped), in layer-list order."""
        return [
            _raw(layer)
            for layer in self.viewer.layers
            if isinstance(layer, Image) and layer.metadata.get("step") != PREVIEW_STEP
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
            default = Qt.Checked if layer.visible and not _made_here(layer) else Qt.Unchecked
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

    def _shown_forms(self, method: str) -> list[str]:
        """The methods whose forms show for ``method`` in the combo (colour: its own and its inner method's)."""
        if method == AUTO:
            return [DEFAULT_METHOD]
        if method == fz.COLOUR_METHOD:
            return [method, self.forms[method]["inner"].value]
        return [method]

    def _method_changed(self, method: str):
        shown = self._shown_forms(method)
        for name, parameters in self.forms.items():
            parameters.native.setVisible(name in shown)
        if method == AUTO:
            self.description.setText(
                f"Chosen by the checked layers: a colour layer (PET/SPECT pseudo-colour) gives colour fusion, "
                f"its luminance fused with the others by {DEFAULT_METHOD!r} and its colour kept; grey layers "
                f"give {DEFAULT_METHOD!r}. {operations('fuse')[DEFAULT_METHOD].doc}"
            )
        else:
            self.description.setText(operations("fuse")[method].doc)
        self._schedule_preview()

    def _parameters_changed(self, *args):
        if self.method_combo.currentText() == fz.COLOUR_METHOD:  # the inner method may have changed
            self._method_changed(fz.COLOUR_METHOD)
        else:
            self._schedule_preview()

    def parameters(self, method: str | None = None) -> dict:
        """The parameters of ``method`` (default: the one chosen; auto counts as the default method) as set.

        For colour fusion, its own and the inner method's (auto: the default inner method).
        """
        chosen = self.method_combo.currentText()
        method = method or (DEFAULT_METHOD if chosen == AUTO else chosen)
        if method != fz.COLOUR_METHOD:
            return self.forms[method].values()
        values = self.forms[method].values()
        if chosen == AUTO:
            values["inner"] = DEFAULT_METHOD
        values.update(self.forms[values["inner"]].values())
        return values

    # ------------------------------------------------------------------ inputs

    def _inputs(self, layers, *, copy: bool):
        """The chosen layers as images (reference first) and the method; ValueError if unusable."""
        if len(layers) < 2:
            raise ValueError(f"check at least two image layers to fuse (checked: {len(layers)})")
        for layer in layers:
            if layer.multiscale:
                raise ValueError(f"layer {layer.name!r} is multiscale; Fuse works on single-resolution images")
            if layer.ndim not in (2, 3):
                raise ValueError(f"layer {layer.name!r} has {layer.ndim} axes; Fuse handles 2D and 3D images")
        images = [image_of(layer, copy=copy) for layer in layers]
        shapes = [image.data.shape[: image.spatial_ndim] for image in images]
        fz.check_overlap(shapes, [image.affine for image in images], reference_index=0)
        method = self.method_combo.currentText()
        if method == AUTO:
            method = fz.auto_method([image.data for image in images], [image.rgb for image in images])
        colour = [fz.is_colour(image.data, image.rgb) for image in images]
        if any(colour) and method != fz.COLOUR_METHOD:
            names = [layer.name for layer, flag in zip(layers, colour) if flag]
            raise ValueError(
                f"{', '.join(names)} is colour; method {method!r} fuses grey images: choose 'auto' or 'colour' "
                "(keeps the colour) or convert the layer to grey"
            )
        return images, method

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
        return int(np.clip(index, 0, original_data(reference).shape[0] - 1))

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
        inner = self.parameters()["inner"] if self.method_combo.currentText() == fz.COLOUR_METHOD else None
        trained = inner or self.method_combo.currentText()
        if trained != AUTO and not operations("fuse")[trained].deterministic:
            self.status.setText(f"No live preview for {trained!r} (it trains a network): click Fuse.")
            self._remove_preview()
            return False
        layers = self.selected_layers()
        try:
            images, method = self._inputs(layers, copy=False)
            params = core_parameters(method, self.parameters(method))
            plane = self._current_plane(layers[0], images[0].affine)
            windows = [self._window(layer, image.data) for layer, image in zip(layers, images)]
            start = time.perf_counter()
            rgb = [image.rgb for image in images]
            modalities = [image.metadata.get("modality") for image in images]
            prepared = fz.resample_to_reference([image.data for image in images], [image.affine for image in images],
                                                rgb=rgb, modalities=modalities, plane=plane, windows=windows)
            result = fz.fuse(prepared, method=method, rgb=rgb, normalise=False, **params)
            self.last_preview_seconds = time.perf_counter() - start
        except ValueError as error:
            self.status.setText(f"Preview: {error}")
            self._remove_preview()
            return False
        affine = images[0].affine
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
        metadata = {"step": PREVIEW_STEP, "method": result.method, "params": result.params}
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
            images, method = self._inputs(layers, copy=True)
            params = self.parameters(method)
        except ValueError as error:
            self.jobs.fail("Fuse", str(error))
            return None
        reference = layers[0]
        self.clear_metrics()
        plane = None if self.volume_metrics_check.isChecked() else self._current_plane(reference, images[0].affine)
        names = [layer.name for layer in layers]
        return self.jobs.start(_fusion_job, images, method, params, plane, title=f"Fuse ({method})",
                               on_result=lambda out: self._add_result(out, reference, names, plane))

    def cancel(self):
        """Stop the running fusion (at its next progress step)."""
        self.jobs.cancel()

    def _add_result(self, out, reference, names, plane):
        outputs, metrics = out
        fused = outputs["image"]
        method = fused.metadata["provenance"]["method"]
        add_image_layer(self.viewer, fused, like=reference, name=f"fused ({method})",
                        contrast_limits=None if fused.rgb else (0.0, 1.0))
        for i, (name, contribution) in enumerate(zip(names, outputs["contributions"])):
            contribution.metadata["provenance"] = fused.metadata["provenance"]  # one record: the fusion's
            add_image_layer(self.viewer, contribution, like=reference, name=f"contribution: {name}",
                            colormap=CONTRIBUTION_COLORMAPS[i % len(CONTRIBUTION_COLORMAPS)], blending="additive",
                            opacity=0.6, contrast_limits=(0.0, 1.0), visible=False)
        self._show_metrics(metrics, len(names), f"fused ({method})")
        if plane is not None:
            where = f" (metrics on plane {plane})"
        else:
            where = " (metrics of the whole volume)" if reference.ndim == 3 else ""
        self.status.setText(f"Fused {len(names)} layers with {method!r}{where}")

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
