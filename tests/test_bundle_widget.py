"""A zoo-style multi-label bundle in the real viewer: fetched by name, channels matched, one layer per label."""


import numpy as np
import pytest
from qtpy.QtCore import Qt
from test_bundle_geometry import BRATS_OUTPUTS, BRATS_WIRING, OBJECTS, dice, grid, monai_grid
from test_bundle_zoo import cached_brats_case, offline

from napari_mmfuse.core import bundle, space
from napari_mmfuse.widgets import segment as segment_widget

#: layer names as a BraTS case opens (not the bundle's channel order)
LAYERS = {3: "BraTS_flair", 1: "BraTS_t1", 0: "BraTS_t1ce", 2: "BraTS_t2"}


@pytest.fixture
def errors(monkeypatch):
    messages = []
    monkeypatch.setattr(segment_widget, "show_error", messages.append)
    return messages


def test_zoo_style_bundle_segments_one_layer_per_label(make_napari_viewer, qtbot, tmp_path, monkeypatch, errors,
                                                       shots_dir):
    affine, shape, images, points, centre = cached_brats_case(tmp_path, monkeypatch)

    viewer = make_napari_viewer(show=True)
    for channel, name in LAYERS.items():
        viewer.add_image(images[channel], affine=affine, name=name, colormap="gray", visible=name == "BraTS_flair")
    _, widget = viewer.window.add_plugin_dock_widget("napari-mmfuse", "Segment")
    widget.bundle_name.setText("brats_mri_segmentation")
    assert widget.get_bundle() is not None
    qtbot.waitUntil(lambda: widget.model is not None, timeout=60_000)
    assert widget.model.config.activation == "sigmoid" and "Tumor core" in widget.status.text()
    assert [picker.layer().name for picker in widget.channels.pickers] == ["BraTS_t1ce", "BraTS_t1", "BraTS_t2",
                                                                           "BraTS_flair"]
    assert all(picker.findData(segment_widget.ChannelChoice.MISSING) < 0 for picker in widget.channels.pickers)
    assert "every one needed" in widget.channels_label.text()  # trained on all four: no "missing" choice
    qtbot.mouseClick(widget.predict_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert not errors

    _, work = monai_grid(shape, affine, "RAS", (0.8, 0.8, 3.0))
    for output, (channel, axis) in BRATS_WIRING.items():
        layer = viewer.layers[f"BraTS_t1ce {BRATS_OUTPUTS[str(output)]}"]
        np.testing.assert_allclose(layer.affine.affine_matrix, affine)
        offset, radius = OBJECTS[channel]
        truth = np.linalg.norm(points - centre - offset - (work[:3, axis] if axis is not None else 0), axis=-1) < radius
        assert dice(layer.data > 0, truth) > 0.9
        assert layer.metadata["mmfuse"]["operation"] == "segment/predict"

    z = int(round(space.world_to_voxel(affine, centre[None])[0][0]))
    viewer.dims.set_current_step(0, z)
    viewer.reset_view()
    viewer.screenshot(str(shots_dir / "brats_like_bundle.png"), canvas_only=True)
    from qtpy.QtWidgets import QScrollArea

    widget.findChild(QScrollArea).widget().grab().save(str(shots_dir / "brats_like_bundle_panel.png"))  # whole panel


def test_offline_bundle_field_says_so(make_napari_viewer, qtbot, tmp_path, monkeypatch, errors):
    import monai.bundle

    monkeypatch.setenv(bundle.CACHE_VARIABLE, str(tmp_path / "cache"))
    monkeypatch.setattr(monai.bundle, "download", offline)
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-mmfuse", "Segment")
    assert widget.get_bundle("spleen_ct_segmentation") is not None
    qtbot.waitUntil(lambda: bool(errors), timeout=60_000)
    assert "offline" in errors[0] and widget.model is None and "offline" in widget.status.text()


def test_softmax_bundle_gives_one_labels_layer_with_the_bundle_names(make_napari_viewer, qtbot, tmp_path, errors):
    from test_bundle_geometry import make_spleen_bundle, world_points

    affine, shape = grid("axial-lps")
    points = world_points(shape, affine)
    ct = np.where(np.linalg.norm(points - np.array([12.0, -16.0, 27.0]), axis=-1) < 10, 100.0, 0.0).astype(np.float32)
    viewer = make_napari_viewer()
    viewer.add_image(ct, affine=affine, name="abdomen CT")
    _, widget = viewer.window.add_plugin_dock_widget("napari-mmfuse", "Segment")
    model = widget.load_model(str(make_spleen_bundle(tmp_path / "spleen") / "models" / "model.pt"))
    assert model.config.class_names == ["background", "spleen"]
    assert widget.channels.pickers[0].layer().name == "abdomen CT"  # one channel, one image
    qtbot.mouseClick(widget.predict_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert not errors
    result = viewer.layers["abdomen CT segmentation"]
    assert list(result.features["class"]) == ["background", "spleen"]
    assert set(np.unique(result.data)) == {0, 1} and dice(result.data == 1, ct > 0) > 0.8  # shifted one voxel


def test_a_channel_marked_missing_is_left_out(make_napari_viewer, qtbot, tmp_path, errors):
    """A model trained with modality dropout segments a case without T1c: its drop-down says "missing"."""
    from test_modality_dropout import redundant_phantom

    from napari_mmfuse.core import segment
    from napari_mmfuse.core.segment.train import fill_missing

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    images, lesion, scribbles = redundant_phantom()
    model, _ = segment.train(images, scribbles, steps=60, features=(4, 8), patch_size=(32, 32), learning_rate=5e-3,
                             channel_names=["FLAIR", "T1c"], modality_dropout=0.3, device="cpu")
    model.save(tmp_path / "dropout.pt")
    viewer = make_napari_viewer()
    flair = viewer.add_image(images[0], name="case_flair")
    viewer.add_image(images[1], name="case_t1ce_other_session")
    _, widget = viewer.window.add_plugin_dock_widget("napari-mmfuse", "Segment")
    assert widget.load_model(str(tmp_path / "dropout.pt")) is not None
    first, second = widget.channels.pickers
    assert "missing" in widget.channels_label.text() and first.layer().name == "case_flair"
    second.set_layer(flair)
    second.setCurrentIndex(0)  # "(none)": neither a layer nor missing
    qtbot.mouseClick(widget.predict_button, Qt.LeftButton)
    assert widget.worker is None and "pick the image layer of channel T1c" in errors[-1] and "missing" in errors[-1]
    second.set_missing()
    viewer.add_image(np.zeros_like(images[0]), name="another layer")  # the drop-downs rebuild, "missing" stays
    assert second.is_missing() and second.layer() is None
    errors.clear()
    qtbot.mouseClick(widget.predict_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert not errors
    result = viewer.layers["case_flair segmentation"]
    x, filled = fill_missing(model, [images[0], None])  # the core's answer for the same case
    labels, _ = segment.predict(filled, x, device="cpu")
    np.testing.assert_array_equal(result.data, labels)
    assert dice(result.data == 2, lesion) > 0.5
    first.set_missing()
    qtbot.mouseClick(widget.predict_button, Qt.LeftButton)
    assert widget.worker is None and "every channel" in errors[-1]
