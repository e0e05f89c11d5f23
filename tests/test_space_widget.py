"""The Physical space widget in a real viewer: placement shown, resampling onto a reference grid."""

from pathlib import Path

import numpy as np
import pytest

from napari_mmfuse.core import space
from napari_mmfuse.widgets.space import PhysicalSpaceWidget

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
IXI = DATA / "registration" / "ixi002_t1_t2"


def _two_layers(viewer):
    fixed = np.zeros((10, 12, 14), np.float32)
    fixed[3:7, 4:8, 5:9] = 1
    viewer.add_image(fixed, name="fixed", affine=np.diag([2.0, 1.0, 1.0, 1.0]))
    moving_affine = np.diag([1.0, 0.5, 0.5, 1.0])
    moving_affine[:3, 3] = [4.0, 2.0, 1.0]
    moving = space.resample(fixed, np.diag([2.0, 1.0, 1.0, 1.0]), (20, 24, 28), moving_affine, device="cpu")
    viewer.add_image(moving, name="moving", affine=moving_affine)
    return fixed, moving


def test_resample_onto_reference_grid(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    fixed, moving = _two_layers(viewer)
    widget = PhysicalSpaceWidget(viewer)
    qtbot.addWidget(widget)
    widget.moving.setCurrentText("moving")
    widget.reference.setCurrentText("fixed")
    moving_before = viewer.layers["moving"].data.copy()
    with qtbot.waitSignal(viewer.layers.events.inserted, timeout=20_000):
        widget.resample_button.click()
    result = viewer.layers["moving on fixed grid"]
    assert result.data.shape == fixed.shape
    np.testing.assert_allclose(result.affine.affine_matrix, np.diag([2.0, 1.0, 1.0, 1.0]))
    # inside the region both grids cover, the round trip returns the fixed image
    covered = result.data > 0
    assert covered.sum() > 0
    np.testing.assert_allclose(result.data[4:6, 5:7, 6:8], 1.0, atol=1e-5)
    np.testing.assert_array_equal(viewer.layers["moving"].data, moving_before)
    assert result.metadata["step"] == "resample"


def test_shows_placement_of_active_layer(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    _two_layers(viewer)
    widget = PhysicalSpaceWidget(viewer)
    qtbot.addWidget(widget)
    viewer.layers.selection.active = viewer.layers["moving"]
    text = widget.info.toPlainText()
    assert "moving" in text and "[1.0, 0.5, 0.5]" in text and "SPL" in text


def test_non_overlapping_layers_get_a_message(make_napari_viewer, qtbot, monkeypatch):
    viewer = make_napari_viewer()
    viewer.add_image(np.ones((8, 8), np.float32), name="a")
    far = np.eye(3)
    far[:2, 2] = 1000
    viewer.add_image(np.ones((8, 8), np.float32), name="b", affine=far)
    messages = []
    monkeypatch.setattr("napari_mmfuse.widgets.space.show_error", messages.append)
    widget = PhysicalSpaceWidget(viewer)
    qtbot.addWidget(widget)
    widget.moving.setCurrentText("b")
    widget.reference.setCurrentText("a")
    assert widget.start_resample() is None
    assert "do not overlap" in messages[0]
    assert len(viewer.layers) == 2


@pytest.mark.skipif(not IXI.exists(), reason="shared data absent")
def test_ixi_t1_t2_overlay_in_world_space(make_napari_viewer, qtbot):
    """T1 and T2 of one subject (different grids, axis orders, opposite tilts) overlay unregistered."""
    viewer = make_napari_viewer(show=True)
    t1 = viewer.open(str(IXI / "hd_bet_IXI002-Guys-0828-T1.nii.gz"), plugin="napari-mmfuse")[0]
    t2 = viewer.open(str(IXI / "hd_bet_IXI002-Guys-0828-T2.nii.gz"), plugin="napari-mmfuse")[0]
    # the 3D view renders through the full affines: the two brains cover the same pixels
    viewer.dims.ndisplay = 3
    viewer.reset_view()
    qtbot.wait(200)
    silhouettes = []
    for shown, hidden in ((t1, t2), (t2, t1)):
        shown.visible, hidden.visible = True, False
        qtbot.wait(100)
        silhouettes.append(viewer.screenshot(canvas_only=True)[..., :3].max(axis=-1) > 10)
    a, b = silhouettes
    assert a.sum() > 0.05 * a.size
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.95
    # the widget warns that 2D slices of these tilted volumes are approximate
    widget = PhysicalSpaceWidget(viewer)
    qtbot.addWidget(widget)
    viewer.layers.selection.active = t2
    assert "oblique" in widget.info.toPlainText()
    # resampling T2 onto the T1 grid gives an exact 2D overlay: the brain masks agree
    from napari_mmfuse.io import read

    m1 = read(IXI / "hd_bet_mask_IXI002-Guys-0828-T1.nii.gz")[0]
    m2 = read(IXI / "hd_bet_mask_IXI002-Guys-0828-T2.nii.gz")[0]
    on_t1 = space.resample(np.asarray(m2.data), m2.affine, m1.data.shape, m1.affine, interpolation="nearest")
    a, b = np.asarray(m1.data) > 0, on_t1 > 0
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.95
