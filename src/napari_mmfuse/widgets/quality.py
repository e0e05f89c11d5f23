"""Dock widget "Quality views": how well does the moving layer sit on the fixed one?

Every view resamples the moving layer onto the fixed grid through both world affines
(:func:`napari_mmfuse.core.space.resample`), so it shows the moving layer where napari
shows it now, and is put back as one layer named ``"quality: <view>"`` with the fixed
layer's geometry, replaced (not accumulated) when computed again. Flicker toggles the
moving layer itself and creates nothing.

Multiscale (pyramid) layers are compared on their coarse registration level (the finest
of at most ``MAX_REGISTRATION_SIZE`` px a side, see
:func:`napari_mmfuse.widgets._registration.layer_image`); the view then lies on the fixed
layer's coarse grid and is placed with that level's affine, over the pyramid.

Intensities of both images are rescaled to [0, 1] between their 1st and 99th
percentiles before they are interleaved or subtracted, so modalities with different
units (CT in HU, MRI in arbitrary units) compare on one scale.

Views and metrics run through the widget's :class:`~napari_mmfuse.widgets._jobs.JobPanel`
(progress, status, Cancel, errors as notifications), one at a time in click order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import napari

import numpy as np
from napari.layers import Image
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from ..core import space
from ..core.register import local_similarity_map, metric_value
from ..history import history_for, layer_affine
from ..operations import Progress
from ..operations.register.intensity import METRIC_NAMES
from ._dock import scroll_contents
from ._jobs import JobPanel
from ._layers import geometry_of, original_data
from ._pickers import LayerPicker
from ._registration import registration_pair

PREFIX = "quality: "
#: Milliseconds between tries to start a queued job while the panel finishes the previous one.
RETRY_MS = 10


def normalised(image: np.ndarray) -> np.ndarray:
    """Rescale to [0, 1] between the 1st and 99th percentiles (float32, clipped)."""
    image = np.asarray(image, np.float32)
    low, high = np.percentile(image, [1.0, 99.0])
    if high <= low:
        high = low + 1.0
    return np.clip((image - low) / (high - low), 0.0, 1.0)


def checkerboard(fixed: np.ndarray, moving: np.ndarray, affine: np.ndarray, square: float) -> np.ndarray:
    """Interleave two images of one grid in squares of ``square`` world units.

    Parameters
    ----------
    fixed, moving : ndarray, same shape (Y, X) or (Z, Y, X)
    affine : ndarray, shape (n + 1, n + 1)
        Index -> world affine of the grid (its voxel sizes give the square size in voxels).
    square : float
        Side of one square in world units.

    Returns
    -------
    ndarray, same shape
        ``fixed`` in the even squares, ``moving`` in the odd ones.
    """
    spacing = space.spacing_of(affine)
    parity = np.zeros((1,) * fixed.ndim, dtype=np.int64)
    for axis, (size, step) in enumerate(zip(fixed.shape, spacing, strict=True)):
        cells = np.floor(np.arange(size) * step / square).astype(np.int64)
        parity = parity + cells.reshape([-1 if a == axis else 1 for a in range(fixed.ndim)])
    return np.where(parity % 2 == 0, fixed, moving).astype(np.float32)


def curtain(fixed: np.ndarray, moving: np.ndarray, fraction: float) -> np.ndarray:
    """``moving`` left of a vertical edge at ``fraction`` of the x extent, ``fixed`` right of it."""
    edge = int(round(fraction * fixed.shape[-1]))
    out = np.array(fixed, dtype=np.float32)
    out[..., :edge] = moving[..., :edge]
    return out


def resampled_pair(fixed, fixed_affine, moving, moving_affine) -> tuple[np.ndarray, np.ndarray]:
    """Normalised fixed image and normalised moving image resampled onto the fixed grid."""
    on_fixed = space.resample(moving, moving_affine, fixed.shape, fixed_affine)
    return normalised(fixed), normalised(on_fixed)


def view_images(view, fixed, fixed_affine, moving, moving_affine, *, square=None):
    """Compute one quality view on the fixed grid (runs in a worker).

    Parameters
    ----------
    view : {"checkerboard", "difference", "curtain", "local similarity"}
    fixed, moving : ndarray
    fixed_affine, moving_affine : ndarray
        Index -> world affines (the moving one as displayed now).
    square : float, optional
        Checkerboard square side, world units.

    Returns
    -------
    ndarray or tuple of ndarray
        The view; for "curtain" the normalised (fixed, moving) pair to slide between.
    """
    if view == "local similarity":
        return np.asarray(local_similarity_map(fixed, fixed_affine, moving, moving_affine), np.float32)
    fixed_n, moving_n = resampled_pair(fixed, fixed_affine, moving, moving_affine)
    if view == "checkerboard":
        return checkerboard(fixed_n, moving_n, fixed_affine, square)
    if view == "difference":
        return fixed_n - moving_n
    if view == "curtain":
        return fixed_n, moving_n
    raise ValueError(f"unknown quality view {view!r}")


def metric_pair(fixed, fixed_affine, moving, original_affine, moving_affine, metric):
    """Metric with the moving image in its original placement and as placed now (runs in a worker)."""
    before = metric_value(fixed, fixed_affine, moving, original_affine, metric=metric)
    now = metric_value(fixed, fixed_affine, moving, moving_affine, metric=metric)
    return before, now


@dataclass(frozen=True)
class JobError:
    """What went wrong in a job, returned rather than raised so that the queue goes on."""

    message: str


def one_step(function, *args, **kwargs):
    """Run ``function(*args, **kwargs)`` as a job of one step (a generator for :class:`JobPanel`).

    An exception comes back as a :class:`JobError`: the widget shows it and goes on with its queue.
    """
    yield Progress(0.0, 1.0, "computing")
    try:
        return function(*args, **kwargs)
    except Exception as error:  # the view's input checks and the core raise many types
        return JobError((str(error) or type(error).__name__).splitlines()[0])


class QualityViewWidget(QWidget):
    """Checkerboard, difference, curtain, flicker and local-similarity views of a registration.

    Parameters
    ----------
    viewer : napari.Viewer
    """

    STYLES = {
        "checkerboard": {"colormap": "gray"},
        "difference": {"colormap": "twilight_shifted", "contrast_limits": (-1.0, 1.0)},
        "curtain": {"colormap": "gray", "contrast_limits": (0.0, 1.0)},
        "local similarity": {"colormap": "viridis", "opacity": 0.5, "blending": "translucent"},
    }

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = viewer
        #: Jobs asked for and not finished, in click order; the first one is running.
        self.workers: list = []
        self._curtain_pair: tuple[np.ndarray, np.ndarray] | None = None
        self._flicker_layer = None

        self.fixed = LayerPicker(viewer, (Image,), default_index=0)
        self.moving = LayerPicker(viewer, (Image,), default_index=1)
        self.square = QDoubleSpinBox(decimals=2, minimum=0.01, maximum=1e5, value=10.0)
        self.square.setSuffix(" (world units)")
        self.checkerboard_button = QPushButton("Checkerboard")
        self.difference_button = QPushButton("Difference")
        self.curtain_button = QPushButton("Curtain")
        self.curtain_slider = QSlider(Qt.Horizontal)
        self.curtain_slider.setRange(0, 1000)
        self.curtain_slider.setValue(500)
        self.curtain_slider.setToolTip("left of the edge: moving; right: fixed")
        self.flicker = QCheckBox("Flicker moving layer")
        self.rate = QDoubleSpinBox(decimals=1, minimum=0.2, maximum=20.0, value=2.0, singleStep=0.5)
        self.rate.setSuffix(" Hz")
        self.similarity_button = QPushButton("Local similarity map")
        self.metric = QComboBox()
        for key in METRIC_NAMES:  # the registration metrics, as the register operations declare them
            self.metric.addItem(f"{key}  ({METRIC_NAMES[key]})", key)
        self.metric_button = QPushButton("Metric before / now")
        self.metric_label = QLabel("")
        self.metric_label.setWordWrap(True)
        self.timer = QTimer(self)
        self.jobs = JobPanel()
        self.jobs.run_button.hide()  # every view has its own button
        self.jobs.cancel_button.clicked.connect(self._drop_queued)

        form = QFormLayout()
        form.addRow("fixed", self.fixed)
        form.addRow("moving", self.moving)
        views = QGroupBox("views (on the fixed grid)")
        view_form = QFormLayout(views)
        row = QHBoxLayout()
        row.addWidget(self.checkerboard_button)
        row.addWidget(self.square)
        view_form.addRow(row)
        view_form.addRow(self.difference_button)
        row = QHBoxLayout()
        row.addWidget(self.curtain_button)
        row.addWidget(self.curtain_slider, 1)
        view_form.addRow(row)
        row = QHBoxLayout()
        row.addWidget(self.flicker)
        row.addWidget(self.rate)
        view_form.addRow(row)
        view_form.addRow(self.similarity_button)
        metrics = QGroupBox("similarity")
        metric_form = QFormLayout(metrics)
        metric_form.addRow("metric", self.metric)
        metric_form.addRow(self.metric_button)
        metric_form.addRow(self.metric_label)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(views)
        layout.addWidget(metrics)
        layout.addWidget(self.jobs)
        layout.addStretch()
        scroll_contents(self)

        self.checkerboard_button.clicked.connect(lambda: self.show_view("checkerboard"))
        self.difference_button.clicked.connect(lambda: self.show_view("difference"))
        self.curtain_button.clicked.connect(lambda: self.show_view("curtain"))
        self.similarity_button.clicked.connect(lambda: self.show_view("local similarity"))
        self.curtain_slider.valueChanged.connect(self._move_curtain)
        self.flicker.toggled.connect(self.set_flicker)
        self.rate.valueChanged.connect(lambda rate: self.timer.setInterval(int(1000 / rate)))
        self.timer.timeout.connect(self._flick)
        self.metric_button.clicked.connect(self.compare_metric)
        self.fixed.currentIndexChanged.connect(self._default_square)
        self._default_square()

    def _default_square(self, index=None) -> None:
        fixed = self.fixed.layer()
        if fixed is not None and fixed.ndim in (2, 3):
            low, high = space.world_bounds(original_data(fixed).shape[: fixed.ndim], geometry_of(fixed)["affine"])
            self.square.setValue(float(np.max(high - low)) / 8)

    def _inputs(self):
        fixed, moving = self.fixed.layer(), self.moving.layer()
        return fixed, moving, registration_pair(fixed, moving)

    def show_view(self, view: str):
        """Compute a view in a worker and show it as the layer ``"quality: <view>"``.

        Parameters
        ----------
        view : {"checkerboard", "difference", "curtain", "local similarity"}

        Returns
        -------
        dict or None
            The job (running, or queued behind earlier ones), or None when the inputs
            were rejected (the user is notified).
        """
        try:
            fixed, moving, (fixed_data, fixed_affine, moving_data, moving_affine) = self._inputs()
        except ValueError as error:
            self.jobs.fail("Quality view", str(error))
            return None
        return self._queue(
            f"Quality view {view}",
            view_images,
            (view, fixed_data, fixed_affine, moving_data, moving_affine),
            {"square": self.square.value()},
            lambda result: self._show(view, result, fixed, moving, fixed_affine),
        )

    def _queue(self, title: str, function, args: tuple, kwargs: dict, on_result) -> dict:
        """Run ``function`` through the job panel after the jobs already in :attr:`workers`.

        One at a time and in click order, so a result computed before the moving layer
        moved never lands after (and over) a newer one, and several views do not compete
        for the device.
        """
        job = {"title": title, "function": function, "args": args, "kwargs": kwargs, "on_result": on_result}
        self.workers.append(job)
        if len(self.workers) == 1:
            self._start(job)
        return job

    def _start(self, job: dict) -> None:
        if self.jobs.busy:  # the panel has not yet heard that the previous job's worker finished
            QTimer.singleShot(RETRY_MS, lambda: self._start(job))
            return
        worker = self.jobs.start(
            one_step,
            job["function"],
            *job["args"],
            title=job["title"],
            on_result=lambda result: self._result(job, result),
            **job["kwargs"],
        )
        worker.finished.connect(lambda: self._ended(job))  # cancelled jobs return nothing

    def _result(self, job: dict, result) -> None:
        try:
            if isinstance(result, JobError):
                self.jobs.fail(job["title"], result.message)
            else:
                job["on_result"](result)
        finally:
            self._ended(job)  # a quick job may finish before its finished signal is connected

    def _ended(self, job: dict) -> None:
        """Start the next queued job once ``job`` (the running one) is over; later calls do nothing."""
        if self.workers and self.workers[0] is job:
            self.workers.pop(0)
            if self.workers:
                self._start(self.workers[0])

    def _drop_queued(self) -> None:
        """Cancel also forgets the jobs waiting behind the running one."""
        del self.workers[1:]

    def _show(self, view, result, fixed, moving, grid_affine) -> None:
        if view == "curtain":
            self._curtain_pair = result
            result = curtain(*result, self.curtain_slider.value() / 1000)
        self._put_layer(view, result, fixed, moving, grid_affine)

    def _put_layer(self, view, data, fixed, moving, grid_affine):
        """Add or replace the view layer; ``grid_affine`` places the fixed grid the view was computed on."""
        name = PREFIX + view
        metadata = {"step": "quality view", "method": view, "inputs": [fixed.name, moving.name]}
        style = dict(self.STYLES[view])
        if view in ("checkerboard", "local similarity"):
            finite = data[np.isfinite(data)]
            low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
            style["contrast_limits"] = (low, high if high > low else low + 1.0)
        existing = next((layer for layer in self.viewer.layers if layer.name == name), None)
        if isinstance(existing, Image) and existing.ndim == data.ndim:
            existing.data = data
            existing.affine = grid_affine
            existing.contrast_limits = style["contrast_limits"]
            existing.metadata = metadata
            return existing
        if existing is not None:
            self.viewer.layers.remove(existing)
        return self.viewer.add_image(data, name=name, metadata=metadata, **style, **geometry_of(fixed, affine=grid_affine))

    def _move_curtain(self, position: int) -> None:
        name = PREFIX + "curtain"
        layer = next((layer for layer in self.viewer.layers if layer.name == name), None)
        if self._curtain_pair is None or layer is None:
            return
        layer.data = curtain(*self._curtain_pair, position / 1000)

    def set_flicker(self, on: bool) -> None:
        """Start or stop toggling the moving layer's visibility at the chosen rate."""
        if self.flicker.isChecked() != on:
            self.flicker.setChecked(on)
            return
        moving = self.moving.layer()
        if on and moving is not None:
            self._flicker_layer = moving
            self.timer.start(int(1000 / self.rate.value()))
            return
        self.timer.stop()
        if self._flicker_layer is not None:
            self._flicker_layer.visible = True
            self._flicker_layer = None

    def _flick(self) -> None:
        layer = self._flicker_layer
        if layer in self.viewer.layers:
            layer.visible = not layer.visible
        else:
            self.set_flicker(False)

    def compare_metric(self):
        """Compute the chosen metric before (original placement) and now, in a worker.

        Returns
        -------
        dict or None
            The job (running, or queued behind earlier ones), or None when the inputs
            were rejected (the user is notified).
        """
        try:
            fixed, moving, (fixed_data, fixed_affine, moving_data, moving_affine) = self._inputs()
        except ValueError as error:
            self.jobs.fail("Metric", str(error))
            return None
        motion = layer_affine(moving) @ np.linalg.inv(history_for(moving).original)
        original_affine = np.linalg.inv(motion) @ moving_affine
        metric = self.metric.currentData()
        name = METRIC_NAMES[metric]
        return self._queue(
            f"Metric {name}",
            metric_pair,
            (fixed_data, fixed_affine, moving_data, original_affine, moving_affine, metric),
            {},
            lambda values: self.metric_label.setText(f"{name}: original {values[0]:.4g} → now {values[1]:.4g}"),
        )
