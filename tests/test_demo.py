"""``mmfuse demo`` opens the phantom with the plugin's widgets docked; samples open through npe2."""

import numpy as np
import pytest
from npe2 import PluginManifest

from napari_mmfuse.cli import main
from napari_mmfuse.commands.demo import open_demo, sample_keys


def test_sample_keys_are_the_manifests():
    manifest = PluginManifest.from_distribution("napari-mmfuse")
    assert sample_keys() == tuple(sample.key for sample in manifest.contributions.sample_data)
    assert "head_phantom" in sample_keys()


def test_demo_help_lists_the_samples(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for key in sample_keys():
        assert key in out


def test_unknown_sample_is_one_line_naming_the_keys(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--sample", "nope"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    error = [line for line in err.splitlines() if "error" in line]
    assert len(error) == 1, err
    assert "'nope'" in error[0]
    assert all(key in error[0] for key in sample_keys())
    with pytest.raises(ValueError, match="head_phantom"):
        open_demo("nope")


@pytest.mark.needs_canvas
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


@pytest.mark.needs_canvas
def test_demo_window_fits_a_full_hd_screen_with_readable_tabs(qtbot):
    from qtpy.QtWidgets import QTabBar

    manifest = PluginManifest.from_distribution("napari-mmfuse")
    widget_names = [widget.display_name for widget in manifest.contributions.widgets]
    viewer = open_demo("head_phantom")
    try:
        window = viewer.window._qt_window
        qtbot.waitExposed(window)
        frame = window.frameGeometry()
        assert frame.width() <= 1920 and frame.height() <= 1080, frame
        minimum = window.minimumSizeHint()  # the docks scroll: a 1366x768 laptop fits it too
        assert minimum.width() <= 1366 and minimum.height() <= 768, minimum
        bars = [bar for bar in window.findChildren(QTabBar) if bar.isVisible() and bar.count()]
        assert len(bars) == 1  # one tab stack holds every widget of the plugin
        (bar,) = bars
        titles = [bar.tabText(i).replace("&&", "&") for i in range(bar.count())]
        assert titles == widget_names
        assert bar.elideMode() == 3  # Qt.ElideNone: never "F…"
        for i in range(bar.count()):  # each tab is long enough for its title
            text_width = bar.fontMetrics().horizontalAdvance(titles[i])
            assert max(bar.tabRect(i).width(), bar.tabRect(i).height()) >= text_width
        assert titles[bar.currentIndex()] == "Fuse"
    finally:
        viewer.close()


def test_samples_open_in_viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    layers = viewer.open_sample("napari-mmfuse", "misaligned_rigid")
    moving = next(layer for layer in layers if "ground_truth" in layer.metadata)
    transform = np.asarray(moving.metadata["ground_truth"]["fixed_to_moving"])
    assert transform.shape == (4, 4)
    assert not np.allclose(transform, np.eye(4))
