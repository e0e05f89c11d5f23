"""``mmfuse demo`` opens the phantom with the plugin's widgets docked; samples open through npe2."""

import numpy as np

from napari_mmfuse.commands.demo import open_demo


def test_demo_opens_phantom_with_widgets_docked(qtbot):
    viewer = open_demo("head_phantom")
    try:
        names = [layer.name for layer in viewer.layers]
        assert {"phantom T1", "phantom T2", "phantom CT", "phantom PET"} <= set(names)
        docked = viewer.window.dock_widgets
        assert any("Physical space" in name for name in docked)
        shot = viewer.screenshot(canvas_only=True)
        assert shot[..., :3].max() > 100  # the phantom is drawn, not a black canvas
    finally:
        viewer.close()


def test_samples_open_in_viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    layers = viewer.open_sample("napari-mmfuse", "misaligned_rigid")
    moving = next(layer for layer in layers if "ground_truth" in layer.metadata)
    transform = np.asarray(moving.metadata["ground_truth"]["fixed_to_moving"])
    assert transform.shape == (4, 4)
    assert not np.allclose(transform, np.eye(4))
