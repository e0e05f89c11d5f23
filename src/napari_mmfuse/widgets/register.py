"""Dock widget "Register": automatic image registration of a moving layer onto a fixed layer.

A linear result (rigid, similarity, affine) moves the moving layer by composing its
``affine`` (instant, lossless, undoable); a deformable result adds a resampled layer on
the fixed grid, optionally with displacement-magnitude and Jacobian-determinant overlays.
The compute runs in :func:`napari_mmfuse.core.register.register_steps` inside a napari
worker; this module only gathers inputs and puts results back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import napari

import os
from pathlib import Path

import numpy as np
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..core import space
from ..core.lazy import MAX_REGISTRATION_SIZE, coarse_level_index, level_affine
from ..core.register import apply_transform, register_steps, to_luminance
from ..io.transforms import (
    read_displacement_field,
    read_itk_transform,
    write_displacement_field,
    write_itk_transform,
)
from ._dock import scroll_contents
from ..history import history_for, layer_affine
from ._pickers import LayerPicker
from ._session import same
from ._plots import CurvePlot
from ._layers import geometry_of, spatial_affine
from ._workers import start_worker

MODELS = ("rigid", "similarity", "affine", "deformable")
METRICS = ("mi", "nmi", "lncc", "mse")
METRIC_NAMES = {"mi": "mutual information", "nmi": "normalised MI", "lncc": "local NCC", "mse": "mean squared error"}


def layer_image(layer) -> tuple[np.ndarray, np.ndarray]:
    """Spatial pixels of a 2D/3D image or labels layer and its index -> world affine.

    RGB slides are reduced to their luminance. A multiscale layer gives its finest level
    no larger than ``MAX_REGISTRATION_SIZE`` a side, with that level's affine.

    Parameters
    ----------
    layer : napari.layers.Image or napari.layers.Labels

    Returns
    -------
    data : ndarray, shape (Y, X) or (Z, Y, X)
        float32 for images, the layer's dtype for labels.
    affine : ndarray, shape (n + 1, n + 1)

    Raises
    ------
    ValueError
        For layers that are not 2D or 3D, and NaN/Inf pixels.
    """
    rgb = bool(getattr(layer, "rgb", False))
    levels = list(layer.data) if layer.multiscale else [layer.data]
    n = levels[0].ndim - int(rgb)
    if n not in (2, 3):
        raise ValueError(f"{layer.name} is {n}D; registration needs 2D or 3D layers")
    affine = spatial_affine(layer, n)
    level = levels[coarse_level_index([lv.shape[:n] for lv in levels], MAX_REGISTRATION_SIZE)]
    if level is not levels[0]:
        affine = level_affine(affine, levels[0].shape[:n], level.shape[:n])
    data = np.asarray(level)
    if isinstance(layer, Labels):
        return data, affine
    data = to_luminance(data) if rgb else data.astype(np.float32, copy=False)
    if not np.all(np.isfinite(data)):
        raise ValueError(f"{layer.name} contains NaN or Inf pixels; fill or mask them first")
    return data, affine


def registration_pair(fixed, moving) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Check a fixed/moving layer pair and return their pixels and world affines.

    Parameters
    ----------
    fixed, moving : napari.layers.Image

    Returns
    -------
    fixed_data, fixed_affine, moving_data, moving_affine

    Raises
    ------
    ValueError
        With a message for the user: missing or identical layers, 2D against 3D,
        no overlap in world space, NaN pixels.
    """
    if fixed is None or moving is None:
        raise ValueError("choose a fixed and a moving image layer")
    if same(fixed, moving):
        raise ValueError(f"fixed and moving are the same layer ({fixed.name}); choose two layers")
    fixed_data, fixed_affine = layer_image(fixed)
    moving_data, moving_affine = layer_image(moving)
    if fixed_data.ndim != moving_data.ndim:
        raise ValueError(
            f"{fixed.name} is {fixed_data.ndim}D and {moving.name} {moving_data.ndim}D; both must be 2D or both 3D"
        )
    overlap = space.overlap_fraction(fixed_data.shape, fixed_affine, moving_data.shape, moving_affine)
    if overlap == 0.0:
        raise ValueError(
            f"{fixed.name} and {moving.name} do not overlap in world space; "
            "move the moving layer closer (Manual correction) first"
        )
    return fixed_data, fixed_affine, moving_data, moving_affine


def mask_data(layer, reference) -> np.ndarray | None:
    """Pixels of an optional Labels mask, checked against the grid of ``reference``."""
    if layer is None:
        return None
    data, _ = layer_image(layer)
    reference_shape = reference.data.shape[: data.ndim]
    if data.shape != reference_shape:
        raise ValueError(f"mask {layer.name} has shape {data.shape} but {reference.name} {reference_shape}")
    return data > 0


def field_path(path) -> Path:
    """Where the displacement field of a deformable transform saved at ``path`` goes.

    ``transform.tfm`` -> ``transform_displacement.nii.gz`` (an ITK vector image on the
    fixed grid; the full mapping is ``x -> T(x + u(x))``).
    """
    path = Path(path)
    return path.with_name(f"{path.stem}_displacement.nii.gz")


def register_and_warp(fixed, fixed_affine, moving, moving_affine, **options):
    """Run :func:`register_steps`, then resample a deformable result onto the fixed grid.

    A generator for a napari worker: yields each ``RegStep`` and returns
    ``(result, warped, magnitude)``; for a deformable result ``warped`` is the moving
    image on the fixed grid and ``magnitude`` the length of the displacement
    (world units, displacement shape ``(*fixed.shape, n)``), else both are None.
    """
    result = yield from register_steps(fixed, fixed_affine, moving, moving_affine, **options)
    if result.displacement is None:
        return result, None, None
    warped = apply_transform(
        moving, moving_affine, result.transform, fixed.shape, fixed_affine, displacement=result.displacement
    )
    return result, warped, np.linalg.norm(np.asarray(result.displacement), axis=-1)


class RegisterWidget(QWidget):
    """Register a moving image layer onto a fixed one.

    Parameters
    ----------
    viewer : napari.Viewer

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
        self.worker = None
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
        self.metric = QComboBox()
        for key in METRICS:
            self.metric.addItem(f"{key}  ({METRIC_NAMES[key]})", key)
        self.levels = QSpinBox(minimum=1, maximum=6, value=3)
        self.iterations = QSpinBox(minimum=1, maximum=5000, value=100)
        self.overlays = QCheckBox("add displacement and Jacobian overlays")
        self.overlays.setChecked(True)
        self.overlays.setToolTip("deformable only: |displacement| and det(Jacobian) on the fixed grid")

        self.register_button = QPushButton("Register")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
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
        form.addRow("metric", self.metric)
        form.addRow("pyramid levels", self.levels)
        form.addRow("iterations / level", self.iterations)
        form.addRow(self.overlays)
        run_row = QHBoxLayout()
        run_row.addWidget(self.register_button)
        run_row.addWidget(self.cancel_button)
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
        layout.addLayout(run_row)
        layout.addWidget(self.progress)
        layout.addWidget(self.curve)
        layout.addWidget(self.result_label)
        layout.addLayout(history_row)
        layout.addWidget(transform_box)
        layout.addStretch()
        scroll_contents(self)

        self.register_button.clicked.connect(self.register)
        self.cancel_button.clicked.connect(self.cancel)
        self.undo_button.clicked.connect(self.undo)
        self.redo_button.clicked.connect(self.redo)
        self.save_button.clicked.connect(lambda: self.save_transform())
        self.load_button.clicked.connect(lambda: self.load_transform())
        self.apply_button.clicked.connect(lambda: self.apply_to_layer())
        self.moving.currentIndexChanged.connect(self._watch_moving)
        self._watch_moving()

    # ----------------------------------------------------------------- registration
    def register(self):
        """Start registering the chosen pair in a worker.

        Returns
        -------
        napari.qt.threading.GeneratorWorker or None
            The running worker, or None when the inputs were rejected (the user is notified).
        """
        if self.worker is not None:
            show_warning("A registration is already running; cancel it first")
            return None
        fixed, moving = self.fixed.layer(), self.moving.layer()
        try:
            fixed_data, fixed_affine, moving_data, moving_affine = registration_pair(fixed, moving)
            fixed_mask = mask_data(self.fixed_mask.layer(), fixed)
            moving_mask = mask_data(self.moving_mask.layer(), moving)
        except ValueError as error:
            show_error(f"Register: {error}")
            return None
        model, metric = self.model.currentText(), self.metric.currentData()
        levels, iterations = self.levels.value(), self.iterations.value()
        total = levels * iterations * (2 if model == "deformable" else 1)  # deformable: affine, then SVF
        start_affine = layer_affine(moving)
        worker = create_worker(
            register_and_warp,
            fixed_data,
            fixed_affine,
            moving_data,
            moving_affine,
            model=model,
            metric=metric,
            levels=levels,
            iterations=iterations,
            fixed_mask=fixed_mask,
            moving_mask=moving_mask,
            _progress={"total": total, "desc": f"Registering {moving.name} ({model})"},
            _ignore_errors=True,  # reported by the errored handler below, not re-raised
        )
        context = {
            "fixed": fixed,
            "moving": moving,
            "start_affine": start_affine,
            "fixed_affine": fixed_affine,
            "parameters": {"model": model, "metric": metric, "levels": levels, "iterations": iterations},
        }
        worker.yielded.connect(self._on_step)
        worker.returned.connect(lambda returned: self._on_result(*returned, context))
        worker.errored.connect(self._on_error)
        worker.aborted.connect(lambda: self._on_error(None, f"cancelled; {moving.name} is unchanged"))
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._steps = 0
        self.curve.clear()
        self.progress.setRange(0, total)
        self.progress.setValue(0)
        self.result_label.setText(f"registering {moving.name} onto {fixed.name}…")
        self.register_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        start_worker(worker)
        return worker

    def cancel(self) -> None:
        """Ask the running registration to stop; the moving layer is left untouched."""
        if self.worker is not None:
            self.worker.quit()

    def _on_step(self, step) -> None:
        self._steps += 1
        self.progress.setValue(min(self._steps, self.progress.maximum()))
        self.curve.add(step.metric, group=step.level)

    def _on_error(self, error, message: str | None = None) -> None:
        message = message or f"failed: {error}"
        self.result_label.setText(f"registration {message}")
        if error is None:
            show_info(f"Registration {message}")
        else:
            show_error(f"Register {message}")

    def _on_finished(self) -> None:
        self.worker = None
        self.register_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self._refresh_history()

    def _on_result(self, result, warped, magnitude, context) -> None:
        self.progress.setValue(self.progress.maximum())
        moving, fixed = context["moving"], context["fixed"]
        found = np.asarray(result.transform, dtype=np.float64)
        # the run started from the present placement; keep the transform from the original one
        self.transform = history_for(moving).original @ np.linalg.inv(context["start_affine"]) @ found
        self.displacement = result.displacement
        self.field_affine = context["fixed_affine"]
        name = METRIC_NAMES.get(result.metric, result.metric)
        self.result_label.setText(
            f"{name}: before {result.metric_before:.4g} → after {result.metric_after:.4g}  ({result.model})"
        )
        provenance = {
            "step": "register",
            "method": result.model,
            "inputs": [fixed.name, moving.name],
            "parameters": context["parameters"],
            "transform": self.transform.tolist(),
            "metric_before": float(result.metric_before),
            "metric_after": float(result.metric_after),
        }
        if result.displacement is None:
            moved = np.linalg.inv(found) @ context["start_affine"]
            history_for(moving).apply(moved, f"register ({result.model})")
            moving.metadata = {**moving.metadata, "registration": provenance}
            return
        geometry = geometry_of(fixed)
        self.viewer.add_image(
            warped,
            name=f"{moving.name} registered",
            colormap=moving.colormap,
            contrast_limits=moving.contrast_limits,
            blending=moving.blending,
            metadata=provenance,
            **geometry,
        )
        if self.overlays.isChecked():
            self._add_overlays(result, magnitude, fixed, moving, provenance)

    def _add_overlays(self, result, magnitude, fixed, moving, provenance) -> None:
        geometry = geometry_of(fixed)
        self.viewer.add_image(
            magnitude,
            name=f"{moving.name} |displacement|",
            colormap="magma",
            opacity=0.5,
            blending="translucent",
            metadata={**provenance, "step": "register: displacement magnitude"},
            **geometry,
        )
        if result.jacobian_det is not None:
            jacobian = np.asarray(result.jacobian_det, dtype=np.float32)
            spread = max(float(np.abs(jacobian - 1).max()), 1e-3)
            self.viewer.add_image(
                jacobian,
                name=f"{moving.name} det(Jacobian)",
                colormap="PiYG",
                contrast_limits=(1 - spread, 1 + spread),
                opacity=0.5,
                blending="translucent",
                metadata={**provenance, "step": "register: Jacobian determinant"},
                **geometry,
            )
        if result.folding_fraction:
            show_warning(f"{100 * result.folding_fraction:.2f}% of the deformation folds (det(Jacobian) ≤ 0)")

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
    def save_transform(self, path: str | None = None, *, overwrite: bool = False) -> str | None:
        """Write the last transform as an ITK text file (.tfm).

        A deformable result also writes its displacement field next to it
        (see :func:`field_path`).

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
        if self.transform is None:
            show_error("No transform yet: register or load one first")
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Save transform", "transform.tfm", "ITK transform (*.tfm)")
            if not path:
                return None
            overwrite = True
        field = field_path(path) if self.displacement is not None else None
        try:
            for target in (path, field):
                if target is not None and os.path.exists(target) and not overwrite:
                    raise FileExistsError(f"{target} already exists; choose another name")
            write_itk_transform(path, self.transform, overwrite=overwrite)
            if field is not None:
                write_displacement_field(field, self.displacement, self.field_affine, overwrite=overwrite)
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
            transform = read_itk_transform(path)
            displacement, field_affine = read_displacement_field(field) if field.is_file() else (None, None)
        except (OSError, ValueError) as error:
            show_error(f"Could not read the transform: {error}")
            return None
        self.transform = np.asarray(transform, dtype=np.float64)
        self.displacement, self.field_affine = displacement, field_affine
        extra = " with its displacement field" if displacement is not None else ""
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
        napari.qt.threading.FunctionWorker or None
            The running worker, or None when the input was rejected (the user is notified).
        """
        layer = layer if layer is not None else self.apply_target.layer()
        fixed = self.fixed.layer()
        try:
            if self.transform is None:
                raise ValueError("no transform yet: register or load one first")
            if layer is None or fixed is None:
                raise ValueError("choose a fixed layer and a layer to transform")
            data, affine = layer_image(layer)
            fixed_data, fixed_affine = layer_image(fixed)
            if data.ndim != fixed_data.ndim or self.transform.shape != (data.ndim + 1,) * 2:
                raise ValueError(f"{layer.name} is {data.ndim}D but the fixed layer or the transform is not")
            if self.displacement is not None and (
                self.displacement.shape[:-1] != fixed_data.shape
                or not np.allclose(self.field_affine, fixed_affine, atol=1e-6)
            ):
                raise ValueError(
                    f"the displacement field lies on another grid than {fixed.name}; choose its fixed layer"
                )
        except ValueError as error:
            show_error(f"Apply transform: {error}")
            return None
        labels = isinstance(layer, Labels)
        transform = self.transform
        worker = create_worker(
            apply_transform,
            data,
            affine,
            transform,
            fixed_data.shape,
            fixed_affine,
            interpolation="nearest" if labels else "linear",
            displacement=self.displacement,
            _progress={"desc": f"Transforming {layer.name}"},
            _ignore_errors=True,  # reported by the errored handler below, not re-raised
        )
        kwargs = geometry_of(
            fixed,
            name=f"{layer.name} transformed",
            metadata={"step": "apply transform", "inputs": [layer.name, fixed.name], "transform": transform.tolist()},
        )
        if labels:
            worker.returned.connect(lambda out: self.viewer.add_labels(out.astype(layer.data.dtype), **kwargs))
        else:
            worker.returned.connect(
                lambda out: self.viewer.add_image(out, colormap=layer.colormap, blending=layer.blending, **kwargs)
            )
        worker.errored.connect(lambda error: show_error(f"Apply transform failed: {error}"))
        start_worker(worker)
        return worker
