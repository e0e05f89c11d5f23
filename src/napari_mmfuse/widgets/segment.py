"""Dock widget "Segment": classical methods, or a network trained on painted strokes.

The checked image layers are the modalities (channels), placed on the first one's grid by
the operation (:mod:`napari_mmfuse.operations.segment`). For the trainable method the user
paints a few strokes per class in a Labels layer (0 = unlabelled); the painted layer is only
read, never modified. Results arrive as a new Labels layer (the class probabilities in its
``metadata``) and an uncertainty image, each with the run's provenance. The last trained
model is kept for the session (see :func:`session_model`), for "Predict" on other layers,
warm-start retraining and the "Explain" widget. A MONAI bundle is loaded from a folder or
fetched from the model zoo by name; its input channels are matched to the image layers by
name, with one drop-down per channel to check or correct the match, and a multi-label
(sigmoid) bundle gives one Labels layer per output channel. Parameters come from the registry
(:class:`~napari_mmfuse.widgets._controls.ParameterForm`), runs go through the shared
:class:`~napari_mmfuse.widgets._jobs.JobPanel`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import napari

from napari.layers import Image as ImageLayer
from napari.layers import Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from ..operations import operations
from ..pipeline import run_steps
from ._controls import ParameterForm
from ._dock import scroll_contents
from ._jobs import JobPanel
from ._layers import add_image_layer, image_of
from ._pickers import LayerChecklist, LayerPicker, choose_model_file, is_result
from ._plots import CurvePlot
from ._session import remember_model, session_model

#: Methods that read the painted strokes.
NEEDS_STROKES = ("unet", "watershed")


def strokes_layer(layers):
    """The Labels layer that most likely holds the user's strokes, or None when unclear.

    The only Labels layer; else the newest one painted in this session (not read from a
    file, not one of the plugin's results).
    """
    if len(layers) == 1:
        return layers[0]
    painted = [layer for layer in layers if layer.source.path is None and not is_result(layer)]
    return painted[-1] if painted else None


def checked_images(layers) -> list:
    """The checked image layers as :class:`~napari_mmfuse.operations.Image` (copies), in order.

    Raises
    ------
    ValueError
        No layer is checked, or one is multiscale.
    """
    if not layers:
        raise ValueError("check at least one image layer (the modalities to segment)")
    multiscale = [layer.name for layer in layers if getattr(layer, "multiscale", False)]
    if multiscale:
        raise ValueError(f"{multiscale[0]} is multiscale; pick a single-resolution grey layer")
    return [image_of(layer) for layer in layers]


class ChannelChoice(LayerPicker):
    """An optional image-layer drop-down for one model channel, whose last entry marks the channel missing."""

    MISSING = "missing (this case lacks it)"

    def refresh(self, event=None):
        """Rebuild the layer entries, then the "missing" entry (kept when it was chosen)."""
        was_missing = self.is_missing()
        super().refresh(event)
        self.blockSignals(True)
        self.addItem(self.MISSING, self.MISSING)
        if was_missing:
            self.setCurrentIndex(self.count() - 1)
        self.blockSignals(False)

    def is_missing(self) -> bool:
        """Whether the user marked the channel missing."""
        return self.count() > 0 and isinstance(self.currentData(), str)

    def set_missing(self) -> None:
        """Mark the channel missing."""
        self.setCurrentIndex(self.findData(self.MISSING))

    def layer(self):
        """The chosen layer; None for "(none)" and for "missing"."""
        return None if self.is_missing() else super().layer()


class ChannelPicker(QWidget):
    """One image-layer drop-down per input channel of the model, preset by name.

    The presets come from :func:`napari_mmfuse.core.bundle.match_channels` (T1, T1c/T1ce/T1Gd,
    T2, FLAIR, ...); a channel no layer or several layers match starts at "(none)". For a model
    that segments without some modalities (trained with modality dropout, or late fusion) each
    drop-down also offers "missing": the channel is left out and the pipeline fills it
    (:func:`~napari_mmfuse.core.segment.train.fill_missing`).
    """

    def __init__(self, viewer):
        super().__init__()
        self.viewer = viewer
        self.form = QFormLayout(self)
        self.form.setContentsMargins(0, 0, 0, 0)
        self.names: list[str] = []
        self.pickers: list[LayerPicker] = []

    def set_channels(self, names, layers, *, allow_missing: bool = False) -> list[str]:
        """Rows for the channel ``names``, preset from ``layers``; returns the channels left unmatched.

        With ``allow_missing`` each drop-down offers "missing" (:class:`ChannelChoice`).
        """
        from ..core.bundle import match_channels

        while self.form.rowCount():
            self.form.removeRow(0)
        self.names = list(names)
        kind = ChannelChoice if allow_missing else LayerPicker
        self.pickers = [kind(self.viewer, (ImageLayer,), optional=True) for _ in self.names]
        matched = match_channels(self.names, [layer.name for layer in layers]) if layers else [None] * len(self.names)
        for name, picker, index in zip(self.names, self.pickers, matched):
            if index is not None:
                picker.set_layer(layers[index])
            self.form.addRow(name, picker)
        return [name for name, picker in zip(self.names, self.pickers) if picker.layer() is None]

    def chosen(self) -> tuple[list[str], list]:
        """The channels given and their layers, in the model's order; channels marked missing are left out.

        Raises
        ------
        ValueError
            A channel has neither a layer nor "missing", or every channel is missing.
        """
        missing = [isinstance(picker, ChannelChoice) and picker.is_missing() for picker in self.pickers]
        unset = [name for name, picker, gone in zip(self.names, self.pickers, missing)
                 if picker.layer() is None and not gone]
        if unset:
            raise ValueError(f"pick the image layer of channel {', '.join(unset)} (model channels)"
                             + (", or mark it missing" if any(isinstance(p, ChannelChoice) for p in self.pickers)
                                else ""))
        if all(missing):
            raise ValueError(f"every channel ({', '.join(self.names)}) is marked missing; pick at least one layer")
        given = [(name, picker.layer()) for name, picker, gone in zip(self.names, self.pickers, missing) if not gone]
        return [name for name, _ in given], [layer for _, layer in given]


class SegmentWidget(QWidget):
    """Segment the checked image layers.

    Parameters
    ----------
    viewer : napari.Viewer

    Attributes
    ----------
    forms : dict of str -> ParameterForm
        The parameters of each segment operation (by method name).
    jobs : JobPanel
        Run ("Train & segment"), Cancel, progress and status.
    model : SegmentationNet or None
        The current model (trained or loaded here).
    """

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = viewer
        self.model = None

        self.layers = LayerChecklist(viewer)
        self.method = QComboBox()
        self.forms = {name: ParameterForm(operation) for name, operation in operations("segment").items()}
        self.parameters = QStackedWidget()
        for name, operation in operations("segment").items():
            self.parameters.addWidget(self.forms[name].native)
            if name != "predict":  # applying the current model is the Predict button
                self.method.addItem(operation.label or name, name)
        self.scribbles = LayerPicker(viewer, (Labels,), optional=True, prefer=strokes_layer)
        self.steps = self.forms["unet"]["steps"].native
        self.learning_rate = self.forms["unet"]["learning_rate"].native
        self.warm_start = QCheckBox("warm start from the current model")
        self.warm_start.setChecked(True)
        self.warm_start.setToolTip("continue training the session's model (same layers and classes)")

        self.jobs = JobPanel("Train && segment", self.run)
        self.train_button, self.cancel_button = self.jobs.run_button, self.jobs.cancel_button
        self.status = self.jobs.status
        self.status.setText("no model yet")
        self.predict_button = QPushButton("Predict with current model")
        self.save_button = QPushButton("Save model…")
        self.load_button = QPushButton("Load model…")
        self.bundle_name = QLineEdit()
        self.bundle_name.setPlaceholderText("zoo bundle, e.g. brats_mri_segmentation")
        self.bundle_button = QPushButton("Get bundle")
        self.bundle_button.setToolTip("download the MONAI Model Zoo bundle by name (once; kept in the bundle cache)")
        self.trust = QCheckBox("trust the bundle's code")
        self.trust.setToolTip("let MONAI's config parser evaluate the bundle's expressions and build a network "
                              "from outside MONAI (runs code from the bundle)")
        self.channels = ChannelPicker(viewer)
        self.channels_label = QLabel("model channels")
        self.curve = CurvePlot("training loss per step")

        form = QFormLayout()
        form.addRow("modalities", self.layers)
        form.addRow("method", self.method)
        form.addRow("scribbles", self.scribbles)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.parameters)
        layout.addWidget(self.warm_start)
        layout.addWidget(self.jobs)
        layout.addWidget(self.predict_button)
        layout.addWidget(self.curve)
        files = QHBoxLayout()
        files.addWidget(self.save_button)
        files.addWidget(self.load_button)
        layout.addLayout(files)
        zoo = QHBoxLayout()
        zoo.addWidget(self.bundle_name)
        zoo.addWidget(self.bundle_button)
        layout.addLayout(zoo)
        layout.addWidget(self.trust)
        layout.addWidget(self.channels_label)
        layout.addWidget(self.channels)
        self.channels_label.setVisible(False)
        layout.addStretch()
        scroll_contents(self)
        self.bundle_button.clicked.connect(lambda: self.get_bundle())

        self.method.currentIndexChanged.connect(self._show_method)
        self.predict_button.clicked.connect(self.predict)
        self.save_button.clicked.connect(lambda: self.save_model())
        self.load_button.clicked.connect(lambda: self.load_model())
        self._show_method()

    @property
    def worker(self):
        """The running job's worker, or None."""
        return self.jobs.worker

    def _show_method(self) -> None:
        method = self.method.currentData()
        self.parameters.setCurrentWidget(self.forms[method].native)
        self.warm_start.setVisible(method == "unet")

    # ----------------------------------------------------------------- actions
    def run(self):
        """Segment with the chosen method (training first for the network).

        Returns
        -------
        napari worker or None
            The started worker, or None when the inputs were rejected (the user is notified).
        """
        from ..core.segment import stroke_classes

        if self.jobs.busy:
            show_error("Segment: a run is in progress; cancel it first")
            return None
        method = self.method.currentData()
        try:
            layers = self.layers.checked()
            inputs = {"images": checked_images(layers)}
            if method in NEEDS_STROKES:
                strokes = self.scribbles.layer()
                if strokes is None:
                    raise ValueError("choose the Labels layer holding your painted strokes")
                classes = stroke_classes(strokes.data)
                inputs["strokes"] = image_of(strokes, kind="labels")
            params = self.forms[method].values()
        except ValueError as error:
            show_error(f"Segment: {error}")
            return None
        if method == "unet":
            warm = self._warm_model([layer.name for layer in layers], classes, params)
            if warm is not None:
                inputs["model"] = warm
            self.curve.clear()
            self.status.setText(("continuing the current model" if warm is not None else "training a new model") + "…")
        return self._start(method, inputs, params, layers)

    def _warm_model(self, names, classes, params):
        """The current model when warm start is ticked and it fits the layers, network and classes."""
        if not self.warm_start.isChecked() or self.model is None:
            return None
        config = self.model.config
        session = session_model(self.viewer)
        same_inputs = session is not None and session[1] == names
        same_network = config.fusion == params["fusion"] and config.architecture == params["architecture"]
        if same_inputs and same_network and set(classes) <= set(config.label_values):
            return self.model
        show_info("Segment: the layers, network, fusion or classes changed; training a new model")
        return None

    def predict(self):
        """Segment the checked layers with the current model (no training)."""
        if self.jobs.busy:
            show_error("Segment: a run is in progress; cancel it first")
            return None
        if self.model is None:
            show_error("Segment: no model yet; train one or load a model file")
            return None
        config = self.model.config
        try:
            if self.channels.names:  # named channels: the drop-downs' layers, each image named as its channel
                names, layers = self.channels.chosen()
                images = checked_images(layers)
                for image, name in zip(images, names):
                    image.name = name  # how the pipeline matches fewer images to the model's channels
                if len(layers) == config.in_channels:  # Explain offers these layers, in this order, as the inputs
                    remember_model(self.viewer, self.model, [layer.name for layer in layers])
            else:
                layers = self.layers.checked()
                if len(layers) != config.in_channels:
                    raise ValueError(f"the model takes {config.in_channels} layers "
                                     f"({', '.join(config.channel_names)}); {len(layers)} are checked")
                images = checked_images(layers)
            inputs = {"images": images, "model": self.model}
        except ValueError as error:
            show_error(f"Segment: {error}")
            return None
        return self._start("predict", inputs, {}, layers)

    def _start(self, method, inputs, params, layers):
        worker = self.jobs.start(run_steps, "segment", method, inputs, params, title="Segment",
                                 on_result=lambda result: self._on_result(*result, layers),
                                 on_progress=self._on_progress)
        if worker is not None:
            self.predict_button.setEnabled(False)
            worker.finished.connect(lambda: self.predict_button.setEnabled(True))
        return worker

    def cancel(self) -> None:
        """Stop the running job; the painted layer and existing results are untouched."""
        self.jobs.cancel()

    def save_model(self, path: str | None = None, *, overwrite: bool = False):
        """Save the current model as ``<stem>.pt`` + ``<stem>.json``; asks for a file without ``path``."""
        if self.model is None:
            show_error("Save model: no model yet")
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Save model", "", "Model (*.pt)")
            if not path:
                return None
            overwrite = True  # the dialog asked already
        try:
            written = self.model.save(path, overwrite=overwrite)
        except (ValueError, OSError) as error:
            show_error(f"Save model: {error}")
            return None
        show_info(f"Saved {written[0].name} and {written[1].name}")
        return written

    def load_model(self, path: str | None = None):
        """Load a model (weights-only state dict + JSON, TorchScript, or a MONAI bundle picked by its
        ``models/model.pt``) as the session's model."""
        if path is None:
            path = choose_model_file(self)
            if not path:
                return None
        from ..core.bundle import bundle_of, load_bundle
        from ..core.segment import load_model

        try:
            model = load_bundle(path, trust_code=self.trust.isChecked()) if bundle_of(path) else load_model(path)
        except (ValueError, OSError) as error:
            show_error(f"Load model: {error}")
            return None
        self.model = model
        config = model.config
        remember_model(self.viewer, model, config.channel_names)
        classes = ", ".join(f"{v} {n}" for v, n in zip(config.label_values, config.class_names)) \
            if config.class_names else str(config.label_values)
        self.status.setText(f"loaded {path}: inputs {', '.join(config.channel_names)}; classes {classes}"
                            + (" (multi-label)" if config.activation == "sigmoid" else ""))
        self._preset_channels()
        return model

    def get_bundle(self, name: str | None = None):
        """Fetch the zoo bundle ``name`` (default: the field's) into the cache and load it; returns the worker."""
        from napari.qt.threading import create_worker

        from ..core.bundle import fetch_bundle

        name = (name or self.bundle_name.text()).strip()
        if not name:
            show_error("Segment: type a MONAI Model Zoo bundle name, e.g. brats_mri_segmentation")
            return None
        self.status.setText(f"getting bundle {name}…")
        worker = create_worker(fetch_bundle, name, _ignore_errors=True)  # reported once, by _bundle_failed
        worker.returned.connect(lambda folder: self.load_model(str(folder)))
        worker.errored.connect(self._bundle_failed)
        worker.start()
        return worker

    def _bundle_failed(self, error) -> None:
        show_error(f"Segment: {error}")
        self.status.setText(str(error))

    def _preset_channels(self) -> None:
        """Channel drop-downs, preset from the image layers, for a bundle (its channels have names) or a
        loaded model that segments without some of its modalities (each drop-down then offers "missing")."""
        config = self.model.config
        allow_missing = config.in_channels > 1 and (config.fusion == "late" or config.modality_dropout > 0)
        shown = config.architecture == "monai" or allow_missing
        self.channels_label.setVisible(shown)
        if not shown:
            self.channels.set_channels([], [])
            return
        self.channels_label.setText("model channels" + (" (\"missing\" where a case lacks one)" if allow_missing
                                                        else " (every one needed)"))
        layers = self.layers.layers()  # every image layer offered, checked or not
        unmatched = self.channels.set_channels(config.channel_names, layers, allow_missing=allow_missing)
        if unmatched:
            show_info(f"Segment: pick the layer of channel {', '.join(unmatched)}: no layer or several match by name")

    # ----------------------------------------------------------------- results
    def _on_progress(self, progress) -> None:
        if "loss" in progress.values:
            self.curve.add(progress.values["loss"])

    def _on_result(self, outputs, record, layers) -> None:
        first = layers[0]
        if "model" in outputs:
            model = self.model = outputs["model"]
            remember_model(self.viewer, model, [layer.name for layer in layers], outputs["labels"].data)
            config = model.config
            self.status.setText(f"model: {config.architecture}, {config.fusion} fusion, inputs "
                                f"{', '.join(config.channel_names)}; classes {config.label_values}; "
                                f"final loss {self.curve.values[-1]:.3g}" if self.curve.values else "model trained")
        masks = outputs.get("masks")
        result = add_image_layer(self.viewer, outputs["labels"], like=first, name=f"{first.name} segmentation",
                                 opacity=0.5, visible=masks is None)
        config = self.model.config if self.model is not None else None
        if config is not None and config.class_names and masks is None:
            result.features = {"index": list(config.label_values), "class": list(config.class_names)}
        if masks is not None:  # a multi-label model: one layer per (overlapping) label, named by the model
            names = config.class_names or [f"label {v}" for v in config.label_values]
            for mask, value, name in zip(masks, config.label_values, names):
                layer = outputs["labels"].like(mask * value, name=f"{first.name} {name}",
                                               metadata=dict(outputs["labels"].metadata))
                add_image_layer(self.viewer, layer, like=first, opacity=0.5)
        if "probabilities" in outputs:
            result.metadata["probabilities"] = outputs["probabilities"]
            result.metadata["label_values"] = list(self.model.config.label_values)
            add_image_layer(self.viewer, outputs["uncertainty"], like=first, name=f"{first.name} uncertainty",
                            colormap="magma", blending="additive", contrast_limits=(0.0, 1.0), visible=False)
