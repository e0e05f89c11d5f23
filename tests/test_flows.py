"""The three everyday flows, end to end, with the widgets docked as the Plugins menu docks them.

``viewer.window.add_plugin_dock_widget("napari-mmfuse", name)`` gives each widget its own
public proxy of the viewer (as napari does for a user), so these tests see what a user
sees: state shared between widgets, layers compared through proxies, defaults chosen from
the layer list. Each flow saves screenshots of its key steps (``shots_dir``) and reports
each step's time (as test properties, printed at the end of the run, and saved as ``flow_times.json``).
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_mmfuse.history import history_for
from napari_mmfuse.widgets._layers import original_data, world_affine

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
WAIT_MS = 600_000

pytestmark = pytest.mark.slow


def unwrap(obj):
    """The napari object behind a plugin's viewer proxy."""
    return getattr(obj, "__wrapped__", obj)


class StepTimes:
    """Wall time of each step of a flow, kept for the run's summary and written beside the shots."""

    def __init__(self, flow: str, folder: Path, record):
        self.flow, self.folder, self.record = flow, folder, record
        self.times: dict[str, float] = {}

    @contextmanager
    def step(self, name: str):
        start = time.perf_counter()
        yield
        self.times[name] = round(time.perf_counter() - start, 2)
        self.record(f"{self.flow}: {name}", self.times[name])

    def save(self) -> None:
        path = self.folder / "flow_times.json"
        known = json.loads(path.read_text()) if path.exists() else {}
        known[self.flow] = self.times
        path.write_text(json.dumps(known, indent=1))


@pytest.fixture
def steps(request, shots_dir, record_property):
    times = StepTimes(request.node.name.removeprefix("test_"), shots_dir, record_property)
    yield times
    times.save()


def shot(viewer, qtbot, folder: Path, name: str) -> np.ndarray:
    """Screenshot of the whole window (docks included), as a person sees it."""
    qtbot.wait(150)
    image = viewer.screenshot(path=str(folder / f"{name}.png"), canvas_only=False, flash=False)
    assert image.std() > 0, f"{name}: blank screenshot"
    return image


def dock(viewer, name):
    """Dock a widget from the Plugins menu; returns the widget (napari gives it a viewer proxy)."""
    _, widget = viewer.window.add_plugin_dock_widget("napari-mmfuse", name)
    assert unwrap(widget.viewer) is viewer and widget.viewer is not viewer  # a proxy, as for a user
    return widget


def wait_idle(qtbot, widget, timeout=WAIT_MS):
    qtbot.waitUntil(lambda: widget.worker is None, timeout=timeout)


# ------------------------------------------------------------------------------- manual correction
def placement_error(moving, original_world, truth) -> float:
    """Mean distance (mm) between where the moving layer puts its voxels and where they belong.

    A moving voxel ``v`` shows the anatomy of fixed-world point ``T^-1(W_original v)``; the
    error is measured over a grid of voxels covering the head.
    """
    shape = np.asarray(moving.data.shape)
    grid = np.stack(np.meshgrid(*[np.linspace(0.2, 0.8, 5) * (s - 1) for s in shape], indexing="ij"), -1)
    index = np.c_[grid.reshape(-1, 3), np.ones(grid.size // 3)]
    belongs = (index @ original_world.T) @ np.linalg.inv(truth).T
    shown = index @ world_affine(moving).T
    return float(np.linalg.norm((shown - belongs)[:, :3], axis=1).mean())


def test_manual_correction_flow(make_napari_viewer, qtbot, shots_dir, steps):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    viewer.open_sample("napari-mmfuse", "misaligned_rigid")
    fixed, moving = viewer.layers[0], viewer.layers[1]
    truth = np.asarray(moving.metadata["ground_truth"]["fixed_to_moving"])
    original_world, fixed_world = world_affine(moving), world_affine(fixed)
    widget = dock(viewer, "Manual correction")
    assert widget.fixed.layer() == fixed and widget.moving.layer() == moving
    start_error = placement_error(moving, original_world, truth)
    assert start_error > 10.0
    shot(viewer, qtbot, shots_dir, "flow_manual_1_misaligned")

    # sliders: undo the translation roughly, as a user nudges the image into place
    with steps.step("sliders"):
        for control, offset in zip(widget.translation, truth[:3, 3], strict=True):
            control.spin.setValue(control.value() - round(float(offset)))
    after_sliders = placement_error(moving, original_world, truth)
    assert after_sliders < start_error

    # landmarks: click a fixed point, the moving layer becomes active, click its match there
    widget.add_points_button.click()
    fixed_points, moving_points = widget.fixed_points, widget.moving_points
    assert viewer.layers.selection.active is unwrap(fixed_points)
    rng = np.random.default_rng(0)
    centre = (world_affine(fixed) @ np.r_[(np.asarray(fixed.data.shape) - 1) / 2, 1.0])[:3]
    with steps.step("landmarks (4 pairs) and fit"):
        for offset in ([25, 0, 0], [0, 40, 0], [0, 0, 40], [-20, -30, -25]):
            point = centre + np.asarray(offset, float)
            fixed_points.add(point)
            assert viewer.layers.selection.active is unwrap(moving_points), "the moving landmarks were not made active"
            # its match clicked with ~1 mm of hand jitter; the layer's data are in the moving
            # image's original placement, where that anatomy sits at T(point)
            moving_points.add((truth @ np.r_[point, 1.0])[:3] + rng.normal(0, 1.0, 3))
            assert viewer.layers.selection.active is unwrap(fixed_points)
        assert widget.table.rowCount() == 4
        widget.fit_model.setCurrentText("rigid")
        widget.fit_button.click()
    after_landmarks = placement_error(moving, original_world, truth)
    assert after_landmarks < 3.0
    shot(viewer, qtbot, shots_dir, "flow_manual_2_landmarks")

    with steps.step("refine"):
        widget.refine_button.click()
        wait_idle(qtbot, widget)
    refined = placement_error(moving, original_world, truth)
    assert refined < 0.5, f"refine left {refined:.2f} mm"
    assert history_for(moving).labels[-1].startswith("refine")
    shot(viewer, qtbot, shots_dir, "flow_manual_3_refined")

    widget.undo_button.click()
    assert placement_error(moving, original_world, truth) == pytest.approx(after_landmarks, abs=1e-6)
    widget.redo_button.click()
    assert placement_error(moving, original_world, truth) == pytest.approx(refined, abs=1e-6)
    print(f"manual correction: {start_error:.1f} mm -> sliders {after_sliders:.1f} -> landmarks "
          f"{after_landmarks:.2f} -> refine {refined:.3f} mm")
    np.testing.assert_array_equal(world_affine(fixed), fixed_world)  # only the moving layer moved


# ------------------------------------------------------------------------------- segment, then explain
BRATS = DATA / "segmentation" / "brats2015_case"


def brats_strokes(tumour: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Strokes a user paints on five axial slices: 1 across the tumour, 2 around it, in the brain and in the air."""
    from scipy import ndimage
    from skimage.morphology import skeletonize

    strokes = np.zeros(tumour.shape, np.uint8)
    zs = np.nonzero(tumour.any(axis=(1, 2)))[0]
    for z in np.percentile(zs, [15, 32, 50, 68, 85]).astype(int):
        inner = ndimage.binary_erosion(tumour[z], iterations=3)
        ys, xs = np.nonzero(inner)
        if len(ys):
            row, column = int(np.median(ys)), int(np.median(xs))
            strokes[z, row][inner[row]] = 1
            strokes[z, :, column][inner[:, column]] = 1
        around = ndimage.binary_dilation(tumour[z], iterations=12) & ~ndimage.binary_dilation(tumour[z], iterations=9)
        strokes[z][skeletonize(around & brain[z])] = 2
        air = ndimage.binary_dilation(brain[z], iterations=8) & ~ndimage.binary_dilation(brain[z], iterations=6)
        strokes[z][skeletonize(air)] = 2
    return strokes


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.sum(a & b) / max(np.sum(a) + np.sum(b), 1))


@pytest.mark.timeout(1800)
@pytest.mark.skipif(not BRATS.is_dir(), reason="needs ../shared/data/segmentation/brats2015_case")
def test_segment_then_explain_flow(make_napari_viewer, qtbot, shots_dir, steps):
    from napari.layers import Labels

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    with steps.step("open the case"):
        for name in ("Flair_subtrMeanDivStd", "T1c_subtrMeanDivStd", "OTMultiClass", "brainmask"):
            viewer.open(str(BRATS / f"{name}.nii.gz"), plugin="napari-mmfuse")
    flair, t1c, truth_layer, brain_layer = (viewer.layers[n] for n in
                                            ("Flair_subtrMeanDivStd", "T1c_subtrMeanDivStd", "OTMultiClass", "brainmask"))
    assert isinstance(truth_layer, Labels) and isinstance(brain_layer, Labels)  # masks open as labels
    tumour, brain = np.asarray(truth_layer.data) > 0, np.asarray(brain_layer.data) > 0
    truth_layer.visible = brain_layer.visible = False
    strokes = viewer.add_labels(brats_strokes(tumour, brain), name="strokes", affine=world_affine(flair),
                                units=flair.units)

    segment = dock(viewer, "Segment")
    assert [layer.name for layer in segment.layers.checked()] == [flair.name, t1c.name]  # the visible images
    assert segment.scribbles.layer() == strokes  # the painted layer, not the masks read from files
    training_steps = int(os.environ.get("MMFUSE_FLOW_STEPS", 60))  # a short schedule (200 is the default)
    segment.steps.setValue(training_steps)
    with steps.step(f"train {training_steps} steps and segment"):
        qtbot.mouseClick(segment.train_button, Qt.LeftButton)
        wait_idle(qtbot, segment)
    result = viewer.layers[f"{flair.name} segmentation"]
    found = np.asarray(result.data) == 1
    score = dice(found, tumour)
    assert score > 0.5, f"tumour Dice {score:.3f}"
    np.testing.assert_allclose(world_affine(result), world_affine(flair))
    viewer.dims.set_point(0, float(world_affine(flair)[0, 3] + np.median(np.nonzero(tumour.any(axis=(1, 2)))[0])))
    shot(viewer, qtbot, shots_dir, "flow_segment_1_trained")

    explain = dock(viewer, "Explain")
    assert "no model" not in explain.model_label.text()  # Segment's model reached Explain's proxy
    assert [layer.name for layer in explain.layers.checked()] == [flair.name, t1c.name]
    assert explain.target.currentData() == 1  # the class of interest (the tumour, smaller than its surroundings)
    # Cancel: integrated gradients of the whole image, stopped once its progress moves; nothing is added
    explain.method.setCurrentIndex(explain.method.findData("ig"))
    before = len(viewer.layers)
    with steps.step("explain ig cancelled"):
        qtbot.mouseClick(explain.run_button, Qt.LeftButton)
        qtbot.waitUntil(lambda: explain.progress.value() >= 2, timeout=WAIT_MS)
        qtbot.mouseClick(explain.cancel_button, Qt.LeftButton)
        wait_idle(qtbot, explain, timeout=60_000)
    assert len(viewer.layers) == before and not explain.overlays
    strongest = {}
    # Grad-CAM of the whole image; integrated gradients (a pass per path point) of the segmented tumour
    for method, region in (("gradcam", None), ("ig", result)):
        explain.method.setCurrentIndex(explain.method.findData(method))
        if method == "ig":
            explain.path_points.setValue(8)  # a quick look (each path point is a pass per window)
        if region is not None:
            explain.region.setCurrentIndex(1)  # the selected label of a Labels layer
            explain.region_labels.set_layer(region)
            region.selected_label = 1
        seen = []
        with steps.step(f"explain {method}"):
            qtbot.mouseClick(explain.run_button, Qt.LeftButton)
            assert explain.worker is not None
            explain.worker.yielded.connect(seen.append)
            wait_idle(qtbot, explain)
        overlay = explain.overlays[-1 - 2]  # the map, then one map per modality
        assert overlay.metadata["mmfuse"]["method"] == method
        assert len({progress.done for progress in seen}) > 10, "the progress did not move"
        np.testing.assert_allclose(world_affine(overlay), world_affine(flair))
        values = np.asarray(overlay.data)
        assert values.shape == tumour.shape
        top = values >= np.quantile(values[brain], 0.99)
        strongest[method] = float(np.mean(tumour[top & brain]))
        chance = float(np.mean(tumour[brain]))
        assert strongest[method] > 2 * chance, f"{method}: {strongest[method]:.3f} of the top 1 % in the tumour"
        scores = explain.bars.scores
        assert len(scores) == 2 and np.all(np.isfinite(scores))
        shot(viewer, qtbot, shots_dir, f"flow_explain_{method}")
    print(f"segment+explain: Dice {score:.3f}; top 1 % in tumour {strongest} (chance {chance:.3f})")


# ------------------------------------------------------------------------------- open and click Fuse
HARVARD = DATA / "fusion" / "harvard" / "MRI_PET"
IXI = DATA / "registration" / "ixi002_t1_t2"


def metrics_table(widget) -> dict[str, float]:
    table = widget.metrics_table
    return {table.item(r, 0).text(): float(table.item(r, 1).text()) for r in range(table.rowCount())}


def click_fuse(viewer, widget, qtbot) -> object:
    """Click Fuse and wait for the result layer; returns it."""
    before = set(layer.name for layer in viewer.layers)
    qtbot.mouseClick(widget.fuse_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: widget.worker is None and widget.fuse_button.isEnabled(), timeout=WAIT_MS)
    added = [layer for layer in viewer.layers if layer.name not in before and layer.name.startswith("fused")]
    assert len(added) == 1, f"no fused layer ({[layer.name for layer in viewer.layers]})"
    return added[0]


@pytest.mark.skipif(not (HARVARD.is_dir() and IXI.is_dir()), reason="needs ../shared/data (Harvard, IXI)")
def test_open_and_fuse_flow(make_napari_viewer, qtbot, shots_dir, steps):
    from napari_mmfuse.core import fuse as core_fuse

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    widget = dock(viewer, "Fuse")
    widget.preview_check.setChecked(False)

    # a Harvard MRI / PET slice pair (PNG; the MRI is grey stored as RGB, the PET pseudo-colour)
    mri, pet = (viewer.open(str(HARVARD / kind / "11.png"), plugin="napari-mmfuse")[0] for kind in ("MRI", "PET"))
    assert not mri.rgb and pet.rgb
    with steps.step("fuse MRI/PET slice (click to result)"):
        fused = click_fuse(viewer, widget, qtbot)
    assert fused.name == "fused (colour)" and fused.rgb and fused.data.shape == (256, 256, 3)
    np.testing.assert_allclose(world_affine(fused), world_affine(mri))
    table = metrics_table(widget)
    assert table["Qabf"] > 0.5 and 0 < table["SSIM"] <= 2 and table["MI"] > 0
    for layer in (mri, pet):
        layer.visible = False
    shot(viewer, qtbot, shots_dir, "flow_fuse_1_mri_pet")

    # the IXI T1 and T2 volumes, each on its own grid (axis order, spacing); T1 is the reference
    for layer in list(viewer.layers):
        viewer.layers.remove(layer)
    t1, t2 = (viewer.open(str(IXI / f"hd_bet_IXI002-Guys-0828-{kind}.nii.gz"), plugin="napari-mmfuse")[0]
              for kind in ("T1", "T2"))
    assert original_data(t1).shape != original_data(t2).shape  # 2D views show them resliced (test_reslice)
    assert [layer.name for layer in widget.checked_layers()] == [t1.name, t2.name]
    with steps.step("fuse T1/T2 volumes (click to result)"):
        fused = click_fuse(viewer, widget, qtbot)
    assert fused.name == f"fused ({core_fuse.DEFAULT_METHOD})" and not fused.rgb
    assert original_data(fused).shape == original_data(t1).shape
    np.testing.assert_allclose(world_affine(fused), world_affine(t1), atol=1e-6)
    # inside the brain the fused volume is made of both sources (each resampled through its world affine):
    # a linear fit on the two explains most of it, with a positive share of each
    sources = core_fuse.resample_to_reference([original_data(t1), original_data(t2)], [world_affine(t1), world_affine(t2)])
    brain = np.logical_and.reduce([source > np.percentile(source, 60) for source in sources])
    design = np.c_[[source[brain] for source in sources] + [np.ones(int(brain.sum()))]].T
    values = np.asarray(original_data(fused))[brain]
    coefficients, *_ = np.linalg.lstsq(design, values, rcond=None)
    explained = 1 - np.var(values - design @ coefficients) / np.var(values)
    print(f"fused T1/T2: R^2 {explained:.3f} on the sources, shares {coefficients[:2]}")
    assert explained > 0.5 and np.all(coefficients[:2] > 0.1)
    table = metrics_table(widget)
    assert table["Qabf"] > 0.3 and table["MI"] > 0
    for layer in (t1, t2):
        layer.visible = False
    shot(viewer, qtbot, shots_dir, "flow_fuse_2_t1_t2")


# ------------------------------------------------------------------------------- one subject by hand, then the cohort
def test_click_through_one_subject_then_run_the_cohort_flow(make_napari_viewer, qtbot, shots_dir, steps, tmp_path):
    """Denoise and fuse one phantom subject in the viewer, save the chain as a recipe, run it on the
    cohort with a local Dask cluster, and open another subject's outputs from the Cohort widget."""
    from conftest import write_phantom_subject

    from napari_mmfuse.cli import main

    study = tmp_path / "study"
    for index in range(3):
        write_phantom_subject(study / f"sub-0{index + 1}", index)
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    t1, ct = (viewer.open(str(study / "sub-01" / f"sub-01_{kind}.nii.gz"), plugin="napari-mmfuse")[0]
              for kind in ("t1", "ct"))
    denoise = dock(viewer, "Denoise & prepare")
    with steps.step("denoise T1 (click to result)"):
        denoise.set_layer(t1)
        denoise.set_method("gaussian")
        denoise.forms["gaussian"].set_values({"sigma": 1.5})
        qtbot.mouseClick(denoise.run_button, Qt.LeftButton)
        wait_idle(qtbot, denoise)
    clean = viewer.layers["sub-01_t1 gaussian"]
    fuse = dock(viewer, "Fuse")
    fuse.preview_check.setChecked(False)
    assert fuse.checked_layers() and "sub-01_t1 preview" not in [layer.name for layer in fuse.checked_layers()]
    fuse.set_checked([clean.name, ct.name])
    fuse.set_reference(clean)
    fuse.method_combo.setCurrentText("average")
    with steps.step("fuse denoised T1 and CT (click to result)"):
        fused = click_fuse(viewer, fuse, qtbot)

    provenance = dock(viewer, "Provenance")
    viewer.layers.selection = {fused}
    recipe = provenance.save_recipe(tmp_path / "clicked.yaml")
    text = recipe.read_text()
    assert "denoise/gaussian" in text and "fuse/average" in text and "*_t1.nii.gz" in text
    with steps.step("mmfuse run on 3 subjects (2 workers)"):
        assert main(["run", str(recipe), "--subjects", str(study / "sub-*"), "-o", str(tmp_path / "out")]) == 0

    viewer.window.remove_dock_widget("all")  # the Cohort widget alone, as a user checking a batch
    cohort = dock(viewer, "Cohort")
    rows = cohort.load(tmp_path / "out")
    assert [row["status"] for row in rows] == ["done"] * 3
    # the subject clicked through is recomputed exactly by the cohort run
    outputs = sorted(p.name for p in cohort.outputs_of("sub-01"))
    assert outputs == ["average.nii.gz", "gaussian.nii.gz"], outputs
    layers = cohort.open_subject("sub-01")
    again = next(layer for layer in layers if layer.name == "sub-01 average")
    np.testing.assert_allclose(np.asarray(again.data), np.asarray(fused.data), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(world_affine(again), world_affine(fused))
    cohort.table.selectRow(1)
    others = cohort.open_subject("sub-02")
    assert len(others) == 2 and all(np.allclose(world_affine(layer), world_affine(t1)) for layer in others)
    for layer in viewer.layers:
        layer.visible = layer in others[-1:]
    shot(viewer, qtbot, shots_dir, "flow_cohort_opened")
