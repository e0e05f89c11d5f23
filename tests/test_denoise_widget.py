"""The *Denoise & prepare* widget in a real viewer: preview, worker run, provenance, errors, cancel."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from napari_mmfuse.widgets import denoise as widget_module
from napari_mmfuse.widgets._layers import world_affine
from napari_mmfuse.widgets.denoise import DenoiseWidget



@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def noisy_image(shape=(64, 64), seed=0):
    yy, xx = np.mgrid[: shape[-2], : shape[-1]]
    clean = 0.3 + 0.5 * ((yy - shape[-2] / 2) ** 2 + (xx - shape[-1] / 2) ** 2 < (shape[-1] / 3) ** 2)
    clean = np.broadcast_to(clean, shape).astype(np.float32)
    return clean + 0.1 * np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def wait_preview(qtbot, widget, name):
    widget.update_preview()
    qtbot.waitUntil(lambda: f"{name} preview" in widget.viewer.layers and widget._preview_worker is None, timeout=20_000)
    return widget.viewer.layers[f"{name} preview"]


def test_tv_run_adds_layer_with_geometry_and_provenance(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    data = noisy_image()
    original = data.copy()
    layer = viewer.add_image(data, name="cells", scale=(0.5, 0.25), translate=(10.0, -4.0), units=("um", "um"))
    widget = DenoiseWidget(viewer)
    qtbot.addWidget(widget)
    viewer.window.add_dock_widget(widget, name="Denoise & prepare")
    widget.set_method("tv")
    assert "σ" in widget.noise_label.text()  # the noise estimate proposed the weight
    assert widget.parameters()["weight"] == pytest.approx(0.8 * 0.1, rel=0.2)

    preview = wait_preview(qtbot, widget, "cells")
    assert preview.data.shape == data.shape and preview.data.std() < data.std()
    widget.preview_check.setChecked(False)
    assert not preview.visible
    widget.preview_check.setChecked(True)
    assert preview.visible

    widget.set_parameters(weight=0.12)
    worker = widget.make_worker()
    with qtbot.waitSignal(worker.finished, timeout=30_000):
        worker.start()
    result = viewer.layers["cells tv"]
    assert result.data.dtype == np.float32 and result.data.std() < data.std()
    expected = np.array([[0.5, 0, 10.0], [0, 0.25, -4.0], [0, 0, 1]])
    np.testing.assert_allclose(world_affine(result), expected)
    np.testing.assert_allclose(world_affine(layer), expected)
    assert result.metadata["mmfuse"] == {"step": "denoise", "method": "tv", "params": {"weight": 0.12}, "input": "cells"}
    np.testing.assert_array_equal(layer.data, original)  # input untouched
    assert widget.progress.value() == widget.progress.maximum()


def test_3d_preview_is_the_current_slice(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    volume = noisy_image((6, 32, 32), seed=1)
    layer = viewer.add_image(volume, name="vol", scale=(3.0, 1.0, 1.0))
    widget = DenoiseWidget(viewer)
    qtbot.addWidget(widget)
    widget.set_method("gaussian")
    viewer.dims.set_current_step(0, 4)
    preview = wait_preview(qtbot, widget, "vol")
    assert preview.data.shape == (1, 32, 32)
    assert preview.affine.affine_matrix[0, -1] == pytest.approx(4 * 3.0)  # placed on slice 4
    np.testing.assert_allclose(preview.data[0], widget_module.dn.gaussian(volume[4], sigma=widget.parameters()["sigma"]), atol=1e-5)


def test_n2v_run_shows_loss_curve_and_screenshot(make_napari_viewer, qtbot, shots_dir):
    viewer = make_napari_viewer()
    viewer.window._qt_window.resize(1300, 760)
    layer = viewer.add_image(noisy_image((64, 64), seed=2), name="cells", colormap="gray")
    widget = DenoiseWidget(viewer)
    qtbot.addWidget(widget)
    viewer.window.add_dock_widget(widget, name="Denoise & prepare")
    widget.set_method("n2v")
    widget.set_parameters(steps=12, patch=32)
    worker = widget.make_worker(layer)
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        worker.start()
    values = widget.loss_plot.values
    assert len(values) == 12 and all(np.isfinite(values))
    result = viewer.layers["cells n2v"]
    assert result.data.shape == (64, 64) and result.metadata["mmfuse"]["params"] == {"steps": 12, "patch": 32}
    viewer.grid.enabled = True
    viewer.reset_view()
    qtbot.wait(200)
    shot = viewer.screenshot(path=str(shots_dir / "denoise_widget.png"), canvas_only=False)
    assert shot.ndim == 3 and shot.shape[1] > 1000


def test_bad_input_notifies_and_adds_nothing(make_napari_viewer, qtbot, monkeypatch):
    messages = []
    monkeypatch.setattr(widget_module, "show_error", messages.append)
    viewer = make_napari_viewer()
    viewer.add_image(np.full((32, 32), 5.0, np.float32), name="flat")
    viewer.add_image(np.random.default_rng(0).random((2, 3, 16, 16)).astype(np.float32), name="4d")
    viewer.add_image((np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8), name="rgb", rgb=True)
    widget = DenoiseWidget(viewer)
    qtbot.addWidget(widget)
    widget.set_method("nlm")
    n_layers = len(viewer.layers)
    for name in ("flat", "4d", "rgb"):
        widget.set_layer(viewer.layers[name])
        widget.run()
    assert widget.worker is None and len(viewer.layers) == n_layers
    assert any("constant" in m for m in messages)
    assert any("4D" in m for m in messages)
    assert any("RGB" in m for m in messages)
    widget.set_method("macenko")
    widget.set_layer(viewer.layers["flat"])
    widget.run()
    assert "not RGB" in messages[-1]


def test_cancel_stops_training(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.add_image(noisy_image((48, 48)), name="img")
    widget = DenoiseWidget(viewer)
    qtbot.addWidget(widget)
    widget.set_method("n2v")
    widget.set_parameters(steps=5000, patch=16)
    widget.run()
    qtbot.waitUntil(lambda: len(widget.loss_plot.values) >= 1, timeout=20_000)
    with qtbot.waitSignal(widget.worker.finished, timeout=20_000):
        widget.cancel_button.click()
    assert len(widget.loss_plot.values) < 5000 and "img n2v" not in viewer.layers
    assert widget.run_button.isEnabled()


def test_stain_normalisation_and_tissue_mask_on_rgb(make_napari_viewer, qtbot):
    from test_normalize import he_slide

    viewer = make_napari_viewer()
    slide = viewer.add_image(he_slide(64, seed=3), name="slide", rgb=True)
    viewer.add_image(he_slide(64, seed=4), name="target", rgb=True)
    widget = DenoiseWidget(viewer)
    qtbot.addWidget(widget)
    widget.set_layer(slide)
    widget.set_method("reinhard")
    widget.reference_box.setCurrentText("target")
    worker = widget.make_worker()
    with qtbot.waitSignal(worker.finished, timeout=20_000):
        worker.start()
    out = viewer.layers["slide reinhard"]
    assert out.rgb and out.data.dtype == np.uint8 and out.metadata["mmfuse"]["reference"] == "target"
    widget.set_method("tissue")
    worker = widget.make_worker()
    with qtbot.waitSignal(worker.finished, timeout=20_000):
        worker.start()
    assert viewer.layers["slide tissue"].data.shape == (64, 64)
