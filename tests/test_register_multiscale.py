"""Pyramids (slides) in registration: ``mmfuse register``/``transform`` and the Manual
correction and Quality views widgets.

The CLI pair is a synthetic 3000 x 2500 slide written as a pyramid OME-TIFF with our
writer; the moving slide is the fixed one seen through a known rigid transform (both are
sampled from one analytic texture, so the truth is exact). Set ``MMFUSE_SHOTS`` to a
folder to keep the screenshots.
"""

import os
import tracemalloc
from pathlib import Path

import dask
import numpy as np
import pytest
# torch's optimiser imports torch._dynamo lazily on its first step; importing it here, on the
# main thread, is several times faster than inside the first registration worker
import torch
import torch._dynamo  # noqa: F401
from scipy import ndimage

import napari_mmfuse.io as mmfuse_io
from napari_mmfuse.cli import main
from napari_mmfuse.commands import register as register_command
from napari_mmfuse.core import lazy
from napari_mmfuse.core.register import apply_transform, to_luminance, transform_from_parameters
from napari_mmfuse.io import read
from napari_mmfuse.io import tiff as tiff_io
from napari_mmfuse.io.tiff import write_ome_tiff
from napari_mmfuse.io.transforms import read_itk_transform, write_transform
import napari_mmfuse.core.register as core_register
from napari_mmfuse.widgets import _registration as registration_module
from napari_mmfuse.history import history_for, layer_affine
from napari_mmfuse.widgets._layers import world_affine
from napari_mmfuse.widgets.manual import ManualCorrectionWidget
from napari_mmfuse.widgets.quality import QualityViewWidget

WAIT_MS = 120_000
SLIDE_SHAPE = (3000, 2500)
SPACING_UM = 0.5
FIXED_AFFINE = np.array([[SPACING_UM, 0, 100.0], [0, SPACING_UM, 200.0], [0, 0, 1]])
MOVING_AFFINE = np.array([[SPACING_UM, 0, 80.0], [0, SPACING_UM, 230.0], [0, 0, 1]])
SLIDE_CENTRE = FIXED_AFFINE[:2, :2] @ (np.array(SLIDE_SHAPE) - 1) / 2 + FIXED_AFFINE[:2, 2]
#: fixed world -> moving world (ITK convention): moving(TRUTH x) == fixed(x)
TRUTH = transform_from_parameters(ndim=2, center=SLIDE_CENTRE, translation=(30.0, -20.0), rotation_deg=4.0)
TEXTURE_CELL_UM = 6.0


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def texture(world_points):
    """A smooth random texture (features of ~10-20 um) at world points (..., 2), about [-0.8, 0.8]."""
    rng = np.random.default_rng(0)
    coefficients = ndimage.spline_filter(ndimage.gaussian_filter(rng.standard_normal((260, 220)), 1.5), order=3)
    index = ((world_points.reshape(-1, 2) - FIXED_AFFINE[:2, 2]) / TEXTURE_CELL_UM).T + 5
    values = ndimage.map_coordinates(coefficients, index, order=3, prefilter=False, mode="constant")
    return values.reshape(world_points.shape[:-1])


def world_grid(affine, shape):
    index = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij"), -1)
    return index @ affine[:2, :2].T + affine[:2, 2]


@pytest.fixture(scope="module")
def slide_pair(tmp_path_factory):
    """Grey fixed and RGB moving 3000 x 2500 slides (0.5 um pixels) as 3-level OME-TIFF pyramids."""
    folder = tmp_path_factory.mktemp("slides")
    fixed = np.clip(128 + 160 * texture(world_grid(FIXED_AFFINE, SLIDE_SHAPE)), 0, 255).astype(np.uint8)
    inverse = np.linalg.inv(TRUTH)
    seen = world_grid(MOVING_AFFINE, SLIDE_SHAPE) @ inverse[:2, :2].T + inverse[:2, 2]
    value = np.clip(128 + 160 * texture(seen), 0, 255)
    moving = np.rint(np.stack([value, 0.8 * value, 0.6 * value], -1)).astype(np.uint8)
    write_ome_tiff(folder / "fixed.ome.tif", fixed, FIXED_AFFINE, units="um")
    write_ome_tiff(folder / "moving.ome.tif", moving, MOVING_AFFINE, units="um", rgb=True)
    return folder / "fixed.ome.tif", folder / "moving.ome.tif"


class GuardedLevel:
    """Level 0 of a slide that may be read region by region but never as a whole.

    Records the number of pixels of every region read; ``np.asarray`` on it fails.
    """

    def __init__(self, level):
        self.level = level
        self.shape, self.dtype, self.ndim = level.shape, level.dtype, level.ndim
        self.reads: list[int] = []

    def __getitem__(self, region):
        part = np.asarray(self.level[region])
        self.reads.append(int(np.prod(part.shape[:2])))
        return part

    def __array__(self, dtype=None, copy=None):
        raise AssertionError("level 0 of a slide was read into memory whole")


@pytest.fixture
def guarded_reads(monkeypatch):
    """Serve level 0 of every pyramid read by the commands through a :class:`GuardedLevel`."""
    guards = {}
    original = mmfuse_io.read

    def read_guarded(path):
        records = original(path)
        for record in records:
            if record.multiscale:
                guards[os.path.basename(str(path))] = guard = GuardedLevel(record.data[0])
                record.data = [guard, *record.data[1:]]
        return records

    monkeypatch.setattr(mmfuse_io, "read", read_guarded)
    return guards


def mean_error_um(estimate, truth):
    """Mean distance between where two transforms send the fixed slide's pixel centres (every 50th)."""
    index = np.indices(SLIDE_SHAPE)[:, ::50, ::50].reshape(2, -1).T.astype(np.float64)
    points = index @ FIXED_AFFINE[:2, :2].T + FIXED_AFFINE[:2, 2]
    difference = estimate - truth
    return float(np.linalg.norm(points @ difference[:2, :2].T + difference[:2, 2], axis=1).mean())


# ---------------------------------------------------------------------------- core
def test_coarse_level_and_level_affine():
    shapes = [(3000, 2500), (1500, 1250), (750, 625)]
    assert lazy.coarse_level_index(shapes) == 1  # finest level of at most 2048 px a side
    assert lazy.coarse_level_index(shapes, 1024) == 2
    assert lazy.coarse_level_index(shapes, 100) == 2  # none fits: the coarsest
    with pytest.raises(ValueError, match="at least 1 pixel"):
        lazy.coarse_level_index(shapes, 0)
    # odd sizes are floor- or ceil-halved: the factor stays exactly 2
    np.testing.assert_array_equal(lazy.downsampling_factors((3001, 2500), (1500, 1250)), [2.0, 2.0])
    np.testing.assert_array_equal(lazy.downsampling_factors((3001, 2500), (1501, 1250)), [2.0, 2.0])
    affine = lazy.level_affine(FIXED_AFFINE, (3000, 2500), (750, 625))
    # voxel 0 of a 4x level is the mean of level-0 voxels 0..3: centre at index 1.5
    np.testing.assert_allclose(affine @ [0, 0, 1], FIXED_AFFINE @ [1.5, 1.5, 1])
    np.testing.assert_allclose(np.diag(affine)[:2], [2.0, 2.0])
    with pytest.raises(ValueError, match="does not fit"):
        lazy.level_affine(FIXED_AFFINE, (30, 25), (60, 25))
    # a reference grid of 2 um pixels needs no finer level than the 4x one
    coarse_grid = FIXED_AFFINE @ np.diag([4.0, 4.0, 1.0])
    assert lazy.output_level_index(shapes, FIXED_AFFINE, np.eye(3), coarse_grid) == 2
    assert lazy.output_level_index(shapes, FIXED_AFFINE, np.eye(3), FIXED_AFFINE) == 0


def test_lazy_apply_transform_matches_in_memory_resampling():
    rng = np.random.default_rng(1)
    image = ndimage.gaussian_filter(rng.random((300, 260, 3)), (2, 2, 0)).astype(np.float32)
    labels = rng.integers(0, 6, (300, 260)).astype(np.uint16)
    affine = np.array([[0.5, 0.0, 10.0], [0.0, 0.5, -5.0], [0, 0, 1]])
    reference = np.array([[0.45, 0.0, 0.0], [0.0, 0.55, 3.0], [0, 0, 1]])
    transform = transform_from_parameters(ndim=2, center=(70.0, 60.0), translation=(5.0, -3.0), rotation_deg=4.0)
    eager = apply_transform(image, affine, transform, (340, 250), reference, channel_axis=-1)
    blocked = lazy.lazy_apply_transform(image, affine, transform, (340, 250), reference, channel_axis=-1, block_shape=(64, 100))
    assert blocked.chunksize == (64, 100, 3)
    np.testing.assert_allclose(blocked.compute(), eager, atol=1e-4)
    eager_labels = apply_transform(labels, affine, transform, (340, 250), reference, interpolation="nearest")
    blocked_labels = lazy.lazy_apply_transform(
        labels, affine, transform, (340, 250), reference, interpolation="nearest", block_shape=(64, 100)
    ).compute()
    assert blocked_labels.dtype == np.uint16
    assert np.mean(blocked_labels != eager_labels) < 1e-3  # only float ties at half-voxel points may differ
    field = rng.normal(size=(340, 250, 2)).astype(np.float32)
    eager_warp = apply_transform(image[..., 0], affine, transform, (340, 250), reference, displacement=field)
    blocked_warp = lazy.lazy_apply_transform(
        image[..., 0], affine, transform, (340, 250), reference,
        displacement=field, displacement_affine=reference, block_shape=(64, 100),
    )  # fmt: skip
    np.testing.assert_allclose(blocked_warp.compute(), eager_warp, atol=1e-3)
    with pytest.raises(ValueError, match="displacement_affine"):
        lazy.lazy_apply_transform(labels, affine, transform, (10, 10), reference, displacement=np.zeros((4, 4, 2)))
    with pytest.raises(ValueError, match="block_shape"):
        lazy.lazy_apply_transform(labels, affine, transform, (10, 10), reference, block_shape=(0, 4))


# ---------------------------------------------------------------------------- command line
def test_cli_register_slide_pyramids_bounded_memory(slide_pair, guarded_reads, tmp_path, monkeypatch, capsys):
    """Register on a coarse level, recover the truth, write OUT block by block, never hold level 0."""
    fixed_path, moving_path = slide_pair
    # the writers keep small outputs in memory; make this 22 MB slide count as a large one
    monkeypatch.setattr(tiff_io, "IN_MEMORY_WRITE_BYTES", 2**20)
    monkeypatch.setattr(tiff_io, "BAND_BYTES", 2**20)
    monkeypatch.setattr(lazy, "BLOCK_SHAPE", {2: (256, 256), 3: (16, 64, 64)})
    out, tfm = tmp_path / "registered.ome.tif", tmp_path / "found.tfm"
    tracemalloc.start()
    try:
        with dask.config.set(num_workers=2):  # blocks computed at once, as on a 2-core machine
            code = main(["register", str(fixed_path), str(moving_path), "-o", str(out), "--transform", str(tfm), "--max-size", "1024"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert code == 0
    printed = capsys.readouterr().out
    assert "pyramid level 2 of 3, shape (750, 625)" in printed

    found = read_itk_transform(tfm)
    error = mean_error_um(found, TRUTH)
    print(f"mean error {error:.3f} um, traced peak {peak / 2**20:.1f} MiB")
    assert error < 0.25  # half a level-0 pixel, an eighth of a pixel of the level registered on

    # level 0 of the moving slide is 22.5 MB as stored (uint8 RGB); reading it whole and
    # resampling it in memory, as for single-level images, holds it plus two float32 copies
    level0_bytes = int(np.prod(SLIDE_SHAPE)) * 3
    assert not guarded_reads["fixed.ome.tif"].reads  # only the fixed slide's shape and affine are used
    assert max(guarded_reads["moving.ome.tif"].reads) < 0.1 * np.prod(SLIDE_SHAPE)
    assert peak < 0.75 * level0_bytes

    written = read(out)[0]
    assert written.multiscale and written.rgb and written.units == "um"
    assert [level.shape for level in written.data] == [(3000, 2500, 3), (1500, 1250, 3), (750, 625, 3)]
    assert written.data[0].dtype == np.uint8
    np.testing.assert_allclose(written.affine, FIXED_AFFINE)
    # an in-memory resample of the whole moving slide on every 8th fixed pixel agrees
    moving_pixels = np.asarray(read(moving_path)[0].data[0])
    check_grid = FIXED_AFFINE @ np.diag([8.0, 8.0, 1.0])
    expected = apply_transform(moving_pixels, MOVING_AFFINE, found, (375, 313), check_grid, channel_axis=-1)
    sampled = np.asarray(written.data[0][::8, ::8]).astype(np.float32)
    assert np.abs(sampled - expected).max() <= 1.0  # rounding to uint8
    # and it sits on the fixed slide: luminance correlates where the moving slide covers it
    fixed_sampled = np.asarray(read(fixed_path)[0].data[0][::8, ::8]).astype(np.float32)
    covered = ndimage.binary_erosion(to_luminance(sampled) > 0, iterations=2)
    correlation = np.corrcoef(to_luminance(sampled)[covered], fixed_sampled[covered])[0, 1]
    assert correlation > 0.99

    # mmfuse transform applies the saved transform block by block too: the same pixels
    again = tmp_path / "transformed.ome.tif"
    assert main(["transform", str(moving_path), "--transform", str(tfm), "--reference", str(fixed_path), "-o", str(again)]) == 0
    transformed = read(again)[0]
    np.testing.assert_array_equal(np.asarray(transformed.data[2]), np.asarray(written.data[2]))
    np.testing.assert_array_equal(np.asarray(transformed.data[0][1000:1256]), np.asarray(written.data[0][1000:1256]))


def test_cli_register_pyramids_with_masks(tmp_path, capsys):
    """Masks on level 0 or on the registration level of a pyramid both apply to that level."""
    shape = (512, 448)
    centre = FIXED_AFFINE[:2, :2] @ (np.array(shape) - 1) / 2 + FIXED_AFFINE[:2, 2]
    truth = transform_from_parameters(ndim=2, center=centre, translation=(6.0, -4.0), rotation_deg=3.0)
    fixed = np.clip(128 + 160 * texture(world_grid(FIXED_AFFINE, shape)), 0, 255).astype(np.uint8)
    inverse = np.linalg.inv(truth)
    moving = np.clip(128 + 160 * texture(world_grid(FIXED_AFFINE, shape) @ inverse[:2, :2].T + inverse[:2, 2]), 0, 255)
    paths = {name: tmp_path / f"{name}.ome.tif" for name in ("fixed", "moving", "fixed_mask", "moving_mask", "bad_mask")}
    write_ome_tiff(paths["fixed"], fixed, FIXED_AFFINE, units="um", pyramid_levels=3)
    write_ome_tiff(paths["moving"], moving.astype(np.uint8), FIXED_AFFINE, units="um", pyramid_levels=3)
    fixed_mask = np.zeros(shape, np.uint8)
    fixed_mask[40:300, 30:420] = 1  # on level 0 of the fixed slide
    moving_mask = np.ones((256, 224), np.uint8)  # on the registration level (1) of the moving slide
    write_ome_tiff(paths["fixed_mask"], fixed_mask, FIXED_AFFINE, units="um", layer_type="labels")
    write_ome_tiff(paths["moving_mask"], moving_mask, FIXED_AFFINE @ np.diag([2.0, 2.0, 1.0]), units="um")
    write_ome_tiff(paths["bad_mask"], np.ones((100, 100), np.uint8), FIXED_AFFINE, units="um")

    source = register_command.open_image(paths["fixed"])
    assert register_command.registration_level(source, 300) == 1
    sampled = register_command._mask(paths["fixed_mask"], source, 1, "fixed")
    expected = np.zeros((256, 224), bool)
    expected[20:150, 15:210] = True
    np.testing.assert_array_equal(sampled, expected)

    tfm = tmp_path / "found.tfm"
    arguments = ["register", str(paths["fixed"]), str(paths["moving"]), "-o", str(tmp_path / "out.ome.tif")]
    arguments += ["--transform", str(tfm), "--max-size", "300", "--moving-mask", str(paths["moving_mask"])]
    assert main([*arguments, "--fixed-mask", str(paths["fixed_mask"])]) == 0
    assert "pyramid level 1 of 3, shape (256, 224)" in capsys.readouterr().out
    difference = read_itk_transform(tfm) - truth
    points = world_grid(FIXED_AFFINE, shape)[::32, ::32].reshape(-1, 2)
    assert np.linalg.norm(points @ difference[:2, :2].T + difference[:2, 2], axis=1).mean() < 0.25
    arguments.append("--overwrite")
    assert main([*arguments, "--fixed-mask", str(paths["bad_mask"])]) == 1
    assert "has shape (100, 100), its image (512, 448)" in capsys.readouterr().err
    assert main([*arguments, "--max-size", "0"]) == 1
    assert "--max-size must be an integer >= 16, got 0" in capsys.readouterr().err  # checked before any work


TCGA_SVS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "slides" / "wsi_svs" / "tcga-cr-7395-01a-01-ts1.svs"


@pytest.mark.skipif(not TCGA_SVS.is_file(), reason="shared slide data not available")
def test_cli_real_svs_pyramid_moved_and_registered_back(tmp_path, capsys):
    """A real 2-level Aperio slide, moved by a known rigid transform and registered back.

    The moved copy is a 4-level pyramid of our writer, so fixed (level 1, 2x) and moving
    (level 2, 4x) register on different levels: their level affines must agree.
    """
    truth = transform_from_parameters(ndim=2, center=(1783.0, 2221.0), translation=(40.0, -25.0), rotation_deg=2.5)
    motion, moved, found = tmp_path / "motion.tfm", tmp_path / "moved.ome.tif", tmp_path / "found.tfm"
    write_transform(motion, truth)
    assert main(["transform", str(TCGA_SVS), "--transform", str(motion), "--reference", str(TCGA_SVS), "-o", str(moved)]) == 0
    assert main(["register", str(TCGA_SVS), str(moved), "-o", str(tmp_path / "back.ome.tif"), "--transform", str(found)]) == 0
    printed = capsys.readouterr().out
    assert "level 1 of 2, shape (1783, 2221)" in printed and "level 2 of 4, shape (891, 1110)" in printed
    # moved(x) = slide(truth x), so moved(inv(truth) x) = slide(x): the registration finds inv(truth)
    difference = read_itk_transform(found) - np.linalg.inv(truth)
    pixels = np.indices((3567, 4443))[:, ::64, ::64].reshape(2, -1).T.astype(np.float64)  # world = level-0 pixels
    error = np.linalg.norm(pixels @ difference[:2, :2].T + difference[:2, 2], axis=1)
    assert error.mean() < 0.5 and error.max() < 1.0


# ---------------------------------------------------------------------------- widgets
BLOBS = [(0.3, 0.35, 0.12, 1.0), (0.65, 0.4, 0.08, 0.8), (0.45, 0.7, 0.1, 0.6), (0.75, 0.75, 0.06, 0.9)]


def blobs(shape, shift=(0.0, 0.0)):
    """Sum of Gaussian blobs at fractional positions, displaced by ``shift`` pixels."""
    grids = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij")
    image = np.zeros(shape)
    for a, b, sigma, weight in BLOBS:
        distance = sum(((g - c * s - d) / (sigma * s)) ** 2 for g, c, s, d in zip(grids, (a, b), shape, shift, strict=True))
        image += weight * np.exp(-0.5 * distance)
    return image.astype(np.float32)


def pyramid_pair(viewer, shift):
    """Fixed and shifted moving 96 x 96 slides (0.5 um pixels) as 2-level multiscale layers."""
    fixed_full, moving_full = blobs((96, 96)), blobs((96, 96), shift)
    common = {"multiscale": True, "scale": (0.5, 0.5), "blending": "additive"}
    fixed = viewer.add_image([fixed_full, fixed_full[::2, ::2]], name="fixed", colormap="green", **common)
    moving = viewer.add_image([moving_full, moving_full[::2, ::2]], name="moving", colormap="magenta", **common)
    return fixed, moving


def to_world(affine, index):
    return affine[:-1, :-1] @ np.asarray(index, np.float64) + affine[:-1, -1]


def save_shot(viewer, widget, name, tmp_path, qtbot):
    viewer.window._qt_window.resize(1400, 1000)
    viewer.window.add_dock_widget(widget, name=name)
    qtbot.wait(100)
    viewer.reset_view()
    folder = os.environ.get("MMFUSE_SHOTS", str(tmp_path))
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{name.lower().replace(' ', '_')}_multiscale.png")
    image = viewer.screenshot(path=path, canvas_only=False, flash=False)
    assert image.std() > 0
    return path


def test_manual_correction_moves_every_level_and_refines_on_the_coarse_level(make_napari_viewer, qtbot, monkeypatch, tmp_path):
    monkeypatch.setattr(registration_module, "MAX_REGISTRATION_SIZE", 64)  # level 0 (96 px) is "too large"
    registered_shapes = []
    register_steps = core_register.register_steps

    def spy(fixed, fixed_affine, moving, moving_affine, **options):
        registered_shapes.append((fixed.shape, moving.shape))
        return (yield from register_steps(fixed, fixed_affine, moving, moving_affine, **options))

    monkeypatch.setattr(core_register, "register_steps", spy)  # what the register operations run
    viewer = make_napari_viewer(show=True)
    shift = np.array([6.0, -4.0])  # level-0 pixels
    fixed, moving = pyramid_pair(viewer, shift)
    widget = ManualCorrectionWidget(viewer)
    widget.fixed.set_layer(fixed)
    widget.moving.set_layer(moving)
    assert widget.layer is moving and len(widget.translation) == 2
    np.testing.assert_allclose(widget.center, [23.75, 23.75])  # level-0 centre: 47.5 px of 0.5 um

    # a slider move of 25 steps of 0.1 um shifts the layer's affine, so every level, by 2.5 um
    start = layer_affine(moving)
    widget.translation[1].slider.setValue(25)
    np.testing.assert_allclose(layer_affine(moving) - start, [[0, 0, 0], [0, 0, 2.5], [0, 0, 0]], atol=1e-12)
    assert history_for(moving).labels[-1] == "manual"
    coarse, coarse_affine = registration_module.layer_image(moving)
    assert coarse.shape == (48, 48)
    np.testing.assert_allclose(coarse_affine, lazy.level_affine(world_affine(moving), (96, 96), (48, 48)))
    # a rotation turns the slide about its level-0 centre
    centre_index = (np.array([96, 96]) - 1) / 2
    centre_world = to_world(world_affine(moving), centre_index)
    widget.rotation[0].spin.setValue(10.0)
    np.testing.assert_allclose(to_world(world_affine(moving), centre_index), centre_world, atol=1e-9)
    widget.reset_button.click()
    np.testing.assert_allclose(layer_affine(moving), start)

    # Refine from a rough manual correction (world um: shift 6, -4 px = 3, -2 um)
    widget.set_parameters(translation=[-2.5, 1.5])
    widget.refine_iterations.setValue(40)
    widget.refine_button.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert registered_shapes == [((48, 48), (48, 48))]
    assert history_for(moving).labels[-1].startswith("refine")
    feature = np.array([40.0, 50.0])  # level-0 pixel of the fixed slide
    error = to_world(world_affine(moving), feature + shift) - to_world(world_affine(fixed), feature)
    assert np.abs(error).max() < 0.5  # under one level-0 pixel
    save_shot(viewer, widget, "Manual correction", tmp_path, qtbot)


def test_quality_views_of_pyramids_on_the_coarse_fixed_grid(make_napari_viewer, qtbot, monkeypatch, tmp_path):
    monkeypatch.setattr(registration_module, "MAX_REGISTRATION_SIZE", 64)
    viewer = make_napari_viewer(show=True)
    shift = np.array([6.0, -4.0])
    fixed, moving = pyramid_pair(viewer, shift)
    widget = QualityViewWidget(viewer)
    widget.fixed.set_layer(fixed)
    widget.moving.set_layer(moving)
    widget._default_square()
    assert widget.square.value() == pytest.approx(96 * 0.5 / 8, abs=0.1)  # world extent of level 0 / 8
    widget.square.setValue(6.0)

    def run_views():
        for button in (widget.checkerboard_button, widget.difference_button, widget.curtain_button, widget.similarity_button):
            button.click()
        widget.metric_button.click()
        qtbot.waitUntil(lambda: not widget.workers, timeout=WAIT_MS)

    run_views()
    coarse_affine = lazy.level_affine(world_affine(fixed), (96, 96), (48, 48))  # 2x2 blocks, centred
    for view in ("checkerboard", "difference", "curtain", "local similarity"):
        layer = viewer.layers[f"quality: {view}"]
        assert layer.data.shape == (48, 48)
        np.testing.assert_allclose(world_affine(layer), coarse_affine)
    # the overlay spans the fixed slide: its last voxel is the centre of fixed level-0 pixels 94-95
    overlay = viewer.layers["quality: difference"]
    np.testing.assert_allclose(to_world(world_affine(overlay), [47, 47]), to_world(world_affine(fixed), [94.5, 94.5]))
    board = viewer.layers["quality: checkerboard"].data
    assert not np.array_equal(board[:6, :6], board[6:12, :6])  # squares of 6 um = 6 coarse voxels
    misaligned = float(np.abs(overlay.data).mean())
    original, now = (float(v) for v in widget.metric_label.text().split(": original ")[1].split(" → now "))
    assert original == pytest.approx(now)

    # move the moving slide onto the fixed one: difference shrinks, MI rises, layers are replaced
    n_layers = len(viewer.layers)
    history_for(moving).apply(np.array([[1, 0, -3.0], [0, 1, 2.0], [0, 0, 1]]) @ layer_affine(moving), "test")
    run_views()
    assert len(viewer.layers) == n_layers
    aligned = float(np.abs(viewer.layers["quality: difference"].data).mean())
    assert aligned < 0.25 * misaligned
    original, now = (float(v) for v in widget.metric_label.text().split(": original ")[1].split(" → now "))
    assert now > original + 0.1
    similarity = viewer.layers["quality: local similarity"].data
    assert float(np.median(similarity[similarity > 0])) > 0.9
    for view in ("difference", "curtain", "local similarity"):
        viewer.layers[f"quality: {view}"].visible = False
    save_shot(viewer, widget, "Quality views", tmp_path, qtbot)
