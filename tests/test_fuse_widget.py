"""The Fuse dock widget: preview, a full fusion in a worker, bad inputs, a screenshot."""

import time
from pathlib import Path

import numpy as np
import pytest

from napari_mmfuse.core import fuse as fz
from napari_mmfuse.core.fuse import fuse_on_reference, resample_to_reference
from napari_mmfuse.core.quality import fusion_metrics
from napari_mmfuse.widgets.fuse import AUTO, PREVIEW_NAME, FuseWidget

HARVARD = Path(__file__).parents[1].parent / "shared" / "data" / "fusion" / "harvard"



def _pair(size=64):
    y, x = np.mgrid[:size, :size].astype(np.float32)
    disc = ((y - size / 2) ** 2 + (x - size / 2) ** 2 < (size / 3) ** 2).astype(np.float32)
    stripes = (np.sin(x / 3) > 0).astype(np.float32) * 0.5 + disc * 0.2
    ring = np.exp(-(((y - size / 2) ** 2 + (x - size / 2) ** 2) ** 0.5 - size / 4) ** 2 / 20).astype(np.float32)
    return stripes, ring


@pytest.fixture
def viewer_widget(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    widget = FuseWidget(viewer)
    qtbot.addWidget(widget)
    return viewer, widget


def test_fuse_adds_result_and_contributions_then_colour_screenshot(viewer_widget, qtbot, shots_dir):
    viewer, widget = viewer_widget
    mri, pet = _pair()
    a = viewer.add_image(mri, name="MRI", scale=(0.5, 0.5))
    # PET on a coarser grid covering the same world box: resampled through the affines
    b = viewer.add_image(pet[::2, ::2].copy(), name="PET", scale=(1.0, 1.0), translate=(0.25, 0.25))
    before = (a.data.copy(), b.data.copy())
    widget.reference_combo.setCurrentText("MRI")
    widget.method_combo.setCurrentText("guided")
    widget.preview_check.setChecked(False)
    worker = widget.start_fusion()
    assert worker is not None
    qtbot.waitUntil(widget.fuse_button.isEnabled, timeout=60_000)  # re-enabled when the worker finished
    qtbot.waitUntil(lambda: "fused (guided)" in viewer.layers, timeout=10_000)
    fused = viewer.layers["fused (guided)"]
    assert fused.data.shape == mri.shape and fused.data.dtype == np.float32
    np.testing.assert_allclose(fused.affine.affine_matrix, a.affine.affine_matrix @ np.diag([0.5, 0.5, 1]))
    record = fused.metadata["mmfuse"]  # the pipeline's provenance
    assert record["step"] == "fuse" and record["method"] == "guided"
    assert [entry["name"] for entry in record["inputs"]["images"]] == ["MRI", "PET"] and record["params"]["r1"] == 45
    maps = [viewer.layers[f"contribution: {name}"] for name in ("MRI", "PET")]
    assert all(m.blending == "additive" and not m.visible for m in maps)
    np.testing.assert_allclose(maps[0].data + maps[1].data, 1, atol=1e-5)
    assert widget.metrics_table.rowCount() >= 7
    names = [widget.metrics_table.item(r, 0).text() for r in range(widget.metrics_table.rowCount())]
    assert "Qabf" in names and "MI" in names
    np.testing.assert_array_equal(a.data, before[0])
    np.testing.assert_array_equal(b.data, before[1])
    for layer in list(viewer.layers):
        viewer.layers.remove(layer)
    _colour_fusion_screenshot(viewer, widget, qtbot, shots_dir)


def test_preview_follows_method_and_is_replaced(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    assert not widget.preview_check.isChecked()  # docking the widget adds no layer
    widget.preview_check.setChecked(True)
    mri, pet = _pair()
    viewer.add_image(np.stack([mri] * 4), name="T1", scale=(2, 1, 1))
    viewer.add_image(np.stack([pet] * 4), name="PET", scale=(2, 1, 1))
    widget.reference_combo.setCurrentText("T1")
    widget.method_combo.setCurrentText("maximum")
    qtbot.waitUntil(
        lambda: PREVIEW_NAME in viewer.layers and viewer.layers[PREVIEW_NAME].metadata["method"] == "maximum"
    )
    preview = viewer.layers[PREVIEW_NAME]
    assert preview.data.shape == (1, 64, 64)
    plane = int(viewer.dims.current_step[0])
    expected = fuse_on_reference(
        [np.stack([mri] * 4), np.stack([pet] * 4)], [np.diag([2.0, 1, 1, 1])] * 2, method="maximum", plane=plane
    )
    np.testing.assert_allclose(preview.data[0], expected.fused, atol=1e-6)
    widget.method_combo.setCurrentText("average")
    qtbot.waitUntil(lambda: viewer.layers[PREVIEW_NAME].metadata["method"] == "average")
    assert sum(layer.name == PREVIEW_NAME for layer in viewer.layers) == 1
    assert widget.last_preview_seconds is not None
    widget.method_combo.setCurrentText("activity")  # integer parameters (radius, consistency)
    qtbot.waitUntil(lambda: viewer.layers[PREVIEW_NAME].metadata["method"] == "activity")
    expected = fuse_on_reference(
        [np.stack([mri] * 4), np.stack([pet] * 4)], [np.diag([2.0, 1, 1, 1])] * 2, method="activity", plane=plane
    )
    np.testing.assert_allclose(viewer.layers[PREVIEW_NAME].data[0], expected.fused, atol=1e-6)
    count = len(viewer.layers)
    widget.method_combo.setCurrentText("learned")
    qtbot.waitUntil(lambda: PREVIEW_NAME not in viewer.layers)
    assert "click Fuse" in widget.status.text() and len(viewer.layers) == count - 1


def test_metrics_of_a_volume_result_of_its_plane_or_of_every_voxel(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    mri, pet = _pair()
    t1 = np.stack([mri * (0.5 + 0.06 * k) for k in range(8)])
    suv = np.stack([np.roll(pet, 2 * k, axis=1) for k in range(8)])
    viewer.add_image(t1, name="T1", scale=(2, 1, 1))
    viewer.add_image(suv, name="PET", scale=(2, 1, 1))
    widget.preview_check.setChecked(False)
    widget.reference_combo.setCurrentText("T1")
    widget.method_combo.setCurrentText("maximum")
    viewer.dims.set_current_step(0, 5)

    def table():
        return {
            widget.metrics_table.item(r, 0).text(): widget.metrics_table.item(r, 1).text()
            for r in range(widget.metrics_table.rowCount())
        }

    for whole_volume in (False, True):
        widget.volume_metrics_check.setChecked(whole_volume)
        assert widget.start_fusion() is not None
        qtbot.waitUntil(widget.fuse_button.isEnabled, timeout=60_000)
        fused = np.round(viewer.layers["fused (maximum)"].data * 255)
        sources = [np.round(p * 255) for p in resample_to_reference([t1, suv], [np.diag([2.0, 1, 1, 1])] * 2)]
        if whole_volume:
            assert "whole volume" in widget.status.text()
            reference = fusion_metrics(fused, sources, vif=False)
        else:
            assert "plane 5" in widget.status.text()
            reference = fusion_metrics(fused[5], [s[5] for s in sources], vif=False)
        assert table() == {name: f"{value:.4g}" for name, value in reference.items()}
        for layer in [layer for layer in viewer.layers if layer.name not in ("T1", "PET")]:
            viewer.layers.remove(layer)


def test_bad_inputs_notify_and_add_nothing(viewer_widget, monkeypatch):
    viewer, widget = viewer_widget
    mri, pet = _pair(32)
    viewer.add_image(mri, name="A")
    far = viewer.add_image(pet, name="B", translate=(500, 500))
    messages = []
    monkeypatch.setattr("napari_mmfuse.widgets._jobs.show_error", messages.append)
    widget.preview_check.setChecked(False)
    count = len(viewer.layers)
    assert widget.start_fusion() is None
    assert len(viewer.layers) == count
    assert "does not overlap" in messages[-1]
    viewer.layers.remove(far)
    viewer.add_image((np.stack([pet, pet * 0.5, pet * 0.2], -1) * 255).astype(np.uint8), name="PET rgb", rgb=True)
    widget.method_combo.setCurrentText("laplacian")
    assert widget.start_fusion() is None
    assert "colour" in messages[-1]
    widget.method_combo.setCurrentText("laplacian")
    widget.set_checked(["A"])
    widget.reference_combo.setCurrentText("A")
    assert widget.start_fusion() is None
    assert "at least two" in messages[-1]
    assert len(viewer.layers) == count


def _colour_fusion_screenshot(viewer, widget, qtbot, shots_dir):
    mri, pet = _pair(128)
    viewer.add_image(mri, name="MRI", colormap="gray")
    viewer.add_image(pet, name="PET", colormap="inferno", blending="additive", opacity=0.5)
    widget.set_checked(["MRI", "PET"])
    widget.preview_check.setChecked(True)
    widget.reference_combo.setCurrentText("MRI")
    widget.method_combo.setCurrentText("colour")
    qtbot.waitUntil(lambda: PREVIEW_NAME in viewer.layers and viewer.layers[PREVIEW_NAME].rgb)
    widget.preview_check.setChecked(False)
    assert widget.start_fusion() is not None
    qtbot.waitUntil(widget.fuse_button.isEnabled, timeout=60_000)  # re-enabled when the worker finished
    qtbot.waitUntil(lambda: "fused (colour)" in viewer.layers, timeout=10_000)
    fused = viewer.layers["fused (colour)"]
    assert fused.rgb and fused.data.shape == (128, 128, 3)
    for name in ("MRI", "PET"):
        viewer.layers[name].visible = False
    viewer.layers["contribution: PET"].visible = True
    viewer.window.add_dock_widget(widget, name="Fuse")
    viewer.window._qt_window.resize(1400, 900)
    viewer.reset_view()
    shot = viewer.screenshot(str(shots_dir / "fuse_widget.png"), canvas_only=False)
    assert shot.ndim == 3 and shot.shape[0] > 100
    assert widget.grab().save(str(shots_dir / "fuse_widget_panel.png"))


def _docked(make_napari_viewer):
    """The Fuse widget docked as a user docks it (it then holds napari's proxy of the viewer)."""
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-mmfuse", "Fuse")
    return viewer, widget


def _table(widget):
    return {
        widget.metrics_table.item(r, 0).text(): widget.metrics_table.item(r, 1).text()
        for r in range(widget.metrics_table.rowCount())
    }


def _rows(widget):
    return [widget.layer_list.item(i).text() for i in range(widget.layer_list.count())]


def _ticked(widget):
    return [layer.name for layer in widget.checked_layers()]


def test_docked_list_follows_renames_inserts_removals_and_keeps_ticks(make_napari_viewer, qtbot):
    viewer, widget = _docked(make_napari_viewer)
    assert widget.method_combo.currentText() == AUTO
    mri, pet = _pair(32)
    viewer.add_image(mri, name="A")
    viewer.add_image(pet, name="B")
    viewer.add_image(mri * pet, name="hidden", visible=False)
    viewer.add_labels((mri > 0.3).astype(np.uint8), name="mask")
    assert _rows(widget) == ["A", "B", "hidden"]  # images only
    assert _ticked(widget) == ["A", "B"]  # visible images are checked
    widget.set_checked(["A", "hidden"])
    widget.reference_combo.setCurrentText("hidden")
    viewer.layers["A"].name = "T1 renamed"
    viewer.layers["hidden"].name = "PET renamed"
    assert _rows(widget) == ["T1 renamed", "B", "PET renamed"]
    assert _ticked(widget) == ["T1 renamed", "PET renamed"]  # ticks follow the layer, not the name
    assert widget.reference_combo.currentText() == "PET renamed"
    viewer.layers["B"].name = "A"  # a name another layer had: not ticked by name
    assert _ticked(widget) == ["T1 renamed", "PET renamed"]
    viewer.layers.move(2, 0)  # reorder, as dragging in the layer list does
    assert _rows(widget) == ["PET renamed", "T1 renamed", "A"] and _ticked(widget) == ["PET renamed", "T1 renamed"]
    viewer.add_image(pet * 0.5, name="new")
    assert _ticked(widget) == ["PET renamed", "T1 renamed", "new"]
    viewer.layers.remove("PET renamed")
    assert _rows(widget) == ["T1 renamed", "A", "new"] and _ticked(widget) == ["T1 renamed", "new"]
    assert widget.reference_layer() is not None and widget.reference_combo.currentText() in _rows(widget)
    selected = widget.selected_layers()
    assert [layer.name for layer in selected][0] == widget.reference_combo.currentText()


def test_metrics_cleared_on_new_run_and_changed_inputs_and_sums_say_so(make_napari_viewer, qtbot):
    viewer, widget = _docked(make_napari_viewer)
    mri, pet = _pair(64)
    viewer.add_image(mri, name="MRI")
    viewer.add_image(pet, name="PET")
    widget.preview_check.setChecked(False)
    assert widget.start_fusion() is not None
    qtbot.waitUntil(widget.fuse_button.isEnabled, timeout=60_000)
    assert f"fused ({fz.DEFAULT_METHOD})" in viewer.layers  # auto on grey inputs: the default grey method
    rows = {widget.metrics_table.item(r, 0).text(): r for r in range(widget.metrics_table.rowCount())}
    assert widget.metrics_table.horizontalHeaderItem(2).text() == "scale"
    ssim_note = widget.metrics_table.item(rows["SSIM"], 2).text()
    assert "sum over the 2 sources" in ssim_note and "0..2" in ssim_note
    assert "sum over the 2 sources" in widget.metrics_table.item(rows["SSIM"], 1).toolTip()
    assert "sum" in widget.metrics_table.item(rows["SCD"], 2).text()
    assert "sum" not in widget.metrics_table.item(rows["Qabf"], 2).text()
    assert f"fused ({fz.DEFAULT_METHOD})" in widget.metrics_label.text()
    # the result layers appear unticked and do not count as changed inputs
    assert _ticked(widget) == ["MRI", "PET"] and widget.metrics_table.rowCount() > 0
    viewer.layers["MRI"].name = "T1"  # renaming is no change of input
    assert widget.metrics_table.rowCount() > 0
    widget.set_checked(["T1"])
    assert widget.metrics_table.rowCount() == 0  # inputs changed: the old values go
    widget.set_checked(["T1", "PET"])
    widget.method_combo.setCurrentText("maximum")
    assert widget.start_fusion() is not None
    assert widget.metrics_table.rowCount() == 0  # cleared when the run starts
    qtbot.waitUntil(widget.fuse_button.isEnabled, timeout=60_000)
    assert widget.metrics_table.rowCount() > 0


@pytest.mark.skipif(not HARVARD.is_dir(), reason="shared Harvard fusion pairs absent")
def test_open_harvard_mri_pet_and_click_fuse_with_defaults(make_napari_viewer, qtbot, shots_dir):
    from napari_mmfuse.io import read

    name = "11.png" if (HARVARD / "MRI_PET" / "MRI" / "11.png").exists() else sorted(
        (HARVARD / "MRI_PET" / "MRI").glob("*.png"))[0].name
    paths = [HARVARD / "MRI_PET" / kind / name for kind in ("MRI", "PET")]
    viewer, widget = _docked(make_napari_viewer)
    (mri,) = viewer.open(str(paths[0]), plugin="napari-mmfuse")
    (pet,) = viewer.open(str(paths[1]), plugin="napari-mmfuse")
    assert not mri.rgb and mri.data.shape == (256, 256)
    assert pet.rgb and pet.data.shape == (256, 256, 3)
    pet.opacity = 0.5
    assert _ticked(widget) == [mri.name, pet.name] and widget.reference_combo.currentText() == mri.name
    widget.preview_check.setChecked(False)
    start = time.perf_counter()
    qtbot.mouseClick(widget.fuse_button, 1)  # Qt.LeftButton
    qtbot.waitUntil(lambda: widget.fuse_button.isEnabled() and "fused (colour)" in viewer.layers, timeout=60_000)
    seconds = time.perf_counter() - start
    print(f"default Fuse click on Harvard MRI/PET {name}: {seconds:.2f} s")
    fused = viewer.layers["fused (colour)"]
    assert fused.rgb and fused.data.shape == (256, 256, 3) and fused.data.dtype == np.float32
    np.testing.assert_allclose(fused.affine.affine_matrix, mri.affine.affine_matrix)
    np.testing.assert_allclose(fused.data_to_world([10, 20]), mri.data_to_world([10, 20]))
    assert fused.metadata["mmfuse"]["params"]["inner"] == fz.DEFAULT_METHOD
    # the colour is the PET's: where the PET is strongly coloured, so is the result, with the same hue order
    pet_rgb = np.asarray(pet.data, np.float32) / 255
    hot = np.ptp(pet_rgb, axis=-1) > 0.25
    assert hot.sum() > 100
    assert np.ptp(fused.data, axis=-1)[hot].mean() > 0.1
    assert np.mean(np.argmax(fused.data[hot], -1) == np.argmax(pet_rgb[hot], -1)) > 0.8
    # where the PET is dark, the MRI's structure shows
    dark = pet_rgb.max(-1) < 0.05
    assert np.corrcoef(fused.data[dark].mean(-1), np.asarray(mri.data, np.float32)[dark])[0, 1] > 0.8
    # the table holds the core's metrics of this result
    records = [read(p)[0] for p in paths]
    prepared = fz.resample_to_reference(
        [r.data for r in records], [r.affine for r in records], rgb=[r.rgb for r in records]
    )
    expected = fz.result_metrics(fused.data, prepared, [r.rgb for r in records])
    assert _table(widget) == {key: f"{value:.4g}" for key, value in expected.items()}
    assert 0 < expected["SSIM"] <= 2 and "VIF" in expected

    for layer in viewer.layers:
        layer.visible = layer.name in (mri.name, "fused (colour)")
    viewer.layers[mri.name].visible = False
    viewer.window._qt_window.resize(1400, 900)
    viewer.reset_view()
    shot = viewer.screenshot(str(shots_dir / "fuse_harvard_mri_pet.png"), canvas_only=False)
    assert shot.ndim == 3 and shot.shape[0] > 100


def test_forms_come_from_the_registry_and_colour_shows_its_inner_methods(viewer_widget):
    from napari_mmfuse.operations import operations

    _, widget = viewer_widget
    assert set(widget.forms) == set(operations("fuse"))
    assert all(form.values() == operations("fuse")[name].defaults() for name, form in widget.forms.items())
    widget.method_combo.setCurrentText("colour")
    widget.forms["colour"]["inner"].value = "wavelet"
    assert not widget.forms["wavelet"].native.isHidden() and widget.forms["laplacian"].native.isHidden()
    widget.forms["wavelet"]["levels"].value = 2
    params = widget.parameters()
    assert params["inner"] == "wavelet" and params["levels"] == 2 and params["wavelet"] == "db2"
    assert params["colormap"] == "hot" and params["functional"] is None and params["r1"] is None
    assert operations("fuse")["colour"].check(params) == params  # what the pipeline is given is valid
