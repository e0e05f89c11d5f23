"""World-resliced 2D display on IXI T1 + T2: slice-change latency and the 2D overlay error.

Usage (needs a display for the viewer part: ``xvfb-run -a`` on a headless machine)::

    PYTHONPATH=src xvfb-run -a python benchmarks/bench_reslice.py [--data DIR] [--steps N]

Latency
    * planes: time to produce the displayed plane of both T1 and T2 (each oblique, ~7 deg in
      opposite senses) when the slider moves, for each slider axis (cold: every plane new);
    * viewer: a real napari viewer (shown), time from ``dims.set_current_step`` until the
      canvas has been drawn (``processEvents`` + a synchronous ``canvas.native.repaint``), with
      the resliced display on, and off (napari slicing the plain arrays) on the same machine;
      each state is measured twice and the second round reported (the first draws compile shaders).
    The resampling is SciPy ``ndimage.affine_transform`` (one thread; torch is not used).

Overlay error in 2D
    Axial planes of the display grid (world axis 0) through the brain; the displayed T2
    silhouette (HD-BET mask, read from what the viewer draws: the layer's 2D slice placed
    by its 2D data -> world transform, nearest pixel) is compared with
    * SimpleITK ``Resample`` of the T2 mask onto the display grid (nearest): exactness of the display;
    * SimpleITK ``Resample`` of the T1 mask onto the same grid: the T1/T2 overlay a user judges.
    Dice pooled over the planes, with the resliced display on and off (napari's untilted slices).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

DATA = Path("/work/shared/data/registration/ixi002_t1_t2")
NAMES = ("IXI002-Guys-0828-T1", "IXI002-Guys-0828-T2", "mask_IXI002-Guys-0828-T1", "mask_IXI002-Guys-0828-T2")


def _sitk_onto_grid(data, affine, shape, grid):
    """SimpleITK nearest-neighbour resampling of (data, napari-order affine) onto a napari-order grid."""
    import SimpleITK as sitk

    from napari_mmfuse.core.space import itk_from_affine

    def image(array, matrix):
        out = sitk.GetImageFromArray(np.ascontiguousarray(array))  # numpy (z, y, x) = ITK (x, y, z) reversed
        spacing, origin, direction = itk_from_affine(matrix)
        out.SetSpacing([float(s) for s in spacing])
        out.SetOrigin([float(o) for o in origin])
        out.SetDirection([float(d) for d in np.asarray(direction).ravel()])
        return out

    reference = image(np.zeros(shape, np.uint8), grid)
    moved = sitk.Resample(image(data.astype(np.uint8), affine), reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(moved)


def _dice(a, b) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return float(2 * np.sum(a & b) / max(np.sum(a) + np.sum(b), 1))


def _displayed(layer, viewer, points):
    """What the canvas shows of ``layer`` at world points (shape (..., 3)) of the displayed plane."""
    raw = np.asarray(layer._slice.image.raw)
    displayed = list(viewer.dims.displayed)
    to_world = layer._transforms.simplified.set_slice(displayed)
    index = np.rint(to_world.inverse(points[..., displayed].reshape(-1, 2))).astype(int)
    inside = np.all((index >= 0) & (index < raw.shape), axis=1)
    out = np.zeros(len(index), raw.dtype)
    out[inside] = raw[index[inside, 0], index[inside, 1]]
    return out.reshape(points.shape[:-1])


def plane_latency(records, steps: int) -> None:
    from napari_mmfuse.core import reslice

    (t1, a1), (t2, a2) = records[:2]
    shape, grid = reslice.display_grid(t1.shape, a1)
    print(f"display grid {shape} (T1 {t1.shape}, T2 {t2.shape}); {steps} new planes per axis")
    print("| slider axis | plane | median ms (T1+T2) | max ms |\n|---|---|---|---|")
    rng = np.random.default_rng(0)
    for axis in range(3):
        views = [reslice.ReslicedVolume(d, a, shape, grid, order=1) for d, a in ((t1, a1), (t2, a2))]
        times = []
        for index in rng.choice(shape[axis], size=min(steps, shape[axis]), replace=False):
            key = [slice(None)] * 3
            key[axis] = int(index)
            start = time.perf_counter()
            for view in views:
                view[tuple(key)]
            times.append(1000 * (time.perf_counter() - start))
        plane = "x".join(str(n) for a, n in enumerate(shape) if a != axis)
        print(f"| {axis} | {plane} | {statistics.median(times):.1f} | {max(times):.1f} |")


def viewer_run(data: Path, steps: int) -> None:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_mmfuse.widgets._layers import original_data, world_affine
    from napari_mmfuse.widgets._reslice import reslice_display

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1200, 900)
    display = reslice_display(viewer)
    layers = []
    for name in NAMES:
        layers += viewer.open(str(data / f"hd_bet_{name}.nii.gz"), plugin="napari-mmfuse")
    mask1, mask2 = layers[2:]
    shape, grid = display.grid
    canvas = viewer.window._qt_viewer.canvas.native
    app = QApplication.instance()
    truth = {
        "T2 mask (SimpleITK)": _sitk_onto_grid(original_data(mask2), world_affine(mask2), shape, grid),
        "T1 mask (SimpleITK)": _sitk_onto_grid(original_data(mask1), world_affine(mask1), shape, grid),
    }
    planes = [int(f * shape[0]) for f in np.linspace(0.4, 0.75, 8)]
    results = {}
    for state in ("on", "off", "on", "off"):  # the first round warms up (shaders, caches); the second is reported
        display.set_enabled(state == "on")
        app.processEvents()
        sliced, drawn = [], []
        for axis in range(3):
            for index in np.linspace(0.3, 0.7, steps).astype(float):
                start = time.perf_counter()
                viewer.dims.set_current_step(axis, int(index * viewer.dims.nsteps[axis]))  # slices synchronously
                sliced.append(1000 * (time.perf_counter() - start))
                app.processEvents()
                canvas.repaint()
                drawn.append(1000 * (time.perf_counter() - start))
        shown = []
        for index in planes:
            viewer.dims.set_point(0, float(grid[0, 0] * index + grid[0, 3]))
            ijk = np.stack(np.meshgrid([index], np.arange(shape[1]), np.arange(shape[2]), indexing="ij"), -1)[0]
            points = ijk @ grid[:3, :3].T + grid[:3, 3]
            shown.append(_displayed(mask2, viewer, points))
        shown = np.stack(shown)
        dice = {name: _dice(shown, t[planes]) for name, t in truth.items()}
        results[state] = (statistics.median(sliced), max(sliced), statistics.median(drawn), max(drawn), dice)
    print("\nreal viewer (4 layers: T1, T2, both masks), slider step -> layers sliced, and -> canvas drawn:")
    print("| resliced display | sliced median / max ms | drawn median / max ms | Dice vs T2 mask (SimpleITK) "
          "| Dice vs T1 mask (SimpleITK) |")
    print("|---|---|---|---|---|")
    for state, (median, worst, draw_median, draw_worst, dice) in results.items():
        print(f"| {state} | {median:.1f} / {worst:.1f} | {draw_median:.1f} / {draw_worst:.1f} "
              f"| {dice['T2 mask (SimpleITK)']:.4f} | {dice['T1 mask (SimpleITK)']:.4f} |")
    viewer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--steps", type=int, default=20, help="slider positions per axis")
    parser.add_argument("--skip-viewer", action="store_true", help="only the plane timings (no display needed)")
    args = parser.parse_args()
    if not (args.data / f"hd_bet_{NAMES[0]}.nii.gz").exists():
        raise SystemExit(f"IXI T1/T2 not found in {args.data}")
    from napari_mmfuse.io import read

    records = [read(args.data / f"hd_bet_{name}.nii.gz")[0] for name in NAMES]
    plane_latency([(r.data, r.affine) for r in records], args.steps)
    if not args.skip_viewer:
        viewer_run(args.data, args.steps)


if __name__ == "__main__":
    main()
