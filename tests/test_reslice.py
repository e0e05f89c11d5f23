"""World-resliced 2D display: lazy planes against scipy, exact 2D overlays in the real viewer, originals kept.

"What napari shows" is read the way vispy draws it: the layer's current 2D slice
(``layer._slice.image.raw``) placed by the layer's data -> world transform restricted to
the displayed axes, sampled at the world points of a display-grid plane (nearest pixel).
"""

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from napari_mmfuse.core import reslice, space
from napari_mmfuse.widgets._layers import image_of, original_data, world_affine

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
IXI = DATA / "registration" / "ixi002_t1_t2"


def _rotation(axis: int, degrees: float) -> np.ndarray:
    a, b = [i for i in range(3) if i != axis]
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    rotation = np.eye(3)
    rotation[a, a], rotation[a, b], rotation[b, a], rotation[b, b] = c, -s, s, c
    return rotation


def _oblique_affine(shape, spacing, axis, degrees, centre=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Index -> world affine of a grid tilted about ``axis``, centred on ``centre``."""
    affine = np.eye(4)
    affine[:3, :3] = _rotation(axis, degrees) @ np.diag(spacing)
    affine[:3, 3] = np.asarray(centre) - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    return affine


def _sample(volume, affine, points, order) -> np.ndarray:
    """Values of ``volume`` (index -> world ``affine``) at world points, shape (..., 3); 0 outside."""
    index = (np.linalg.inv(affine) @ np.c_[points.reshape(-1, 3), np.ones(points[..., 0].size)].T)[:3]
    return ndimage.map_coordinates(volume, index, order=order, mode="constant", cval=0).reshape(points.shape[:-1])


def _plane_points(shape, grid, axis, index) -> np.ndarray:
    """World points of the plane ``index`` along ``axis`` of a grid, shape (A, B, 3)."""
    ranges = [np.arange(n, dtype=float) for n in shape]
    ranges[axis] = np.array([float(index)])
    ijk = np.stack(np.meshgrid(*ranges, indexing="ij"), axis=-1).reshape(-1, 3)
    world = ijk @ grid[:3, :3].T + grid[:3, 3]
    return world.reshape([n for a, n in enumerate(shape) if a != axis] + [3])


def _displayed(layer, viewer, points) -> np.ndarray:
    """What the canvas shows of ``layer`` at world points of the displayed plane (nearest pixel)."""
    raw = np.asarray(layer._slice.image.raw)
    displayed = list(viewer.dims.displayed)
    to_world = layer._transforms.simplified.set_slice(displayed)
    index = np.rint(to_world.inverse(points[..., displayed].reshape(-1, 2))).astype(int)
    inside = np.all((index >= 0) & (index < raw.shape), axis=1)
    out = np.zeros(len(index), raw.dtype)
    out[inside] = raw[index[inside, 0], index[inside, 1]]
    return out.reshape(points.shape[:-1])


def _dice(a, b) -> float:
    a, b = a > 0, b > 0
    return float(2 * np.sum(a & b) / max(np.sum(a) + np.sum(b), 1))


def _show_plane(viewer, shape, grid, axis, index) -> np.ndarray:
    viewer.dims.set_point(axis, float(grid[axis, axis] * index + grid[axis, 3]))
    return _plane_points(shape, grid, axis, index)


# pure compute ------------------------------------------------------------------------------


@pytest.mark.parametrize("order", [0, 1])
def test_resliced_blocks_match_scipy_world_resampling(order):
    rng = np.random.default_rng(0)
    source = rng.integers(0, 50, (20, 24, 18)).astype(np.int16)
    source_affine = _oblique_affine(source.shape, (1.2, 0.9, 1.1), 1, 9.0, centre=(1.0, -2.0, 0.5))
    shape, grid = reslice.display_grid(source.shape, source_affine)
    assert np.allclose(grid[:3, :3], np.diag(np.diag(grid)[:3])) and np.all(np.diag(grid)[:3] > 0)
    view = reslice.ReslicedVolume(source, source_affine, shape, grid, order=order)
    assert view.dtype == (source.dtype if order == 0 else np.float32) and view.shape == shape
    for axis in range(3):
        key = [slice(None)] * 3
        key[axis] = shape[axis] // 2
        expected = _sample(source.astype(np.float64), source_affine,
                           _plane_points(shape, grid, axis, shape[axis] // 2), order)
        np.testing.assert_allclose(view[tuple(key)], expected, atol=1e-3)
    block = view[2:9:3, -1, ::-2]
    assert block.shape == (3, (shape[2] + 1) // 2)
    np.testing.assert_allclose(block, np.asarray(view)[2:9:3, -1, ::-2], atol=1e-5)
    assert view[5, 3, 4] == np.asarray(view)[5, 3, 4]
    with pytest.raises(IndexError):
        view[shape[0]]
    with pytest.raises(TypeError):
        view[[1, 2]]


def test_display_grid_keeps_aligned_grids_and_covers_oblique_ones():
    aligned = np.diag([2.0, -1.0, 0.5, 1.0])
    shape, grid = reslice.display_grid((5, 6, 7), aligned)
    assert shape == (5, 6, 7) and grid is not aligned and np.array_equal(grid, aligned)
    oblique = _oblique_affine((30, 40, 20), (1.0, 0.5, 2.0), 0, 7.0)
    shape, grid = reslice.display_grid((30, 40, 20), oblique)
    np.testing.assert_allclose(np.diag(grid)[:3], [1.0, 0.5, 2.0])
    low, high = space.world_bounds((30, 40, 20), oblique)
    grid_low, grid_high = space.world_bounds(shape, grid)
    assert np.all(grid_low <= low + 1e-6) and np.all(grid_high >= high - 0.5 * np.diag(grid)[:3])
    assert reslice.axes_parallel(oblique, oblique @ np.diag([1, -1, 2, 1]))
    assert not reslice.axes_parallel(oblique, np.eye(4))
    assert reslice.axes_parallel(_oblique_affine((9, 9, 9), (1, 1, 1), 2, 0.05), np.eye(4))


# the real viewer ---------------------------------------------------------------------------


def _phantom_pair(viewer):
    """Two labels volumes of one world-space ellipsoid + block, on grids tilted 8 deg in opposite senses."""
    def phantom(shape, affine):
        index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
        z, y, x = (index @ affine[:3, :3].T + affine[:3, 3]).T
        inside = (z / 18) ** 2 + (y / 24) ** 2 + (x / 16) ** 2 <= 1
        inside |= (np.abs(z - 4) < 6) & (np.abs(y - 20) < 8) & (np.abs(x) < 20)
        return inside.reshape(shape).astype(np.uint8)

    layers = []
    for name, degrees in (("tilted up", 8.0), ("tilted down", -8.0)):
        shape = (40, 56, 48)
        affine = _oblique_affine(shape, (1.1, 1.0, 0.9), 2, degrees)
        layers.append(viewer.add_labels(phantom(shape, affine), name=name, affine=affine))
    return layers


def test_synthetic_oblique_pair_overlays_exactly_in_2d(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    first, second = _phantom_pair(viewer)
    originals = [(layer.data, world_affine(layer)) for layer in (first, second)]
    _, widget = viewer.window.add_plugin_dock_widget("napari-mmfuse", "Physical space")
    display = widget.display
    assert widget.reslice_check.isChecked() and set(display.resliced) == {first, second}
    assert "resliced" in widget.display_status.text() and "read-only" in widget.display_status.text()
    assert not first.editable  # painting needs the layer's own grid
    shape, grid = display.grid

    def overlay() -> tuple[float, float]:
        scores = []
        for index in (shape[0] // 3, shape[0] // 2, 2 * shape[0] // 3):
            points = _show_plane(viewer, shape, grid, 0, index)
            shown = [_displayed(layer, viewer, points) for layer in (first, second)]
            truth = _sample(originals[1][0], originals[1][1], points, 0)
            scores.append((_dice(shown[0], shown[1]), _dice(shown[1], truth)))
        return tuple(np.mean(scores, axis=0))

    mutual_on, exact_on = overlay()
    assert exact_on > 0.995  # the displayed plane is the world resampling of the layer's own data
    # widgets and writers see the user's data and placement, never the display view
    for layer, (data, affine) in zip((first, second), originals, strict=True):
        assert original_data(layer) is data and layer.data is not data
        picture = image_of(layer, copy=False)
        assert picture.data is data
        np.testing.assert_allclose(picture.affine, affine, atol=1e-9)
    from napari_mmfuse._writer import write_nifti_labels
    from napari_mmfuse.io import read

    written = write_nifti_labels(str(tmp_path / "second.nii.gz"), *second.as_layer_data_tuple()[:2])
    record = read(Path(written[0]))[0]
    np.testing.assert_array_equal(record.data, originals[1][0])
    np.testing.assert_allclose(record.affine, originals[1][1], atol=1e-4)

    # a registration moving the layer (its affine) is followed by the view
    motion = np.eye(4)
    motion[:3, 3] = [3.0, -2.0, 1.0]
    second.affine = motion @ np.asarray(second.affine.affine_matrix)
    np.testing.assert_allclose(world_affine(second), motion @ originals[1][1], atol=1e-9)
    np.testing.assert_allclose(second.data.source_affine, motion @ originals[1][1], atol=1e-9)
    points = _show_plane(viewer, shape, grid, 0, shape[0] // 2)
    assert _dice(_displayed(second, viewer, points), _sample(originals[1][0], motion @ originals[1][1], points, 0)) > 0.995
    second.affine = np.linalg.inv(motion) @ np.asarray(second.affine.affine_matrix)

    widget.reslice_check.setChecked(False)  # off: the layers show their own data again
    assert display.resliced == [] and first.editable
    for layer, (data, affine) in zip((first, second), originals, strict=True):
        assert layer.data is data
        np.testing.assert_allclose(world_affine(layer), affine, atol=1e-9)
        np.testing.assert_allclose(layer.scale, 1.0) and np.testing.assert_allclose(layer.rotate, np.eye(3))
    mutual_off, _ = overlay()
    assert mutual_on > 0.97 and mutual_off < mutual_on - 0.05, (mutual_on, mutual_off)

    widget.reslice_check.setChecked(True)
    viewer.dims.ndisplay = 3  # the 3D view draws the layers' own data exactly
    assert display.resliced == [] and first.data is originals[0][0]
    viewer.dims.ndisplay = 2
    assert set(display.resliced) == {first, second}
    viewer.layers.remove(second)  # one volume left: nothing to reslice
    assert display.resliced == [] and second.data is originals[1][0] and first.data is originals[0][0]


def test_registration_history_moves_the_resliced_view_and_undo_returns(make_napari_viewer):
    from napari_mmfuse.history import history_for

    viewer = make_napari_viewer()
    first, second = _phantom_pair(viewer)
    _, widget = viewer.window.add_plugin_dock_widget("napari-mmfuse", "Physical space")
    start = world_affine(second)
    history = history_for(second)  # what Register, Manual correction and Quality views edit
    motion = np.eye(4)
    motion[:3, :3] = _rotation(0, 4.0)
    history.apply(motion @ history.current, "register")
    assert second in widget.display.resliced
    np.testing.assert_allclose(second.data.source_affine, motion @ start, atol=1e-9)
    np.testing.assert_allclose(image_of(second, copy=False).affine, motion @ start, atol=1e-9)
    history.undo()
    np.testing.assert_allclose(second.data.source_affine, start, atol=1e-9)
    assert not history.can_undo  # our display never touches the affine the history records


def test_a_volume_added_later_is_resliced_onto_the_chosen_grid(make_napari_viewer):
    viewer = make_napari_viewer()
    aligned = np.zeros((20, 22, 24), np.float32)
    aligned[5:15, 6:16, 7:17] = 1
    viewer.add_image(aligned, name="aligned", affine=np.diag([1.5, 1.0, 1.0, 1.0]))
    _, widget = viewer.window.add_plugin_dock_widget("napari-mmfuse", "Physical space")
    assert widget.display.grid is None  # one orientation: nothing to do
    tilted = viewer.add_image(aligned.copy(), name="tilted", affine=_oblique_affine(aligned.shape, (1, 1, 1), 0, 10.0))
    assert widget.display.resliced == [tilted]
    assert widget.display.grid[0] == aligned.shape  # the first (aligned) layer's own grid
    widget.display_grid.setCurrentText("tilted")
    assert set(widget.display.resliced) == {tilted}  # the aligned layer is parallel to the new grid too
    assert widget.display.grid[0] != aligned.shape


@pytest.mark.skipif(not IXI.exists(), reason="IXI data not available (../shared/data/registration/ixi002_t1_t2)")
def test_ixi_t1_t2_overlay_in_2d_matches_world_resampling(make_napari_viewer, shots_dir):
    viewer = make_napari_viewer(show=True)  # shown, so that the screenshots render
    viewer.window._qt_window.resize(1400, 900)
    layers = []
    for name in ("IXI002-Guys-0828-T1", "IXI002-Guys-0828-T2", "mask_IXI002-Guys-0828-T1", "mask_IXI002-Guys-0828-T2"):
        layers += viewer.open(str(IXI / f"hd_bet_{name}.nii.gz"), plugin="napari-mmfuse")
    t1, t2, mask1, mask2 = layers
    assert all(isinstance(layer.data, reslice.ReslicedVolume) for layer in layers)  # on by default, from the reader
    _, widget = viewer.window.add_plugin_dock_widget("napari-mmfuse", "Physical space")
    assert {layer.name for layer in widget.display.resliced} == {layer.name for layer in viewer.layers}
    picture = image_of(t2, copy=False)
    assert picture.data is original_data(t2) and picture.data.shape == (130, 256, 256)
    truth_affine, truth = world_affine(mask1), original_data(mask1)
    shape, grid = widget.display.grid

    def axial_dice() -> tuple[float, float]:
        """Dice pooled over axial planes through the brain (T1 silhouette vs, T2's own world resampling)."""
        shown, against_t1, against_t2 = [], [], []
        for index in np.linspace(0.4, 0.75, 7) * shape[0]:
            points = _show_plane(viewer, shape, grid, 0, int(index))
            shown.append(_displayed(mask2, viewer, points))
            against_t1.append(_sample(truth, truth_affine, points, 0))
            against_t2.append(_sample(original_data(mask2), world_affine(mask2), points, 0))
        shown = np.stack(shown)
        return _dice(shown, np.stack(against_t1)), _dice(shown, np.stack(against_t2))

    on, exact = axial_dice()
    mask2.contour, mask2.opacity, mask1.visible, t2.visible = 3, 1.0, False, False
    viewer.layers.selection.active = t2
    _show_plane(viewer, shape, grid, 0, int(0.62 * shape[0]))
    viewer.reset_view()
    shots = [viewer.screenshot(canvas_only=True, flash=False)]
    widget.reslice_check.setChecked(False)
    shots.append(viewer.screenshot(canvas_only=True, flash=False))
    from skimage.io import imsave

    imsave(shots_dir / "ixi_t1_t2_silhouette_resliced_vs_untilted.png", np.concatenate(shots, axis=1), check_contrast=False)
    assert all(shot.std() > 0 for shot in shots)
    off, _ = axial_dice()
    print(f"IXI axial Dice of the displayed T2 silhouette vs T1's world-resampled one: "
          f"resliced {on:.4f}, napari's untilted slices {off:.4f}; vs T2's own world resampling {exact:.4f}")
    assert exact > 0.995 and on > 0.93 and on - off > 0.02
    assert t2.data is original_data(t2) and t2.data.shape == (130, 256, 256)


def _click(model, position, *, drag_px: float = 0.0) -> None:
    """Press and release the mouse on a viewer model's canvas (moved by ``drag_px`` in between)."""
    from types import SimpleNamespace

    from napari.utils._proxies import ReadOnlyWrapper
    from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

    def event(kind, pos):
        return ReadOnlyWrapper(SimpleNamespace(type=kind, position=tuple(position), pos=np.array(pos, float),
                                               modifiers=(), is_dragging=False, handled=False, button=1,
                                               view_direction=None, dims_displayed=list(model.dims.displayed)))

    mouse_press_callbacks(model, event("mouse_press", (100, 100)))
    mouse_release_callbacks(model, event("mouse_release", (100 + drag_px, 100)))


def test_orthogonal_views_share_the_cursor(make_napari_viewer, qtbot, shots_dir):
    pytest.importorskip("napari_orthogonal_views")
    from napari_orthogonal_views.ortho_view_manager import _get_manager

    from napari_mmfuse.widgets.space import click_moves_cursor

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    _phantom_pair(viewer)
    _, widget = viewer.window.add_plugin_dock_widget("napari-mmfuse", "Physical space")
    manager = _get_manager(viewer)
    widget.ortho_button.click()
    qtbot.waitUntil(manager.is_shown, timeout=5000)
    views = widget.orthogonal_views()
    assert len(views) == 2
    qtbot.waitUntil(lambda: all(click_moves_cursor in view.mouse_drag_callbacks for view in views), timeout=5000)
    # the copies in the side views show the resliced data too
    assert all(isinstance(layer.data, reslice.ReslicedVolume) for view in views for layer in view.layers)
    target = np.array(viewer.dims.point) + [6.0, -7.0, 5.0]
    _click(views[0], target)  # a click in one view moves the others
    for model in (viewer, *views):
        np.testing.assert_allclose(model.dims.point, target, atol=0.6)
    _click(views[1], target - 4.0, drag_px=30)  # a drag (pan) leaves the cursor where it was
    np.testing.assert_allclose(viewer.dims.point, target, atol=0.6)
    _click(viewer, target - 3.0)
    np.testing.assert_allclose(views[1].dims.point, target - 3.0, atol=0.6)
    manager.set_cross_hairs(True)
    manager.set_splitter_sizes(0.4, 0.4)
    for model in (viewer, *views):
        model.reset_view()
    qtbot.wait(200)
    viewer.screenshot(str(shots_dir / "orthogonal_views.png"), canvas_only=False, flash=False)
    widget.ortho_button.click()
    qtbot.waitUntil(lambda: not manager.is_shown(), timeout=5000)
    assert click_moves_cursor not in viewer.mouse_drag_callbacks
    manager.cleanup()
