"""Segment and Explain dock widgets, clicked through in a napari viewer (screenshots under Xvfb)."""

import argparse

import numpy as np
import pytest
import torch
from qtpy.QtCore import Qt
from scipy import ndimage
from skimage.morphology import skeletonize

from napari_mmfuse.core import segment
from napari_mmfuse.core.space import resample
from napari_mmfuse.sample_data import head_phantom, head_phantom_labels
from napari_mmfuse.widgets import explain as explain_widget
from napari_mmfuse.widgets._layers import world_affine
from napari_mmfuse.widgets import segment as segment_widget
from napari_mmfuse.widgets.explain import ExplainWidget
from napari_mmfuse.widgets._session import remember_model, session_model
from napari_mmfuse.widgets.segment import SegmentWidget


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def phantom():
    """T1 and T2 (on the T1 grid) of the head phantom: 24 slices around its lesion (oedema, rim, core)."""
    t1, t2 = head_phantom()[:2]
    truth = np.isin(head_phantom_labels().data, (8, 9, 10))
    t2_on_t1 = resample(t2.data, t2.affine, t1.data.shape, t1.affine)
    centre = int(np.argmax(truth.sum(axis=(1, 2))))
    slab = slice(centre - 12, centre + 12)
    images = np.stack([t1.data[slab], t2_on_t1[slab]]).astype(np.float32)
    affine = t1.affine.copy()
    affine[:3, 3] = t1.affine[:3, :3] @ [slab.start, 0, 0] + t1.affine[:3, 3]
    return images, truth[slab], affine


def scribbles_for(truth2d, body=None):
    """Strokes: a cross inside the eroded lesion (2); rings and the rest of the body, thinned (1)."""
    body = np.ones(truth2d.shape, bool) if body is None else body
    scribbles = np.zeros(truth2d.shape, np.int32)
    near = ndimage.binary_dilation(truth2d, iterations=8) & ~ndimage.binary_dilation(truth2d, iterations=3)
    far = body & ~ndimage.binary_dilation(truth2d, iterations=8)
    scribbles[skeletonize(near & body)] = 1
    scribbles[skeletonize(ndimage.binary_erosion(far, iterations=2))] = 1
    scribbles[2, :] = 1
    inner = ndimage.binary_erosion(truth2d, iterations=2)
    ys, xs = np.nonzero(inner)
    row, column = int(np.median(ys)), int(np.median(xs))
    scribbles[row][inner[row]] = 2
    scribbles[:, column][inner[:, column]] = 2
    return scribbles


def add_2d(viewer, phantom):
    images, truth, affine = phantom
    z = images.shape[1] // 2
    spacing = np.linalg.norm(affine[:3, :3], axis=0)[1:]
    kwargs = {"scale": spacing, "units": ("mm", "mm")}
    t1 = viewer.add_image(images[0, z], name="T1", colormap="gray", **kwargs)
    t2 = viewer.add_image(images[1, z], name="T2", colormap="gray", visible=False, **kwargs)
    strokes = viewer.add_labels(scribbles_for(truth[z], images[0, z] > 50), name="strokes", **kwargs)
    return t1, t2, strokes, truth[z]


def run_and_wait(qtbot, widget, button, timeout=120_000):
    qtbot.mouseClick(button, Qt.LeftButton)
    worker = widget.worker
    assert worker is not None, "the click did not start a worker"
    # the widget clears its worker when the finished signal arrives (waiting on the signal itself
    # would miss it when the job ends before the wait starts)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=timeout)
    return worker


@pytest.fixture
def errors(monkeypatch):
    messages = []
    monkeypatch.setattr(segment_widget, "show_error", messages.append)
    monkeypatch.setattr(explain_widget, "show_error", messages.append)
    return messages


def test_segment_train_warm_start_and_explain_2d(make_napari_viewer, qtbot, phantom, tmp_path, errors, shots_dir):
    viewer = make_napari_viewer(show=True)  # shown, so that screenshots render
    t1, t2, strokes, truth = add_2d(viewer, phantom)
    painted = strokes.data.copy()
    widget = SegmentWidget(viewer)
    qtbot.addWidget(widget)
    widget.layers.set_checked([t1, t2])
    widget.scribbles.set_layer(strokes)
    widget.steps.setValue(150)
    widget.learning_rate.setValue(1e-2)
    run_and_wait(qtbot, widget, widget.train_button)
    assert not errors
    result = viewer.layers["T1 segmentation"]
    np.testing.assert_array_equal(strokes.data, painted)  # painted strokes untouched
    np.testing.assert_allclose(world_affine(result), world_affine(t1))
    assert set(np.unique(result.data)) <= {1, 2}
    assert result.metadata["probabilities"].shape == (2,) + truth.shape
    assert [entry["name"] for entry in result.metadata["mmfuse"]["inputs"]["images"]] == ["T1", "T2"]
    predicted = result.data == 2
    dice = 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum())
    assert dice > 0.5  # a few strokes on one slice; the benchmark measures quality
    assert viewer.layers["T1 uncertainty"].colormap.name == "magma"
    assert len(widget.curve.values) == 150
    first_model = widget.model
    assert session_model(viewer)[0] is first_model

    viewer.layers["T1 uncertainty"].visible = False
    strokes.visible = False
    viewer.reset_view()
    viewer.screenshot(str(shots_dir / "segment.png"), canvas_only=True)
    widget.grab().save(str(shots_dir / "segment_panel.png"))

    widget.steps.setValue(20)  # warm start: the same weights keep training
    run_and_wait(qtbot, widget, widget.train_button)
    assert widget.model is first_model and "T1 segmentation [1]" in viewer.layers
    assert len(widget.curve.values) == 20
    assert "model" not in result.metadata["mmfuse"]["inputs"]  # trained from scratch
    assert "model" in viewer.layers["T1 segmentation [1]"].metadata["mmfuse"]["inputs"]  # warm-started

    written = widget.save_model(str(tmp_path / "model"))
    assert written[0].exists() and written[1].exists()

    explainer = ExplainWidget(viewer)
    qtbot.addWidget(explainer)
    assert explainer.target.currentData() == 2 and explainer.layers.checked() == [t1, t2]
    strokes.selected_label = 2
    lesion_layer = viewer.add_labels(truth.astype(np.int32) * 2, name="lesion", scale=t1.scale)
    lesion_layer.selected_label = 2
    explainer.region.setCurrentIndex(1)
    explainer.region_labels.set_layer(lesion_layer)
    explainer.method.setCurrentIndex(explainer.method.findData("ig"))
    run_and_wait(qtbot, explainer, explainer.run_button)
    assert not errors
    overlay = viewer.layers["integrated gradients class 2"]
    np.testing.assert_allclose(world_affine(overlay), world_affine(t1))
    assert overlay.colormap.name == "inferno" and overlay.blending == "additive"
    assert overlay.metadata["mmfuse"]["region"] == "label 2 of lesion"
    scores = explainer.bars.scores
    assert explainer.bars.names == ["T1", "T2"] and sum(scores) == pytest.approx(1.0)
    assert explainer.legend.count() == 3
    per_modality = viewer.layers["integrated gradients of T2"]
    assert not per_modality.visible
    explainer.legend.item(2).setCheckState(Qt.Checked)
    assert per_modality.visible
    per_modality.visible = False
    lesion_layer.visible = False
    result.visible = False
    viewer.layers["T1 segmentation [1]"].visible = False
    viewer.screenshot(str(shots_dir / "explain_2d.png"), canvas_only=True)
    explainer.grab().save(str(shots_dir / "explain_panel.png"))

    explainer.method.setCurrentIndex(explainer.method.findData("gradcam"))
    explainer.region.setCurrentIndex(2)
    box = viewer.add_shapes([np.array([[40.0, 40.0], [40.0, 90.0], [90.0, 90.0], [90.0, 40.0]])],
                            shape_type="rectangle", name="box")
    explainer.region_shapes.set_layer(box)
    run_and_wait(qtbot, explainer, explainer.run_button)
    assert not errors
    assert "Grad-CAM class 2" in viewer.layers

    explainer.load_model(str(tmp_path / "model.pt"))
    assert explainer.source.currentIndex() == 1 and explainer.current_model() is not first_model


def test_bad_inputs_are_notified_and_nothing_is_lost(make_napari_viewer, qtbot, phantom, tmp_path, errors):
    viewer = make_napari_viewer()
    t1, t2, strokes, truth = add_2d(viewer, phantom)
    one_class = np.where(strokes.data == 2, 2, 0)
    strokes.data = one_class
    widget = SegmentWidget(viewer)
    qtbot.addWidget(widget)
    widget.layers.set_checked([t1, t2])
    widget.scribbles.set_layer(strokes)
    qtbot.mouseClick(widget.train_button, Qt.LeftButton)
    assert widget.worker is None and "one class" in errors[-1]
    strokes.data = np.zeros_like(one_class)
    qtbot.mouseClick(widget.train_button, Qt.LeftButton)
    assert "empty" in errors[-1]
    qtbot.mouseClick(widget.predict_button, Qt.LeftButton)
    assert "no model" in errors[-1]
    widget.layers.set_checked([])
    qtbot.mouseClick(widget.train_button, Qt.LeftButton)
    assert "check at least one" in errors[-1]
    assert [layer.name for layer in viewer.layers] == ["T1", "T2", "strokes"]

    torch.save({"code": argparse.Namespace(run="rm -rf")}, tmp_path / "unsafe.pt")  # needs full unpickling
    (tmp_path / "unsafe.json").write_text('{"spatial_dims": 2, "in_channels": 2, "label_values": [1, 2]}')
    assert widget.load_model(str(tmp_path / "unsafe.pt")) is None
    assert "weights-only" in errors[-1]

    explainer = ExplainWidget(viewer)
    qtbot.addWidget(explainer)
    qtbot.mouseClick(explainer.run_button, Qt.LeftButton)
    assert "no model" in errors[-1]
    images = np.stack([t1.data, t2.data]).astype(np.float32)
    scribbles = scribbles_for(truth)
    model, _ = segment.train(images, scribbles, steps=1, features=(4, 8), patch_size=(16, 16), device="cpu")
    remember_model(viewer, model, ["T1", "T2"])  # trained after the widget opened
    explainer.layers.set_checked([t1])
    qtbot.mouseClick(explainer.run_button, Qt.LeftButton)
    assert explainer.worker is None and "takes 2 inputs" in errors[-1]
    shown = [explainer.target.itemData(i) for i in range(explainer.target.count())]
    assert shown == [1, 2] and explainer.target.currentData() == 1  # the new session model's classes are shown
    explainer.layers.set_checked([t1, t2])
    explainer.region.setCurrentIndex(2)
    qtbot.mouseClick(explainer.run_button, Qt.LeftButton)
    assert "Shapes layer" in errors[-1]


def test_predict_with_the_current_model(make_napari_viewer, qtbot, phantom, errors):
    viewer = make_napari_viewer()
    t1, t2, strokes, _ = add_2d(viewer, phantom)
    widget = SegmentWidget(viewer)
    qtbot.addWidget(widget)
    images = np.stack([t1.data, t2.data]).astype(np.float32)
    model, _ = segment.train(images, strokes.data, steps=2, features=(4, 8), patch_size=(16, 16), device="cpu")
    widget.model = model
    widget.layers.set_checked([t1])
    qtbot.mouseClick(widget.predict_button, Qt.LeftButton)
    assert widget.worker is None and "takes 2 layers" in errors[-1]
    widget.layers.set_checked([t1, t2])
    run_and_wait(qtbot, widget, widget.predict_button)
    assert len(errors) == 1
    result = viewer.layers["T1 segmentation"]
    assert result.metadata["mmfuse"]["operation"] == "segment/predict"
    labels, probabilities = segment.predict(model, images, device="cpu")
    np.testing.assert_array_equal(result.data, labels)
    np.testing.assert_allclose(result.metadata["probabilities"], probabilities, atol=1e-6)
    np.testing.assert_allclose(world_affine(result), world_affine(t1))
    assert "T1 uncertainty" in viewer.layers and widget.model is model


def test_cancel_training_adds_nothing(make_napari_viewer, qtbot, phantom):
    viewer = make_napari_viewer()
    t1, t2, strokes, _ = add_2d(viewer, phantom)
    widget = SegmentWidget(viewer)
    qtbot.addWidget(widget)
    widget.layers.set_checked([t1, t2])
    widget.scribbles.set_layer(strokes)
    widget.steps.setValue(5000)
    qtbot.mouseClick(widget.train_button, Qt.LeftButton)
    worker = widget.worker
    with qtbot.waitSignal(worker.yielded, timeout=60_000):
        pass
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        qtbot.mouseClick(widget.cancel_button, Qt.LeftButton)
    assert len(widget.curve.values) < 5000
    assert [layer.name for layer in viewer.layers] == ["T1", "T2", "strokes"]
    widget.method.setCurrentText("Seeded watershed")
    run_and_wait(qtbot, widget, widget.train_button)
    assert set(np.unique(viewer.layers["T1 segmentation"].data)) == {1, 2}


def test_explain_3d_overlay(make_napari_viewer, qtbot, phantom, shots_dir):
    images, truth, affine = phantom
    images, truth = images[:, :, ::2, ::2], truth[:, ::2, ::2]  # 1.5 x 3 x 3 mm
    spacing = np.linalg.norm(affine[:3, :3], axis=0) * [1, 2, 2]
    scribbles = np.zeros(truth.shape, np.int32)
    middle = truth.shape[0] // 2
    scribbles[middle] = scribbles_for(truth[middle], images[0, middle] > 50)
    model, _ = segment.train(images, scribbles, steps=40, features=(8, 16), patch_size=(16, 32, 32),
                             learning_rate=1e-2, channel_names=["T1", "T2"], device="cpu")
    viewer = make_napari_viewer(show=True)
    kwargs = {"scale": spacing, "units": ("mm",) * 3}
    t1 = viewer.add_image(images[0], name="T1", colormap="gray", opacity=0.5, **kwargs)
    viewer.add_image(images[1], name="T2", visible=False, **kwargs)
    viewer.add_labels(truth.astype(np.int32) * 2, name="lesion", visible=False, **kwargs)
    remember_model(viewer, model, ["T1", "T2"])
    explainer = ExplainWidget(viewer)
    qtbot.addWidget(explainer)
    explainer.method.setCurrentIndex(explainer.method.findData("saliency"))
    explainer.target.setCurrentIndex(explainer.target.findData(2))  # the lesion class
    explainer.region.setCurrentIndex(1)
    viewer.layers["lesion"].selected_label = 2
    explainer.region_labels.set_layer(viewer.layers["lesion"])
    run_and_wait(qtbot, explainer, explainer.run_button)
    overlay = viewer.layers["gradient saliency class 2"]
    assert overlay.data.shape == truth.shape
    np.testing.assert_allclose(world_affine(overlay), world_affine(t1))
    near = ndimage.binary_dilation(truth, iterations=2)
    assert overlay.data[near].sum() / overlay.data.sum() > 0.5
    viewer.dims.ndisplay = 3
    viewer.reset_view()
    viewer.camera.angles = (-30, 35, 140)
    viewer.screenshot(str(shots_dir / "explain_3d.png"), canvas_only=True)
    assert (shots_dir / "explain_3d.png").stat().st_size > 0
