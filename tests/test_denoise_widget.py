"""The *Denoise & prepare* widget in a real viewer: preview, job run, provenance, errors, cancel."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mmfuse.core import denoise as dn
from napari_mmfuse.widgets import _jobs
from napari_mmfuse.widgets._layers import world_affine
from napari_mmfuse.widgets.denoise import DenoiseWidget

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: one thread is faster and steadier


def noisy_image(shape=(64, 64), seed=0):
    yy, xx = np.mgrid[: shape[-2], : shape[-1]]
    clean = 0.3 + 0.5 * ((yy - shape[-2] / 2) ** 2 + (xx - shape[-1] / 2) ** 2 < (shape[-1] / 3) ** 2)
    clean = np.broadcast_to(clean, shape).astype(np.float32)
    return clean + 0.1 * np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def run_and_wait(qtbot, widget, name, timeout=30_000):
    """Press Run and wait for the job to add the layer ``name``."""
    widget.run()
    qtbot.waitUntil(lambda: name in widget.viewer.layers and widget.worker is None, timeout=timeout)
    return widget.viewer.layers[name]


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
    assert widget.parameters() == {"weight": None}  # auto: the core's estimate from the image
    widget.propose_parameters()
    assert "σ" in widget.noise_label.text()  # the noise estimate proposed the weight
    assert widget.parameters()["weight"] == pytest.approx(0.1, rel=0.2)  # what auto uses: the noise sigma

    preview = wait_preview(qtbot, widget, "cells")
    assert preview.data.shape == data.shape and preview.data.std() < data.std()
    widget.preview_check.setChecked(False)
    assert not preview.visible
    widget.preview_check.setChecked(True)
    assert preview.visible

    widget.set_parameters(weight=0.12)
    result = run_and_wait(qtbot, widget, "cells tv")
    assert result.data.dtype == np.float32 and result.data.std() < data.std()
    expected = np.array([[0.5, 0, 10.0], [0, 0.25, -4.0], [0, 0, 1]])
    np.testing.assert_allclose(world_affine(result), expected)
    np.testing.assert_allclose(world_affine(layer), expected)
    record = result.metadata["mmfuse"]
    assert (record["step"], record["method"], record["params"]) == ("denoise", "tv", {"weight": 0.12})
    assert record["inputs"]["image"][0]["name"] == "cells"
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
    np.testing.assert_allclose(preview.data[0], dn.gaussian(volume[4], sigma=widget.parameters()["sigma"]), atol=1e-5)


def test_n2v_run_shows_loss_curve_and_screenshot(make_napari_viewer, qtbot, shots_dir):
    viewer = make_napari_viewer()
    viewer.window._qt_window.resize(1300, 760)
    layer = viewer.add_image(noisy_image((64, 64), seed=2), name="cells", colormap="gray")
    widget = DenoiseWidget(viewer)
    qtbot.addWidget(widget)
    viewer.window.add_dock_widget(widget, name="Denoise & prepare")
    widget.set_method("n2v")
    widget.set_layer(layer)
    widget.set_parameters(steps=12, patch=32)
    result = run_and_wait(qtbot, widget, "cells n2v", timeout=60_000)
    values = widget.loss_plot.values
    assert len(values) == 12 and all(np.isfinite(values))
    assert result.data.shape == (64, 64) and result.metadata["mmfuse"]["params"] == {"steps": 12, "patch": 32}
    viewer.grid.enabled = True
    viewer.reset_view()
    qtbot.wait(200)
    shot = viewer.screenshot(path=str(shots_dir / "denoise_widget.png"), canvas_only=False)
    assert shot.ndim == 3 and shot.shape[1] > 1000


def test_bad_input_notifies_and_adds_nothing(make_napari_viewer, qtbot, monkeypatch):
    messages = []
    monkeypatch.setattr(_jobs, "show_error", messages.append)
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
    out = run_and_wait(qtbot, widget, "slide reinhard", timeout=20_000)
    assert out.rgb and out.data.dtype == np.uint8 and out.metadata["mmfuse"]["inputs"]["reference"][0]["name"] == "target"
    widget.set_method("tissue")
    mask = run_and_wait(qtbot, widget, "slide tissue", timeout=20_000)
    assert mask.data.shape == (64, 64) and type(mask).__name__ == "Labels"


def test_forms_come_from_the_registry_and_start_at_its_defaults(make_napari_viewer, qtbot):
    """One form per denoise/normalize operation, at the registry's defaults (auto = estimated from the image)."""
    from napari_mmfuse.operations import operations

    viewer = make_napari_viewer()
    viewer.add_image(noisy_image(), name="cells")
    widget = DenoiseWidget(viewer)
    qtbot.addWidget(widget)
    expected = {**operations("denoise"), **operations("normalize")}
    assert list(widget.forms) == list(expected)
    for method, operation in expected.items():
        widget.set_method(method)
        assert widget.forms[method].values() == operation.defaults(), method
    widget.set_method("bilateral")
    assert widget.parameters() == {"sigma_spatial": 1.5, "sigma_range": None}
    assert widget.method_box.itemText(widget.method_box.findData("poly-bias")) == "Bias field: polynomial (log domain)"
