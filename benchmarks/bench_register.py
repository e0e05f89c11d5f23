"""Registration benchmark: napari-mmfuse against SimpleITK and elastix on the same pairs.

One run prints one table. Cases:

* head phantom (sample_data.misaligned_phantom), T1 fixed -> T2 moving, with exact ground
  truth: rigid, affine and deformable. Error = |T_est(p) - T_true(p)| over all fixed voxel
  centres, in mm (the phantom's voxels are 1.5 mm).
* IXI002 T1 <-> T2 (skull-stripped): the T2's affine gets a known rigid perturbation P
  (8 deg, 10 mm). The pair's own residual misalignment is unknown, so each method is
  scored on recovering P: error = |T'(p) - P^-1 T0(p)| over the T1 brain mask, with T0 the
  same method's result on the unperturbed pair.
* antspy r16 -> r64 (different subjects, no ground truth): MI after registration
  (our metric_value on each method's transform) and time.
* BIRL/ANHIR histology pairs with landmarks: rTRE = |T(target lm) - source lm| / target
  image diagonal (mean and max over landmarks).

Usage::

    python benchmarks/bench_register.py [--quick] [--threads N] [--no-elastix]
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402

from napari_mmfuse.core import space  # noqa: E402
from napari_mmfuse.core.register import metric_value, register, to_luminance, transform_from_parameters  # noqa: E402
from napari_mmfuse.io import read  # noqa: E402
from napari_mmfuse.io.transforms import read_itk_transform  # noqa: E402

DATA = Path("/work/shared/data/registration")


# ----------------------------------------------------------------------------- helpers


def to_sitk(data: np.ndarray, affine: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(data, np.float32))
    spacing, origin, direction = space.itk_from_affine(affine)
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(origin.tolist())
    image.SetDirection(direction.ravel().tolist())
    return image


def to_itk(data: np.ndarray, affine: np.ndarray):
    import itk

    image = itk.GetImageFromArray(np.ascontiguousarray(data, np.float32))
    spacing, origin, direction = space.itk_from_affine(affine)
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(origin.tolist())
    image.SetDirection(itk.matrix_from_array(np.ascontiguousarray(direction)))
    return image


def matrix_of_sitk(transform: sitk.Transform) -> np.ndarray:
    """napari-order matrix of a linear SimpleITK transform (through our .tfm reader)."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "t.tfm")
        sitk.WriteTransform(transform, path)
        return read_itk_transform(path)


def grid_points(shape, affine, mask=None) -> np.ndarray:
    index = np.indices(shape).reshape(len(shape), -1).T
    if mask is not None:
        index = index[np.asarray(mask).reshape(-1)]
    return space.voxel_to_world(affine, index)


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    n = points.shape[1]
    return points @ matrix[:n, :n].T + matrix[:n, n]


def errors(estimate: np.ndarray, truth: np.ndarray, points: np.ndarray) -> tuple[float, float]:
    distance = np.linalg.norm(apply(estimate, points) - apply(truth, points), axis=1)
    return float(distance.mean()), float(distance.max())


# ----------------------------------------------------------------------------- methods


def ours(fixed, fixed_affine, moving, moving_affine, model):
    start = time.perf_counter()
    result = register(fixed, fixed_affine, moving, moving_affine, model=model, metric="mi")
    return result, time.perf_counter() - start


def simpleitk_linear(fixed, fixed_affine, moving, moving_affine, model, *, init="moments"):
    """Mattes MI (50 bins, 10 % random samples), regular step gradient descent, 3 levels.

    ``init``: "moments" (centres of mass) or "geometry" (image centres; for slides,
    whose bright background defeats the moments).
    """
    f, m = to_sitk(fixed, fixed_affine), to_sitk(moving, moving_affine)
    n = fixed.ndim
    base = {
        ("rigid", 3): sitk.Euler3DTransform(),
        ("rigid", 2): sitk.Euler2DTransform(),
        ("affine", 3): sitk.AffineTransform(3),
        ("affine", 2): sitk.AffineTransform(2),
    }[(model, n)]
    start = time.perf_counter()
    how = {"moments": sitk.CenteredTransformInitializerFilter.MOMENTS, "geometry": sitk.CenteredTransformInitializerFilter.GEOMETRY}[init]
    initial = sitk.CenteredTransformInitializer(f, m, base, how)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.1, seed=1)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-4, numberOfIterations=300, relaxationFactor=0.5, gradientMagnitudeTolerance=1e-8
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([2, 1, 0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetInitialTransform(initial, inPlace=False)
    transform = method.Execute(f, m)
    elapsed = time.perf_counter() - start
    return matrix_of_sitk(transform), elapsed


def elastix(fixed, fixed_affine, moving, moving_affine, model):
    """elastix defaults for the model (Mattes MI, ASGD, 3 levels), geometric-centre initialisation.

    Returns (matrix or None, total displacement field (*fixed_shape, n) or None, seconds).
    """
    import itk

    f, m = to_itk(fixed, fixed_affine), to_itk(moving, moving_affine)
    parameters = itk.ParameterObject.New()
    linear = parameters.GetDefaultParameterMap("affine" if model in ("affine", "deformable") else "rigid", 3)
    linear["AutomaticTransformInitialization"] = ["true"]
    parameters.AddParameterMap(linear)
    if model == "deformable":
        parameters.AddParameterMap(parameters.GetDefaultParameterMap("bspline", 3))
    start = time.perf_counter()
    _, result = itk.elastix_registration_method(f, m, parameter_object=parameters, log_to_console=False)
    elapsed = time.perf_counter() - start
    n = fixed.ndim
    if model == "deformable":
        with tempfile.TemporaryDirectory() as scratch:  # transformix writes its field file there
            field = np.asarray(itk.transformix_deformation_field(m, result, output_directory=scratch))[..., ::-1]
        return None, field, elapsed
    values = [float(v) for v in result.GetParameter(0, "TransformParameters")]
    center = [float(v) for v in result.GetParameter(0, "CenterOfRotationPoint")]
    if model == "rigid" and n == 3:
        transform = sitk.Euler3DTransform(center, *values[:3], values[3:])
    elif model == "rigid":
        transform = sitk.Euler2DTransform(center, values[0], values[1:])
    else:
        transform = sitk.AffineTransform(values[: n * n], values[n * n :], center)
    return matrix_of_sitk(transform), None, elapsed


# ----------------------------------------------------------------------------- cases


def phantom_cases(rows, methods, kinds):
    from napari_mmfuse.sample_data import misaligned_phantom

    for kind in kinds:
        fixed_record, moving_record = misaligned_phantom(kind)[:2]
        fixed, moving = np.asarray(fixed_record.data, np.float32), np.asarray(moving_record.data, np.float32)
        fa, ma = fixed_record.affine, moving_record.affine
        truth_info = moving_record.metadata["ground_truth"]
        truth = np.asarray(truth_info["fixed_to_moving"])
        points = grid_points(fixed.shape, fa)
        voxel = float(space.spacing_of(fa).mean())
        case = f"phantom {kind} T1->T2 {fixed.shape}"
        if kind != "deformable":
            result, seconds = ours(fixed, fa, moving, ma, kind)
            rows.append((case, "ours", kind, *errors(result.transform, truth, points), "mm", seconds, voxel))
            if "sitk" in methods:
                matrix, seconds = simpleitk_linear(fixed, fa, moving, ma, kind)
                rows.append((case, "SimpleITK", kind, *errors(matrix, truth, points), "mm", seconds, voxel))
            if "elastix" in methods:
                matrix, _, seconds = elastix(fixed, fa, moving, ma, kind)
                rows.append((case, "elastix", kind, *errors(matrix, truth, points), "mm", seconds, voxel))
            continue
        true_total = np.asarray(truth_info["displacement_mm"], np.float64).reshape(-1, 3)
        result, seconds = ours(fixed, fa, moving, ma, "deformable")
        mapped = apply(result.transform, points + result.displacement.reshape(-1, 3))
        distance = np.linalg.norm(mapped - points - true_total, axis=1)
        folding = f"folding {100 * result.folding_fraction:.3f} %"
        rows.append((case, "ours", "deformable", distance.mean(), distance.max(), "mm", seconds, voxel, folding))
        affine_only = np.linalg.norm(apply(result.transform, points) - points - true_total, axis=1)
        rows.append((case, "ours (its affine stage only)", "affine", affine_only.mean(), affine_only.max(), "mm", float("nan"), voxel))
        if "elastix" in methods:
            _, field, seconds = elastix(fixed, fa, moving, ma, "deformable")
            distance = np.linalg.norm(field.reshape(-1, 3) - true_total, axis=1)
            jacobian = _jacobian_folding(field, fa)
            rows.append((case, "elastix", "affine+bspline", distance.mean(), distance.max(), "mm", seconds, voxel, f"folding {100 * jacobian:.3f} %"))


def _jacobian_folding(total_field: np.ndarray, affine: np.ndarray) -> float:
    from napari_mmfuse.core.register import jacobian_determinant

    return float(np.mean(jacobian_determinant(total_field, affine) <= 0))


def ixi_case(rows, methods):
    folder = DATA / "ixi002_t1_t2"
    t1 = read(folder / "hd_bet_IXI002-Guys-0828-T1.nii.gz")[0]
    t2 = read(folder / "hd_bet_IXI002-Guys-0828-T2.nii.gz")[0]
    mask = np.asarray(read(folder / "hd_bet_mask_IXI002-Guys-0828-T1.nii.gz")[0].data) > 0
    fixed, moving = np.asarray(t1.data, np.float32), np.asarray(t2.data, np.float32)
    fa, ma = t1.affine, t2.affine
    center = np.mean(grid_points(fixed.shape, fa, mask), axis=0)
    perturbation = transform_from_parameters(ndim=3, rotation_deg=(5.0, -4.0, 4.5), translation=(6.0, -5.0, 6.0), center=center)
    perturbed_affine = np.linalg.inv(perturbation) @ ma  # T2 world moved by P^-1
    points = grid_points(fixed.shape, fa, mask)[::50]
    voxel = float(space.spacing_of(fa).mean())
    case = f"IXI002 T1->T2 rigid, perturbation {_angle(perturbation):.1f} deg / {np.linalg.norm(perturbation[:3, 3] + perturbation[:3, :3] @ center - center):.1f} mm"
    runners = {"ours": lambda a: (lambda r: (r[0].transform, r[1]))(ours(fixed, fa, moving, a, "rigid"))}
    if "sitk" in methods:
        runners["SimpleITK"] = lambda a: simpleitk_linear(fixed, fa, moving, a, "rigid")
    if "elastix" in methods:
        runners["elastix"] = lambda a: (lambda r: (r[0], r[2]))(elastix(fixed, fa, moving, a, "rigid"))
    for name, run in runners.items():
        reference, _ = run(ma)
        estimate, seconds = run(perturbed_affine)
        rows.append((case, name, "rigid", *errors(estimate, np.linalg.inv(perturbation) @ reference, points), "mm", seconds, voxel))


def _angle(transform: np.ndarray) -> float:
    rotation = transform[:3, :3]
    return float(np.degrees(np.arccos(np.clip((np.trace(rotation) - 1) / 2, -1, 1))))


def antspy_case(rows, methods):
    fixed_record = read(DATA / "antspy" / "r16slice.jpg")[0]
    moving_record = read(DATA / "antspy" / "r64slice.jpg")[0]
    fixed = np.asarray(fixed_record.data, np.float32)
    moving = np.asarray(moving_record.data, np.float32)
    if fixed_record.rgb:
        fixed, moving = to_luminance(fixed), to_luminance(moving)
    fa, ma = fixed_record.affine, moving_record.affine
    case = "antspy r16->r64 2D (no truth: MI after; before %.3f)" % metric_value(fixed, fa, moving, ma)
    result, seconds = ours(fixed, fa, moving, ma, "affine")
    rows.append((case, "ours", "affine", result.metric_after, float("nan"), "MI", seconds, 1.0))
    if "sitk" in methods:
        matrix, seconds = simpleitk_linear(fixed, fa, moving, ma, "affine")
        rows.append((case, "SimpleITK", "affine", metric_value(fixed, fa, moving, ma, transform=matrix), float("nan"), "MI", seconds, 1.0))
    if "elastix" in methods:
        matrix, _, seconds = elastix(fixed, fa, moving, ma, "affine")
        rows.append((case, "elastix", "affine", metric_value(fixed, fa, moving, ma, transform=matrix), float("nan"), "MI", seconds, 1.0))


def _landmarks(path: Path) -> np.ndarray:
    """BIRL CSV (index, X, Y in pixels) -> napari-order (row, col) world points."""
    with open(path) as handle:
        rows = list(csv.reader(handle))[1:]
    return np.array([[float(r[2]), float(r[1])] for r in rows])


def histology_cases(rows, methods, quick: bool):
    folder = DATA / "histology"
    with open(folder / "pairs-imgs-lnds_mix.csv") as handle:
        pairs = list(csv.DictReader(handle))
    if quick:
        pairs = pairs[:1]
    for pair in pairs:
        paths = {k: folder / pair[k].replace("data-images/", "") for k in pair}
        missing = [p.name for p in paths.values() if not p.is_file()]
        if missing:
            print(f"histology pair skipped, files missing from the data snapshot: {', '.join(missing)}")
            continue
        target = read(paths["Target image"])[0]
        source = read(paths["Source image"])[0]
        fixed = to_luminance(np.asarray(target.data)) if target.rgb else np.asarray(target.data, np.float32)
        moving = to_luminance(np.asarray(source.data)) if source.rgb else np.asarray(source.data, np.float32)
        fixed_points = _landmarks(paths["Target landmarks"])
        moving_points = _landmarks(paths["Source landmarks"])
        common = min(len(fixed_points), len(moving_points))  # as ANHIR: pairs present in both
        fixed_points, moving_points = fixed_points[:common], moving_points[:common]
        diagonal = float(np.hypot(*fixed.shape))
        case = f"histology {paths['Source image'].stem} -> {paths['Target image'].stem} (rTRE)"

        def rtre(matrix):
            distance = np.linalg.norm(apply(matrix, fixed_points) - moving_points, axis=1) / diagonal
            return float(distance.mean()), float(distance.max())

        rows.append((case, "identity (before)", "-", *rtre(np.eye(3)), "rTRE", float("nan"), 1.0))
        result, seconds = ours(fixed, target.affine, moving, source.affine, "affine")
        rows.append((case, "ours", "affine", *rtre(result.transform), "rTRE", seconds, 1.0))
        if "sitk" in methods:
            matrix, seconds = simpleitk_linear(fixed, target.affine, moving, source.affine, "affine", init="geometry")
            rows.append((case, "SimpleITK", "affine", *rtre(matrix), "rTRE", seconds, 1.0))
        if "elastix" in methods:
            matrix, _, seconds = elastix(fixed, target.affine, moving, source.affine, "affine")
            rows.append((case, "elastix", "affine", *rtre(matrix), "rTRE", seconds, 1.0))


# ----------------------------------------------------------------------------- table


class Rows(list):
    """Table rows; each one is echoed to stderr as it arrives, so long runs show progress."""

    def append(self, row) -> None:
        print("  " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row), file=sys.stderr, flush=True)
        super().append(row)


def print_table(rows) -> None:
    print()
    print(f"{'case':64s} {'method':30s} {'model':15s} {'mean err':>10s} {'max err':>10s} {'unit':5s} {'mean/vox':>8s} {'time s':>8s} {'t/SITK':>7s}  notes")
    sitk_time = {r[0]: r[6] for r in rows if r[1] == "SimpleITK"}
    for row in rows:
        case, method, model, mean, largest, unit, seconds, voxel = row[:8]
        notes = row[8] if len(row) > 8 else ""
        in_voxels = f"{mean / voxel:8.3f}" if unit == "mm" else f"{'':8s}"
        ratio = f"{seconds / sitk_time[case]:7.2f}" if method == "ours" and case in sitk_time else f"{'':7s}"
        print(f"{case:64s} {method:30s} {model:15s} {mean:10.4f} {largest:10.4f} {unit:5s} {in_voxels} {seconds:8.2f} {ratio}  {notes}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="phantom rigid/affine/deformable, antspy and one histology pair")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for torch, SimpleITK and elastix")
    parser.add_argument("--no-elastix", action="store_true", help="skip elastix even when itk-elastix is installed")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    methods = {"sitk"}
    if not args.no_elastix:
        try:
            import itk

            itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(args.threads)
            methods.add("elastix")
        except ImportError:
            print("itk-elastix is not installed: elastix rows skipped")
    print(f"threads {args.threads}, torch {torch.__version__}, SimpleITK {sitk.Version_VersionString()}, device cpu")
    rows = Rows()
    phantom_cases(rows, methods, ("rigid", "affine", "deformable"))
    antspy_case(rows, methods)
    histology_cases(rows, methods, args.quick)
    if not args.quick:
        ixi_case(rows, methods)
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
