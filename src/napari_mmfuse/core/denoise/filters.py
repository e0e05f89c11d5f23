"""Classical denoising filters by name: Gaussian, median, bilateral, TV, non-local means, diffusion.

Every filter takes a 2D ``(Y, X)`` or 3D ``(Z, Y, X)`` grey image, keeps its intensity
scale and returns float32 of the same shape. Distances are in world units, converted per
axis through ``spacing=`` (pixels without it). Large inputs run in slabs along the first
axis with a halo (see :func:`~napari_mmfuse.core.denoise.filter_kernels.run_slabs`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass
from functools import partial

import numpy as np

from ...operations import drive
from .checks import check_distances, check_image, spacing_per_axis, world_radii
from .filter_kernels import (
    bilateral_torch,
    diffusion_torch,
    gaussian_torch,
    median_torch,
    nlm_torch,
    run_slabs,
    tv_torch,
)
from .noise import estimate_noise, estimated_parameters

DEFAULT_MAX_VOXELS = 2**22


@dataclass(frozen=True)
class _Method:
    build: Callable  # (image, spacing, **params) -> (kernel, halo)
    min_size: Callable  # (spacing, **params) -> int


def _build_gaussian(image, spacing, *, sigma: float = 1.0):
    sigma_px = [sigma / s for s in spacing]
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    halo = int(4.0 * max(sigma_px) + 0.5)
    return partial(gaussian_torch, sigma_px=sigma_px), halo


def _build_median(image, spacing, *, radius: float = 1.0):
    radii = world_radii(radius, spacing)
    if max(radii) == 0:
        raise ValueError(f"radius {radius} is below half a voxel ({spacing.tolist()}); nothing would change")
    return partial(median_torch, radii=radii), radii[0]


def _build_bilateral(image, spacing, *, sigma_spatial: float = 1.5, sigma_range: float | None = None):
    if sigma_spatial <= 0:
        raise ValueError(f"sigma_spatial must be > 0, got {sigma_spatial}")
    if sigma_range is None:
        sigma_range = estimated_parameters("bilateral", estimate_noise(image))["sigma_range"]
    if sigma_range <= 0:
        raise ValueError(f"sigma_range must be > 0, got {sigma_range}")
    sigma_px = [sigma_spatial / s for s in spacing]
    return partial(bilateral_torch, sigma_px=sigma_px, sigma_range=sigma_range), int(math.ceil(2 * sigma_px[0]))


def _build_tv(image, spacing, *, weight: float | None = None, eps: float = 2e-4, max_iter: int = 200):
    if weight is None:
        weight = estimated_parameters("tv", estimate_noise(image))["weight"]
    if weight <= 0:
        raise ValueError(f"weight must be > 0, got {weight}")
    step_scale = [float(spacing.min() / s) for s in spacing]
    return partial(tv_torch, weight=weight, eps=eps, max_iter=max_iter, step_scale=step_scale), 16


def _build_nlm(
    image,
    spacing,
    *,
    h: float | None = None,
    sigma: float | None = None,
    patch_radius: float = 2.0,
    search_radius: float = 6.0,
):
    if sigma is None:
        sigma = estimate_noise(image)
    if h is None:
        h = estimated_parameters("nlm", sigma)["h"]
    if h <= 0 or sigma < 0:
        raise ValueError(f"need h > 0 and sigma >= 0, got h={h}, sigma={sigma}")
    patch_radii = world_radii(patch_radius, spacing)
    search_radii = world_radii(search_radius, spacing, minimum=1)
    kernel = partial(nlm_torch, h=h, sigma=sigma, patch_radii=patch_radii, search_radii=search_radii)
    return kernel, search_radii[0] + patch_radii[0]


def _build_diffusion(image, spacing, *, kappa: float | None = None, n_iter: int = 10, step: float | None = None):
    if kappa is None:
        kappa = estimated_parameters("diffusion", estimate_noise(image))["kappa"]
    if kappa <= 0 or n_iter < 1:
        raise ValueError(f"need kappa > 0 and n_iter >= 1, got kappa={kappa}, n_iter={n_iter}")
    step_scale = [float(spacing.min() / s) for s in spacing]
    if step is None:
        step = 1.0 / (2.0 * image.ndim)
    if not 0 < step <= 1.0 / (2.0 * image.ndim):
        raise ValueError(f"step must be in (0, {1.0 / (2 * image.ndim)}] for a stable explicit scheme, got {step}")
    kernel = partial(diffusion_torch, kappa=kappa, n_iter=n_iter, step=step, step_scale=step_scale)
    return kernel, n_iter


def _min_window(key: str, default: float, scale: int = 2, plus: int = 1):
    return lambda spacing, **p: max(3, scale * max(world_radii(p.get(key, default), spacing)) + plus)


_REGISTRY = {
    "gaussian": _Method(_build_gaussian, lambda spacing, **p: 3),
    "median": _Method(_build_median, _min_window("radius", 1.0)),
    "bilateral": _Method(_build_bilateral, lambda spacing, **p: 3),
    "tv": _Method(_build_tv, lambda spacing, **p: 3),
    "nlm": _Method(
        _build_nlm,
        lambda spacing, **p: max(3, 2 * max(world_radii(p.get("patch_radius", 2.0), spacing)) + 1),
    ),
    "diffusion": _Method(_build_diffusion, lambda spacing, **p: 3),
}


def denoise_steps(
    image,
    method: str,
    *,
    spacing=None,
    device=None,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    **params,
) -> Generator[float, None, np.ndarray]:
    """Run a classical method slab by slab, yielding the fraction done (a cancel point).

    Parameters
    ----------
    image : array-like, shape (Y, X) or (Z, Y, X)
    method : {"gaussian", "median", "bilateral", "tv", "nlm", "diffusion"}
    spacing : sequence of float, optional
        Voxel size per array axis (world units); distances in ``params`` are in these units.
    device : str or torch.device, optional
    max_voxels : int
        Voxels per slab (bounds memory; halved on a CUDA out-of-memory error).
    **params
        The method's own keyword arguments (see :func:`gaussian`, :func:`median`, ...).

    Returns
    -------
    ndarray, float32, same shape as ``image``
    """
    if method not in _REGISTRY:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(_REGISTRY)} (or 'n2v' via noise2void)")
    entry = _REGISTRY[method]
    array = check_image(image, min_size=1)
    spacing = spacing_per_axis(spacing, array.ndim)
    check_distances(array.shape, spacing, method, params)
    check_image(array, min_size=entry.min_size(spacing, **params))
    kernel, halo = entry.build(array, spacing, **params)
    return (yield from run_slabs(kernel, array, halo=halo, device=device, max_voxels=max_voxels))


def denoise(image, method: str, **params) -> np.ndarray:
    """Apply one method by name and return the result (float32, same shape).

    ``method`` is one of :data:`~napari_mmfuse.core.denoise.noise.METHODS`; ``params`` are
    passed to :func:`denoise_steps`, or to :func:`~napari_mmfuse.core.denoise.n2v.noise2void`
    for ``"n2v"``.
    """
    if method == "n2v":
        from .n2v import noise2void

        return noise2void(image, **params)
    return drive(denoise_steps(image, method, **params))


def gaussian(image, *, sigma: float = 1.0, spacing=None, device=None) -> np.ndarray:
    """Gaussian smoothing (scipy ``gaussian_filter`` semantics: truncate 4, symmetric edges).

    Parameters
    ----------
    image : array-like, shape (Y, X) or (Z, Y, X)
    sigma : float
        Standard deviation in world units (pixels without ``spacing``).
    spacing : sequence of float, optional
        Voxel size per array axis.
    device : str or torch.device, optional

    Returns
    -------
    ndarray, float32, same shape
    """
    return denoise(image, "gaussian", sigma=sigma, spacing=spacing, device=device)


def median(image, *, radius: float = 1.0, spacing=None, device=None) -> np.ndarray:
    """Median over a box of half-width ``radius`` (world units) per axis, symmetric edges.

    Parameters
    ----------
    image : array-like, shape (Y, X) or (Z, Y, X)
    radius : float
        Half-width in world units; the window is ``2 * round(radius / spacing) + 1`` per axis.
    spacing : sequence of float, optional
    device : str or torch.device, optional

    Returns
    -------
    ndarray, float32, same shape
    """
    return denoise(image, "median", radius=radius, spacing=spacing, device=device)


def bilateral(
    image, *, sigma_spatial: float = 1.5, sigma_range: float | None = None, spacing=None, device=None
) -> np.ndarray:
    """Bilateral filter: Gaussian in space (world units) times Gaussian in intensity.

    Parameters
    ----------
    image : array-like, shape (Y, X) or (Z, Y, X)
    sigma_spatial : float
        Spatial standard deviation in world units; the window reaches 2 sigma.
    sigma_range : float, optional
        Intensity standard deviation (image units); default twice the estimated noise.
    spacing : sequence of float, optional
    device : str or torch.device, optional

    Returns
    -------
    ndarray, float32, same shape
    """
    return denoise(image, "bilateral", sigma_spatial=sigma_spatial, sigma_range=sigma_range, spacing=spacing, device=device)


def total_variation(
    image,
    *,
    weight: float | None = None,
    eps: float = 2e-4,
    max_iter: int = 200,
    spacing=None,
    device=None,
) -> np.ndarray:
    """Total-variation denoising by Chambolle's projection algorithm.

    Minimises ``||u - image||^2 / 2 + weight * TV(u)``; finite differences are divided by
    the relative spacing so anisotropic voxels are respected.

    Parameters
    ----------
    image : array-like, shape (Y, X) or (Z, Y, X)
    weight : float, optional
        Regularisation in image intensity units; default the estimated noise level.
    eps : float
        Stop when the relative energy change drops below ``eps``.
    max_iter : int
    spacing : sequence of float, optional
    device : str or torch.device, optional

    Returns
    -------
    ndarray, float32, same shape
    """
    return denoise(image, "tv", weight=weight, eps=eps, max_iter=max_iter, spacing=spacing, device=device)


def nl_means(
    image,
    *,
    h: float | None = None,
    sigma: float | None = None,
    patch_radius: float = 2.0,
    search_radius: float = 6.0,
    spacing=None,
    device=None,
) -> np.ndarray:
    """Non-local means, fast variant: box-filtered patch distances per shift.

    Weight of a neighbour at shift ``t``: ``exp(-max(d - 2 sigma^2, 0) / h^2)`` with ``d`` the
    mean squared difference of the patches; each shift is computed once and used in both
    directions.

    Parameters
    ----------
    image : array-like, shape (Y, X) or (Z, Y, X)
    h : float, optional
        Cut-off in intensity units; default ``0.8 * sigma``.
    sigma : float, optional
        Noise standard deviation; default :func:`estimate_noise`.
    patch_radius, search_radius : float
        Half-widths in world units (pixels without ``spacing``): patch 5x5 and search 13x13 by default.
    spacing : sequence of float, optional
    device : str or torch.device, optional

    Returns
    -------
    ndarray, float32, same shape
    """
    return denoise(
        image, "nlm", h=h, sigma=sigma, patch_radius=patch_radius, search_radius=search_radius, spacing=spacing, device=device
    )


def anisotropic_diffusion(
    image,
    *,
    kappa: float | None = None,
    n_iter: int = 10,
    step: float | None = None,
    spacing=None,
    device=None,
) -> np.ndarray:
    """Perona-Malik anisotropic diffusion (explicit scheme, exponential conductance).

    Parameters
    ----------
    image : array-like, shape (Y, X) or (Z, Y, X)
    kappa : float, optional
        Edge threshold in intensity units; default twice the estimated noise.
    n_iter : int
    step : float, optional
        Time step, at most ``1 / (2 * ndim)``; default that bound.
    spacing : sequence of float, optional
    device : str or torch.device, optional

    Returns
    -------
    ndarray, float32, same shape
    """
    return denoise(image, "diffusion", kappa=kappa, n_iter=n_iter, step=step, spacing=spacing, device=device)

