"""Denoising on torch: classical filters and self-supervised Noise2Void training.

Every filter takes a 2D ``(Y, X)`` or 3D ``(Z, Y, X)`` grey image, keeps its intensity
scale (no rescaling to [0, 1]) and returns float32 of the same shape. Parameters that are
distances (``sigma``, ``radius``) are in world units (mm, µm) and are converted per axis
through ``spacing=``; without ``spacing`` they are in pixels. Large inputs are processed in
slabs along the first axis with a halo, and a CUDA out-of-memory error halves the slab.

Noise2Void (:func:`n2v_train`) trains a UNet built against checkerboard artefacts (N2V2:
blur-pooling, no full-resolution skip) on the noisy image itself with blind-spot masking and
weight averaging; the trained :class:`N2VModel` predicts with test-time augmentation, saves to
``.pt`` + ``.json`` and applies, tiled by MONAI, to other images of the same kind.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ._names import DENOISE_METHODS
from .device import get_device, with_oom_retry
from .params import ParameterRange

#: Classical methods by name (see :func:`denoise`); "n2v" runs :func:`noise2void`.
METHODS = DENOISE_METHODS
DEFAULT_MAX_VOXELS = 2**22

#: Allowed values of every method's numeric keyword (checked by callers before any work;
#: distances are further bounded by the image's extent, see :func:`check_distances`).
PARAMETER_RANGES: dict[str, ParameterRange] = {
    "sigma": ParameterRange(float, 0.0, None),  # gaussian: std (> 0, checked by the filter); nlm: noise std
    "radius": ParameterRange(float, 0.0, None, open_minimum=True),
    "sigma_spatial": ParameterRange(float, 0.0, None, open_minimum=True),
    "sigma_range": ParameterRange(float, 0.0, None, open_minimum=True),
    "weight": ParameterRange(float, 0.0, None, open_minimum=True),
    "h": ParameterRange(float, 0.0, None, open_minimum=True),
    "patch_radius": ParameterRange(float, 0.0, None),
    "search_radius": ParameterRange(float, 0.0, None, open_minimum=True),
    "kappa": ParameterRange(float, 0.0, None, open_minimum=True),
    "n_iter": ParameterRange(int, 1, 10_000),
    "steps": ParameterRange(int, 1, 1_000_000),
    "patch": ParameterRange(int, 8, 1024),
}

#: Keywords that are distances in world units, per method (bounded by the image's extent).
DISTANCE_PARAMETERS = {
    "gaussian": ("sigma",),
    "median": ("radius",),
    "bilateral": ("sigma_spatial",),
    "nlm": ("patch_radius", "search_radius"),
}


def check_distances(shape, spacing, method: str, params: dict) -> None:
    """Refuse a distance parameter larger than the image (it would only cost memory and time).

    Parameters
    ----------
    shape : tuple of int
    spacing : sequence of float or None
        World size of a voxel per axis (None: pixels).
    method : str
    params : dict
        The method's keywords.

    Raises
    ------
    ValueError
        Naming the parameter and the largest allowed value (the image's largest extent).
    """
    spacing = _spacing(spacing, len(shape))
    extent = float(max(n * s for n, s in zip(shape, spacing)))
    for key in DISTANCE_PARAMETERS.get(method, ()):
        value = params.get(key)
        if value is not None and value > extent:
            raise ValueError(
                f"{key} {value:g} is larger than the image (largest extent {extent:g} world units); "
                f"choose {key} <= {extent:g}"
            )


# ----------------------------------------------------------------------------- validation


def check_image(image, *, min_size: int = 3, name: str = "image") -> np.ndarray:
    """Validate a grey 2D/3D image and return it as a float32 array.

    Raises
    ------
    ValueError
        For anything but a finite, non-constant 2D or 3D grey image at least ``min_size``
        pixels along every axis.
    """
    array = np.asarray(image)
    if array.dtype == bool or not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise ValueError(f"{name} must hold real numbers, got dtype {array.dtype}")
    if array.ndim not in (2, 3):
        raise ValueError(
            f"{name} must be a 2D (Y, X) or 3D (Z, Y, X) grey image, got {array.ndim}D shape {array.shape}; "
            "select one channel or time point first"
        )
    if array.ndim == 3 and array.shape[-1] in (3, 4) and min(array.shape[:2]) > 4:
        raise ValueError(
            f"{name} of shape {array.shape} looks like RGB(A); denoising needs a grey image "
            "(convert to grey or pick one channel)"
        )
    if min(array.shape) < min_size:
        raise ValueError(f"{name} of shape {array.shape} is smaller than the filter window ({min_size} pixels)")
    array = np.asarray(array, dtype=np.float32)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or Inf; fill or mask them before denoising")
    if float(array.max()) == float(array.min()):
        raise ValueError(f"{name} is constant ({float(array.min())}); there is nothing to denoise")
    return array


def _spacing(spacing, ndim: int) -> np.ndarray:
    if spacing is None:
        return np.ones(ndim)
    spacing = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
    if spacing.size == 1:
        spacing = np.repeat(spacing, ndim)
    if spacing.shape != (ndim,):
        raise ValueError(f"spacing has {spacing.size} values for a {ndim}D image")
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ValueError(f"spacing must be positive and finite, got {spacing.tolist()}")
    return spacing


def _radii(distance: float, spacing: np.ndarray, *, minimum: int = 0) -> tuple[int, ...]:
    """Distance in world units -> integer radius per axis."""
    if distance < 0:
        raise ValueError(f"a distance must be >= 0, got {distance}")
    return tuple(max(minimum, int(round(distance / s))) for s in spacing)


# ----------------------------------------------------------------------------- tensor helpers


def _symmetric_index(n: int, before: int, after: int, device) -> torch.Tensor:
    """Indices that pad an axis of length ``n`` symmetrically (edge sample repeated, scipy 'reflect')."""
    index = np.arange(-before, n + after) % (2 * n)
    index = np.where(index >= n, 2 * n - 1 - index, index)
    return torch.as_tensor(index, device=device)


def _pad(x: torch.Tensor, pads) -> torch.Tensor:
    """Pad every axis of ``x`` by ``pads[axis] = (before, after)`` symmetrically."""
    for axis, (before, after) in enumerate(pads):
        if before or after:
            x = x.index_select(axis, _symmetric_index(x.shape[axis], before, after, x.device))
    return x


def _shifted(x: torch.Tensor, start, shape) -> torch.Tensor:
    return x[tuple(slice(s, s + n) for s, n in zip(start, shape))]


# ----------------------------------------------------------------------------- kernels


def _gaussian_kernel(x: torch.Tensor, *, sigma_px, truncate: float = 4.0) -> torch.Tensor:
    out = x
    for axis, s in enumerate(sigma_px):
        if s <= 0:
            continue
        r = int(truncate * s + 0.5)
        t = torch.arange(-r, r + 1, dtype=torch.float64)
        w = torch.exp(-0.5 * (t / s) ** 2)
        w = (w / w.sum()).to(x.dtype).to(x.device)
        pads = [(0, 0)] * x.ndim
        pads[axis] = (r, r)
        padded = _pad(out, pads).movedim(axis, -1)
        shape = padded.shape
        flat = padded.reshape(-1, 1, shape[-1])
        out = F.conv1d(flat, w.view(1, 1, -1)).reshape(*shape[:-1], shape[-1] - 2 * r).movedim(-1, axis)
    return out


def _median_kernel(x: torch.Tensor, *, radii) -> torch.Tensor:
    padded = _pad(x, [(r, r) for r in radii])
    windows = padded
    for axis, r in enumerate(radii):
        windows = windows.unfold(axis, 2 * r + 1, 1)
    return windows.reshape(*x.shape, -1).median(dim=-1).values


def _bilateral_kernel(x: torch.Tensor, *, sigma_px, sigma_range: float) -> torch.Tensor:
    radii = [max(1, int(math.ceil(2 * s))) for s in sigma_px]
    padded = _pad(x, [(r, r) for r in radii])
    num = torch.zeros_like(x)
    den = torch.zeros_like(x)
    inv_range = -0.5 / sigma_range**2
    for offset in np.ndindex(*[2 * r + 1 for r in radii]):
        d = [o - r for o, r in zip(offset, radii)]
        spatial = math.exp(-0.5 * sum((di / s) ** 2 for di, s in zip(d, sigma_px)))
        neighbour = _shifted(padded, offset, x.shape)
        w = torch.exp((neighbour - x) ** 2 * inv_range) * spatial
        num += w * neighbour
        den += w
    return num / den


def _tv_kernel(x: torch.Tensor, *, weight: float, eps: float, max_iter: int, step_scale) -> torch.Tensor:
    """Chambolle's dual projection for min ||u - x||^2 / 2 + weight * TV(u), energy stopping rule.

    ``step_scale[axis]`` multiplies the forward difference along ``axis`` (relative inverse
    spacing); its adjoint is used in the divergence. Buffers are allocated once.
    """
    ndim = x.ndim
    p = torch.zeros((ndim,) + tuple(x.shape), dtype=x.dtype, device=x.device)
    g = torch.zeros_like(p)
    divergence = torch.zeros_like(x)
    norm = torch.empty_like(x)
    out = x.clone()
    tau = 1.0 / (2.0 * ndim)
    energy_first = energy_previous = None
    for i in range(max_iter):
        if i > 0:
            divergence.zero_()
            for axis in range(ndim):
                q = p[axis] if step_scale[axis] == 1 else p[axis] * step_scale[axis]
                n = x.shape[axis]
                divergence.add_(q)
                divergence.narrow(axis, 1, n - 1).sub_(q.narrow(axis, 0, n - 1))
            torch.sub(x, divergence, out=out)
        for axis in range(ndim):
            n = x.shape[axis]
            forward = g[axis].narrow(axis, 0, n - 1)
            forward.copy_(out.narrow(axis, 1, n - 1)).sub_(out.narrow(axis, 0, n - 1))
            if step_scale[axis] != 1:
                forward.mul_(step_scale[axis])
        torch.mul(g[0], g[0], out=norm)
        for axis in range(1, ndim):
            norm.addcmul_(g[axis], g[axis])
        norm.sqrt_()
        flat = divergence.view(-1)
        energy = float((torch.dot(flat, flat) + weight * norm.sum()) / x.numel())
        p.sub_(g, alpha=tau)
        p.div_(norm.mul_(tau / weight).add_(1.0))
        if energy_first is None:
            energy_first = energy_previous = energy
        elif abs(energy_previous - energy) < eps * energy_first:
            break
        else:
            energy_previous = energy
    return out


def _nlm_kernel(x: torch.Tensor, *, h: float, sigma: float, patch_radii, search_radii) -> torch.Tensor:
    """Fast non-local means: per shift, patch distances by box sums, each shift used in both directions.

    All temporaries are allocated once and reused (allocation dominates on the CPU otherwise).
    """
    ndim = x.ndim
    margin = [2 * d + r for d, r in zip(search_radii, patch_radii)]
    padded = _pad(x, [(m, m) for m in margin])
    shape = tuple(x.shape)
    # region E: the image grown by the search radius (weights needed there for the mirrored shift)
    e_shape = tuple(n + 2 * d for n, d in zip(shape, search_radii))
    r_shape = tuple(n + 2 * r for n, r in zip(e_shape, patch_radii))  # E grown by the patch radius
    r_start = tuple(m - d - r for m, d, r in zip(margin, search_radii, patch_radii))
    patch_volume = float(np.prod([2 * r + 1 for r in patch_radii]))
    scale = -1.0 / (h * h * patch_volume)
    offset = 2.0 * sigma * sigma * patch_volume
    base = _shifted(padded, r_start, r_shape)
    diff = torch.empty(r_shape, dtype=x.dtype, device=x.device)
    # box sums axis by axis, each into its own buffer: shapes shrink from r_shape to e_shape
    box_shapes = [tuple(e_shape[:k + 1]) + tuple(r_shape[k + 1 :]) for k in range(ndim)]
    boxes = [torch.empty(s, dtype=x.dtype, device=x.device) for s in box_shapes]
    num = x.clone()
    den = torch.ones_like(x)
    shifts = [tuple(o - d for o, d in zip(s, search_radii)) for s in np.ndindex(*[2 * d + 1 for d in search_radii])]
    for t in (t for t in shifts if t > (0,) * ndim):  # lexicographically positive half
        torch.sub(base, _shifted(padded, [s + ti for s, ti in zip(r_start, t)], r_shape), out=diff)
        diff.square_()
        source = diff
        for axis, (r, box) in enumerate(zip(patch_radii, boxes)):
            n = box.shape[axis]
            box.copy_(source.narrow(axis, 0, n))
            for k in range(1, 2 * r + 1):
                box.add_(source.narrow(axis, k, n))
            source = box
        w = source  # summed squared patch differences on E
        w.sub_(offset).clamp_(min=0.0).mul_(scale).exp_()
        w_here = _shifted(w, search_radii, shape)  # weight between x and x + t
        w_back = _shifted(w, [d - ti for d, ti in zip(search_radii, t)], shape)  # between x and x - t
        num.addcmul_(w_here, _shifted(padded, [m + ti for m, ti in zip(margin, t)], shape))
        num.addcmul_(w_back, _shifted(padded, [m - ti for m, ti in zip(margin, t)], shape))
        den.add_(w_here).add_(w_back)
    return num / den


def _diffusion_kernel(x: torch.Tensor, *, kappa: float, n_iter: int, step: float, step_scale) -> torch.Tensor:
    """Perona-Malik diffusion with the exponential conductance exp(-(|grad|/kappa)^2)."""
    u = x.clone()
    for _ in range(n_iter):
        update = torch.zeros_like(u)
        for axis in range(u.ndim):
            n = u.shape[axis]
            g = (u.narrow(axis, 1, n - 1) - u.narrow(axis, 0, n - 1)) * step_scale[axis]
            flux = torch.exp(-((g / kappa) ** 2)) * g * step_scale[axis]
            update.narrow(axis, 0, n - 1).add_(flux)
            update.narrow(axis, 1, n - 1).sub_(flux)
        u = u + step * update
    return u


# ----------------------------------------------------------------------------- tiling


def _run_slabs(
    kernel: Callable[[torch.Tensor], torch.Tensor],
    image: np.ndarray,
    *,
    halo: int,
    device,
    max_voxels: int,
) -> Generator[float, None, np.ndarray]:
    """Apply ``kernel`` slab by slab along axis 0 (with ``halo`` planes of context); yield the fraction done."""
    device = get_device(device)
    n = image.shape[0]
    plane = int(np.prod(image.shape[1:]))
    out = np.empty(image.shape, dtype=np.float32)
    start = 0

    def one(thickness: int) -> int:
        stop = min(n, start + thickness)
        lo, hi = max(0, start - halo), min(n, stop + halo)
        x = torch.from_numpy(np.ascontiguousarray(image[lo:hi])).to(device)
        with torch.inference_mode():
            y = kernel(x)
        out[start:stop] = y[start - lo : stop - lo].cpu().numpy()
        return stop

    while start < n:
        start = with_oom_retry(one, tile=max(1, max_voxels // max(plane, 1)), min_tile=1)
        yield start / n
    return out


@dataclass(frozen=True)
class _Method:
    build: Callable  # (image, spacing, **params) -> (kernel, halo)
    min_size: Callable  # (spacing, **params) -> int


def _build_gaussian(image, spacing, *, sigma: float = 1.0):
    sigma_px = [sigma / s for s in spacing]
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    halo = int(4.0 * max(sigma_px) + 0.5)
    return partial(_gaussian_kernel, sigma_px=sigma_px), halo


def _build_median(image, spacing, *, radius: float = 1.0):
    radii = _radii(radius, spacing)
    if max(radii) == 0:
        raise ValueError(f"radius {radius} is below half a voxel ({spacing.tolist()}); nothing would change")
    return partial(_median_kernel, radii=radii), radii[0]


def _build_bilateral(image, spacing, *, sigma_spatial: float = 1.0, sigma_range: float | None = None):
    if sigma_spatial <= 0:
        raise ValueError(f"sigma_spatial must be > 0, got {sigma_spatial}")
    if sigma_range is None:
        sigma_range = 2.0 * estimate_noise(image)
    if sigma_range <= 0:
        raise ValueError(f"sigma_range must be > 0, got {sigma_range}")
    sigma_px = [sigma_spatial / s for s in spacing]
    return partial(_bilateral_kernel, sigma_px=sigma_px, sigma_range=sigma_range), int(math.ceil(2 * sigma_px[0]))


def _build_tv(image, spacing, *, weight: float | None = None, eps: float = 2e-4, max_iter: int = 200):
    if weight is None:
        weight = estimate_noise(image)
    if weight <= 0:
        raise ValueError(f"weight must be > 0, got {weight}")
    step_scale = [float(spacing.min() / s) for s in spacing]
    return partial(_tv_kernel, weight=weight, eps=eps, max_iter=max_iter, step_scale=step_scale), 16


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
        h = 0.8 * sigma
    if h <= 0 or sigma < 0:
        raise ValueError(f"need h > 0 and sigma >= 0, got h={h}, sigma={sigma}")
    patch_radii = _radii(patch_radius, spacing)
    search_radii = _radii(search_radius, spacing, minimum=1)
    kernel = partial(_nlm_kernel, h=h, sigma=sigma, patch_radii=patch_radii, search_radii=search_radii)
    return kernel, search_radii[0] + patch_radii[0]


def _build_diffusion(image, spacing, *, kappa: float | None = None, n_iter: int = 10, step: float | None = None):
    if kappa is None:
        kappa = 2.0 * estimate_noise(image)
    if kappa <= 0 or n_iter < 1:
        raise ValueError(f"need kappa > 0 and n_iter >= 1, got kappa={kappa}, n_iter={n_iter}")
    step_scale = [float(spacing.min() / s) for s in spacing]
    if step is None:
        step = 1.0 / (2.0 * image.ndim)
    if not 0 < step <= 1.0 / (2.0 * image.ndim):
        raise ValueError(f"step must be in (0, {1.0 / (2 * image.ndim)}] for a stable explicit scheme, got {step}")
    kernel = partial(_diffusion_kernel, kappa=kappa, n_iter=n_iter, step=step, step_scale=step_scale)
    return kernel, n_iter


def _min_window(key: str, default: float, scale: int = 2, plus: int = 1):
    return lambda spacing, **p: max(3, scale * max(_radii(p.get(key, default), spacing)) + plus)


_REGISTRY = {
    "gaussian": _Method(_build_gaussian, lambda spacing, **p: 3),
    "median": _Method(_build_median, _min_window("radius", 1.0)),
    "bilateral": _Method(_build_bilateral, lambda spacing, **p: 3),
    "tv": _Method(_build_tv, lambda spacing, **p: 3),
    "nlm": _Method(
        _build_nlm,
        lambda spacing, **p: max(3, 2 * max(_radii(p.get("patch_radius", 2.0), spacing)) + 1),
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
    spacing = _spacing(spacing, array.ndim)
    check_distances(array.shape, spacing, method, params)
    check_image(array, min_size=entry.min_size(spacing, **params))
    kernel, halo = entry.build(array, spacing, **params)
    return (yield from _run_slabs(kernel, array, halo=halo, device=device, max_voxels=max_voxels))


def denoise(image, method: str, **params) -> np.ndarray:
    """Apply one method by name and return the result (float32, same shape).

    ``method`` is one of :data:`METHODS`; ``params`` are passed to :func:`denoise_steps`,
    or to :func:`noise2void` for ``"n2v"``.
    """
    if method == "n2v":
        return noise2void(image, **params)
    steps = denoise_steps(image, method, **params)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


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
    image, *, sigma_spatial: float = 1.0, sigma_range: float | None = None, spacing=None, device=None
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


# ----------------------------------------------------------------------------- noise level


def estimate_noise(image) -> float:
    """Gaussian noise standard deviation from the finest diagonal Haar wavelet band (MAD / 0.6745).

    Parameters
    ----------
    image : array-like, shape (Y, X) or (Z, Y, X)

    Returns
    -------
    float
        In the image's intensity units.
    """
    array = np.asarray(image, dtype=np.float64)
    if array.ndim not in (2, 3) or min(array.shape) < 2:
        raise ValueError(f"noise estimation needs a 2D or 3D image of at least 2 pixels per axis, got {array.shape}")
    trimmed = array[tuple(slice(0, n - n % 2) for n in array.shape)]
    detail = trimmed
    for axis in range(array.ndim):
        even = np.take(detail, np.arange(0, detail.shape[axis], 2), axis=axis)
        odd = np.take(detail, np.arange(1, detail.shape[axis], 2), axis=axis)
        detail = (even - odd) / math.sqrt(2.0)
    return float(np.median(np.abs(detail)) / 0.6745)


def suggest_parameters(image, method: str, *, spacing=None, sigma: float | None = None) -> dict:
    """Parameters for ``method`` proposed from the estimated noise level.

    Parameters
    ----------
    image : array-like, shape (Y, X) or (Z, Y, X)
    method : str
        One of :data:`METHODS`.
    spacing : sequence of float, optional
        Distances come back in these world units.
    sigma : float, optional
        Known noise level; otherwise :func:`estimate_noise`.

    Returns
    -------
    dict
        Keyword arguments for the method, plus nothing else.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    ndim = np.ndim(image)
    unit = float(np.min(_spacing(spacing, ndim)))
    sigma = estimate_noise(image) if sigma is None else float(sigma)
    sigma = max(sigma, 1e-6)
    proposals = {
        "gaussian": {"sigma": 1.0 * unit},
        "median": {"radius": 1.0 * unit},
        "bilateral": {"sigma_spatial": 1.5 * unit, "sigma_range": 2.0 * sigma},
        "tv": {"weight": 0.8 * sigma},
        "nlm": {
            "h": 0.8 * sigma,
            "sigma": sigma,
            "patch_radius": (2.0 if ndim == 2 else 1.0) * unit,
            "search_radius": (6.0 if ndim == 2 else 3.0) * unit,  # 3D: 7^3 shifts instead of 13^3
        },
        "diffusion": {"kappa": 2.0 * sigma, "n_iter": 10},
        "n2v": {"steps": 400 if ndim == 2 else 800, "patch": 64 if ndim == 2 else 32},
    }
    return proposals[method]


# ----------------------------------------------------------------------------- Noise2Void


@dataclass
class N2VConfig:
    """What a saved Noise2Void model needs besides its weights.

    Attributes
    ----------
    ndim : int
        2 or 3 spatial axes.
    channels : tuple of int
        UNet feature channels per level.
    patch : int
        Training patch edge (a multiple of :func:`n2v_multiple`).
    mean, std : float
        Intensity normalisation learned from the training image.
    steps_trained : int
    loss : list of float
        Masked-pixel loss per step.
    architecture : str
        ``"n2v2-unet"`` (:class:`N2V2UNet`); models saved before it existed load as
        ``"monai-unet"`` (MONAI's UNet with strided and transposed convolutions).
    """

    ndim: int = 2
    channels: tuple[int, ...] = (32, 64, 128)
    patch: int = 64
    mean: float = 0.0
    std: float = 1.0
    steps_trained: int = 0
    loss: list[float] = field(default_factory=list)
    architecture: str = "n2v2-unet"

    def to_json(self) -> str:
        return json.dumps(asdict(self) | {"kind": "napari-mmfuse n2v"}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> N2VConfig:
        data = json.loads(text)
        if data.pop("kind", None) != "napari-mmfuse n2v":
            raise ValueError("not a napari-mmfuse Noise2Void config")
        data["channels"] = tuple(data["channels"])
        data.setdefault("architecture", "monai-unet")
        return cls(**data)


N2V_ARCHITECTURES = ("n2v2-unet", "monai-unet")


def n2v_multiple(channels, architecture: str = "n2v2-unet") -> int:
    """Input edges must be multiples of this: 2 per downsampling of the UNet."""
    if architecture not in N2V_ARCHITECTURES:
        raise ValueError(f"unknown Noise2Void architecture {architecture!r}; expected one of {N2V_ARCHITECTURES}")
    # the MONAI UNet runs its first level at full resolution (stride 1)
    return 2 ** (len(channels) - (1 if architecture == "n2v2-unet" else 2))


def _double_conv(ndim: int, in_channels: int, out_channels: int) -> torch.nn.Sequential:
    conv = torch.nn.Conv2d if ndim == 2 else torch.nn.Conv3d
    return torch.nn.Sequential(
        conv(in_channels, out_channels, 3, padding=1),
        torch.nn.LeakyReLU(0.1),
        conv(out_channels, out_channels, 3, padding=1),
        torch.nn.LeakyReLU(0.1),
    )


class MaxBlurPool(torch.nn.Module):
    """Halve the resolution without aliasing: 2-wide max (stride 1), then a binomial blur with stride 2.

    A plain max-pool (or strided convolution) aliases the high frequencies that a blind-spot
    network learns from, which shows up as a checkerboard in Noise2Void outputs (N2V2,
    Höck et al. 2022); blurring before subsampling removes it.
    """

    def __init__(self, ndim: int):
        super().__init__()
        self.ndim = ndim
        binomial = torch.tensor([1.0, 2.0, 1.0]) / 4
        kernel = binomial
        for _ in range(ndim - 1):
            kernel = kernel[..., None] * binomial
        self.register_buffer("kernel", kernel[None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = F.max_pool2d if self.ndim == 2 else F.max_pool3d
        x = pool(F.pad(x, (0, 1) * self.ndim, mode="replicate"), 2, stride=1)
        conv = F.conv2d if self.ndim == 2 else F.conv3d
        channels = x.shape[1]
        kernel = self.kernel.expand(channels, *self.kernel.shape[1:])
        return conv(F.pad(x, (1, 1) * self.ndim, mode="replicate"), kernel, stride=2, groups=channels)


class N2V2UNet(torch.nn.Module):
    """UNet for blind-spot training without checkerboard artefacts (the N2V2 design).

    Double 3x3 convolutions (LeakyReLU, no normalisation, so a tile predicts like a training
    patch) on ``len(channels)`` levels; :class:`MaxBlurPool` down, linear interpolation up,
    skip connections on every level except the full-resolution one: that skip would hand the
    output the input's pixel grid, the source of N2V's checkerboard.

    Parameters
    ----------
    ndim : int
        2 or 3.
    channels : tuple of int
        Features per level, full resolution first (at least 2 levels).
    """

    def __init__(self, ndim: int, channels: tuple[int, ...]):
        super().__init__()
        self.ndim = ndim
        self.pool = MaxBlurPool(ndim)
        self.encoders = torch.nn.ModuleList(
            _double_conv(ndim, previous, current) for previous, current in zip((1,) + tuple(channels[:-1]), channels)
        )
        self.decoders = torch.nn.ModuleList(
            _double_conv(ndim, deeper + (current if level > 0 else 0), current)
            for level, (current, deeper) in enumerate(zip(channels[:-1], channels[1:]))
        )
        conv = torch.nn.Conv2d if ndim == 2 else torch.nn.Conv3d
        self.output = conv(channels[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, encoder in enumerate(self.encoders):
            x = encoder(self.pool(x) if level else x)
            skips.append(x)
        mode = "bilinear" if self.ndim == 2 else "trilinear"
        for level in reversed(range(len(self.decoders))):
            x = F.interpolate(x, size=skips[level].shape[2:], mode=mode, align_corners=False)
            x = self.decoders[level](torch.cat([x, skips[level]], dim=1) if level else x)
        return self.output(x)


def _n2v_network(config: N2VConfig) -> torch.nn.Module:
    n2v_multiple(config.channels, config.architecture)  # validates the architecture name
    if config.architecture == "n2v2-unet":
        return N2V2UNet(config.ndim, tuple(config.channels))
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=config.ndim,
        in_channels=1,
        out_channels=1,
        channels=tuple(config.channels),
        strides=(1,) + (2,) * (len(config.channels) - 2),
        num_res_units=1,
        norm=None,  # no instance statistics: a tile of any size predicts like a training patch
    )


@dataclass(frozen=True)
class TrainStep:
    """One Noise2Void optimisation step: its index (from 1) and masked-pixel MSE loss."""

    step: int
    loss: float


class N2VModel:
    """A trained Noise2Void network with its config; predicts, saves and loads.

    Parameters
    ----------
    network : torch.nn.Module
    config : N2VConfig
    """

    def __init__(self, network: torch.nn.Module, config: N2VConfig):
        self.network = network
        self.config = config

    def predict(
        self, image, *, device=None, tile: int | None = None, overlap: float = 0.25, augment: bool = True
    ) -> np.ndarray:
        """Denoise an image of the same kind, tiled by MONAI sliding-window inference.

        Parameters
        ----------
        image : array-like, shape (Y, X) or (Z, Y, X)
            Same number of axes as the training image.
        device : str or torch.device, optional
        tile : int, optional
            Tile edge; default 512 (2D) or 128 (3D, one tile at a time); halved on CUDA out-of-memory.
        overlap : float
            Tile overlap fraction (Gaussian blending).
        augment : bool
            Average the predictions of the 8 flips and 90-degree rotations of the last two axes,
            each mapped back: test-time augmentation, which averages out the network's
            orientation-dependent errors. False predicts once (8 times faster).

        Returns
        -------
        ndarray, float32, same shape
        """
        from monai.inferers import sliding_window_inference

        array = check_image(image, min_size=1)
        if array.ndim != self.config.ndim:
            raise ValueError(f"this model was trained on {self.config.ndim}D images; got a {array.ndim}D image")
        device = get_device(device)
        network = self.network.to(device).eval()
        x = torch.from_numpy((array - self.config.mean) / self.config.std)[None, None]
        multiple = n2v_multiple(self.config.channels, self.config.architecture)
        flips = [(), (-1,), (-2,), (-2, -1)]
        transforms = [(flip, swap) for flip in flips for swap in (False, True)] if augment else [((), False)]
        windows_per_batch = 4 if array.ndim == 2 else 1  # a 128^3 window's activations take about 1 GB

        def oriented(t: torch.Tensor, flip: tuple[int, ...], swap: bool) -> torch.Tensor:
            t = t.flip(flip) if flip else t
            return t.transpose(-1, -2) if swap else t

        def run(edge: int) -> np.ndarray:
            total = torch.zeros_like(x)
            for flip, swap in transforms:
                view = oriented(x, flip, swap)
                roi = tuple(max(multiple, min(edge, -(-n // multiple) * multiple)) for n in view.shape[2:])
                with torch.inference_mode():
                    y = sliding_window_inference(
                        view,
                        roi,
                        windows_per_batch,
                        network,
                        overlap=overlap,
                        mode="gaussian",
                        sw_device=device,
                        device="cpu",
                    )
                y = y.transpose(-1, -2) if swap else y  # undo in reverse order: swap, then flip
                total += y.flip(flip) if flip else y
            return (total / len(transforms))[0, 0].numpy()

        y = with_oom_retry(run, tile=tile or (512 if array.ndim == 2 else 128), min_tile=multiple * 4)
        return (y * self.config.std + self.config.mean).astype(np.float32)

    def save(self, path) -> Path:
        """Write ``<path>.pt`` (state_dict) and ``<path>.json`` (config); return the ``.pt`` path."""
        path = Path(path)
        stem = path.with_suffix("") if path.suffix in (".pt", ".json") else path
        stem.parent.mkdir(parents=True, exist_ok=True)
        weights = stem.with_suffix(".pt")
        from ..io.atomic import atomic_output, write_text

        with atomic_output(weights, overwrite=True) as temporary:  # each file renamed into place whole
            torch.save({k: v.detach().cpu() for k, v in self.network.state_dict().items()}, temporary)
        write_text(stem.with_suffix(".json"), self.config.to_json(), overwrite=True)
        return weights

    @classmethod
    def load(cls, path, *, device=None) -> N2VModel:
        """Load a model written by :meth:`save` (``torch.load(weights_only=True)``)."""
        path = Path(path)
        stem = path.with_suffix("") if path.suffix in (".pt", ".json") else path
        weights, config_path = stem.with_suffix(".pt"), stem.with_suffix(".json")
        for p in (weights, config_path):
            if not p.exists():
                raise FileNotFoundError(f"Noise2Void model file missing: {p}")
        config = N2VConfig.from_json(config_path.read_text())
        network = _n2v_network(config)
        network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        return cls(network.to(get_device(device)), config)


def _blind_spot_batch(
    image: torch.Tensor,
    *,
    patch: tuple[int, ...],
    batch: int,
    mask_fraction: float,
    radius: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random patches, a random pixel mask, and inputs whose masked pixels hold a random neighbour.

    Patches are flipped at random along each axis and, when square in the last two axes,
    transposed in them; a masked pixel's replacement is never the pixel itself.
    """
    ndim = image.ndim
    device = image.device
    starts = [torch.randint(0, n - p + 1, (batch,), generator=generator).tolist() for n, p in zip(image.shape, patch)]
    target = torch.stack(
        [image[tuple(slice(s[b], s[b] + p) for s, p in zip(starts, patch))] for b in range(batch)]
    )  # (B, *patch)
    upper = torch.as_tensor(patch) - 1
    for axis in range(1, ndim + 1):
        flip = torch.rand(batch, generator=generator) < 0.5
        if flip.any():
            target[flip.to(device)] = target[flip.to(device)].flip(axis)
    if patch[-1] == patch[-2]:
        swap = (torch.rand(batch, generator=generator) < 0.5).to(device)
        target[swap] = target[swap].transpose(-1, -2)
    mask = torch.rand(target.shape, generator=generator) < mask_fraction
    mask[(0,) * target.ndim] = True
    index = mask.nonzero()  # (M, 1 + ndim)
    offsets = torch.randint(-radius, radius + 1, (index.shape[0], ndim), generator=generator)
    zero = (offsets == 0).all(dim=1)
    offsets[zero, 0] = torch.where(torch.rand(int(zero.sum()), generator=generator) < 0.5, -1, 1)
    neighbour = index.clone()
    neighbour[:, 1:] = torch.minimum((index[:, 1:] + offsets).clamp(min=0), upper)
    # a clamped neighbour may land back on the pixel: mirror the offset instead
    same = (neighbour == index).all(dim=1)
    neighbour[same, 1:] = torch.minimum((index[same, 1:] - offsets[same]).clamp(min=0), upper)
    inputs = target.clone()
    inputs[tuple(index.T.to(device))] = target[tuple(neighbour.T.to(device))]
    return inputs[:, None], target[:, None], mask[:, None].to(device)


def n2v_patch_shape(shape, *, patch: int, channels=(32, 64, 128)) -> tuple[int, ...]:
    """Training patch per axis: ``patch``, or less along shorter axes (multiples of the UNet's factor).

    Raises
    ------
    ValueError
        If ``patch`` is not a multiple of the UNet's downsampling factor, or the image is
        smaller than that factor along some axis.
    """
    if len(channels) < 2:
        raise ValueError(f"the UNet needs at least 2 levels of channels, got {tuple(channels)}")
    multiple = n2v_multiple(channels)
    if patch < multiple or patch % multiple:
        raise ValueError(f"patch {patch} must be a multiple of {multiple} for a {len(channels)}-level UNet")
    if min(shape) < multiple:
        raise ValueError(
            f"image of shape {tuple(shape)} is smaller than the training patch minimum ({multiple} pixels per axis)"
        )
    return tuple(min(patch, n // multiple * multiple) for n in shape)


def n2v_train(
    image,
    *,
    steps: int | None = None,
    patch: int | None = None,
    batch: int | None = None,
    mask_fraction: float = 0.02,
    neighbour_radius: int = 2,
    learning_rate: float = 1e-3,
    channels: tuple[int, ...] | None = None,
    average_fraction: float = 0.25,
    seed: int = 0,
    device=None,
) -> Generator[TrainStep, None, N2VModel]:
    """Train Noise2Void on the noisy image itself; yield each step, return the model.

    Blind-spot training: random patches, a random ``mask_fraction`` of pixels replaced by a
    random neighbour within ``neighbour_radius`` (never themselves), MSE on the masked pixels
    only. The network is an :class:`N2V2UNet` (no checkerboard); the returned weights are the
    average of those after each of the last ``average_fraction`` of the steps, which smooths
    out the step-to-step noise of a small-batch, noisy-target optimisation. No clean data and
    no pretrained weights are used.

    Parameters
    ----------
    image : array-like, shape (Y, X) or (Z, Y, X)
    steps : int, optional
        Optimisation steps (Adam, cosine-decayed learning rate); default 400 (2D) or 800 (3D:
        smaller batches, and 400 steps underfit a 128^3 volume).
    patch : int, optional
        Patch edge; default 64 (2D) or 32 (3D); must be a multiple of :func:`n2v_multiple`
        (``2 ** (len(channels) - 1)``). Shorter image axes get shorter patches.
    batch : int, optional
        Patches per step; default 8 (2D) or 2 (3D).
    mask_fraction : float
        Fraction of patch pixels masked per step.
    neighbour_radius : int
    learning_rate : float
    channels : tuple of int, optional
        UNet features per level, full resolution first; default (32, 64, 128) in 2D and
        (16, 32, 64) in 3D (a 3D convolution costs 3 times a 2D one per voxel and channel).
    average_fraction : float
        Final fraction of the steps whose weights are averaged (0 keeps the last weights).
    seed : int
    device : str or torch.device, optional

    Yields
    ------
    TrainStep

    Returns
    -------
    N2VModel
    """
    ndim = np.ndim(image)
    steps = (400 if ndim == 2 else 800) if steps is None else steps
    if steps < 1 or (batch is not None and batch < 1) or not 0 < mask_fraction < 0.5 or not 0 <= average_fraction <= 1:
        raise ValueError(
            "need steps >= 1, batch >= 1, 0 < mask_fraction < 0.5, 0 <= average_fraction <= 1; "
            f"got {steps}, {batch}, {mask_fraction}, {average_fraction}"
        )
    patch = patch or (64 if ndim == 2 else 32)
    batch = batch or (8 if ndim == 2 else 2)
    channels = tuple(channels or ((32, 64, 128) if ndim == 2 else (16, 32, 64)))
    array = check_image(image, min_size=1)
    patch_shape = n2v_patch_shape(array.shape, patch=patch, channels=channels)
    device = get_device(device)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    mean, std = float(array.mean()), float(array.std())
    config = N2VConfig(ndim=ndim, channels=channels, patch=patch, mean=mean, std=std)
    network = _n2v_network(config).to(device)
    optimiser = torch.optim.Adam(network.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps, eta_min=learning_rate * 0.05)
    data = torch.from_numpy((array - mean) / std).to(device)
    first_averaged = steps - max(1, round(average_fraction * steps)) + 1
    averaged = [torch.zeros_like(p) for p in network.parameters()]
    network.train()
    for step in range(1, steps + 1):
        inputs, target, mask = _blind_spot_batch(
            data, patch=patch_shape, batch=batch, mask_fraction=mask_fraction, radius=neighbour_radius, generator=generator
        )
        prediction = network(inputs)
        loss = F.mse_loss(prediction[mask], target[mask])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        if step >= first_averaged:
            with torch.no_grad():
                for mean_weight, weight in zip(averaged, network.parameters()):
                    mean_weight += (weight - mean_weight) / (step - first_averaged + 1)
        value = float(loss.detach())
        config.loss.append(value)
        config.steps_trained = step
        yield TrainStep(step, value)
    with torch.no_grad():
        for weight, mean_weight in zip(network.parameters(), averaged):
            weight.copy_(mean_weight)
    network.eval()
    return N2VModel(network, config)


def noise2void(image, *, device=None, **train_params) -> np.ndarray:
    """Train Noise2Void on ``image`` (see :func:`n2v_train`) and return its denoised version.

    Returns
    -------
    ndarray, float32, same shape
    """
    training = n2v_train(image, device=device, **train_params)
    while True:
        try:
            next(training)
        except StopIteration as done:
            return done.value.predict(image, device=device)
