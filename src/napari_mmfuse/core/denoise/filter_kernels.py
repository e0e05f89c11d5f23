"""The denoising filters' torch kernels and the slab runner that applies them to large inputs.

Each kernel takes a float tensor (2D or 3D) and its keyword parameters in pixels and returns
a tensor of the same shape; edges are padded symmetrically (scipy's ``reflect``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator

import numpy as np
import torch
import torch.nn.functional as F

from ..device import get_device, with_oom_retry
from ..kernels import gaussian_kernel

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


def gaussian_torch(x: torch.Tensor, *, sigma_px, truncate: float = 4.0) -> torch.Tensor:
    """Separable Gaussian of standard deviation ``sigma_px[axis]`` per axis, mirrored edges (scipy's)."""
    out = x
    for axis, s in enumerate(sigma_px):
        if s <= 0:
            continue
        r = int(truncate * s + 0.5)  # scipy's radius
        w = gaussian_kernel(s, radius=r, dtype=x.dtype, device=x.device)
        pads = [(0, 0)] * x.ndim
        pads[axis] = (r, r)
        padded = _pad(out, pads).movedim(axis, -1)
        shape = padded.shape
        flat = padded.reshape(-1, 1, shape[-1])
        out = F.conv1d(flat, w.view(1, 1, -1)).reshape(*shape[:-1], shape[-1] - 2 * r).movedim(-1, axis)
    return out


def median_torch(x: torch.Tensor, *, radii) -> torch.Tensor:
    """Median over a box of half-width ``radii[axis]`` per axis, mirrored edges."""
    padded = _pad(x, [(r, r) for r in radii])
    windows = padded
    for axis, r in enumerate(radii):
        windows = windows.unfold(axis, 2 * r + 1, 1)
    return windows.reshape(*x.shape, -1).median(dim=-1).values


def bilateral_torch(x: torch.Tensor, *, sigma_px, sigma_range: float) -> torch.Tensor:
    """Bilateral filter: spatial Gaussian (``sigma_px``, window to 2 sigma) times intensity Gaussian."""
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


def tv_torch(x: torch.Tensor, *, weight: float, eps: float, max_iter: int, step_scale) -> torch.Tensor:
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


def nlm_torch(x: torch.Tensor, *, h: float, sigma: float, patch_radii, search_radii) -> torch.Tensor:
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


def diffusion_torch(x: torch.Tensor, *, kappa: float, n_iter: int, step: float, step_scale) -> torch.Tensor:
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


def run_slabs(
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

