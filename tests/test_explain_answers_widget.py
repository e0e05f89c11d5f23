"""The Explain widget on a real BraTS slice: a per-modality overlay with the attribution ranked beside removal."""

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from napari_mmfuse.core import segment

BRATS = Path(__file__).resolve().parents[2] / "shared" / "data" / "segmentation" / "brats2015_case"

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_explain_widget_ranks_attribution_beside_removal(make_napari_viewer, qtbot, monkeypatch, shots_dir):
    if not BRATS.exists():
        pytest.skip(f"no BraTS case at {BRATS}")
    from qtpy.QtCore import Qt

    from napari_mmfuse.io import read
    from napari_mmfuse.widgets import explain as explain_widget
    from napari_mmfuse.widgets._session import remember_model

    errors = []
    monkeypatch.setattr(explain_widget, "show_error", errors.append)
    flair, t1c, truth = (read(BRATS / name)[0] for name in ("Flair_subtrMeanDivStd.nii.gz",
                                                             "T1c_subtrMeanDivStd.nii.gz", "OTMultiClass.nii.gz"))
    tumour3d = np.asarray(truth.data) > 0
    z = int(np.argmax(tumour3d.sum(axis=(1, 2))))
    images = np.stack([np.asarray(flair.data)[z], np.asarray(t1c.data)[z]]).astype(np.float32)
    tumour = tumour3d[z]
    scribbles = np.zeros(tumour.shape, np.int32)
    scribbles[ndimage.binary_erosion(tumour, iterations=3) & (np.arange(tumour.shape[0])[:, None] % 4 == 0)] = 2
    ring = ndimage.binary_dilation(tumour, iterations=10) & ~ndimage.binary_dilation(tumour, iterations=6)
    head = images[0] > images[0].min()
    scribbles[(ring | (head & (np.arange(tumour.shape[1])[None, :] % 12 == 0) & ~ndimage.binary_dilation(
        tumour, iterations=6)))] = 1
    model, _ = segment.train(images, scribbles, steps=120, features=(8, 16, 32), patch_size=(64, 64),
                             learning_rate=5e-3, channel_names=["FLAIR", "T1c"], device="cpu")

    viewer = make_napari_viewer(show=True)
    viewer.add_image(images[0], name="FLAIR", colormap="gray")
    viewer.add_image(images[1], name="T1c", colormap="gray", visible=False)
    labels = viewer.add_labels(tumour.astype(np.int32) * 2, name="tumour", opacity=0.3)
    labels.selected_label = 2
    remember_model(viewer, model, ["FLAIR", "T1c"])
    _, widget = viewer.window.add_plugin_dock_widget("napari-mmfuse", "Explain")
    widget.refresh_model()
    widget.method.setCurrentIndex(widget.method.findData("ig"))
    widget.target.setCurrentIndex(widget.target.findData(2))
    widget.region.setCurrentIndex(1)
    widget.region_labels.set_layer(labels)
    qtbot.mouseClick(widget.run_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=180_000)
    assert errors == []
    names, columns = widget.bars.names, dict(widget.bars.columns)
    assert names == ["FLAIR", "T1c"] and sum(columns["attribution"]) == pytest.approx(1.0)
    assert all(0 <= v <= 1 for v in columns["1 - Dice"])
    meta = viewer.layers["integrated gradients class 2"].metadata["mmfuse"]
    assert set(meta["attribution_ranking"]) == set(meta["removal_ranking"]) == {"FLAIR", "T1c"}
    print(f"\nattribution {meta['attribution']} ranking {meta['attribution_ranking']}; "
          f"removal Dice {meta['removal_dice']} ranking {meta['removal_ranking']}")
    top = meta["attribution_ranking"][0]
    overlay = viewer.layers[f"integrated gradients of {top}"]
    overlay.visible = True
    viewer.layers["integrated gradients class 2"].visible = False
    viewer.window._qt_window.resize(1600, 950)
    qtbot.wait(300)
    viewer.reset_view()
    qtbot.wait(100)
    viewer.screenshot(str(shots_dir / "explain_modality_answers.png"), canvas_only=False)
    widget.grab().save(str(shots_dir / "explain_modality_answers_panel.png"))
