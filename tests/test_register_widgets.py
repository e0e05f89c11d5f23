"""Register, Manual correction and Quality views dock widgets, on a real napari viewer.

Images are small analytic blob patterns, so the true transform between fixed and
moving is known exactly. Set ``MMFUSE_SHOTS`` to a folder to keep the screenshots.
"""

import os
import threading
import time

import numpy as np
import pytest
# torch's optimiser imports torch._dynamo lazily on its first step; importing it here, on the
# main thread, is several times faster than inside the first registration worker
import torch._dynamo  # noqa: F401

from napari_mmfuse.widgets import manual as manual_module
from napari_mmfuse.widgets import quality as quality_module
from napari_mmfuse.widgets import _registration as registration_module
from napari_mmfuse.widgets import register as register_module
from napari_mmfuse.widgets import _jobs as jobs_module
from napari_mmfuse.history import history_for, layer_affine
from napari_mmfuse.widgets._layers import world_affine
from napari_mmfuse.widgets.manual import ManualCorrectionWidget, pair_columns
from napari_mmfuse.widgets.quality import QualityViewWidget
from napari_mmfuse.widgets.register import RegisterWidget

WAIT_MS = 60_000
BLOBS = [(0.3, 0.35, 0.12, 1.0), (0.65, 0.4, 0.08, 0.8), (0.45, 0.7, 0.1, 0.6), (0.75, 0.75, 0.06, 0.9)]


def blobs(shape, shift=(0.0,) * 3):
    """Sum of Gaussian blobs at fractional positions, displaced by ``shift`` voxels."""
    shape = tuple(shape)
    grids = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij")
    image = np.zeros(shape)
    for k, (a, b, sigma, weight) in enumerate(BLOBS):
        centre = [a, b, 0.35 + 0.1 * k][: len(shape)]
        distance = sum(
            ((g - c * s - d) / (sigma * s)) ** 2 for g, c, s, d in zip(grids, centre, shape, shift, strict=False)
        )
        image += weight * np.exp(-0.5 * distance)
    return image.astype(np.float32)


def to_world(affine, index):
    index = np.asarray(index, np.float64)
    return affine[:-1, :-1] @ index + affine[:-1, -1]


@pytest.fixture
def errors(monkeypatch):
    """Collect show_error messages of the widget modules and of the shared job panel."""
    messages = []
    for module in (register_module, manual_module, quality_module, jobs_module):
        monkeypatch.setattr(module, "show_error", messages.append, raising=False)
    return messages


def pair_2d(viewer, shift=(3.0, -2.0), spacing=(1.0, 1.0)):
    fixed = viewer.add_image(blobs((48, 48)), name="fixed", scale=spacing, colormap="green", blending="additive")
    moving = viewer.add_image(
        blobs((48, 48), shift), name="moving", scale=spacing, colormap="magenta", blending="additive"
    )
    return fixed, moving


def wait_idle(qtbot, widget):
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)


def docked(viewer, widget, name):
    """Dock ``widget`` in a window big enough to show it whole."""
    viewer.window._qt_window.resize(1400, 1000)
    viewer.window.add_dock_widget(widget, name=name)


def save_shot(viewer, name, tmp_path, qtbot):
    qtbot.wait(100)  # let the dock layout settle before fitting the view and grabbing the window
    viewer.reset_view()
    folder = os.environ.get("MMFUSE_SHOTS", str(tmp_path))
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{name}.png")
    image = viewer.screenshot(path=path, canvas_only=False, flash=False)
    assert os.path.getsize(path) > 0
    assert image.std() > 0
    return path


# ---------------------------------------------------------------------------- Register
def test_register_2d_corrects_shift_undo_redo(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer(show=True)
    shift = np.array([3.0, -2.0])
    fixed, moving = pair_2d(viewer, shift, spacing=(0.8, 0.8))
    widget = RegisterWidget(viewer)
    docked(viewer, widget, "Register")
    widget.fixed.set_layer(fixed)
    widget.moving.set_layer(moving)
    widget.model.setCurrentText("rigid")
    widget.levels.setValue(2)
    widget.iterations.setValue(30)
    before = layer_affine(moving)

    widget.register_button.click()
    assert widget.worker is not None
    wait_idle(qtbot, widget)

    feature = np.array([20.0, 25.0])  # a fixed voxel; the same feature is at +shift in moving
    fixed_world = to_world(world_affine(fixed), feature)
    moving_world = to_world(world_affine(moving), feature + shift)
    assert np.abs(moving_world - fixed_world).max() < 0.5 * 0.8
    assert "before" in widget.result_label.text() and "after" in widget.result_label.text()
    assert len(widget.curve.values) > 10
    assert widget.undo_button.isEnabled()
    save_shot(viewer, "register", tmp_path, qtbot)

    registered = layer_affine(moving)
    widget.undo_button.click()
    np.testing.assert_array_equal(layer_affine(moving), before)
    assert widget.redo_button.isEnabled()
    widget.redo_button.click()
    np.testing.assert_array_equal(layer_affine(moving), registered)


def test_register_3d_scaled_shift(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    shift = np.array([1.5, -2.0, 1.0])
    spacing = (2.0, 1.0, 1.0)
    fixed = viewer.add_image(blobs((20, 28, 28)), name="fixed", scale=spacing)
    moving = viewer.add_image(blobs((20, 28, 28), shift), name="moving", scale=spacing)
    widget = RegisterWidget(viewer)
    widget.fixed.set_layer(fixed)
    widget.moving.set_layer(moving)
    widget.levels.setValue(2)
    widget.iterations.setValue(40)
    widget.register_button.click()
    wait_idle(qtbot, widget)
    feature = np.array([9.0, 12.0, 14.0])
    error = to_world(world_affine(moving), feature + shift) - to_world(world_affine(fixed), feature)
    assert np.all(np.abs(error) < 0.5 * np.array(spacing))


def test_register_cancel_leaves_affine(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    fixed, moving = pair_2d(viewer)
    widget = RegisterWidget(viewer)
    widget.iterations.setValue(5000)
    before = layer_affine(moving)
    worker = widget.register()
    qtbot.waitUntil(lambda: widget._steps > 0, timeout=WAIT_MS)
    widget.cancel_button.click()
    wait_idle(qtbot, widget)
    assert worker.abort_requested
    np.testing.assert_array_equal(layer_affine(moving), before)
    assert widget.register_button.isEnabled()
    assert not history_for(moving).can_undo


def test_register_deformable_adds_layers_on_fixed_grid(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    fixed = viewer.add_image(blobs((32, 32)), name="fixed")
    moving = viewer.add_image(blobs((30, 34), (1.0, 1.0)), name="moving", scale=(1.1, 0.9))
    widget = RegisterWidget(viewer)
    widget.model.setCurrentText("deformable")
    widget.metric.setCurrentIndex(widget.metric.findData("mse"))
    widget.levels.setValue(1)
    widget.iterations.setValue(15)
    before = layer_affine(moving)
    widget.register_button.click()
    wait_idle(qtbot, widget)
    for name in ("moving registered", "moving |displacement|", "moving det(Jacobian)"):
        layer = viewer.layers[name]
        assert layer.data.shape == fixed.data.shape
        np.testing.assert_allclose(world_affine(layer), world_affine(fixed))
    np.testing.assert_array_equal(layer_affine(moving), before)
    assert viewer.layers["moving registered"].metadata["mmfuse"]["step"] == "register"

    path = widget.save_transform(str(tmp_path / "warp.tfm"))
    assert os.path.exists(path) and register_module.field_path(path).is_file()
    field = widget.displacement.copy()
    widget.transform = widget.displacement = None
    widget.load_transform(path)
    np.testing.assert_allclose(widget.displacement, field, atol=1e-5)
    assert widget.apply_to_layer(moving) is not None
    qtbot.waitUntil(lambda: "moving transformed" in viewer.layers, timeout=WAIT_MS)
    np.testing.assert_allclose(
        viewer.layers["moving transformed"].data, viewer.layers["moving registered"].data, atol=1e-4
    )


def test_register_bad_input_notifies(make_napari_viewer, qtbot, errors):
    viewer = make_napari_viewer()
    fixed, moving = pair_2d(viewer)
    volume = viewer.add_image(blobs((8, 16, 16)), name="volume")
    far = viewer.add_image(blobs((48, 48)), name="far", translate=(1000.0, 1000.0))
    holes = blobs((48, 48))
    holes[3, 4] = np.nan
    nan_layer = viewer.add_image(holes, name="nan")
    widget = RegisterWidget(viewer)
    n_layers = len(viewer.layers)
    affines = {layer.name: layer_affine(layer) for layer in viewer.layers}
    for bad in (fixed, volume, far, nan_layer):
        widget.fixed.set_layer(fixed)
        widget.moving.set_layer(bad)
        assert widget.register() is None
    assert widget.worker is None
    assert len(errors) == 4
    assert "same layer" in errors[0] and "2D" in errors[1] and "overlap" in errors[2] and "NaN" in errors[3]
    assert len(viewer.layers) == n_layers
    for layer in viewer.layers:
        np.testing.assert_array_equal(layer_affine(layer), affines[layer.name])
    assert widget.save_transform(os.devnull) is None
    assert len(errors) == 5
    small_mask = viewer.add_labels(np.ones((20, 20), np.uint8), name="small mask")
    widget.moving.set_layer(moving)
    widget.fixed_mask.set_layer(small_mask)
    assert widget.register() is None
    assert "mask" in errors[-1] and len(errors) == 6
    moving.name = "renamed"
    assert widget.moving.currentText() == "renamed" and widget.moving.layer() is moving

    # an error raised by the core inside the worker is reported too, and nothing moves
    flat = viewer.add_image(np.zeros((48, 48), np.float32), name="flat")
    widget.fixed_mask.setCurrentIndex(0)
    widget.fixed.set_layer(flat)
    assert widget.register() is not None
    wait_idle(qtbot, widget)
    assert "constant" in errors[-1] and "failed" in widget.result_label.text()
    np.testing.assert_array_equal(layer_affine(moving), affines["moving"])


def test_register_save_load_apply_labels(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    fixed, moving = pair_2d(viewer)
    labels = viewer.add_labels((blobs((48, 48), (3.0, -2.0)) > 0.5).astype(np.uint8) * 3, name="moving labels")
    body = viewer.add_labels(np.ones((48, 48), np.uint8), name="fixed body")
    widget = RegisterWidget(viewer)
    widget.fixed_mask.set_layer(body)
    history = history_for(moving)
    partly = history.original.copy()
    partly[0, 2] -= 1.0  # an earlier, partial correction: the run starts from here
    history.apply(partly, "manual")
    widget.levels.setValue(2)
    widget.iterations.setValue(20)
    widget.register()
    wait_idle(qtbot, widget)
    # the kept transform is relative to the original placement, which the labels still have
    np.testing.assert_allclose(widget.transform, history.original @ np.linalg.inv(layer_affine(moving)), atol=1e-9)
    path = widget.save_transform(str(tmp_path / "t.tfm"))
    assert path and os.path.exists(path)
    assert widget.save_transform(path) is None  # refuses to overwrite
    found = widget.transform.copy()
    widget.transform = None
    np.testing.assert_allclose(widget.load_transform(path), found, atol=1e-9)

    widget.apply_target.set_layer(labels)
    assert widget.apply_to_layer() is not None
    qtbot.waitUntil(lambda: "moving labels transformed" in viewer.layers, timeout=WAIT_MS)
    out = viewer.layers["moving labels transformed"]
    assert out.data.shape == fixed.data.shape
    assert out.data.dtype == np.uint8
    assert set(np.unique(out.data)) <= {0, 3}
    reference = blobs((48, 48)) > 0.5
    assert np.mean((out.data > 0) == reference) > 0.97


# ---------------------------------------------------------------------------- Manual correction
def test_manual_translation_and_rotation_exact(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer(show=True)
    fixed, moving = pair_2d(viewer, spacing=(0.5, 0.5))
    widget = ManualCorrectionWidget(viewer)
    docked(viewer, widget, "Manual correction")
    original = layer_affine(moving)
    centre = to_world(world_affine(moving), (np.array(moving.data.shape) - 1) / 2)

    widget.translation[1].spin.setValue(5.0)  # x, world units
    expected = original.copy()
    expected[1, 2] += 5.0
    np.testing.assert_allclose(layer_affine(moving), expected, atol=1e-12)

    widget.rotation[0].slider.setValue(300)  # 30.0 degrees
    assert widget.rotation[0].value() == pytest.approx(30.0)
    motion = layer_affine(moving) @ np.linalg.inv(original)
    angle = np.rad2deg(np.arctan2(motion[1, 0], motion[0, 0]))
    assert angle == pytest.approx(30.0, abs=1e-9)
    np.testing.assert_allclose(motion[:2, :2] @ centre + motion[:2, 2], centre + [0.0, 5.0], atol=1e-9)

    widget.scale[0].spin.setValue(1.25)
    world_now = world_affine(moving)
    assert np.linalg.norm(world_now[:2, 0]) == pytest.approx(0.5 * 1.25, abs=1e-9)

    history = history_for(moving)
    assert history.labels[-3:] == ["manual"] * 3
    widget.undo_button.click()
    widget.undo_button.click()
    np.testing.assert_allclose(layer_affine(moving), expected, atol=1e-12)
    assert widget.rotation[0].value() == pytest.approx(0.0)
    assert widget.translation[1].value() == pytest.approx(5.0)
    fixed_points, moving_points = widget.landmark_layers()
    fixed_points.data = np.array([[7.2, 8.4], [15.6, 9.6]])  # two blob centres, world units
    moving_points.data = np.array([[8.7, 7.4], [17.1, 8.6]])  # the same blobs in the moving image
    assert widget.table.rowCount() == 2
    save_shot(viewer, "manual", tmp_path, qtbot)
    widget.reset_button.click()
    np.testing.assert_array_equal(layer_affine(moving), original)


def test_manual_3d_rotation_about_centre(make_napari_viewer):
    viewer = make_napari_viewer()
    fixed = viewer.add_image(blobs((12, 16, 16)), name="fixed", scale=(2.0, 1.0, 1.0))
    moving = viewer.add_image(blobs((12, 16, 16)), name="moving", scale=(2.0, 1.0, 1.0))
    widget = ManualCorrectionWidget(viewer)
    widget.moving.set_layer(moving)
    assert len(widget.translation) == len(widget.rotation) == len(widget.scale) == 3
    centre = to_world(world_affine(moving), (np.array(moving.data.shape) - 1) / 2)
    widget.set_parameters(rotation_deg=[0.0, 0.0, 12.0], translation=[1.0, 0.0, -2.0])
    motion = layer_affine(moving) @ np.linalg.inv(history_for(moving).original)
    np.testing.assert_allclose(motion[:3, :3] @ centre + motion[:3, 3], centre + [1.0, 0.0, -2.0], atol=1e-9)
    angle = np.rad2deg(np.arccos((np.trace(motion[:3, :3]) - 1) / 2))
    assert angle == pytest.approx(12.0, abs=1e-9)
    np.testing.assert_array_equal(layer_affine(fixed), np.eye(4))

    # a sheared placement (e.g. from an affine registration) is kept when a control moves
    shear = np.eye(4)
    shear[1, 2] = 0.3
    history_for(moving).apply(shear @ layer_affine(moving), "affine")
    before = layer_affine(moving)
    widget.translation[0].spin.setValue(widget.translation[0].value() + 2.0)
    step = np.eye(4)
    step[0, 3] = 2.0
    np.testing.assert_allclose(layer_affine(moving), step @ before, atol=1e-9)


def test_manual_landmarks_fit_similarity(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    fixed, moving = pair_2d(viewer)
    widget = ManualCorrectionWidget(viewer)
    fixed_points, moving_points = widget.landmark_layers()
    assert viewer.layers.selection.active is fixed_points
    fixed_points.add([10.0, 12.0])
    assert viewer.layers.selection.active is moving_points
    moving_points.add([11.0, 12.5])
    assert viewer.layers.selection.active is fixed_points

    angle = np.deg2rad(20.0)
    known = np.eye(3)
    known[:2, :2] = 1.2 * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    known[:2, 2] = [4.0, -3.0]
    pts = np.array([[10.0, 12.0], [30.0, 8.0], [25.0, 35.0], [8.0, 30.0]])
    fixed_points.data = pts
    moving_points.data = pts @ known[:2, :2].T + known[:2, 2]
    widget.fit_model.setCurrentText("similarity")
    widget.fit_button.click()
    assert widget.table.rowCount() == 4
    residuals = [float(widget.table.item(row, 2).text()) for row in range(4)]
    assert max(residuals) < 1e-6
    np.testing.assert_allclose(layer_affine(moving), np.linalg.inv(known) @ history_for(moving).original, atol=1e-9)
    # the moving landmarks follow the moving layer and now sit on the fixed ones
    motion = moving_points.affine.affine_matrix
    shown = moving_points.data @ motion[:2, :2].T + motion[:2, 2]
    np.testing.assert_allclose(shown, pts, atol=1e-9)
    assert widget.scale[0].value() == pytest.approx(1 / 1.2, abs=1e-3)


def test_manual_landmarks_csv_round_trip(make_napari_viewer, tmp_path, errors):
    viewer = make_napari_viewer()
    pair_2d(viewer)
    widget = ManualCorrectionWidget(viewer)
    fixed_points, moving_points = widget.landmark_layers()
    fixed_points.data = np.array([[1.5, 2.25], [10.0, 20.0], [30.125, 4.0]])
    moving_points.data = np.array([[2.5, 3.0], [11.0, 19.0], [31.0, 5.5]])
    path = widget.save_pairs(str(tmp_path / "pairs.csv"))
    with open(path) as handle:
        assert handle.readline().strip() == "fixed_y,fixed_x,moving_y,moving_x"
    assert pair_columns(3)[:3] == ["fixed_z", "fixed_y", "fixed_x"]
    assert widget.save_pairs(path) is None  # no silent overwrite
    saved = fixed_points.data.copy(), moving_points.data.copy()
    fixed_points.data = np.empty((0, 2))
    moving_points.data = np.empty((0, 2))
    assert widget.load_pairs(path) == 3
    np.testing.assert_array_equal(fixed_points.data, saved[0])
    np.testing.assert_array_equal(moving_points.data, saved[1])
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,c\n1,2,3\n")
    assert widget.load_pairs(str(bad)) is None
    moving_points.data = moving_points.data[:2]
    assert widget.fit() is None
    assert len(errors) == 3


def test_manual_refine_and_cancel(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    shift = np.array([2.0, 3.0])
    fixed, moving = pair_2d(viewer, shift)
    widget = ManualCorrectionWidget(viewer)
    widget.set_parameters(translation=[-1.5, -2.0])  # a rough manual correction
    widget.refine_iterations.setValue(5000)
    rough = layer_affine(moving)
    widget.refine_button.click()
    qtbot.waitUntil(lambda: widget._steps > 0, timeout=WAIT_MS)
    widget.cancel_button.click()
    wait_idle(qtbot, widget)
    np.testing.assert_array_equal(layer_affine(moving), rough)

    widget.refine_iterations.setValue(20)
    widget.refine_button.click()
    wait_idle(qtbot, widget)
    feature = np.array([24.0, 20.0])
    error = to_world(world_affine(moving), feature + shift) - to_world(world_affine(fixed), feature)
    assert np.abs(error).max() < 0.5
    assert history_for(moving).labels[-1].startswith("refine")
    widget.undo_button.click()
    np.testing.assert_array_equal(layer_affine(moving), rough)


# ---------------------------------------------------------------------------- Quality views
def test_quality_views_on_fixed_grid(make_napari_viewer, qtbot, tmp_path, errors, monkeypatch):
    viewer = make_napari_viewer(show=True)
    fixed = viewer.add_image(blobs((48, 48)), name="fixed", scale=(0.5, 0.5), colormap="green", blending="additive")
    moving = viewer.add_image(
        blobs((40, 36), (1.0, 0.0)), name="moving", scale=(0.6, 0.7), colormap="magenta", blending="additive"
    )
    widget = QualityViewWidget(viewer)
    docked(viewer, widget, "Quality views")
    widget.square.setValue(4.0)
    for button in (widget.checkerboard_button, widget.difference_button, widget.curtain_button):
        button.click()
    widget.similarity_button.click()
    widget.metric_button.click()
    qtbot.waitUntil(lambda: not widget.workers, timeout=WAIT_MS)
    for view in ("checkerboard", "difference", "curtain", "local similarity"):
        layer = viewer.layers[f"quality: {view}"]
        assert layer.data.shape == fixed.data.shape
        np.testing.assert_allclose(world_affine(layer), world_affine(fixed))
    board = viewer.layers["quality: checkerboard"].data
    assert not np.array_equal(board[:8, :8], board[8:16, :8])  # squares of 4 world units = 8 voxels
    assert "original" in widget.metric_label.text() and "now" in widget.metric_label.text()

    # jobs run one at a time in click order: the view asked for after a move is the one shown
    n_layers = len(viewer.layers)
    view_images, lock, running, peak = quality_module.view_images, threading.Lock(), [0], [0]

    def counted_view(*args, **kwargs):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        try:
            return view_images(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(quality_module, "view_images", counted_view)
    widget.checkerboard_button.click()
    widget.difference_button.click()
    moving.translate = (2.0, -1.5)
    widget.difference_button.click()
    qtbot.waitUntil(lambda: not widget.workers, timeout=WAIT_MS)
    assert peak == [1]
    assert len(viewer.layers) == n_layers  # replaced, not accumulated
    fixed_data, fixed_affine, moving_data, moving_affine = registration_module.registration_pair(fixed, moving)
    expected = view_images("difference", fixed_data, fixed_affine, moving_data, moving_affine)
    np.testing.assert_allclose(viewer.layers["quality: difference"].data, expected, atol=1e-6)

    curtain = viewer.layers["quality: curtain"]
    widget.curtain_slider.setValue(1000)
    full_moving = curtain.data.copy()
    widget.curtain_slider.setValue(0)
    assert not np.array_equal(curtain.data, full_moving)
    for view in ("difference", "curtain", "local similarity"):
        viewer.layers[f"quality: {view}"].visible = False
    save_shot(viewer, "quality", tmp_path, qtbot)

    widget.rate.setValue(20.0)
    widget.flicker.setChecked(True)
    qtbot.waitUntil(lambda: not moving.visible, timeout=5_000)
    widget.flicker.setChecked(False)
    assert moving.visible and not widget.timer.isActive()

    widget.moving.set_layer(fixed)
    assert widget.show_view("difference") is None
    assert widget.compare_metric() is None
    assert len(errors) == 2 and "same layer" in errors[0]
    flat = viewer.add_image(np.ones((16, 16), np.float32), name="flat", scale=(3.0, 3.0))
    widget.moving.set_layer(flat)
    assert widget.show_view("local similarity") is not None  # the core refuses in the worker
    qtbot.waitUntil(lambda: not widget.workers, timeout=WAIT_MS)
    assert len(errors) == 3 and "constant" in errors[-1]


def test_register_multiscale_slides_on_a_coarse_level(make_napari_viewer, qtbot, monkeypatch):
    """A pyramid registers on its coarse level; the affine found there moves every level."""
    monkeypatch.setattr(registration_module, "MAX_REGISTRATION_SIZE", 64)  # level 0 (96 px) is "too large"
    viewer = make_napari_viewer()
    shift = np.array([6.0, -4.0])  # level-0 pixels
    fixed_full, moving_full = blobs((96, 96)), blobs((96, 96), shift)
    fixed = viewer.add_image([fixed_full, fixed_full[::2, ::2]], multiscale=True, scale=(0.5, 0.5), name="fixed")
    moving = viewer.add_image([moving_full, moving_full[::2, ::2]], multiscale=True, scale=(0.5, 0.5), name="moving")
    data, affine = registration_module.layer_image(moving)
    assert data.shape == (48, 48)
    np.testing.assert_allclose(np.diag(affine)[:2], [1.0, 1.0])  # 2 level-0 pixels of 0.5 um
    widget = RegisterWidget(viewer)
    qtbot.addWidget(widget)
    widget.fixed.set_layer(fixed)
    widget.moving.set_layer(moving)
    widget.model.setCurrentText("rigid")
    widget.iterations.setValue(40)
    widget.register_button.click()
    wait_idle(qtbot, widget)
    feature = np.array([40.0, 50.0])  # level-0 pixel of the fixed slide
    fixed_world = to_world(world_affine(fixed), feature)
    moving_world = to_world(world_affine(moving), feature + shift)
    assert np.abs(moving_world - fixed_world).max() < 0.5  # under one level-0 pixel (0.5 um)
