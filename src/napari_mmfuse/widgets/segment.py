"""Dock widget "Segment": classical methods, or a network trained on painted strokes.

The checked image layers are the modalities (channels), resampled onto the first one's
grid. For the trainable methods the user paints a few strokes per class in a Labels
layer (0 = unlabelled); the painted layer is only read, never modified. Results arrive
as a new Labels layer (the class probabilities in its ``metadata``) and an uncertainty
image. The last trained model is kept for the session (see :func:`session_model`), for
"Predict" on other layers, warm-start retraining and the "Explain" widget.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import napari

import numpy as np
from napari.layers import Labels
from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..core import segment, space
from ._dock import scroll_contents
from ._pickers import LayerChecklist, LayerPicker, is_result
from ._plots import CurvePlot
from ._layers import geometry_of, spatial_affine
from ._session import session_of
from ._workers import start_worker


def choose_model_file(parent) -> str:
    """Ask for a model file (a MONAI bundle is picked by its ``models/model.pt``); "" if cancelled."""
    path, _ = QFileDialog.getOpenFileName(
        parent, "Load model (a MONAI bundle: its models/model.pt)", "", "Model (*.pt *.pth *.ts)"
    )
    return path


#: Method choices: label -> (kind, options)
METHODS = {
    "UNet, early fusion": ("unet", {"fusion": "early"}),
    "UNet, late fusion (average)": ("unet", {"fusion": "late", "combine": "average"}),
    "UNet, late fusion (vote)": ("unet", {"fusion": "late", "combine": "vote"}),
    "UNETR transformer, early fusion (attention maps)": ("unet", {"fusion": "early", "architecture": "unetr"}),
    "Otsu (first layer)": ("otsu", {}),
    "Multi-Otsu, 3 classes (first layer)": ("multiotsu", {}),
    "Seeded watershed": ("watershed", {}),
}

def session_model(viewer):
    """The last model trained or loaded in this viewer's session, or None.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer, or any widget's proxy of it.

    Returns
    -------
    (SegmentationNet, list of str) or None
        The model and the names of the layers it was trained on, in channel order.
    """
    return session_of(viewer).model


def remember_model(viewer, model, layer_names, labels=None) -> None:
    """Make ``model`` the session's current model (see :func:`session_model`).

    ``labels``, the model's segmentation of its inputs, tells Explain how large each class is.
    """
    counts = {}
    if labels is not None:
        values, sizes = np.unique(np.asarray(labels), return_counts=True)
        counts = {int(v): int(n) for v, n in zip(values, sizes) if v != 0}
    session_of(viewer).set_model(model, layer_names, counts)


def strokes_layer(layers):
    """The Labels layer that most likely holds the user's strokes, or None when unclear.

    The only Labels layer; else the newest one painted in this session (not read from a
    file, not one of the plugin's results).
    """
    if len(layers) == 1:
        return layers[0]
    painted = [layer for layer in layers if layer.source.path is None and not is_result(layer)]
    return painted[-1] if painted else None


def image_array(layer) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (float32, 2D or 3D) of an image layer and its index -> world affine."""
    if layer.multiscale or getattr(layer, "rgb", False):
        raise ValueError(f"{layer.name} is multiscale or RGB; pick a single-resolution grey layer")
    data = np.asarray(layer.data)
    if data.ndim not in (2, 3):
        raise ValueError(f"{layer.name} is {data.ndim}D; segmentation needs 2D or 3D layers")
    return data.astype(np.float32, copy=False), spatial_affine(layer, data.ndim)


def modality_stack(layers) -> tuple[np.ndarray, np.ndarray]:
    """The layers as channels on the first layer's grid.

    Returns
    -------
    images : ndarray, shape (C, *S), float32
    affine : ndarray, shape (n + 1, n + 1)
        The first layer's index -> world affine.
    """
    if not layers:
        raise ValueError("check at least one image layer (the modalities to segment)")
    arrays = [image_array(layer) for layer in layers]
    dims = {data.ndim for data, _ in arrays}
    if len(dims) > 1:
        raise ValueError("the checked layers mix 2D and 3D; check layers of one dimensionality")
    reference, affine = arrays[0]
    images = segment.stack_modalities([d for d, _ in arrays], [a for _, a in arrays], reference.shape, affine)
    return images, affine


def labels_on_grid(layer, shape, affine) -> np.ndarray:
    """A copy of a Labels layer's data on a reference grid (nearest neighbour)."""
    data = np.asarray(layer.data)
    if data.ndim != len(shape):
        raise ValueError(f"{layer.name} is {data.ndim}D but the images are {len(shape)}D")
    own = spatial_affine(layer, data.ndim)
    if data.shape == tuple(shape) and np.allclose(own, affine, atol=1e-6):
        return data.copy()
    return space.resample(data, own, shape, affine, interpolation="nearest")


def _train_and_predict(images, scribbles, affine, options):
    """Worker body: yields TrainStep, returns (model, labels, probabilities)."""
    model = yield from segment.train_steps(images, scribbles, **options)
    labels, probabilities = segment.predict(model, images, affine=affine)
    return model, labels, probabilities


def _classical(kind, images, scribbles):
    if kind == "watershed":
        return segment.watershed(images, scribbles)
    return segment.threshold(images[0], method=kind)


class SegmentWidget(QWidget):
    """Segment the checked image layers.

    Parameters
    ----------
    viewer : napari.Viewer
    """

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = viewer
        self.worker = None
        self.model = None

        self.layers = LayerChecklist(viewer)
        self.method = QComboBox()
        self.method.addItems(list(METHODS))
        self.scribbles = LayerPicker(viewer, (Labels,), optional=True, prefer=strokes_layer)
        self.steps = QSpinBox(minimum=1, maximum=20000, value=200)
        self.learning_rate = QDoubleSpinBox(decimals=4, minimum=1e-4, maximum=0.1, singleStep=1e-3, value=2e-3)
        self.learning_rate.setToolTip("Adam step size; 1e-2 converges faster on small 2D images")
        self.warm_start = QCheckBox("warm start from the current model")
        self.warm_start.setChecked(True)
        self.warm_start.setToolTip("continue training the session's model (same layers and classes)")

        self.train_button = QPushButton("Train && segment")
        self.predict_button = QPushButton("Predict with current model")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.save_button = QPushButton("Save model…")
        self.load_button = QPushButton("Load model…")
        self.progress = QProgressBar()
        self.curve = CurvePlot("training loss per step")
        self.status = QLabel("no model yet")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("modalities", self.layers)
        form.addRow("method", self.method)
        form.addRow("scribbles", self.scribbles)
        form.addRow("training steps", self.steps)
        form.addRow("learning rate", self.learning_rate)
        form.addRow(self.warm_start)
        buttons = QHBoxLayout()
        for button in (self.train_button, self.predict_button, self.cancel_button):
            buttons.addWidget(button)
        files = QHBoxLayout()
        files.addWidget(self.save_button)
        files.addWidget(self.load_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.curve)
        layout.addLayout(files)
        layout.addWidget(self.status)
        layout.addStretch()
        scroll_contents(self)

        self.train_button.clicked.connect(self.run)
        self.predict_button.clicked.connect(self.predict)
        self.cancel_button.clicked.connect(self.cancel)
        self.save_button.clicked.connect(lambda: self.save_model())
        self.load_button.clicked.connect(lambda: self.load_model())

    # ----------------------------------------------------------------- actions
    def run(self):
        """Segment with the chosen method (training first for the UNet methods).

        Returns
        -------
        napari worker or None
            The started worker, or None when the inputs were rejected (the user is notified).
        """
        if self.worker is not None:
            show_error("Segment: a run is in progress; cancel it first")
            return None
        kind, options = METHODS[self.method.currentText()]
        try:
            layers = self.layers.checked()
            images, affine = modality_stack(layers)
            scribble_layer = self.scribbles.layer()
            scribbles = None
            if scribble_layer is not None:
                scribbles = labels_on_grid(scribble_layer, images.shape[1:], affine)
            if kind in ("unet", "watershed") and scribbles is None:
                raise ValueError("choose the Labels layer holding your painted strokes")
            if scribbles is not None and kind in ("unet", "watershed"):
                segment.check_scribbles(images, scribbles)
        except ValueError as error:
            show_error(f"Segment: {error}")
            return None
        context = {"layers": layers, "affine": affine, "method": self.method.currentText(),
                   "scribbles": scribble_layer.name if scribble_layer is not None else None}
        if kind != "unet":
            worker = create_worker(_classical, kind, images, scribbles,
                                   _progress={"desc": f"Segmenting ({kind})"})
            worker.returned.connect(lambda labels: self._add_result(labels, None, context))
            return self._start(worker, busy=True)
        warm = None
        if self.warm_start.isChecked() and self.model is not None:
            names = [layer.name for layer in layers]
            session = session_model(self.viewer)
            same_inputs = session is not None and session[1] == names
            same_fusion = (self.model.config.fusion == options["fusion"]
                           and self.model.config.architecture == options.get("architecture", "unet"))
            known = set(np.unique(scribbles[scribbles != 0]).tolist()) <= set(self.model.config.label_values)
            if same_inputs and same_fusion and known and self.model.config.architecture != "torchscript":
                warm = self.model
            else:
                show_info("Segment: the layers, network, fusion or classes changed; training a new model")
        steps = self.steps.value()
        train_options = {"steps": steps, "learning_rate": self.learning_rate.value(),
                         "channel_names": [layer.name for layer in layers]}
        train_options |= {"model": warm} if warm is not None else options
        if warm is not None and "combine" in options:
            warm.config.combine = options["combine"]
        context["warm_start"] = warm is not None
        worker = create_worker(_train_and_predict, images, scribbles, affine, train_options,
                               _progress={"total": steps, "desc": "Training"})
        worker.yielded.connect(self._on_step)
        worker.returned.connect(lambda result: self._on_trained(*result, context))
        self.curve.clear()
        self.progress.setRange(0, steps)
        self.progress.setValue(0)
        self.status.setText(("continuing the current model" if warm is not None else "training a new model") + "…")
        return self._start(worker)

    def predict(self):
        """Segment the checked layers with the current model (no training)."""
        if self.worker is not None:
            show_error("Segment: a run is in progress; cancel it first")
            return None
        if self.model is None:
            show_error("Segment: no model yet; train one or load a model file")
            return None
        try:
            layers = self.layers.checked()
            images, affine = modality_stack(layers)
            if images.shape[0] != self.model.config.in_channels:
                raise ValueError(f"the model takes {self.model.config.in_channels} layers "
                                 f"({', '.join(self.model.config.channel_names)}); {images.shape[0]} are checked")
        except ValueError as error:
            show_error(f"Segment: {error}")
            return None
        context = {"layers": layers, "affine": affine, "method": "predict", "scribbles": None}
        model = self.model
        worker = create_worker(segment.predict, model, images, affine=affine, _progress={"desc": "Predicting"})
        worker.returned.connect(lambda result: self._add_result(*result, context))
        return self._start(worker, busy=True)

    def cancel(self) -> None:
        """Stop the running training; the painted layer and existing results are untouched."""
        if self.worker is not None:
            self.worker.quit()

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
            written = segment.save_model(self.model, path, overwrite=overwrite)
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
        try:
            model = segment.load_model(path)
        except (ValueError, OSError) as error:
            show_error(f"Load model: {error}")
            return None
        self.model = model
        remember_model(self.viewer, model, model.config.channel_names)
        self.status.setText(f"loaded {path}: inputs {', '.join(model.config.channel_names)}; "
                            f"classes {model.config.label_values}")
        return model

    # ----------------------------------------------------------------- results
    def _start(self, worker, *, busy: bool = False):
        worker.errored.connect(lambda error: show_error(f"Segment failed: {error}"))
        cancellable = isinstance(worker, GeneratorWorker)  # one-shot steps run to the end
        if cancellable:
            worker.aborted.connect(lambda: show_info("Segment cancelled; no layer was changed"))
        worker.finished.connect(self._on_finished)
        if busy:
            self.progress.setRange(0, 0)
        self.worker = worker
        self.train_button.setEnabled(False)
        self.predict_button.setEnabled(False)
        self.cancel_button.setEnabled(cancellable)
        start_worker(worker)
        return worker

    def _on_step(self, step) -> None:
        self.progress.setValue(step.step)
        self.curve.add(step.loss)

    def _on_finished(self) -> None:
        self.worker = None
        self.progress.setRange(0, max(self.progress.maximum(), 1))
        self.train_button.setEnabled(True)
        self.predict_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    def _on_trained(self, model, labels, probabilities, context) -> None:
        self.model = model
        remember_model(self.viewer, model, [layer.name for layer in context["layers"]], labels)
        self.status.setText(f"model: {model.config.architecture}, {model.config.fusion} fusion, inputs "
                            f"{', '.join(model.config.channel_names)}; classes {model.config.label_values}; "
                            f"final loss {self.curve.values[-1]:.3g}" if self.curve.values else "model trained")
        self._add_result(labels, probabilities, context)

    def _add_result(self, labels, probabilities, context) -> None:
        first = context["layers"][0]
        provenance = {
            "step": "segment",
            "method": context["method"],
            "inputs": [layer.name for layer in context["layers"]],
            "scribbles": context["scribbles"],
            "warm_start": context.get("warm_start", False),
        }
        metadata = {"mmfuse": provenance}
        if probabilities is not None:
            metadata |= {"probabilities": probabilities, "label_values": list(self.model.config.label_values)}
        self.viewer.add_labels(np.asarray(labels), **geometry_of(first, name=f"{first.name} segmentation",
                                                                 metadata=metadata, opacity=0.5))
        if probabilities is not None:
            self.viewer.add_image(
                segment.uncertainty(probabilities),
                **geometry_of(first, name=f"{first.name} uncertainty", colormap="magma", blending="additive",
                              contrast_limits=(0.0, 1.0), visible=False,
                              metadata={"mmfuse": provenance | {"map": "normalised entropy of the probabilities"}}),
            )
