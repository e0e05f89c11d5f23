"""Registration driver: input checks, multi-resolution optimisation, results.

World conventions follow :mod:`napari_mmfuse.core.space`. A transform ``T`` is an
``(n + 1, n + 1)`` world matrix in napari axis order that maps a fixed-world point to
the moving-world point; the deformable result adds a displacement ``u`` on the fixed
grid so that the mapping is ``x -> T(x + u(x))``. The optimisers live in
:mod:`.optimise`, resampling and the displayed metrics in :mod:`.warp`.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np
import torch

from ...operations import drive
from ..device import get_device
from ..space import overlap_fraction
from .checks import check_image, check_mask, check_transform
from .deformable import jacobian_determinant
from .linear import LINEAR_MODELS, center_of_mass, check_model
from .metrics import check_metric, intensity_range
from .optimise import RegStep, deformable_stage, is_better, linear_stage
from .pyramid import build_pyramid
from .warp import metric_value

MODELS = LINEAR_MODELS + ("deformable",)
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
    return drive(steps)


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
    fixed, fixed_affine = check_image(fixed, fixed_affine, "fixed")
    moving, moving_affine = check_image(moving, moving_affine, "moving")
    n = fixed.ndim
    if moving.ndim != n:
        raise ValueError(f"the fixed image is {n}D and the moving image {moving.ndim}D; register images of the same dimension")
    fixed_mask = check_mask(fixed_mask, fixed.shape, "fixed")
    moving_mask = check_mask(moving_mask, moving.shape, "moving")
    start = np.eye(n + 1) if init is None else check_transform(init, n)
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
        transform = yield from linear_stage(
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
        displacement = yield from deformable_stage(
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
    if is_better(metric)(before, result.metric_after):
        notes.append(f"the {metric} got worse ({before:.4g} -> {result.metric_after:.4g}); check the result or start closer")
    return result


def register(fixed, fixed_affine, moving, moving_affine, **options) -> RegResult:
    """Run :func:`register_steps` to the end; same arguments, returns the :class:`RegResult`."""
    return run_to_end(register_steps(fixed, fixed_affine, moving, moving_affine, **options))
