"""Dock widget "Register": automatic image registration of a moving layer onto a fixed layer.

A linear result (rigid, similarity, affine) moves the moving layer by composing its
``affine`` (instant, lossless, undoable); a deformable result adds a resampled layer on
the fixed grid, optionally with displacement-magnitude and Jacobian-determinant overlays.
The methods and their parameters come from the operation registry (``register``
capability); the work runs through :func:`napari_mmfuse.pipeline.run_steps` in the shared
job panel; this module only gathers inputs and puts results back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import napari


import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from .. import pipeline
from ..history import history_for, layer_affine
from ..io.transforms import Transform, field_path
from ..operations import Image as Picture
from ..operations import operations
from ..operations.register.intensity import METRIC_NAMES
from ._dock import scroll_contents
from ._controls import ParameterForm
from ._jobs import JobPanel
from ._layers import add_image_layer
from ._pickers import LayerPicker
from ._plots import CurvePlot
from ._registration import layer_picture, mask_data, registration_pair

#: The image-based registration methods (the registry's, landmarks aside: Manual correction fits those).
MODELS = tuple(name for name in operations("register") if name != "landmarks")


class RegisterWidget(QWidget):
    """Register a moving image layer onto a fixed one.

    Parameters
    ----------
    viewer : napari.Viewer

    Attributes
    ----------
    forms : dict of str to ParameterForm
        The parameters of each registration method, from the registry.
    transform : ndarray or None
        The last transform found or loaded (see Notes).

    Notes
    -----
    The transform ``T`` found maps a fixed-world point to a moving-world point (ITK
    convention, napari axis order). A linear result sets the moving layer's
    ``affine`` to ``inv(T) @ affine_at_start`` through the shared undo history.
    The transform kept for saving and applying (:attr:`transform`) is relative to the
    moving layer's *original* placement (its affine when a registration widget first
    saw it, normally as read from the file), so it also carries earlier corrections and
    applies to any layer that shares that original placement.
    """

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = viewer
        self.transform: np.ndarray | None = None
        self.displacement: np.ndarray | None = None
        self.field_affine: np.ndarray | None = None
        self._steps = 0

        self.fixed = LayerPicker(viewer, (Image,), default_index=0)
        self.moving = LayerPicker(viewer, (Image,), default_index=1)
        self.fixed_mask = LayerPicker(viewer, (Labels,), optional=True)
        self.moving_mask = LayerPicker(viewer, (Labels,), optional=True)
        self.model = QComboBox()
        self.model.addItems(MODELS)
        self.forms = {name: ParameterForm(operations("register")[name]) for name in MODELS}
        self.parameters = QStackedWidget()
        for form in self.forms.values():
            self.parameters.addWidget(form.native)
        self.overlays = QCheckBox("add displacement and Jacobian overlays")
        self.overlays.setChecked(True)
        self.overlays.setToolTip("deformable only: |displacement| and det(Jacobian) on the fixed grid")

        self.jobs = JobPanel("Register", on_run=self.register)
        self.register_button, self.cancel_button = self.jobs.run_button, self.jobs.cancel_button
        self.curve = CurvePlot("metric per iteration")
        self.result_label = QLabel("metric: —")
        self.result_label.setWordWrap(True)
        self.undo_button = QPushButton("Undo")
        self.redo_button = QPushButton("Redo")
        self.save_button = QPushButton("Save transform…")
        self.load_button = QPushButton("Load transform…")
        self.apply_target = LayerPicker(viewer, (Image, Labels))
        self.apply_button = QPushButton("Apply transform → new layer on fixed grid")
        self.apply_button.setToolTip(
            "Resample the chosen layer (in the moving image's original placement) onto the fixed grid "
            "through the last or loaded transform; labels use nearest neighbour"
        )

        form = QFormLayout()
        form.addRow("fixed", self.fixed)
        form.addRow("moving", self.moving)
        form.addRow("fixed mask", self.fixed_mask)
        form.addRow("moving mask", self.moving_mask)
        form.addRow("model", self.model)
        form.addRow(self.parameters)
        form.addRow(self.overlays)
        history_row = QHBoxLayout()
        history_row.addWidget(self.undo_button)
        history_row.addWidget(self.redo_button)
        transform_box = QGroupBox("transform")
        transform_layout = QFormLayout(transform_box)
        file_row = QHBoxLayout()
        file_row.addWidget(self.save_button)
        file_row.addWidget(self.load_button)
        transform_layout.addRow(file_row)
        transform_layout.addRow("layer", self.apply_target)
        transform_layout.addRow(self.apply_button)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.jobs)
        layout.addWidget(self.curve)
        layout.addWidget(self.result_label)
        layout.addLayout(history_row)
        layout.addWidget(transform_box)
        layout.addStretch()
        scroll_contents(self)

        self.model.currentIndexChanged.connect(self.parameters.setCurrentIndex)
        self.undo_button.clicked.connect(self.undo)
        self.redo_button.clicked.connect(self.redo)
        self.save_button.clicked.connect(lambda: self.save_transform())
        self.load_button.clicked.connect(lambda: self.load_transform())
        self.apply_button.clicked.connect(lambda: self.apply_to_layer())
        self.moving.currentIndexChanged.connect(self._watch_moving)
        self._watch_moving()

    # ----------------------------------------------------------------- parameters of the chosen method
    @property
    def worker(self):
        """The running job (registration or apply), or None."""
        return self.jobs.worker

    @property
    def form(self) -> ParameterForm:
        """The parameter form of the chosen method."""
        return self.forms[self.model.currentText()]

    @property
    def metric(self):
        """The chosen method's metric control (a combo box)."""
        return self.form["metric"].native

    @property
    def levels(self):
        """The chosen method's pyramid-levels control (a spin box)."""
        return self.form["levels"].native

    @property
    def iterations(self):
        """The chosen method's iterations control (a spin box)."""
        return self.form["iterations"].native

    # ----------------------------------------------------------------- registration
    def register(self):
        """Start registering the chosen pair in a worker.

        Returns
        -------
        napari.qt.threading.GeneratorWorker or None
            The running worker, or None when the inputs were rejected (the user is notified).
        """
        if self.jobs.busy:
            show_warning("A registration is already running; cancel it first")
            return None
        fixed, moving = self.fixed.layer(), self.moving.layer()
        try:
            fixed_data, fixed_affine, moving_data, moving_affine = registration_pair(fixed, moving)
            inputs = {"fixed": Picture(fixed_data, fixed_affine, name=fixed.name),
                      "moving": Picture(moving_data, moving_affine, name=moving.name)}
            for port, picker, layer in (("fixed_mask", self.fixed_mask, fixed), ("moving_mask", self.moving_mask, moving)):
                mask = mask_data(picker.layer(), layer)
                if mask is not None:
                    inputs[port] = inputs[port.split("_")[0]].like(mask, name=picker.layer().name, kind="labels")
            params = self.form.values()
        except ValueError as error:
            self.jobs.fail("Register", str(error))
            return None
        method = self.model.currentText()
        context = {"fixed": fixed, "moving": moving, "start_affine": layer_affine(moving)}
        self._steps = 0
        self.curve.clear()
        self.result_label.setText(f"registering {moving.name} onto {fixed.name}…")

        return self.jobs.start(
            pipeline.run_steps, "register", method, inputs, params, title="Register",
            on_error=lambda error: self.result_label.setText(f"registration failed: {error}"),
            on_abort=lambda: self.result_label.setText(f"registration cancelled; {moving.name} is unchanged"),
            on_finished=self._refresh_history, on_result=lambda result: self._on_result(*result, context), on_progress=self._on_step)

    def cancel(self) -> None:
        """Ask the running registration to stop; the moving layer is left untouched."""
        self.jobs.cancel()

    def _on_step(self, progress) -> None:
        if "metric" in progress.values:
            self._steps += 1
            self.curve.add(progress.values["metric"], group=progress.values["level"])

    def _on_result(self, outputs, record, context) -> None:
        moving, fixed = context["moving"], context["fixed"]
        result = outputs["transform"]
        stats = result.metadata["registration"]
        # the run started from the present placement; keep the transform from the original one
        self.transform = history_for(moving).original @ np.linalg.inv(context["start_affine"]) @ result.matrix
        self.displacement, self.field_affine = result.displacement, result.displacement_affine
        name = METRIC_NAMES.get(stats["metric"], stats["metric"])
        self.result_label.setText(
            f"{name}: before {stats['metric_before']:.4g} → after {stats['metric_after']:.4g}  ({stats['model']})"
        )
        if result.displacement is None:
            moved = np.linalg.inv(result.matrix) @ context["start_affine"]
            history_for(moving).apply(moved, f"register ({stats['model']})")
            moving.metadata = {**moving.metadata, "registration": record.to_dict()}
            return
        add_image_layer(self.viewer, outputs["resampled"], like=fixed, name=f"{moving.name} registered",
                        colormap=moving.colormap, contrast_limits=moving.contrast_limits, blending=moving.blending)
        if self.overlays.isChecked():
            self._add_overlays(outputs, fixed, moving, stats)

    def _add_overlays(self, outputs, fixed, moving, stats) -> None:
        transform = outputs["transform"]
        magnitude = outputs["jacobian"].like(np.linalg.norm(np.asarray(transform.displacement), axis=-1),
                                             kind="map")
        magnitude.metadata["provenance"] = {**outputs["jacobian"].metadata["provenance"], "output": "|displacement|"}
        add_image_layer(self.viewer, magnitude, like=fixed, name=f"{moving.name} |displacement|",
                        colormap="magma", opacity=0.5, blending="translucent")
        jacobian = outputs["jacobian"]
        spread = max(float(np.abs(np.asarray(jacobian.data) - 1).max()), 1e-3)
        add_image_layer(self.viewer, jacobian, like=fixed, name=f"{moving.name} det(Jacobian)", colormap="PiYG",
                        contrast_limits=(1 - spread, 1 + spread), opacity=0.5, blending="translucent")
        if stats.get("folding_fraction"):
            show_warning(f"{100 * stats['folding_fraction']:.2f}% of the deformation folds (det(Jacobian) ≤ 0)")

    # ----------------------------------------------------------------- history
    def _watch_moving(self, index=None) -> None:
        layer = self.moving.layer()
        if layer is not None:
            history_for(layer).on_change(self._refresh_history)
            layer.events.affine.connect(self._refresh_history)
        self._refresh_history()

    def _refresh_history(self, event=None) -> None:
        layer = self.moving.layer()
        history = history_for(layer) if layer is not None else None
        self.undo_button.setEnabled(bool(history and history.can_undo))
        self.redo_button.setEnabled(bool(history and history.can_redo))

    def undo(self) -> None:
        """Undo the last change of the moving layer's affine."""
        layer = self.moving.layer()
        if layer is not None:
            history_for(layer).undo()

    def redo(self) -> None:
        """Re-apply the last undone change of the moving layer's affine."""
        layer = self.moving.layer()
        if layer is not None:
            history_for(layer).redo()

    # ----------------------------------------------------------------- transform files
    def current_transform(self) -> Transform | None:
        """The last or loaded transform (with its displacement field), or None."""
        if self.transform is None:
            return None
        return Transform(self.transform, self.displacement, self.field_affine)

    def save_transform(self, path: str | None = None, *, overwrite: bool = False) -> str | None:
        """Write the last transform as an ITK text file (.tfm).

        A deformable result also writes its displacement field next to it
        (see :func:`napari_mmfuse.io.transforms.field_path`).

        Parameters
        ----------
        path : str, optional
            Target file; asks with a file dialog when omitted.
        overwrite : bool
            Replace an existing file (the dialog asks the user itself).

        Returns
        -------
        str or None
            The path written, or None when nothing was written.
        """
        transform = self.current_transform()
        if transform is None:
            show_error("No transform yet: register or load one first")
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Save transform", "transform.tfm", "ITK transform (*.tfm)")
            if not path:
                return None
            overwrite = True
        field = field_path(path) if self.displacement is not None else None
        try:
            transform.save(path, overwrite=overwrite, displacement_path=field)
        except (OSError, ValueError) as error:
            show_error(f"Could not save the transform: {error}")
            return None
        show_info(f"Saved transform to {path}" + (f" and its displacement field to {field}" if field else ""))
        return str(path)

    def load_transform(self, path: str | None = None) -> np.ndarray | None:
        """Read an ITK text transform (.tfm) as the transform to apply.

        A displacement field saved next to it by :meth:`save_transform` is read too.

        Parameters
        ----------
        path : str, optional
            File to read; asks with a file dialog when omitted.

        Returns
        -------
        ndarray or None
            The transform read, or None when nothing was read.
        """
        if path is None:
            path, _ = QFileDialog.getOpenFileName(self, "Load transform", "", "ITK transform (*.tfm *.txt)")
            if not path:
                return None
        field = field_path(path)
        try:
            loaded = Transform.read(path, field if field.is_file() else None)
        except (OSError, ValueError) as error:
            show_error(f"Could not read the transform: {error}")
            return None
        self.transform = loaded.matrix
        self.displacement, self.field_affine = loaded.displacement, loaded.displacement_affine
        extra = " with its displacement field" if loaded.displacement is not None else ""
        self.result_label.setText(f"loaded transform from {path}{extra}")
        return self.transform

    def apply_to_layer(self, layer=None):
        """Resample a layer onto the fixed grid through the current transform, in a worker.

        Parameters
        ----------
        layer : napari.layers.Image or napari.layers.Labels, optional
            The layer to carry over (default: the one chosen in the widget), in the
            placement the moving image had when it was registered. Labels are
            resampled with nearest neighbour. The result is added as a new layer
            with the fixed layer's geometry.

        Returns
        -------
        napari.qt.threading.GeneratorWorker or None
            The running worker, or None when the input was rejected (the user is notified).
        """
        layer = layer if layer is not None else self.apply_target.layer()
        fixed = self.fixed.layer()
        try:
            if self.transform is None:
                raise ValueError("no transform yet: register or load one first")
            if layer is None or fixed is None:
                raise ValueError("choose a fixed layer and a layer to transform")
            image, reference = layer_picture(layer), layer_picture(fixed)
            n = image.data.ndim
            if n != reference.data.ndim or self.transform.shape != (n + 1,) * 2:
                raise ValueError(f"{layer.name} is {n}D but the fixed layer or the transform is not")
            if self.displacement is not None and (
                self.displacement.shape[:-1] != reference.data.shape
                or not np.allclose(self.field_affine, reference.affine, atol=1e-6)
            ):
                raise ValueError(
                    f"the displacement field lies on another grid than {fixed.name}; choose its fixed layer"
                )
        except ValueError as error:
            self.jobs.fail("Apply transform", str(error))
            return None
        inputs = {"image": image, "transform": self.current_transform(), "reference": reference}
        extra = {} if isinstance(layer, Labels) else {"colormap": layer.colormap, "blending": layer.blending}

        def added(result):
            add_image_layer(self.viewer, result[0]["transformed"], like=fixed, name=f"{layer.name} transformed", **extra)

        return self.jobs.start(pipeline.run_steps, "transform", "apply", inputs, {}, title="Apply transform",
                               on_result=added)
