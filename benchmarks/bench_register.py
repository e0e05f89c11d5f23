"""Registration benchmark: napari-mmfuse against SimpleITK and elastix on the same pairs.

One run prints one table. Cases:

* head phantom (sample_data.misaligned_phantom), T1 fixed -> T2 moving, with exact ground
  truth: rigid, affine and deformable. Error = |T_est(p) - T_true(p)| over all fixed voxel
  centres, in mm (the phantom's voxels are 1.5 mm).
* IXI002 T1 <-> T2 (skull-stripped): the T2's affine gets a known rigid perturbation P
  (8 deg, 10 mm). The pair's own residual misalignment is unknown, so each method is
  scored on recovering P: error = |T'(p) - P^-1 T0(p)| over the T1 brain mask, with T0 the
  same method's result on the unperturbed pair.
* head160 (``--case head160``, issue 18's rigid case): 160x192x224 voxels of 1 mm centred on
  the brain. Fixed: the IXI002 T1 resampled onto the grid. Moving: a T2-like image made from
  the same T1 (inside the brain ``(1 - t) ** 1.5`` of the T1 scaled to [0, 1] by its 99th
  percentile, so CSF is bright and white matter dark; background stays dark; a 15 % linear
  bias field and Gaussian noise), placed in world moved by a known rigid P^-1 (4.9 deg,
  9.3 mm) and resampled from the T1's own oblique grid onto the grid, so the truth is exactly
  P^-1 and no lattice lines up. Error = |T(p) - P^-1(p)| over the brain mask. Ours runs
  through ``pipeline.run("register", "rigid", ...)`` with the operation's defaults (what
  ``mmfuse register`` calls; its time includes resampling the moving image); SimpleITK is
  the rigid stage below. Each method runs ``--repeat`` times, interleaved; medians reported.
* antspy r16 -> r64 (different subjects, no ground truth): MI after registration
  (our metric_value on each method's transform) and time.
* BIRL/ANHIR histology pairs with landmarks: rTRE = |T(target lm) - source lm| / target
  image diagonal (mean and max over landmarks). Every pair of the cover table whose files are
  in the data snapshot runs (``--quick``: the first one); missing pairs are reported and skipped.

The baselines are configured once, the same way for every case (nothing is tuned per case or
against the ground truth):

SimpleITK (Mattes MI, 50 bins, 10 % random samples with a fixed seed, linear interpolation;
regular step gradient descent, optimiser scales from physical shift, learning rate estimated
every iteration for a largest voxel motion of 1 voxel per step, relaxation 0.8, minimum step
1e-4 voxel, at most 300 iterations per level; 3-level pyramid, shrink [4, 2, 1], smoothing
[2, 1, 0] voxels):

1. centring: the moments of |image - background| (background = median of the border voxels),
   so volumes centre on the head and bright-field slides on the tissue, not on the glass;
2. 2D only: an exhaustive search of Mattes MI at 1/4 resolution over rotations every 10 degrees
   (full turn) and shifts every 1/32 of the image extent up to +-1/8 (slides may be mounted at
   any angle; a rotation-only sweep is not enough: on a rectangular slide the overlap alone
   makes a 90 degree turn look best);
3. a rigid stage (versor rigid in 3D, Euler in 2D);
4. for affine cases, an affine stage that starts from the rigid result (matrix, translation
   and centre), with the same metric, optimiser and pyramid.

elastix (itk-elastix): a rigid (Euler) map, then an affine map (then a B-spline map for the
deformable phantom), elastix composing them. Each map is elastix's default for the transform
(Mattes MI, adaptive stochastic gradient descent, random samples drawn anew every iteration)
with 4 resolutions, centre-of-gravity initialisation on the first map, and at most 500 / 1000 /
500 iterations per resolution (rigid / affine / B-spline). ``GetDefaultParameterMap(name, k)``
takes k as the number of resolutions; the image dimension (2 or 3) comes from the images.

Times are wall-clock seconds of the registration call alone (image conversion excluded), with
the thread count of ``--threads``; napari_mmfuse is imported before torch, as ``mmfuse`` does, so
torch's OpenMP threads sleep when idle (``OMP_WAIT_POLICY=PASSIVE``, see core/threads.py); "t/SITK" is ours / SimpleITK on the same case.

Usage::

    python benchmarks/bench_register.py [--quick] [--threads N] [--no-elastix] [--case head160 [--repeat 3]]
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

import napari_mmfuse  # noqa: E402  first, as in mmfuse: sets OMP_WAIT_POLICY=PASSIVE before torch loads libgomp
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
    """napari-mmfuse with its defaults and Mattes-style MI; returns (RegResult, seconds)."""
    start = time.perf_counter()
    result = register(fixed, fixed_affine, moving, moving_affine, model=model, metric="mi")
    return result, time.perf_counter() - start


def _sitk_mattes_rsgd(voxel: float) -> sitk.ImageRegistrationMethod:
    """One SimpleITK stage: Mattes MI, regular step gradient descent, 3-level pyramid.

    The learning rate is re-estimated every iteration so that no voxel moves more than
    ``voxel`` (the fixed image's mean spacing) in one step. A fixed learning rate is not
    enough: the optimiser divides the gradient by the physical-shift scales (lever arm
    squared), so a step that is all matrix or rotation, as happens close to the optimum,
    moves voxels by the learning rate times the lever arm and throws an affine stage off.
    """
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.1, seed=1)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0,
        minStep=1e-4 * voxel,
        numberOfIterations=300,
        relaxationFactor=0.8,
        gradientMagnitudeTolerance=1e-8,
        estimateLearningRate=method.EachIteration,
        maximumStepSizeInPhysicalUnits=voxel,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([2, 1, 0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return method


def _foreground_weight(image: sitk.Image) -> sitk.Image:
    """|image - background|, background = median of the border voxels: the mass whose moments centre the object.

    Dark-background volumes keep their intensities; bright-field slides (white glass) get
    their tissue as the mass instead of the glass, which would centre every slide on its frame.
    """
    array = sitk.GetArrayViewFromImage(image)
    border = np.concatenate([np.take(array, index, axis=axis).ravel() for axis in range(array.ndim) for index in (0, -1)])
    weight = sitk.GetImageFromArray(np.abs(array - np.median(border)).astype(np.float32))
    weight.CopyInformation(image)
    return weight


def _sitk_coarse_search(f: sitk.Image, m: sitk.Image, start: sitk.Euler2DTransform) -> sitk.Euler2DTransform:
    """Best rigid start on a grid around ``start``, Mattes MI at 1/4 resolution (2D only).

    Rotations every 10 degrees over the full turn, translations every 1/32 of the fixed
    image's extent up to +-1/8 of it along each axis: 37 x 9 x 9 evaluations.
    """
    extent = float(min(np.array(f.GetSize()) * np.array(f.GetSpacing())))
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.25, seed=1)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsExhaustive(numberOfSteps=[18, 4, 4])
    method.SetOptimizerScales([np.pi / 18, extent / 32, extent / 32])
    method.SetShrinkFactorsPerLevel([4])
    method.SetSmoothingSigmasPerLevel([2])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    best = sitk.Euler2DTransform(start)
    method.SetInitialTransform(best, inPlace=True)  # the exhaustive optimiser leaves the best grid point in it
    method.Execute(f, m)
    return best


def simpleitk_linear(fixed, fixed_affine, moving, moving_affine, model):
    """SimpleITK, rigid then (for ``model="affine"``) affine; see the module docstring.

    Returns (napari-order matrix, seconds).
    """
    f, m = to_sitk(fixed, fixed_affine), to_sitk(moving, moving_affine)
    n = fixed.ndim
    voxel = float(space.spacing_of(fixed_affine).mean())
    start = time.perf_counter()
    rigid = sitk.CenteredTransformInitializer(
        _foreground_weight(f), _foreground_weight(m), sitk.VersorRigid3DTransform() if n == 3 else sitk.Euler2DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    if n == 2:
        rigid = _sitk_coarse_search(f, m, rigid)
    stage = _sitk_mattes_rsgd(voxel)
    stage.SetInitialTransform(rigid, inPlace=True)
    stage.Execute(f, m)
    transform = rigid
    if model == "affine":
        transform = sitk.AffineTransform(n)
        transform.SetMatrix(rigid.GetMatrix())
        transform.SetTranslation(rigid.GetTranslation())
        transform.SetCenter(rigid.GetCenter())
        stage = _sitk_mattes_rsgd(voxel)
        stage.SetInitialTransform(transform, inPlace=True)
        stage.Execute(f, m)
    elapsed = time.perf_counter() - start
    return matrix_of_sitk(transform), elapsed


def _elastix_map(parameters, transform_name: str, *, first: bool, iterations: int):
    """elastix default map for ``transform_name`` with 4 resolutions, adjusted as in the module docstring."""
    parameter_map = parameters.GetDefaultParameterMap(transform_name, 4)  # (name, number of resolutions)
    parameter_map["AutomaticTransformInitialization"] = ["true" if first else "false"]
    parameter_map["AutomaticTransformInitializationMethod"] = ["CenterOfGravity"]
    parameter_map["MaximumNumberOfIterations"] = [str(iterations)]
    parameter_map["WriteResultImage"] = ["false"]
    return parameter_map


def _elastix_stage_matrix(result, index: int, n: int) -> np.ndarray:
    """napari-order matrix of the linear transform in map ``index`` of an elastix result."""
    name = result.GetParameter(index, "Transform")[0]
    values = [float(v) for v in result.GetParameter(index, "TransformParameters")]
    center = [float(v) for v in result.GetParameter(index, "CenterOfRotationPoint")]
    if name == "EulerTransform" and n == 3:
        transform = sitk.Euler3DTransform(center, *values[:3], values[3:])
    elif name == "EulerTransform":
        transform = sitk.Euler2DTransform(center, values[0], values[1:])
    elif name == "AffineTransform":
        transform = sitk.AffineTransform(values[: n * n], values[n * n :], center)
    else:
        raise ValueError(f"not a linear elastix transform: {name}")
    return matrix_of_sitk(transform)


def elastix(fixed, fixed_affine, moving, moving_affine, model):
    """elastix: rigid map, then affine map (and a B-spline map for ``model="deformable"``).

    Returns (napari-order matrix or None, total displacement field (*fixed_shape, n) or None,
    seconds). elastix composes its maps, the last one outermost: T = T_k o ... o T_1.
    """
    import itk

    f, m = to_itk(fixed, fixed_affine), to_itk(moving, moving_affine)
    parameters = itk.ParameterObject.New()
    parameters.AddParameterMap(_elastix_map(parameters, "rigid", first=True, iterations=500))
    if model in ("affine", "deformable"):
        parameters.AddParameterMap(_elastix_map(parameters, "affine", first=False, iterations=1000))
    if model == "deformable":
        parameters.AddParameterMap(_elastix_map(parameters, "bspline", first=False, iterations=500))
    start = time.perf_counter()
    _, result = itk.elastix_registration_method(f, m, parameter_object=parameters, log_to_console=False)
    elapsed = time.perf_counter() - start
    n = fixed.ndim
    if model == "deformable":
        with tempfile.TemporaryDirectory() as scratch:  # transformix writes its field file there
            field = np.asarray(itk.transformix_deformation_field(m, result, output_directory=scratch))[..., ::-1]
        return None, field, elapsed
    matrix = np.eye(n + 1)
    for index in range(result.GetNumberOfParameterMaps()):
        matrix = _elastix_stage_matrix(result, index, n) @ matrix
    return matrix, None, elapsed


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
            rows.append((case, "elastix", "rigid+affine+bspline", distance.mean(), distance.max(), "mm", seconds, voxel, f"folding {100 * jacobian:.3f} %"))


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


#: head160: grid shape (napari order) and voxel size (mm); the perturbation P.
HEAD160_SHAPE = (160, 192, 224)
HEAD160_ROTATION_DEG = (3.0, -2.5, 3.0)
HEAD160_SHIFT_MM = (6.0, -5.0, 5.0)


def head160_pair():
    """Fixed T1, T2-like moving, the T1 brain mask, the grid affine and the true transform (see the module docstring)."""
    folder = DATA / "ixi002_t1_t2"
    t1 = read(folder / "hd_bet_IXI002-Guys-0828-T1.nii.gz")[0]
    mask_record = read(folder / "hd_bet_mask_IXI002-Guys-0828-T1.nii.gz")[0]
    brain = np.asarray(mask_record.data) > 0
    centre = space.voxel_to_world(mask_record.affine, np.argwhere(brain)).mean(axis=0)
    affine = np.eye(4)
    affine[:3, 3] = centre - (np.asarray(HEAD160_SHAPE) - 1) / 2
    native = np.asarray(t1.data, np.float32)
    fixed = space.resample(native, t1.affine, HEAD160_SHAPE, affine)
    mask = space.resample(brain.astype(np.uint8), t1.affine, HEAD160_SHAPE, affine, interpolation="nearest") > 0
    t = np.clip(native / np.percentile(native[brain], 99), 0, 1)
    ramp = np.linspace(0.85, 1.15, native.shape[0], dtype=np.float32)[:, None, None]
    rng = np.random.default_rng(0)
    t2_like = np.where(brain, (1 - t) ** 1.5 * 0.9 + 0.1, 0).astype(np.float32) * ramp
    t2_like += rng.normal(0, 0.02, native.shape).astype(np.float32)
    perturbation = transform_from_parameters(ndim=3, rotation_deg=HEAD160_ROTATION_DEG, translation=HEAD160_SHIFT_MM, center=centre)
    truth = np.linalg.inv(perturbation)  # content at fixed world x sits at P^-1 x in the moving world
    moving = space.resample(t2_like, truth @ t1.affine, HEAD160_SHAPE, affine)
    return fixed, moving, mask, affine, truth


def ours_cli(fixed, fixed_affine, moving, moving_affine, model="rigid"):
    """Ours through ``pipeline.run`` (what ``mmfuse register`` calls), the operation's defaults; (matrix, seconds)."""
    from napari_mmfuse.operations import Image
    from napari_mmfuse.pipeline import run

    inputs = {"fixed": Image(fixed, fixed_affine, name="T1"), "moving": Image(moving, moving_affine, name="T2")}
    start = time.perf_counter()
    outputs, _ = run("register", model, inputs)
    return outputs["transform"].matrix, time.perf_counter() - start


def head160_case(rows, methods, repeat: int):
    fixed, moving, mask, affine, truth = head160_pair()
    points = grid_points(fixed.shape, affine, mask)
    case = f"head160 T1->T2-like {fixed.shape} 1 mm, {_angle(truth):.1f} deg / {np.linalg.norm(HEAD160_SHIFT_MM):.1f} mm"
    runners = {"ours": lambda: ours_cli(fixed, affine, moving, affine)}
    if "sitk" in methods:
        runners["SimpleITK"] = lambda: simpleitk_linear(fixed, affine, moving, affine, "rigid")
    if "elastix" in methods:
        runners["elastix"] = lambda: (lambda r: (r[0], r[2]))(elastix(fixed, affine, moving, affine, "rigid"))
    timed = {name: [] for name in runners}
    for _ in range(repeat):  # interleaved, so a burst of load from elsewhere hits every method
        for name, run in runners.items():
            timed[name].append(run())
    for name, results in timed.items():
        error = [errors(matrix, truth, points) for matrix, _ in results]
        spread = f"times {', '.join(f'{s:.2f}' for _, s in results)}"
        rows.append((case, name, "rigid", *np.median(error, axis=0).tolist(), "mm", float(np.median([s for _, s in results])), 1.0, spread))


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
            matrix, seconds = simpleitk_linear(fixed, target.affine, moving, source.affine, "affine")
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
    print(f"{'case':64s} {'method':30s} {'model':20s} {'mean err':>10s} {'max err':>10s} {'unit':5s} {'mean/vox':>8s} {'time s':>8s} {'t/SITK':>7s}  notes")
    sitk_time = {r[0]: r[6] for r in rows if r[1] == "SimpleITK"}
    for row in rows:
        case, method, model, mean, largest, unit, seconds, voxel = row[:8]
        notes = row[8] if len(row) > 8 else ""
        in_voxels = f"{mean / voxel:8.3f}" if unit == "mm" else f"{'':8s}"
        ratio = f"{seconds / sitk_time[case]:7.2f}" if method == "ours" and case in sitk_time else f"{'':7s}"
        print(f"{case:64s} {method:30s} {model:20s} {mean:10.4f} {largest:10.4f} {unit:5s} {in_voxels} {seconds:8.2f} {ratio}  {notes}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="phantom rigid/affine/deformable, antspy and one histology pair")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for torch, SimpleITK and elastix")
    parser.add_argument("--no-elastix", action="store_true", help="skip elastix even when itk-elastix is installed")
    parser.add_argument("--case", choices=("all", "head160"), default="all", help="head160: only the 160x192x224 IXI rigid case")
    parser.add_argument("--repeat", type=int, default=3, help="head160: timed runs per method (medians reported)")
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
    print(f"napari_mmfuse {napari_mmfuse.__version__}, threads {args.threads}, OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY')}, torch {torch.__version__}, SimpleITK {sitk.Version_VersionString()}, device cpu")
    rows = Rows()
    if args.case == "head160":
        head160_case(rows, methods, args.repeat)
        print_table(rows)
        return 0
    phantom_cases(rows, methods, ("rigid", "affine", "deformable"))
    antspy_case(rows, methods)
    histology_cases(rows, methods, args.quick)
    if not args.quick:
        ixi_case(rows, methods)
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
