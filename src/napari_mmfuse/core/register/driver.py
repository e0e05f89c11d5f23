"""Registration driver: input checks, multi-resolution optimisation, results.

World conventions follow :mod:`napari_mmfuse.core.space`. A transform ``T`` is an
``(n + 1, n + 1)`` world matrix in napari axis order that maps a fixed-world point to
the moving-world point; the deformable result adds a displacement ``u`` on the fixed
grid so that the mapping is ``x -> T(x + u(x))``.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np
import torch

from ..device import get_device
from ..params import ParameterRange
from ..space import _check_affine, overlap_fraction, resample
from .deformable import ControlGrid, jacobian_determinant, node_shape_for
from .linear import (
    LINEAR_MODELS,
    center_of_mass,
    check_model,
    matrix_from_parameters,
    parameter_count,
)
from .metrics import Similarity, check_metric, higher_is_better, intensity_range, local_correlation
from .pyramid import MIN_AXIS, Level, build_pyramid, grid_points, halve, inside, normaliser, sample

MODELS = LINEAR_MODELS + ("deformable",)
#: Allowed values of :func:`register`'s numeric options (checked by callers before any work);
#: ``levels`` is further capped by the image size, see :func:`max_levels`.
PARAMETER_RANGES = {
    "levels": ParameterRange(int, 1, None),  # capped by the image size, see max_levels
    "iterations": ParameterRange(int, 1, 100_000),
    "max_size": ParameterRange(int, 16, None),
}
#: The coarsest pyramid level keeps at least this many voxels along every axis.
MIN_COARSEST_SIDE = 8


def max_levels(*shapes) -> int:
    """Most pyramid levels whose coarsest keeps :data:`MIN_COARSEST_SIDE` voxels per axis.

    The largest ``L`` with ``min(side) // 2 ** (L - 1) >= MIN_COARSEST_SIDE`` over every
    axis of every shape given; at least 1.
    """
    side = min(min(shape) for shape in shapes)
    levels = 1
    while side // 2**levels >= MIN_COARSEST_SIDE:
        levels += 1
    return levels
#: Most fixed points one linear iteration samples.
MAX_LINEAR_SAMPLES = 2**16
#: Most fixed points one deformable iteration samples (MI/NMI/MSE).
MAX_DEFORMABLE_SAMPLES = 2**18
#: Grids larger than this are halved before evaluating a metric for display.
MAX_METRIC_VOXELS = 2**19
#: The learning rate is halved after this many iterations without improvement ...
PATIENCE = 4
#: ... and a level ends when it has been halved this many times.
HALVINGS = 5
#: Iterations of the final averaged refinement of sampled linear metrics (see
#: :func:`_averaged_refinement`), the points each of them draws, and its step in voxels.
REFINE_ITERATIONS = 60
REFINE_SAMPLES = 2**15
REFINE_STEP = 0.005
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass
class RegStep:
    """Progress of one optimiser iteration.

    Attributes
    ----------
    level : int
        Pyramid level, 0 = coarsest.
    iteration : int
        Iteration within the level.
    metric : float
        Metric value before this iteration's update (natural sign: MI/NMI/LNCC higher
        is better, MSE lower).
    stage : str
        "linear" or "deformable".
    """

    level: int
    iteration: int
    metric: float
    stage: str = "linear"


@dataclass
class RegResult:
    """Outcome of a registration.

    Attributes
    ----------
    transform : ndarray, shape (n + 1, n + 1)
        Fixed-world -> moving-world, napari order. Apply to a moving layer as
        ``np.linalg.inv(transform) @ moving_affine``.
    metric_before, metric_after : float
        Metric on the full-resolution grids with the initial and the final mapping.
    model, metric : str
    displacement : ndarray, shape (*fixed_shape, n), optional
        Deformable only: world units, napari order, on the fixed grid; the mapping is
        ``x -> transform(x + displacement(x))``.
    jacobian_det : ndarray, shape (*fixed_shape), optional
        Jacobian determinant of ``x -> x + displacement(x)``.
    folding_fraction : float, optional
        Fraction of fixed voxels with ``jacobian_det <= 0``.
    notes : list of str
        Remarks for the user (e.g. "identical inputs").
    """

    transform: np.ndarray
    metric_before: float
    metric_after: float
    model: str
    metric: str
    displacement: np.ndarray | None = None
    jacobian_det: np.ndarray | None = None
    folding_fraction: float | None = None
    notes: list[str] = field(default_factory=list)


def run_to_end(steps: Generator) -> RegResult:
    """Exhaust a :func:`register_steps` generator and return its result."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


def to_luminance(image, *, channel_axis: int = -1) -> np.ndarray:
    """Rec. 601 luma of an RGB(A) image (alpha ignored), float32 without the channel axis."""
    array = np.moveaxis(np.asarray(image), channel_axis, -1)
    if array.shape[-1] not in (3, 4):
        raise ValueError(f"an RGB image needs 3 or 4 channels on axis {channel_axis}, got {array.shape[-1]}")
    return (array[..., :3].astype(np.float32) @ _LUMA).astype(np.float32)


def _check_image(image, affine, name: str) -> tuple[np.ndarray, np.ndarray]:
    array = np.asarray(image)
    spatial = np.shape(affine)[0] - 1 if np.ndim(affine) == 2 else array.ndim
    if array.ndim == spatial + 1 and array.shape[-1] in (3, 4):
        raise ValueError(f"the {name} image looks RGB (shape {array.shape}); convert it to luminance first (to_luminance)")
    if array.size == 0:
        raise ValueError(f"the {name} image is empty (shape {array.shape})")
    if array.ndim not in (2, 3):
        raise ValueError(f"the {name} image must be 2D or 3D, got shape {array.shape}")
    if min(array.shape) < 4:
        raise ValueError(f"the {name} image is too small to register (shape {array.shape}; at least 4 voxels per axis)")
    array = array.astype(np.float32, copy=False)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"the {name} image contains NaN or Inf values; replace them (e.g. with 0) before registering")
    if float(array.max()) == float(array.min()):
        raise ValueError(f"the {name} image is constant (all {float(array.min())}); there is nothing to align")
    return array, _check_affine(affine, array.ndim)


def _check_mask(mask, shape, name: str):
    if mask is None:
        return None
    mask = np.asarray(mask).astype(bool)
    if mask.shape != tuple(shape):
        raise ValueError(f"the {name} mask has shape {mask.shape} but its image {tuple(shape)}")
    if not mask.any():
        raise ValueError(f"the {name} mask is empty")
    return mask


def _check_transform(transform, n: int, name: str = "init") -> np.ndarray:
    transform = np.asarray(transform, np.float64)
    if transform.shape != (n + 1, n + 1):
        raise ValueError(f"{name} must be a {(n + 1, n + 1)} matrix for {n}D images, got {transform.shape}")
    return _check_affine(transform, n)


def _fixed_samples(level: Level, count: int | None, generator: torch.Generator, replace: bool = False):
    """World points, intensities and base weights of fixed samples on one level.

    ``count=None`` keeps the dense grid (weights carry the mask); otherwise ``count``
    random voxels inside the mask, distinct and sorted, or drawn independently (repeats
    allowed, cheaper) with ``replace=True``.
    """
    device = level.image.device
    if count is None:
        points = grid_points(level.shape, level.affine, device=device)
        weight = torch.ones(level.shape, device=device) if level.mask is None else level.mask.to(torch.float32)
        return points, level.image, weight
    flat = level.image.reshape(-1)
    candidates = torch.arange(flat.numel(), device=device) if level.mask is None else torch.nonzero(level.mask.reshape(-1))[:, 0]
    if replace:
        pick = torch.randint(candidates.numel(), (count,), generator=generator).to(device)
        candidates = candidates[pick]
    elif count < candidates.numel():
        pick = torch.randperm(candidates.numel(), generator=generator)[:count].to(device)
        candidates = candidates[pick].sort().values
    points = grid_points(level.shape, level.affine, device=device, index=candidates)
    return points, flat[candidates], torch.ones(candidates.numel(), device=device)


def _moving_values(moving: Level, coords: torch.Tensor, base_weight: torch.Tensor):
    """Moving intensities at ``grid_sample`` coordinates, and the weights (0 outside/masked)."""
    values = sample(moving.image, coords)
    weight = inside(coords).to(values.dtype)
    if moving.mask is not None:
        weight = weight * (sample(moving.mask.to(values.dtype), coords) > 0.5).to(values.dtype)
    values = values.reshape(base_weight.shape)
    weight = weight.reshape(base_weight.shape) * base_weight
    if float(weight.sum()) < max(16.0, 0.01 * base_weight.sum().item()):
        raise ValueError(
            "the images no longer overlap (registration diverged or started too far apart); "
            "place the moving image closer, e.g. with landmarks, and register again"
        )
    return values, weight


def _sample_count(level: Level, metric: str, sampling: float, cap: int) -> int | None:
    if metric == "lncc":
        return None
    total = int(np.prod(level.shape)) if level.mask is None else int(level.mask.sum())
    return int(min(total, cap, max(4096, sampling * total)))


def _adam_level(parameter: torch.Tensor, lr: float, iterations: int, evaluate, better, *, shared: bool = False):
    """Adam with plateau halving; yields (iteration, value) and stops when the step is tiny.

    ``evaluate()`` returns (value, loss) for the current ``parameter`` (a leaf tensor
    with ``requires_grad``). The learning rate is halved after :data:`PATIENCE`
    iterations without a better value, and the level ends after :data:`HALVINGS` halvings.
    ``shared=True`` normalises by one second moment for all entries (the mean square
    gradient), so that entries with tiny gradients (a velocity field where the images
    carry no information) barely move, instead of moving as much as the others.
    """
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    first = torch.zeros_like(parameter)
    second = torch.zeros((), dtype=parameter.dtype, device=parameter.device) if shared else torch.zeros_like(parameter)
    best = None
    stall = 0
    halvings = 0
    for iteration in range(iterations):
        parameter.grad = None
        value, loss = evaluate()
        loss.backward()
        with torch.no_grad():
            grad = parameter.grad
            first.mul_(beta1).add_(grad, alpha=1 - beta1)
            if shared:
                second.mul_(beta2).add_((grad * grad).mean(), alpha=1 - beta2)
            else:
                second.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            step = lr / (1 - beta1 ** (iteration + 1))
            denominator = (second / (1 - beta2 ** (iteration + 1))).sqrt_().add_(eps)
            parameter.addcdiv_(first, denominator, value=-step)
        current = float(value.detach())
        yield iteration, current
        if best is None or better(current, best):
            best, stall = current, 0
        else:
            stall += 1
        if stall >= PATIENCE:
            halvings += 1
            if halvings > HALVINGS:
                return
            lr *= 0.5
            stall = 0


def _better(metric: str):
    if higher_is_better(metric):
        return lambda new, old: new > old + 1e-7 * abs(old)
    return lambda new, old: new < old - 1e-7 * abs(old)


def _pick_start(fixed: Level, moving: Level, starts, *, metric, ranges, generator) -> np.ndarray:
    """The candidate start transform with the best metric on a (coarse) level."""
    if len(starts) == 1:
        return starts[0]
    count = _sample_count(fixed, metric, 1.0, MAX_LINEAR_SAMPLES)
    points, values, base = _fixed_samples(fixed, count, generator)
    similarity = Similarity(metric, values, fixed_range=ranges[0], moving_range=ranges[1])
    n = len(fixed.shape)
    scores = []
    with torch.no_grad():
        for start in starts:
            full = torch.as_tensor(normaliser(moving.shape, moving.affine) @ start, dtype=torch.float32, device=points.device)
            try:
                warped, weight = _moving_values(moving, points @ full[:n, :n].T + full[:n, n], base)
            except ValueError:
                scores.append(None)
                continue
            scores.append(float(similarity(warped, weight)))
    valid = [(score, i) for i, score in enumerate(scores) if score is not None]
    best = max(valid) if higher_is_better(metric) else min(valid)
    return starts[best[1]]


def _averaged_refinement(params, fixed: Level, evaluate, *, metric, ranges, generator, level, first_iteration):
    """Polish linear parameters with fresh random points per step and average the iterates.

    On a fixed set of sampled points the metric's optimum depends on which points were
    drawn (about 0.04 voxel on a 128^3 pair with 65536 points). Small Adam steps that each
    draw new points, averaged over the second half (Polyak-Ruppert averaging), approach the
    optimum of the metric over all voxels at a fraction of the cost of evaluating it densely.
    ``params`` is updated in place; yields :class:`RegStep`.
    """
    beta1, beta2 = 0.9, 0.999
    lr = REFINE_STEP * float(fixed.spacing.mean())
    first = torch.zeros_like(params)
    second = torch.zeros_like(params)
    total = torch.zeros_like(params)
    burn_in = REFINE_ITERATIONS // 2
    for iteration in range(REFINE_ITERATIONS):
        points, values, base = _fixed_samples(fixed, REFINE_SAMPLES, generator, replace=True)
        similarity = Similarity(metric, values, fixed_range=ranges[0], moving_range=ranges[1])
        params.grad = None
        value, loss = evaluate(points=points, base=base, similarity=similarity)
        loss.backward()
        with torch.no_grad():
            first.mul_(beta1).add_(params.grad, alpha=1 - beta1)
            second.mul_(beta2).addcmul_(params.grad, params.grad, value=1 - beta2)
            denominator = (second / (1 - beta2 ** (iteration + 1))).sqrt_().add_(1e-8)
            params.addcdiv_(first / (1 - beta1 ** (iteration + 1)), denominator, value=-lr)
            if iteration >= burn_in:
                total += params
        yield RegStep(level, first_iteration + iteration, float(value.detach()), "linear")
    with torch.no_grad():
        params.copy_(total / (REFINE_ITERATIONS - burn_in))


def _linear_stage(fixed_pyramid, moving_pyramid, *, model, metric, iterations, starts, center, radius, sampling, ranges, generator):
    n = len(fixed_pyramid[0].shape)
    params = torch.zeros(parameter_count(model, n), dtype=torch.float64, requires_grad=True)
    better = _better(metric)
    start = _pick_start(fixed_pyramid[0], moving_pyramid[0], starts, metric=metric, ranges=ranges, generator=generator)
    for index, (fixed, moving) in enumerate(zip(fixed_pyramid, moving_pyramid)):
        device = fixed.image.device
        count = _sample_count(fixed, metric, sampling, MAX_LINEAR_SAMPLES)
        points, values, base = _fixed_samples(fixed, count, generator)
        similarity = Similarity(metric, values, fixed_range=ranges[0], moving_range=ranges[1])
        to_moving = torch.as_tensor(normaliser(moving.shape, moving.affine) @ start, dtype=torch.float64)

        def evaluate(points=points, base=base, similarity=similarity, to_moving=to_moving, moving=moving):
            full = (to_moving @ matrix_from_parameters(params, model=model, ndim=n, radius=radius, center=center)).to(
                device=device, dtype=torch.float32
            )
            coords = points @ full[:n, :n].T + full[:n, n]
            warped, weight = _moving_values(moving, coords, base)
            value = similarity(warped, weight)
            return value, (-value if higher_is_better(metric) else value)

        lr = (0.5 if index == 0 else 0.25) * float(fixed.spacing.mean())
        for iteration, value in _adam_level(params, lr, iterations, evaluate, better):
            yield RegStep(index, iteration, value, "linear")
    if count is not None:
        yield from _averaged_refinement(params, fixed, evaluate, metric=metric, ranges=ranges, generator=generator, level=index, first_iteration=iterations)
    with torch.no_grad():
        final = matrix_from_parameters(params, model=model, ndim=n, radius=radius, center=center).numpy()
    return start @ final


def _deformable_stage(fixed_pyramid, moving_pyramid, *, metric, iterations, transform, sampling, ranges, grid_spacing, regularization, generator):
    finest = fixed_pyramid[-1]
    device = finest.image.device
    n = len(finest.shape)
    full_normaliser = normaliser(finest.shape, finest.affine)
    levels = len(fixed_pyramid)
    grid = None
    velocity = None
    better = _better(metric)
    for index, (fixed, moving) in enumerate(zip(fixed_pyramid, moving_pyramid)):
        nodes = node_shape_for(finest.shape, grid_spacing * 2 ** (levels - 1 - index))
        if grid is None:
            grid = ControlGrid(finest.shape, finest.affine, nodes, device)
            velocity = torch.zeros((n,) + nodes, device=device)
        else:
            grid, velocity = grid.refine(velocity.detach(), nodes)
        velocity = velocity.detach().requires_grad_(True)
        count = _sample_count(fixed, metric, sampling * 4, MAX_DEFORMABLE_SAMPLES)
        points, values, base = _fixed_samples(fixed, count, generator)
        similarity = Similarity(metric, values, fixed_range=ranges[0], moving_range=ranges[1])
        node_coords = points @ torch.as_tensor(full_normaliser[:n, :n].T, dtype=torch.float32, device=device) + torch.as_tensor(
            full_normaliser[:n, n], dtype=torch.float32, device=device
        )
        full = torch.as_tensor(normaliser(moving.shape, moving.affine) @ transform, dtype=torch.float32, device=device)

        def evaluate(points=points, base=base, similarity=similarity, node_coords=node_coords, full=full, moving=moving, velocity=velocity, grid=grid):
            displacement = grid.exponential(velocity)
            shifted = points + sample(displacement, node_coords).T
            coords = shifted @ full[:n, :n].T + full[:n, n]
            warped, weight = _moving_values(moving, coords, base)
            value = similarity(warped, weight)
            data_term = -value if higher_is_better(metric) else value
            return value, data_term + regularization * grid.smoothness(displacement)

        lr = 0.25 * float(fixed.spacing.mean())
        for iteration, value in _adam_level(velocity, lr, iterations, evaluate, better, shared=True):
            yield RegStep(index, iteration, value, "deformable")
    with torch.no_grad():
        dense = grid.dense(grid.exponential(velocity))
    return torch.movedim(dense, 0, -1).cpu().numpy().astype(np.float32)


def _geometric_center(shape, affine) -> np.ndarray:
    n = len(shape)
    return affine[:n, :n] @ ((np.asarray(shape, np.float64) - 1) / 2) + affine[:n, n]


def _identical(fixed, fixed_affine, moving, moving_affine) -> bool:
    return (
        fixed.shape == moving.shape
        and np.allclose(fixed_affine, moving_affine, rtol=0, atol=1e-9)
        and np.array_equal(fixed, moving)
    )


def register_steps(
    fixed,
    fixed_affine,
    moving,
    moving_affine,
    *,
    model: str = "rigid",
    metric: str = "mi",
    levels: int = 3,
    iterations: int = 100,
    init=None,
    fixed_mask=None,
    moving_mask=None,
    sampling: float = 0.1,
    grid_spacing: float = 4.0,
    regularization: float = 3.0,
    seed: int = 0,
    device=None,
) -> Generator[RegStep, None, RegResult]:
    """Register ``moving`` to ``fixed`` in world space, one iteration per ``yield``.

    Parameters
    ----------
    fixed, moving : array, shape (Y, X) or (Z, Y, X)
        Scalar images (convert RGB with :func:`to_luminance`).
    fixed_affine, moving_affine : ndarray, shape (n + 1, n + 1)
        Index -> world affines (napari order, LPS).
    model : {"rigid", "similarity", "affine", "deformable"}
        "deformable" first fits an affine (unless ``init`` is given), then an SVF.
    metric : {"mi", "nmi", "lncc", "mse"}
    levels : int
        Pyramid levels (each halves the grid, smoothing with sigma = 1 voxel).
    iterations : int
        Most iterations per level and stage.
    init : ndarray, shape (n + 1, n + 1), optional
        Starting transform (fixed -> moving world). Without it the best (by the metric
        on the coarsest level) of three starts is used: the placement as given, the
        centres of intensity mass aligned, the grid centres aligned.
    fixed_mask, moving_mask : array of bool, optional
        Same shapes as the images; only points inside both count.
    sampling : float
        Fraction of fixed voxels sampled per level for MI/NMI/MSE (at least 4096, at
        most 65536 points for linear stages; four times as many for the deformable one).
        LNCC always uses the dense grid.
    grid_spacing : float
        Deformable control-node spacing on the finest level, in fixed voxels.
    regularization : float
        Weight of the smoothness penalty (diffusion plus bending energy of the
        displacement, see :meth:`ControlGrid.smoothness`) against the metric.
    seed : int
        Seed of the point sampling (results are reproducible).
    device : str or torch.device, optional
        Defaults to :func:`napari_mmfuse.core.device.get_device`.

    Yields
    ------
    RegStep

    Returns
    -------
    RegResult

    Raises
    ------
    ValueError
        Unknown model/metric, empty, constant or NaN-containing images, 2D/3D mismatch,
        images that do not overlap in world space, or a registration that diverges.
    """
    check_model(model, MODELS)
    check_metric(metric)
    if levels < 1 or iterations < 1:
        raise ValueError(f"levels and iterations must be at least 1, got {levels} and {iterations}")
    fixed, fixed_affine = _check_image(fixed, fixed_affine, "fixed")
    moving, moving_affine = _check_image(moving, moving_affine, "moving")
    n = fixed.ndim
    if moving.ndim != n:
        raise ValueError(f"the fixed image is {n}D and the moving image {moving.ndim}D; register images of the same dimension")
    fixed_mask = _check_mask(fixed_mask, fixed.shape, "fixed")
    moving_mask = _check_mask(moving_mask, moving.shape, "moving")
    start = np.eye(n + 1) if init is None else _check_transform(init, n)
    if overlap_fraction(fixed.shape, fixed_affine, moving.shape, np.linalg.inv(start) @ moving_affine) == 0:
        raise ValueError(
            "the fixed and moving images do not overlap in world space; check their placement "
            "(origin/units) or give an initial transform, e.g. from landmarks"
        )
    device = get_device(device)
    common = dict(metric=metric, device=device, fixed_mask=fixed_mask, moving_mask=moving_mask)

    if _identical(fixed, fixed_affine, moving, moving_affine) and init is None:
        value = metric_value(fixed, fixed_affine, moving, moving_affine, **common)
        result = RegResult(np.eye(n + 1), value, value, model, metric, notes=["fixed and moving are identical; identity returned"])
        if model == "deformable":
            result.displacement = np.zeros(fixed.shape + (n,), np.float32)
            result.jacobian_det = np.ones(fixed.shape, np.float32)
            result.folding_fraction = 0.0
        return result

    before = metric_value(fixed, fixed_affine, moving, moving_affine, transform=start, **common)
    fixed_t = torch.from_numpy(fixed).to(device)
    moving_t = torch.from_numpy(moving).to(device)
    as_tensor = (lambda m: None if m is None else torch.from_numpy(m).to(device))
    fixed_pyramid = build_pyramid(fixed_t, fixed_affine, levels, as_tensor(fixed_mask))
    moving_pyramid = build_pyramid(moving_t, moving_affine, levels, as_tensor(moving_mask))
    ranges = (intensity_range(fixed, fixed_mask), intensity_range(moving, moving_mask))
    generator = torch.Generator().manual_seed(seed)
    notes = []

    transform = start
    if model != "deformable" or init is None:
        linear_model = "affine" if model == "deformable" else model
        center = center_of_mass(fixed, fixed_affine, fixed_mask)
        starts = [start]
        if init is None:
            # the placement as given, centres of intensity mass, geometric centres
            for shift in (
                center_of_mass(moving, moving_affine, moving_mask) - center,
                _geometric_center(moving.shape, moving_affine) - _geometric_center(fixed.shape, fixed_affine),
            ):
                candidate = np.eye(n + 1)
                candidate[:n, n] = shift
                starts.append(candidate)
        extent = np.abs(fixed_affine[:n, :n] @ (np.asarray(fixed.shape) - 1))
        transform = yield from _linear_stage(
            fixed_pyramid,
            moving_pyramid,
            model=linear_model,
            metric=metric,
            iterations=iterations,
            starts=starts,
            center=center,
            radius=max(0.5 * float(extent.mean()), 1e-3),
            sampling=sampling,
            ranges=ranges,
            generator=generator,
        )
    result = RegResult(transform, before, 0.0, model, metric, notes=notes)
    if model == "deformable":
        displacement = yield from _deformable_stage(
            fixed_pyramid,
            moving_pyramid,
            metric=metric,
            iterations=iterations,
            transform=transform,
            sampling=sampling,
            ranges=ranges,
            grid_spacing=grid_spacing,
            regularization=regularization,
            generator=generator,
        )
        result.displacement = displacement
        result.jacobian_det = jacobian_determinant(displacement, fixed_affine)
        result.folding_fraction = float(np.mean(result.jacobian_det <= 0))
    result.metric_after = metric_value(
        fixed, fixed_affine, moving, moving_affine, transform=transform, displacement=result.displacement, **common
    )
    if _better(metric)(before, result.metric_after):
        notes.append(f"the {metric} got worse ({before:.4g} -> {result.metric_after:.4g}); check the result or start closer")
    return result


def register(fixed, fixed_affine, moving, moving_affine, **options) -> RegResult:
    """Run :func:`register_steps` to the end; same arguments, returns the :class:`RegResult`."""
    return run_to_end(register_steps(fixed, fixed_affine, moving, moving_affine, **options))


def _warp(image: torch.Tensor, image_affine, transform, shape, affine, displacement, *, mode: str, device, chunk: int = 2**22):
    """Sample ``image`` (C, *s) at ``T(x + u(x))`` for the voxel centres x of a grid.

    Returns values (C, *shape) and a bool inside map (*shape) using the same
    half-voxel rule as :func:`napari_mmfuse.core.space.resample`.
    """
    n = len(shape)
    to_index = torch.as_tensor(np.linalg.inv(image_affine) @ transform, dtype=torch.float64, device=device)
    size = torch.as_tensor(image.shape[1:], dtype=torch.float64, device=device)
    scale = torch.where(size > 1, 2.0 / (size - 1).clamp(min=1), torch.zeros_like(size))
    total = int(np.prod(shape))
    values = torch.empty((image.shape[0], total), dtype=image.dtype, device=device)
    mask = torch.empty(total, dtype=torch.bool, device=device)
    flat_disp = None if displacement is None else torch.as_tensor(np.asarray(displacement, np.float32), device=device).reshape(-1, n)
    for begin in range(0, total, chunk):
        index = torch.arange(begin, min(begin + chunk, total), device=device)
        points = grid_points(shape, affine, device=device, index=index).to(torch.float64)
        if flat_disp is not None:
            points = points + flat_disp[index].to(torch.float64)
        ijk = points @ to_index[:n, :n].T + to_index[:n, n]
        mask[index] = ((ijk >= -0.5) & (ijk <= size - 0.5)).all(dim=-1)
        coords = (ijk * scale - (scale > 0).to(ijk.dtype)).flip(-1).to(torch.float32)
        grid = coords.reshape((1, -1) + (1,) * (n - 1) + (n,))
        sampled = torch.nn.functional.grid_sample(image[None], grid, mode=mode, padding_mode="border", align_corners=True)
        values[:, index] = sampled.reshape(image.shape[0], -1)
    return values.reshape((image.shape[0],) + tuple(shape)), mask.reshape(tuple(shape))


def _halving_factors(shape) -> tuple[int, ...]:
    return tuple(2 if s >= 2 * MIN_AXIS else 1 for s in shape)


def metric_value(
    fixed,
    fixed_affine,
    moving,
    moving_affine,
    *,
    metric: str = "mi",
    transform=None,
    displacement=None,
    fixed_mask=None,
    moving_mask=None,
    device=None,
) -> float:
    """Similarity of the fixed image and the moving image mapped through ``transform``.

    Evaluated on the fixed grid (halved, as in the pyramid, while it exceeds 2**19
    voxels), for before/after displays.

    Parameters
    ----------
    fixed, moving : array, shape (Y, X) or (Z, Y, X)
    fixed_affine, moving_affine : ndarray, shape (n + 1, n + 1)
    metric : {"mi", "nmi", "lncc", "mse"}
        MI/NMI/LNCC: higher is better; MSE: lower is better.
    transform : ndarray, shape (n + 1, n + 1), optional
        Fixed -> moving world (identity by default).
    displacement : ndarray, shape (*fixed_shape, n), optional
        Deformable part on the fixed grid (world units).
    fixed_mask, moving_mask : array of bool, optional
    device : str or torch.device, optional

    Returns
    -------
    float
    """
    check_metric(metric)
    fixed, fixed_affine = _check_image(fixed, fixed_affine, "fixed")
    moving, moving_affine = _check_image(moving, moving_affine, "moving")
    n = fixed.ndim
    if moving.ndim != n:
        raise ValueError(f"the fixed image is {n}D and the moving image {moving.ndim}D")
    transform = np.eye(n + 1) if transform is None else _check_transform(transform, n, "transform")
    fixed_mask = _check_mask(fixed_mask, fixed.shape, "fixed")
    moving_mask = _check_mask(moving_mask, moving.shape, "moving")
    device = get_device(device)
    level = Level(torch.from_numpy(fixed).to(device), fixed_affine, None if fixed_mask is None else torch.from_numpy(fixed_mask).to(device))
    while np.prod(level.shape) > MAX_METRIC_VOXELS:
        factors = _halving_factors(level.shape)
        level = halve(level)
        if displacement is not None:
            displacement = displacement[tuple(slice(None, None, f) for f in factors)]
    channels = [moving] if moving_mask is None else [moving, moving_mask.astype(np.float32)]
    source = torch.from_numpy(np.stack(channels)).to(device)
    with torch.no_grad():
        values, within = _warp(source, moving_affine, transform, level.shape, level.affine, displacement, mode="bilinear", device=device)
        weight = within.to(torch.float32)
        if moving_mask is not None:
            weight = weight * (values[1] > 0.5)
        if level.mask is not None:
            weight = weight * level.mask
        if float(weight.sum()) == 0:
            raise ValueError("the images do not overlap under this transform")
        fixed_values = level.image if metric == "lncc" else level.image.reshape(-1)
        shape = fixed_values.shape
        similarity = Similarity(
            metric,
            fixed_values,
            fixed_range=intensity_range(fixed, fixed_mask),
            moving_range=intensity_range(moving, moving_mask),
        )
        return float(similarity(values[0].reshape(shape), weight.reshape(shape)))


def local_similarity_map(
    fixed,
    fixed_affine,
    moving,
    moving_affine,
    *,
    transform=None,
    displacement=None,
    radius: int = 3,
    device=None,
) -> np.ndarray:
    """Squared local normalised cross-correlation on the fixed grid (1 = locally aligned).

    Squared so that inverted contrast (e.g. T1 vs T2) still reads as aligned; flat
    regions and points outside the moving image read 0.

    Parameters
    ----------
    fixed, moving : array, shape (Y, X) or (Z, Y, X)
    fixed_affine, moving_affine : ndarray, shape (n + 1, n + 1)
    transform : ndarray, shape (n + 1, n + 1), optional
    displacement : ndarray, shape (*fixed_shape, n), optional
    radius : int
        Window half width in fixed voxels.
    device : str or torch.device, optional

    Returns
    -------
    ndarray, shape fixed.shape, float32 in [0, 1]
    """
    fixed, fixed_affine = _check_image(fixed, fixed_affine, "fixed")
    moving, moving_affine = _check_image(moving, moving_affine, "moving")
    n = fixed.ndim
    if moving.ndim != n:
        raise ValueError(f"the fixed image is {n}D and the moving image {moving.ndim}D")
    transform = np.eye(n + 1) if transform is None else _check_transform(transform, n, "transform")
    device = get_device(device)
    with torch.no_grad():
        values, within = _warp(torch.from_numpy(moving[None]).to(device), moving_affine, transform, fixed.shape, fixed_affine, displacement, mode="bilinear", device=device)
        f_low, f_high = intensity_range(fixed)
        m_low, m_high = intensity_range(moving)
        f = (torch.from_numpy(fixed).to(device) - f_low) / max(f_high - f_low, 1e-12)
        m = (values[0] - m_low) / max(m_high - m_low, 1e-12)
        weight = within.to(torch.float32)
        cc = local_correlation(f, m, weight, radius) * weight
    return cc.clamp(0.0, 1.0).cpu().numpy().astype(np.float32)


def apply_transform(
    image,
    image_affine,
    transform,
    reference_shape,
    reference_affine,
    *,
    interpolation: str = "linear",
    displacement=None,
    channel_axis: int | None = None,
    fill_value: float = 0.0,
    device=None,
) -> np.ndarray:
    """Resample a moving image onto a reference grid through ``x -> T(x + u(x))``.

    Parameters
    ----------
    image : array, shape (*spatial) (plus a channel axis)
    image_affine : ndarray, shape (n + 1, n + 1)
    transform : ndarray, shape (n + 1, n + 1)
        Fixed (reference) world -> moving world.
    reference_shape : tuple of int, length n
    reference_affine : ndarray, shape (n + 1, n + 1)
    interpolation : {"linear", "nearest"}
        Use "nearest" for labels (keeps the dtype); "linear" returns float32.
    displacement : ndarray, shape (*reference_shape, n), optional
        World displacement on the reference grid (deformable results).
    channel_axis : int, optional
        Channel axis of ``image`` (e.g. -1 for RGB), kept in the output.
    fill_value : float
        Value outside the moving image.
    device : str or torch.device, optional

    Returns
    -------
    ndarray, shape reference_shape (plus the channel axis)
    """
    array = np.asarray(image)
    n = array.ndim - (channel_axis is not None)
    transform = _check_transform(transform, n, "transform")
    image_affine = _check_affine(image_affine, n)
    if displacement is None:
        return resample(
            array,
            np.linalg.inv(transform) @ image_affine,
            reference_shape,
            reference_affine,
            interpolation=interpolation,
            channel_axis=channel_axis,
            fill_value=fill_value,
            device=device,
        )
    if interpolation not in ("linear", "nearest"):
        raise ValueError(f"interpolation must be 'linear' or 'nearest', not {interpolation!r}")
    reference_shape = tuple(int(s) for s in reference_shape)
    displacement = np.asarray(displacement, np.float32)
    if displacement.shape != reference_shape + (n,):
        raise ValueError(f"displacement must have shape {reference_shape + (n,)}, got {displacement.shape}")
    reference_affine = _check_affine(reference_affine, n)
    device = get_device(device)
    stacked = np.moveaxis(array, channel_axis, 0) if channel_axis is not None else array[None]
    source = torch.from_numpy(np.ascontiguousarray(stacked, dtype=np.float32)).to(device)
    mode = "bilinear" if interpolation == "linear" else "nearest"
    with torch.no_grad():
        values, within = _warp(source, image_affine, transform, reference_shape, reference_affine, displacement, mode=mode, device=device)
        values = torch.where(within, values, torch.as_tensor(fill_value, dtype=values.dtype, device=device))
    out = values.cpu().numpy()
    if interpolation == "nearest":
        out = (np.rint(out) if np.issubdtype(array.dtype, np.integer) else out).astype(array.dtype)
    else:
        out = out.astype(np.float32)
    return np.moveaxis(out, 0, channel_axis) if channel_axis is not None else out[0]
