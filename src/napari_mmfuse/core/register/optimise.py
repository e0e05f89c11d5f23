"""The optimisers of the registration driver: point sampling, Adam with plateau halving, stages.

:func:`linear_stage` fits a linear model level by level (then an averaged refinement for
sampled metrics); :func:`deformable_stage` fits a stationary velocity field on a control
grid. Both are generators yielding :class:`~.driver.RegStep`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .deformable import ControlGrid, node_shape_for
from .linear import matrix_from_parameters, parameter_count
from .metrics import Similarity, higher_is_better
from .pyramid import Level, grid_points, inside, interpolate, normaliser, sample

#: Most fixed points one linear iteration samples.
MAX_LINEAR_SAMPLES = 2**16
#: Most fixed points one deformable iteration samples (MI/NMI/MSE).
MAX_DEFORMABLE_SAMPLES = 2**18
#: The learning rate is halved after this many iterations without improvement ...
PATIENCE = 4
#: ... and a level ends when it has been halved this many times.
HALVINGS = 5
#: Iterations of the final averaged refinement of sampled linear metrics (see
#: :func:`_averaged_refinement`), the points each of them draws, and its step in voxels.
REFINE_ITERATIONS = 60
REFINE_SAMPLES = 2**15
REFINE_STEP = 0.005


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
    if replace and level.mask is None:  # every voxel is a candidate: draw indices directly
        candidates = torch.randint(flat.numel(), (count,), generator=generator).to(device)
        return grid_points(level.shape, level.affine, device=device, index=candidates), flat[candidates], torch.ones(count, device=device)
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
    values = interpolate(moving.image, coords)
    weight = inside(coords.detach()).to(values.dtype)
    if moving.mask is not None:
        weight = weight * (interpolate(moving.mask.to(values.dtype), coords.detach()) > 0.5).to(values.dtype)
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


def is_better(metric: str):
    """``better(new, old)``: whether ``new`` improves on ``old`` for ``metric`` (by more than 1e-7 relative)."""
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


def linear_stage(fixed_pyramid, moving_pyramid, *, model, metric, iterations, starts, center, radius, sampling, ranges, generator):
    """Fit a linear ``model`` coarse to fine from the best of ``starts``; yields RegStep, returns the matrix."""
    n = len(fixed_pyramid[0].shape)
    params = torch.zeros(parameter_count(model, n), dtype=torch.float64, requires_grad=True)
    better = is_better(metric)
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


def deformable_stage(fixed_pyramid, moving_pyramid, *, metric, iterations, transform, sampling, ranges, grid_spacing, regularization, generator):
    """Fit a smooth displacement after ``transform``; yields RegStep, returns it (*fixed_shape, n) in world units."""
    finest = fixed_pyramid[-1]
    device = finest.image.device
    n = len(finest.shape)
    full_normaliser = normaliser(finest.shape, finest.affine)
    levels = len(fixed_pyramid)
    grid = None
    velocity = None
    better = is_better(metric)
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
