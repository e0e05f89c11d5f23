"""Dock widget "Manual correction": move the moving layer by hand, by landmarks, then refine.

Three ways to correct a registration, all of which only change the moving layer's
``affine`` (through the shared undo history, see :mod:`._history`):

* **direct**: translation (world units), rotation (degrees) and per-axis scale about the
  world centre of the moving image in its original placement, with sliders for feel and
  spin boxes for exact numbers; the layer follows live.
* **landmarks**: pairs of points clicked in two Points layers, "fixed landmarks" and
  "moving landmarks", fitted by the ``register/landmarks`` operation.
* **refine**: a linear ``register`` operation (rigid, similarity, affine) started from the
  present placement.

The fit and refine parameters come from the operation registry and run through
:mod:`napari_mmfuse.pipeline`.

Multiscale (pyramid) layers are handled as a whole: the affine is shared by every level,
so all three ways move every level; sizes and the image centre come from level 0, and
Refine registers on the coarse level the Register widget uses (the finest of at most
``MAX_REGISTRATION_SIZE`` px a side).

Conventions
-----------
The controls describe the *motion* ``M`` of the moving layer relative to its original
placement (the affine the history first saw): a world point ``p`` of the moving image
is shown at ``M p``, and ``layer.affine = M @ original_affine``. The registration
transform in the ITK convention (fixed world -> moving world) is ``T = inv(M)``.

Landmark point data are world coordinates in napari order. Fixed landmarks use the
fixed layer's world frame; the "moving landmarks" layer's own ``affine`` follows ``M``,
so its data stay world coordinates of the moving image in its *original* placement and
each point stays on its feature whatever the moving layer does. The pairs CSV holds
exactly these data: one row per pair, columns ``fixed_z,fixed_y,fixed_x,moving_z,moving_y,moving_x``
(2D: ``fixed_y,fixed_x,moving_y,moving_x``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import napari

import os

import numpy as np
from napari.layers import Image, Points
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QStackedWidget,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .. import pipeline
from ..core.register import parameters_from_transform, transform_from_parameters
from ..history import history_for, layer_affine
from ..io.transforms import Transform
from ..operations import Image as Picture
from ..operations import operations
from ..operations.register.intensity import METRIC_NAMES
from ._controls import ParameterForm
from ._dock import scroll_contents
from ._jobs import JobPanel
from ._layers import original_data, spatial_affine
from ._pickers import LayerPicker
from ._session import same
from ._slider import SliderSpin
from ._registration import registration_pair

#: The linear registration methods Refine offers (the registry's, deformable aside).
LINEAR_MODELS = ("rigid", "similarity", "affine")
AXES = {2: ("y", "x"), 3: ("z", "y", "x")}
FIXED_POINTS, MOVING_POINTS = "fixed landmarks", "moving landmarks"


def pair_columns(ndim: int) -> list[str]:
    """CSV column names of landmark pairs: ``fixed_z, fixed_y, fixed_x, moving_z, …`` (napari order)."""
    return [f"{side}_{axis}" for side in ("fixed", "moving") for axis in AXES[ndim]]


class ManualCorrectionWidget(QWidget):
    """Correct the placement of a moving layer by hand, by landmarks, or by refining.

    Parameters
    ----------
    viewer : napari.Viewer

    Notes
    -----
    See the module docstring for the conventions of the controls and of the
    landmark data and CSV files.
    """

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = viewer
        self.layer = None
        self.ndim = 0
        self.center = np.zeros(0)
        self.residual = np.eye(1)
        self.fixed_points: Points | None = None
        self.moving_points: Points | None = None
        self._applying = False
        self._steps = 0

        self.fixed = LayerPicker(viewer, (Image,), default_index=0)
        self.moving = LayerPicker(viewer, (Image,), default_index=1)
        pickers = QFormLayout()
        pickers.addRow("fixed", self.fixed)
        pickers.addRow("moving", self.moving)

        self.direct_box = QGroupBox("direct (about the moving image centre)")
        self.direct_grid = QGridLayout(self.direct_box)
        self.translation: list[SliderSpin] = []
        self.rotation: list[SliderSpin] = []
        self.scale: list[SliderSpin] = []

        landmarks_box = QGroupBox("landmarks")
        self.add_points_button = QPushButton("Place landmarks")
        self.add_points_button.setToolTip(
            "Create the 'fixed landmarks' and 'moving landmarks' Points layers; click a point on the "
            "fixed image, then its match on the moving image (the active layer switches for you)"
        )
        register = operations("register")
        self.forms = {name: ParameterForm(register[name]) for name in (*LINEAR_MODELS, "landmarks")}
        self.fit_model = self.forms["landmarks"]["model"].native
        self.fit_button = QPushButton("Fit and apply")
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["fixed (world)", "moving (original)", "residual"])
        self.table.setToolTip(
            "World coordinates, napari order; moving points in the moving image's original placement; "
            "residual: distance after the fit, world units"
        )
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setMinimumHeight(90)
        self.save_pairs_button = QPushButton("Save pairs…")
        self.load_pairs_button = QPushButton("Load pairs…")
        landmark_layout = QVBoxLayout(landmarks_box)
        row = QHBoxLayout()
        row.addWidget(self.add_points_button)
        row.addWidget(self.fit_model)
        row.addWidget(self.fit_button)
        landmark_layout.addLayout(row)
        landmark_layout.addWidget(self.table)
        row = QHBoxLayout()
        row.addWidget(self.save_pairs_button)
        row.addWidget(self.load_pairs_button)
        landmark_layout.addLayout(row)

        refine_box = QGroupBox("refine (automatic, from the present placement)")
        self.refine_model = QComboBox()
        self.refine_model.addItems(LINEAR_MODELS)
        self.refine_parameters = QStackedWidget()
        for name in LINEAR_MODELS:
            self.refine_parameters.addWidget(self.forms[name].native)
        self.jobs = JobPanel("Refine", on_run=self.refine)
        self.refine_button, self.cancel_button = self.jobs.run_button, self.jobs.cancel_button
        self.status = QLabel("")
        self.status.setWordWrap(True)
        refine_layout = QFormLayout(refine_box)
        refine_layout.addRow("model", self.refine_model)
        refine_layout.addRow(self.refine_parameters)
        refine_layout.addRow(self.jobs)

        self.reset_button = QPushButton("Reset")
        self.reset_button.setToolTip("Back to the placement the moving layer had when first seen (undoable)")
        self.undo_button = QPushButton("Undo")
        self.redo_button = QPushButton("Redo")
        history_row = QHBoxLayout()
        history_row.addWidget(self.reset_button)
        history_row.addWidget(self.undo_button)
        history_row.addWidget(self.redo_button)

        layout = QVBoxLayout(self)
        layout.addLayout(pickers)
        layout.addWidget(self.direct_box)
        layout.addLayout(history_row)
        layout.addWidget(landmarks_box)
        layout.addWidget(refine_box)
        layout.addWidget(self.status)
        layout.addStretch()
        scroll_contents(self)

        self.moving.currentIndexChanged.connect(self._bind_moving)
        self.add_points_button.clicked.connect(self.landmark_layers)
        self.fit_button.clicked.connect(self.fit)
        self.save_pairs_button.clicked.connect(lambda: self.save_pairs())
        self.load_pairs_button.clicked.connect(lambda: self.load_pairs())
        self.refine_model.currentIndexChanged.connect(self.refine_parameters.setCurrentIndex)
        self.reset_button.clicked.connect(self.reset)
        self.undo_button.clicked.connect(self.undo)
        self.redo_button.clicked.connect(self.redo)
        self._bind_moving()

    # ----------------------------------------------------------------- refine parameters
    @property
    def worker(self):
        """The running refine job, or None."""
        return self.jobs.worker

    @property
    def refine_form(self) -> ParameterForm:
        """The parameter form of the chosen refine model."""
        return self.forms[self.refine_model.currentText()]

    @property
    def refine_metric(self):
        """The chosen refine model's metric control (a combo box)."""
        return self.refine_form["metric"].native

    @property
    def refine_levels(self):
        """The chosen refine model's pyramid-levels control (a spin box)."""
        return self.refine_form["levels"].native

    @property
    def refine_iterations(self):
        """The chosen refine model's iterations control (a spin box)."""
        return self.refine_form["iterations"].native

    # ----------------------------------------------------------------- the moving layer
    @property
    def original(self) -> np.ndarray:
        """The moving layer's affine in its original placement (the history's first state)."""
        return history_for(self.layer).original

    def motion(self) -> np.ndarray:
        """Present motion ``M`` of the moving layer relative to its original placement."""
        return layer_affine(self.layer) @ np.linalg.inv(self.original)

    def _bind_moving(self, index=None) -> None:
        layer = self.moving.layer()
        if layer is not None and same(layer, self.layer):
            return
        if self.layer is not None:
            self.layer.events.affine.disconnect(self._on_affine)
        self.layer = layer
        if layer is None or layer.ndim not in (2, 3):
            self.layer, self.ndim = None, 0
            self._build_controls(0)
            self._refresh_buttons()
            return
        history = history_for(layer)
        history.on_change(self._refresh_buttons)
        layer.events.affine.connect(self._on_affine)
        world = spatial_affine(layer)
        self.ndim = world.shape[0] - 1
        original_world = history.original @ np.linalg.inv(layer_affine(layer)) @ world
        shape = np.asarray(original_data(layer).shape[: self.ndim], np.float64)
        n = self.ndim
        self.center = original_world[:n, :n] @ ((shape - 1) / 2) + original_world[:n, n]
        extent = float(np.abs(original_world[: self.ndim, : self.ndim] @ shape).max())
        self._build_controls(self.ndim, extent)
        self._on_affine()

    def _build_controls(self, ndim: int, extent: float = 100.0) -> None:
        while self.direct_grid.count():
            self.direct_grid.takeAt(0).widget().deleteLater()
        self.translation, self.rotation, self.scale = [], [], []
        if ndim not in (2, 3):
            self.direct_grid.addWidget(QLabel("choose a 2D or 3D moving image"), 0, 0)
            return
        reach = max(10.0, round(extent, 0))
        rows = [(f"shift {a}", self.translation, SliderSpin(-reach, reach, 0.1, 0.0)) for a in AXES[ndim]]
        angles = ("angle",) if ndim == 2 else tuple(f"angle about {a}" for a in AXES[ndim])
        rows += [(name + " (°)", self.rotation, SliderSpin(-180.0, 180.0, 0.1, 0.0)) for name in angles]
        rows += [(f"scale {a}", self.scale, SliderSpin(0.2, 5.0, 0.001, 1.0, decimals=4)) for a in AXES[ndim]]
        for row, (name, group, control) in enumerate(rows):
            group.append(control)
            control.valueChanged.connect(self._on_control)
            control.committed.connect(self._commit)
            self.direct_grid.addWidget(QLabel(name), row, 0)
            self.direct_grid.addWidget(control, row, 1)

    def parameters(self) -> dict:
        """Present values of the direct controls (translation, rotation_deg, scale)."""
        rotation = [c.value() for c in self.rotation]
        return {
            "translation": [c.value() for c in self.translation],
            "rotation_deg": rotation[0] if self.ndim == 2 else rotation,
            "scale": [c.value() for c in self.scale],
        }

    def set_parameters(self, *, translation=None, rotation_deg=None, scale=None, commit: bool = True) -> None:
        """Set the direct controls (any subset) and move the moving layer accordingly.

        Parameters
        ----------
        translation : sequence of float, optional
            World units, napari order.
        rotation_deg : float or sequence of 3 float, optional
        scale : sequence of float, optional
        commit : bool
            Record the new placement in the undo history.
        """
        for controls, values in ((self.translation, translation), (self.rotation, rotation_deg), (self.scale, scale)):
            if values is not None:
                for control, value in zip(controls, np.atleast_1d(values), strict=True):
                    control.set_value(float(value))
        self._on_control()
        if commit:
            self._commit()

    def _on_control(self, value=None) -> None:
        if self.layer is None:
            return
        motion = transform_from_parameters(ndim=self.ndim, center=self.center, **self.parameters()) @ self.residual
        self._applying = True
        try:
            self.layer.affine = motion @ self.original
        finally:
            self._applying = False

    def _commit(self) -> None:
        if self.layer is not None:
            history_for(self.layer).record("manual")

    def _on_affine(self, event=None) -> None:
        if self.layer is None:
            return
        motion = self.motion()
        if self.moving_points is not None:
            self.moving_points.affine = motion
        if not self._applying:
            found = parameters_from_transform(motion, center=self.center)
            for controls, values in zip(
                (self.translation, self.rotation, self.scale),
                (found["translation"], found["rotation_deg"], found["scale"]),
                strict=True,
            ):
                for control, value in zip(controls, np.atleast_1d(values), strict=True):
                    control.set_value(float(value))
            # what the (rounded, range-limited) controls cannot show, e.g. shear, stays in the residual
            shown = transform_from_parameters(ndim=self.ndim, center=self.center, **self.parameters())
            residual = np.linalg.inv(shown) @ motion
            identity = np.eye(self.ndim + 1)
            self.residual = identity if np.allclose(residual, identity, rtol=0, atol=1e-12) else residual
        self._refresh_buttons()

    # ----------------------------------------------------------------- history
    def _refresh_buttons(self) -> None:
        history = history_for(self.layer) if self.layer is not None else None
        self.undo_button.setEnabled(bool(history and history.can_undo))
        self.redo_button.setEnabled(bool(history and history.can_redo))
        self.reset_button.setEnabled(history is not None)

    def undo(self) -> None:
        """Undo the last change of the moving layer's placement."""
        if self.layer is not None:
            history_for(self.layer).undo()

    def redo(self) -> None:
        """Re-apply the last undone change."""
        if self.layer is not None:
            history_for(self.layer).redo()

    def reset(self) -> None:
        """Return the moving layer to its original placement (undoable)."""
        if self.layer is not None:
            history_for(self.layer).reset()

    # ----------------------------------------------------------------- landmarks
    def landmark_layers(self) -> tuple[Points, Points] | None:
        """Create (or find) the two landmark Points layers and make the fixed one active for adding.

        Returns
        -------
        (fixed_points, moving_points) or None
            None when no 2D/3D moving image is chosen (the user is notified).
        """
        if self.layer is None or self.ndim not in (2, 3):
            show_error("Landmarks: choose a 2D or 3D moving image first")
            return None
        spacing = np.linalg.norm(spatial_affine(self.layer)[: self.ndim, : self.ndim], axis=0)
        size = float(np.max(spacing * original_data(self.layer).shape[: self.ndim])) / 40
        layers = []
        for name, color in ((FIXED_POINTS, "cyan"), (MOVING_POINTS, "magenta")):
            existing = next((layer for layer in self.viewer.layers if layer.name == name), None)
            if isinstance(existing, Points) and existing.ndim == self.ndim:
                layers.append(existing)
                continue
            layers.append(
                self.viewer.add_points(
                    np.empty((0, self.ndim)),
                    ndim=self.ndim,
                    name=name,
                    units=tuple(str(unit) for unit in self.layer.units)[-self.ndim :],  # no mixed-units warning
                    size=size,
                    face_color=color,
                    border_color="white",
                )
            )
        self.fixed_points, self.moving_points = layers
        self.moving_points.affine = self.motion()
        for points in layers:
            points.events.data.disconnect(self._on_points)
            points.events.data.connect(self._on_points)
        self.viewer.layers.selection.active = self.fixed_points
        self.fixed_points.mode = "add"
        self._fill_table()
        return self.fixed_points, self.moving_points

    def _on_points(self, event) -> None:
        if str(getattr(event, "action", "")) == "added":
            source = event.source
            partner = self.moving_points if same(source, self.fixed_points) else self.fixed_points
            if partner is not None and partner in self.viewer.layers:
                self.viewer.layers.selection.active = partner
                partner.mode = "add"
        self._fill_table()

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """The landmark pairs: fixed world points and moving points in the original placement.

        Raises
        ------
        ValueError
            When the landmark layers are missing or hold different numbers of points.
        """
        if self.fixed_points is None or self.moving_points is None:
            raise ValueError("no landmark layers yet: click 'Place landmarks'")
        fixed, moving = np.asarray(self.fixed_points.data), np.asarray(self.moving_points.data)
        if len(fixed) != len(moving):
            raise ValueError(f"{len(fixed)} fixed but {len(moving)} moving landmarks; place the missing match")
        return fixed, moving

    def _fill_table(self, residuals=None) -> None:
        fixed = np.asarray(self.fixed_points.data) if self.fixed_points is not None else np.empty((0, 0))
        moving = np.asarray(self.moving_points.data) if self.moving_points is not None else np.empty((0, 0))
        self.table.setRowCount(max(len(fixed), len(moving)))
        for row in range(self.table.rowCount()):
            cells = [
                ", ".join(f"{v:.2f}" for v in fixed[row]) if row < len(fixed) else "—",
                ", ".join(f"{v:.2f}" for v in moving[row]) if row < len(moving) else "—",
                f"{residuals[row]:.3g}" if residuals is not None else "",
            ]
            for column, text in enumerate(cells):
                self.table.setItem(row, column, QTableWidgetItem(text))

    def fit(self) -> np.ndarray | None:
        """Fit the landmark pairs with the chosen model and apply the result to the moving layer.

        Returns
        -------
        ndarray or None
            Per-pair residuals (world units) after the fit, or None when it failed
            (the user is notified).
        """
        params = self.forms["landmarks"].values()
        model = params["model"]
        try:
            fixed, moving = self.pairs()
            outputs, record = pipeline.run("register", "landmarks", {"fixed": fixed, "moving": moving}, params)
        except ValueError as error:
            show_error(f"Landmark fit: {error}")
            return None
        residuals = outputs["residuals"]
        history_for(self.layer).apply(np.linalg.inv(outputs["transform"].matrix) @ self.original, f"landmarks ({model})")
        self.layer.metadata = {**self.layer.metadata, "registration": record.to_dict()}
        self._fill_table(residuals)
        self.status.setText(f"{model} fit of {len(fixed)} pairs: RMS residual {np.sqrt(np.mean(residuals**2)):.3g}")
        return residuals

    def save_pairs(self, path: str | None = None, *, overwrite: bool = False) -> str | None:
        """Write the landmark pairs as CSV (see the module docstring for the columns).

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
        try:
            fixed, moving = self.pairs()
        except ValueError as error:
            show_error(f"Save landmarks: {error}")
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Save landmark pairs", "landmarks.csv", "CSV (*.csv)")
            if not path:
                return None
            overwrite = True
        if os.path.exists(path) and not overwrite:
            show_error(f"Save landmarks: {path} exists; choose another name")
            return None
        columns = pair_columns(fixed.shape[1])
        np.savetxt(path, np.hstack([fixed, moving]), delimiter=",", header=",".join(columns), comments="", fmt="%.10g")
        show_info(f"Saved {len(fixed)} landmark pairs to {path}")
        return str(path)

    def load_pairs(self, path: str | None = None) -> int | None:
        """Read landmark pairs from CSV into the landmark layers (replacing their points).

        Parameters
        ----------
        path : str, optional
            File to read; asks with a file dialog when omitted.

        Returns
        -------
        int or None
            Number of pairs read, or None when the file was rejected (the user is notified).
        """
        if path is None:
            path, _ = QFileDialog.getOpenFileName(self, "Load landmark pairs", "", "CSV (*.csv)")
            if not path:
                return None
        try:
            with open(path) as handle:
                header = handle.readline().strip().split(",")
            if header != pair_columns(self.ndim):
                raise ValueError(f"expected columns {','.join(pair_columns(self.ndim))}, found {','.join(header)}")
            values = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2).reshape(-1, 2 * self.ndim)
        except (OSError, ValueError, KeyError) as error:
            show_error(f"Load landmarks: {error}")
            return None
        if self.landmark_layers() is None:
            return None
        self.fixed_points.data = values[:, : self.ndim]
        self.moving_points.data = values[:, self.ndim :]
        self._fill_table()
        return len(values)

    # ----------------------------------------------------------------- refine
    def refine(self):
        """Run linear registration from the present placement in a worker.

        Returns
        -------
        napari.qt.threading.GeneratorWorker or None
            The running worker, or None when the inputs were rejected (the user is notified).
        """
        if self.jobs.busy:
            show_error("Refine is already running")
            return None
        fixed, moving = self.fixed.layer(), self.layer
        try:
            fixed_data, fixed_affine, moving_data, moving_affine = registration_pair(fixed, moving)
            params = self.refine_form.values()
        except ValueError as error:
            self.jobs.fail("Refine", str(error))
            return None
        init = np.linalg.inv(self.motion())
        inputs = {"fixed": Picture(fixed_data, fixed_affine, name=fixed.name),
                  "moving": Picture(moving_data, init @ moving_affine, name=moving.name),
                  "init": Transform(init, name="present placement")}
        self._steps = 0

        return self.jobs.start(pipeline.run_steps, "register", self.refine_model.currentText(), inputs, params,
                               title="Refine", on_result=lambda result: self._on_refined(*result, moving),
                               on_error=lambda error: self.status.setText(f"refine failed: {error}"),
                               on_abort=lambda: self.status.setText(f"refine cancelled; {moving.name} unchanged"),
                               on_progress=self._on_step)

    def cancel(self) -> None:
        """Stop a running refine; the moving layer is left as it was."""
        self.jobs.cancel()

    def _on_step(self, progress) -> None:
        self._steps += 1

    def _on_refined(self, outputs, record, moving) -> None:
        transform = outputs["transform"]
        stats = transform.metadata["registration"]
        history = history_for(moving)
        history.apply(np.linalg.inv(transform.matrix) @ history.original, f"refine ({stats['model']})")
        moving.metadata = {**moving.metadata, "registration": record.to_dict()}
        name = METRIC_NAMES.get(stats["metric"], stats["metric"])
        self.status.setText(f"refined: {name} {stats['metric_before']:.4g} → {stats['metric_after']:.4g}")
