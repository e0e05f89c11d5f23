"""Dock widget "Explain": which regions and which modality drove a segmentation model's class.

The model is the last one trained (or loaded) in the session's "Segment" widget, or a
model file. The checked image layers are its inputs in channel order, resampled onto the
first one's grid. Results are overlays with the first layer's placement (perceptual
colormaps, additive blending; one map per modality hidden until toggled in the legend)
and the per-modality answers ranked side by side: each modality's attribution (integrated
gradients) beside what removing it does to the segmentation (1 - Dice of the class, and
the drop of its mean probability). Transformer models (UNETR) also give attention maps,
at one block or rolled out across blocks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import napari

import numpy as np
from napari.layers import Labels, Shapes
from napari.utils.notifications import show_error
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .. import pipeline
from ..core import explain, segment, space
from ..operations import operations
from ._controls import ParameterForm
from ._dock import scroll_contents
from ._jobs import JobPanel
from ._layers import add_image_layer, image_of, world_affine
from ._pickers import LayerChecklist, LayerPicker, choose_model_file
from ._plots import RankedBars
from ._session import same, session_model, session_of

SESSION = "last model of this session"
REGIONS = ("whole image", "selected label of a Labels layer", "box: first shape of a Shapes layer")
#: Parameters the widget sets from its own model-dependent controls (target class, layer list) or always
#: asks for (the per-modality answers): hidden in the generated forms.
OWN_CONTROLS = ("target", "layer", "attribution")


def box_from_shape(shapes_layer, shape, affine) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Voxel box ``(low, high)`` on a reference grid covering the first shape of a Shapes layer."""
    if len(shapes_layer.data) == 0:
        raise ValueError(f"{shapes_layer.name} has no shape; draw a rectangle first")
    vertices = np.asarray(shapes_layer.data[0], dtype=np.float64)
    n = len(shape)
    homogeneous = np.c_[vertices, np.ones(len(vertices))]
    world = (homogeneous @ world_affine(shapes_layer).T)[:, :-1][:, -n:]
    voxels = space.world_to_voxel(affine, world)
    low = np.floor(voxels.min(axis=0) + 0.5).astype(int)
    high = np.floor(voxels.max(axis=0) + 0.5).astype(int) + 1
    return tuple(low.tolist()), tuple(high.tolist())


class ExplainWidget(QWidget):
    """Explain one class of a segmentation model on the checked image layers.

    Parameters
    ----------
    viewer : napari.Viewer

    Attributes
    ----------
    forms : dict of str -> ParameterForm
        The parameters of each method (the shown one is the chosen method's).
    """

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = viewer
        self.file_model = None
        self._shown_model = None
        self.overlays: list = []
        self.operations = operations("explain")

        self.source = QComboBox()
        self.source.addItems([SESSION, "model file…"])
        self.load_button = QPushButton("Load…")
        self.model_label = QLabel()
        self.model_label.setWordWrap(True)
        self.layers = LayerChecklist(viewer)
        self.target = QComboBox()
        self.region = QComboBox()
        self.region.addItems(REGIONS)
        self.region_labels = LayerPicker(viewer, (Labels,), optional=True)
        self.region_shapes = LayerPicker(viewer, (Shapes,), optional=True)
        self.method = QComboBox()
        for key, operation in self.operations.items():
            self.method.addItem(operation.label or key, key)
        self.layer = QComboBox()
        self.layer.setToolTip("Grad-CAM: the convolution whose activations are weighted; "
                              "attention: the transformer block whose attention is shown")
        self.forms = {key: ParameterForm(operation) for key, operation in self.operations.items()}
        for form in self.forms.values():
            for name in OWN_CONTROLS:
                for control in (name, f"{name}_auto"):
                    if control in [widget.name for widget in form]:
                        form[control].visible = False
        self.rollout = self.forms["attention"]["rollout"].native
        self.path_points = self.forms["ig"]["steps"].native
        self.jobs = JobPanel("Explain", self.run)
        self.run_button, self.cancel_button, self.progress = self.jobs.run_button, self.jobs.cancel_button, \
            self.jobs.progress
        self.bars = RankedBars("per-modality answers: attribution beside removal")
        self.legend = QListWidget()
        self.legend.setMaximumHeight(120)

        source = QHBoxLayout()
        source.addWidget(self.source)
        source.addWidget(self.load_button)
        form = QFormLayout()
        form.addRow("model", source)
        form.addRow(self.model_label)
        form.addRow("inputs (model order)", self.layers)
        form.addRow("target class", self.target)
        form.addRow("region", self.region)
        form.addRow("  label layer", self.region_labels)
        form.addRow("  shapes layer", self.region_shapes)
        form.addRow("method", self.method)
        form.addRow("layer", self.layer)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        for parameters in self.forms.values():
            layout.addWidget(parameters.native)
        layout.addWidget(self.jobs)
        answers = QLabel("per-modality answers: attribution (integrated gradients) | removing it: "
                         "1 - Dice of the class | drop of its mean probability")
        answers.setWordWrap(True)
        layout.addWidget(answers)
        layout.addWidget(self.bars)
        layout.addWidget(QLabel("overlays (check to show)"))
        layout.addWidget(self.legend)
        layout.addStretch()
        scroll_contents(self)

        self.source.currentIndexChanged.connect(self.refresh_model)
        self.method.currentIndexChanged.connect(self._fill_layers)
        self.load_button.clicked.connect(lambda: self.load_model())
        self.legend.itemChanged.connect(self._toggle)
        session_of(viewer).on_model(self._on_session_model)
        self.refresh_model()

    @property
    def worker(self):
        """The running job's worker, or None."""
        return self.jobs.worker

    def _on_session_model(self) -> None:
        """Segment trained or loaded a model: show it when the session's model is the source."""
        if self.source.currentText() == SESSION and not self.jobs.busy:
            self.refresh_model()

    # ----------------------------------------------------------------- model
    def current_model(self):
        """The chosen model, or None."""
        if self.source.currentText() == SESSION:
            entry = session_model(self.viewer)
            return entry[0] if entry else None
        return self.file_model

    def refresh_model(self, index=None, *, check_inputs: bool = True) -> None:
        """Show the chosen model's inputs and classes; fill the target and layer lists.

        With ``check_inputs``, the layers named as the model's inputs (the layers the
        session's model was trained on, or a file model's channel names) are checked in the
        model's channel order. The target is chosen by :func:`~napari_mmfuse.core.explain.default_target`.
        """
        model = self.current_model()
        self._shown_model = model
        self.target.clear()
        self._fill_layers()
        if model is None:
            self.model_label.setText("no model: train one in Segment, or load a file")
            return
        config = model.config
        classes = [f"{value} {name}" for value, name in zip(config.label_values, config.class_names)] \
            if config.class_names else [str(value) for value in config.label_values]
        self.model_label.setText(f"inputs: {', '.join(config.channel_names)}; classes {', '.join(classes)}"
                                 + (" (multi-label)" if config.activation == "sigmoid" else ""))
        for value, text in zip(config.label_values, classes):
            self.target.addItem(text, value)
        from_session = self.source.currentText() == SESSION
        sizes = session_of(self.viewer).class_voxels if from_session else None
        self.target.setCurrentIndex(self.target.findData(explain.default_target(config.label_values, sizes)))
        names = self._input_names(model)
        if check_inputs:
            by_name = {layer.name: layer for layer in self.layers.layers()}
            if all(name in by_name for name in names):
                self.layers.set_checked([by_name[name] for name in names])

    def _input_names(self, model) -> list[str]:
        """The names of the layers ``model`` takes, in its channel order: the session's, else its channels'."""
        entry = session_model(self.viewer)
        if self.source.currentText() == SESSION and entry is not None and entry[0] is model:
            return list(entry[1])
        return list(model.config.channel_names)

    def _checked_inputs(self, model) -> list:
        """The checked layers; in the model's channel order when they are the layers it names.

        The list follows the viewer's layer order once layers are added (the results of a run),
        so a second run would otherwise feed the modalities in another order.
        """
        layers = self.layers.checked()
        by_name = {layer.name: layer for layer in layers}
        names = self._input_names(model)
        if len(by_name) == len(layers) and sorted(by_name) == sorted(names):
            return [by_name[name] for name in names]
        return layers

    def _fill_layers(self, index=None) -> None:
        """Show the method's parameters; list the model's convolutions (Grad-CAM) or attention blocks."""
        self.layer.clear()
        model = self._shown_model
        method = self.method.currentData()
        for key, parameters in self.forms.items():
            parameters.native.setVisible(key == method)
        self.rollout.setEnabled(method == "attention")
        if model is None or model.config.architecture == "torchscript":
            return
        if method == "attention":
            self.layer.addItem("(last)", None)
            names = explain.attention_blocks(model)
        else:
            self.layer.addItem("(deepest)", None)
            names = explain.conv_layers(model)
        for name in names:
            self.layer.addItem(name, name)

    def load_model(self, path: str | None = None):
        """Load a model file (or a MONAI bundle picked by its ``models/model.pt``) and select it."""
        if path is None:
            path = choose_model_file(self)
            if not path:
                return None
        try:
            self.file_model = segment.load_model(path)
        except (ValueError, OSError) as error:
            show_error(f"Explain: {error}")
            return None
        self.source.setCurrentIndex(1)
        self.refresh_model()
        return self.file_model

    # ----------------------------------------------------------------- run
    def _region(self, first):
        """The region as labels (voxels > 0) and its description; None for the whole image."""
        choice = self.region.currentText()
        if choice == REGIONS[0]:
            return None, "whole image"
        if choice == REGIONS[1]:
            layer = self.region_labels.layer()
            if layer is None:
                raise ValueError("choose the Labels layer whose selected label is the region")
            value = int(layer.selected_label)
            labels = image_of(layer, kind="labels")
            mask = np.asarray(labels.data) == value
            if not mask.any():
                raise ValueError(f"label {value} of {layer.name} is empty; select another label")
            return labels.like(mask.astype(np.uint8)), f"label {value} of {layer.name}"
        layer = self.region_shapes.layer()
        if layer is None:
            raise ValueError("choose the Shapes layer holding a rectangle")
        shape = first.data.shape
        box = box_from_shape(layer, shape, first.affine)
        mask = explain.box_region(shape, box)
        return first.like(mask.astype(np.uint8), kind="labels", name=layer.name), f"box {box[0]}-{box[1]}"

    def run(self):
        """Compute the chosen explanation and the per-modality attribution in a worker.

        Returns
        -------
        napari worker or None
            None when the inputs were rejected (the user is notified).
        """
        if self.jobs.busy:
            show_error("Explain: a run is in progress; cancel it first")
            return None
        model = self.current_model()
        if model is not self._shown_model:  # a model was trained or loaded since: show its classes
            self.refresh_model(check_inputs=False)
        method = self.method.currentData()
        try:
            if model is None:
                raise ValueError("no model: train one in Segment, or load a model file")
            layers = self._checked_inputs(model)
            if not layers:
                raise ValueError("check at least one image layer (the model's input modalities)")
            if len(layers) != model.config.in_channels:
                raise ValueError(f"the model takes {model.config.in_channels} inputs "
                                 f"({', '.join(model.config.channel_names)}) but {len(layers)} layers are checked")
            images = [image_of(layer) for layer in layers]
            region, region_text = self._region(images[0])
            if method == "attention" and not explain.attention_blocks(model):
                raise ValueError(explain.NO_ATTENTION)
        except ValueError as error:  # rejected before starting: notified as Segment does
            show_error(f"Explain: {error}")
            return None
        operation = self.operations[method]
        params = self.forms[method].values() | {"target": self.target.currentData(), "attribution": True}
        if "layer" in params:
            params["layer"] = self.layer.currentData()
        label = (operation.label or method) + (" rollout" if params.get("rollout") else "")
        context = {"layers": layers, "region": region_text, "label": label}
        inputs = {"images": images, "model": model, "region": region}
        return self.jobs.start(pipeline.run_steps, "explain", method, inputs, params, title=f"Explain ({label})",
                               on_result=lambda result: self._on_result(*result, context))

    def cancel(self) -> None:
        """Stop at the next progress step; nothing is added."""
        self.jobs.cancel()

    def _on_result(self, outputs, record, context) -> None:
        first = context["layers"][0]
        names = [layer.name for layer in context["layers"]]
        label = context["label"]
        result, attribution, removal = outputs["map"], outputs["attribution"], outputs["removal"]
        shown = result.metadata["provenance"] | {
            "target": record.params["target"], "region": context["region"], "layer": result.metadata["layer"],
            "attribution": dict(zip(names, (round(float(s), 4) for s in attribution.scores))),
            "attribution_ranking": [names[attribution.names.index(n)] for n in attribution.ranking()],
            "removal_dice": dict(zip(names, (round(float(d), 4) for d in removal.dice))),
            "removal_ranking": [names[removal.names.index(n)] for n in removal.ranking()]}
        # attention is a share of the most attended token's: shown on its own 0..1 scale, not stretched
        limits = {"contrast_limits": (0.0, 1.0)} if record.method == "attention" else {}
        result.metadata["provenance"] = shown
        added = [add_image_layer(self.viewer, result, like=first, name=f"{label} class {shown['target']}",
                                 colormap="inferno", blending="additive", opacity=0.8, **limits)]
        channel_maps = outputs.get("channel_maps")
        kind = label if channel_maps is not None else "attribution"
        maps = [image.data for image in channel_maps] if channel_maps is not None else attribution.maps
        for name, values in zip(names, maps):
            image = result.like(np.abs(values), metadata={"provenance": shown | {"modality": name, "map": kind}})
            added.append(add_image_layer(self.viewer, image, like=first, name=f"{kind} of {name}", colormap="magma",
                                         blending="additive", opacity=0.8, visible=False))
        self.bars.set_columns(names, [("attribution", attribution.scores), ("1 - Dice", removal.scores),
                                      ("prob. drop", np.clip(removal.probability_change, 0, None))])
        for layer in added:
            meta = layer.metadata["mmfuse"]
            text = f"{layer.name} — {meta['method']}, class {meta['target']}, {meta['region']}"
            if meta.get("layer"):
                text += f", at {meta['layer']}"
            item = QListWidgetItem(text)
            item.setData(Qt.UserRole, layer)
            item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
            item.setCheckState(Qt.Checked if layer.visible else Qt.Unchecked)
            self.legend.addItem(item)
            layer.colorbar.visible = True  # the colour scale, drawn while the layer is shown
            layer.events.visible.connect(self._sync_legend)
        self.overlays.extend(added)

    def _toggle(self, item) -> None:
        layer = item.data(Qt.UserRole)
        if layer is not None and layer in self.viewer.layers:
            layer.visible = item.checkState() == Qt.Checked

    def _sync_legend(self, event=None) -> None:
        """Tick the legend's entries as the layer list shows their layers (eye toggles included)."""
        self.legend.blockSignals(True)
        for row in range(self.legend.count()):
            item = self.legend.item(row)
            layer = item.data(Qt.UserRole)
            if event is None or same(layer, event.source):
                item.setCheckState(Qt.Checked if layer.visible else Qt.Unchecked)
        self.legend.blockSignals(False)
