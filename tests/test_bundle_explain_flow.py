"""A zoo-style multi-label bundle in the real viewer: fetched by name, segmented, then explained per modality.

The brats-like bundle (tests/test_bundle_geometry.py) reads T1c for its tumour-core output, so
the explanation of that label must sit on the T1c object and rank T1c first, both by its
attribution and by what removing it does.
"""


import numpy as np
import pytest
from qtpy.QtCore import Qt
from test_bundle_geometry import BRATS_CHANNELS, BRATS_OUTPUTS, BRATS_WIRING, OBJECTS, dice, grid, \
    make_brats_bundle, midpoints, monai_grid, phantom
from test_bundle_zoo import cached_brats_case

from napari_mmfuse.core import space
from napari_mmfuse.widgets import explain as explain_widget
from napari_mmfuse.widgets import segment as segment_widget

#: the layers as a user opens them (not in the bundle's channel order)
OPENED = ("T1", "T1c", "T2", "FLAIR")

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture
def errors(monkeypatch):
    messages = []
    monkeypatch.setattr(segment_widget, "show_error", messages.append)
    monkeypatch.setattr(explain_widget, "show_error", messages.append)
    return messages


def truths(shape, affine, points, centre):
    """Each output's true mask: its input object, shifted one voxel along its bundle axis (MONAI's RAS grid)."""
    _, work = monai_grid(shape, affine, "RAS", (0.8, 0.8, 3.0))
    masks = {}
    for output, (channel, axis) in BRATS_WIRING.items():
        offset, radius = OBJECTS[channel]
        shift = work[:3, axis] if axis is not None else 0.0
        masks[output] = np.linalg.norm(points - centre - offset - shift, axis=-1) < radius
    return masks


def test_bundle_segments_and_is_explained_per_modality(make_napari_viewer, qtbot, tmp_path, monkeypatch, errors,
                                                       shots_dir):
    affine, shape, images, points, centre = cached_brats_case(tmp_path, monkeypatch)

    viewer = make_napari_viewer(show=True)
    channel_of = {name: int(index) for index, name in BRATS_CHANNELS.items()}
    for name in OPENED:
        viewer.add_image(images[channel_of[name]], affine=affine, name=name, colormap="gray",
                         visible=name == "T1c")
    segment_dock, seg = viewer.window.add_plugin_dock_widget("napari-mmfuse", "Segment")
    seg.bundle_name.setText("brats_mri_segmentation")
    qtbot.mouseClick(seg.bundle_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: seg.model is not None, timeout=60_000)
    assert [picker.layer().name for picker in seg.channels.pickers] == ["T1c", "T1", "T2", "FLAIR"]
    qtbot.mouseClick(seg.predict_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: seg.worker is None, timeout=60_000)
    assert not errors

    expected = truths(shape, affine, points, centre)
    for output in BRATS_WIRING:
        layer = viewer.layers[f"T1c {BRATS_OUTPUTS[str(output)]}"]
        assert dice(layer.data > 0, expected[output]) > 0.9
    z = int(round(space.world_to_voxel(affine, centre[None])[0][0]))
    viewer.dims.set_current_step(0, z)
    viewer.window._qt_window.resize(1500, 900)
    viewer.reset_view()
    qtbot.wait(200)
    viewer.screenshot(str(shots_dir / "bundle_segmented.png"), canvas_only=False)

    # Explain: the session's model (the bundle) with its inputs checked in its channel order; explain the
    # tumour-core label as segmented, selected in its Labels layer
    segment_dock.close()
    _, widget = viewer.window.add_plugin_dock_widget("napari-mmfuse", "Explain")
    assert [layer.name for layer in widget.layers.checked()] == ["T1c", "T1", "T2", "FLAIR"]
    core = viewer.layers["T1c Tumor core"]
    assert widget.target.currentData() == core.data.max()  # the smallest label of the last segmentation
    assert widget.target.currentText() == "1 Tumor core" and "multi-label" in widget.model_label.text()
    widget.method.setCurrentIndex(widget.method.findData("ig"))
    widget.path_points.setValue(8)  # enough for a linear network; keeps the test fast
    widget.region.setCurrentIndex(1)
    widget.region_labels.set_layer(core)
    core.selected_label = int(core.data.max())
    qtbot.mouseClick(widget.run_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert not errors

    target = int(core.data.max())
    overlay = viewer.layers[f"integrated gradients class {target}"]
    magnitude = np.abs(np.asarray(overlay.data))
    inside = magnitude[expected[0] | (core.data > 0)].sum() / magnitude.sum()
    assert inside > 0.7, inside
    meta = overlay.metadata["mmfuse"]
    assert meta["attribution_ranking"][0] == "T1c" and meta["removal_ranking"][0] == "T1c", meta
    assert widget.bars.names == ["T1c", "T1", "T2", "FLAIR"]
    # the check list now follows the viewer's order (results were added); a second run still feeds the model's
    assert [layer.name for layer in widget.layers.checked()] == list(OPENED)
    assert [layer.name for layer in widget._checked_inputs(widget.current_model())] == ["T1c", "T1", "T2", "FLAIR"]

    overlay.visible = False
    shown = viewer.layers["integrated gradients of T1c"]
    shown.visible = True
    viewer.layers.selection.active = shown  # its controls and colour bar beside the canvas
    for name in BRATS_OUTPUTS.values():
        viewer.layers[f"T1c {name}"].visible = name == "Tumor core"
    viewer.layers["T1c Tumor core"].opacity = 0.25
    viewer.reset_view()
    qtbot.wait(200)
    viewer.screenshot(str(shots_dir / "bundle_explained.png"), canvas_only=False)

    # the other way in: Explain's own Load… on the bundle's models/model.pt (inputs ticked by channel name)
    loaded = widget.load_model(str(tmp_path / "cache" / "brats_mri_segmentation" / "models" / "model.pt"))
    assert loaded is not None and loaded.config.activation == "sigmoid" and widget.current_model() is loaded
    assert [layer.name for layer in widget._checked_inputs(loaded)] == ["T1c", "T1", "T2", "FLAIR"]
    assert widget.target.itemText(0) == "1 Tumor core"


def test_bundle_is_explained_on_its_own_grid(tmp_path):
    """A bundle's maps are computed in its orientation and spacing (as it segments) and come back in place.

    The tumour-core output reads T1c one voxel further along the bundle's first axis (R), so its
    integrated gradients over the true core land on the T1c object itself; on the input's
    (z, y, x) grid they would land one 3 mm slice away.
    """
    from napari_mmfuse import pipeline
    from napari_mmfuse.core.bundle import load_bundle
    from napari_mmfuse.operations import Image

    affine, shape = grid("axial-lps")
    images, points, centre = phantom(shape, affine)
    model = load_bundle(make_brats_bundle(tmp_path / "b", pixdim=(0.8, 0.8, 3.0), thresholds=midpoints(images)))
    layers = [Image(images[int(i)], affine, name=name) for i, name in BRATS_CHANNELS.items()]
    core = truths(shape, affine, points, centre)[0]
    outputs, _ = pipeline.run("explain", "ig", {"images": layers, "model": model,
                                                "region": Image(core.astype(np.uint8), affine, kind="labels")},
                              {"target": 1, "steps": 8, "attribution": True}, device="cpu")
    values = np.abs(outputs["map"].data)
    offset, radius = OBJECTS[0]
    t1c_object = np.linalg.norm(points - centre - offset, axis=-1) < radius
    assert dice(values > 0.5 * values.max(), t1c_object) > 0.9
    assert outputs["attribution"].ranking()[0] == "T1c" and outputs["removal"].ranking()[0] == "T1c"
    assert outputs["attribution"].maps.shape == (4, *shape)
