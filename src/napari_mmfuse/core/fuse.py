"""Pixel-level fusion of co-registered images: one registry of methods, name -> function.

Every method takes N >= 2 grey images on one grid, scaled to [0, 1], and returns the fused
image plus one contribution (weight) map per input, shape ``(N, *spatial)``, that sums to 1
at every pixel. :func:`fuse` runs a method on images already on one grid;
:func:`fuse_on_reference` first resamples every image onto a reference grid through the
world affines and normalises each modality's intensities robustly.

Colour fusion (``method="colour"``) carries a functional image's colour (its own RGB, or
a PET colormap applied to a grey image) over the anatomical detail: the luminance Y is
fused by an inner method, Cb/Cr come from the functional image, the output is RGB.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import space
from ._names import FUSE_DEFAULT_METHOD
from .device import get_device
from .params import ParameterRange, check_parameter

# benchmarks/bench_fuse.py (Harvard MRI-CT/PET/SPECT and the head phantom): the Laplacian
# pyramid has Q^AB/F 0.620 / 0.760 / 0.710 and the highest SCD of the blending methods in
# that table (both modalities stay visible), and it is fast enough for the live preview and
# for volumes. Learned fusion scores 0.656 / 0.806 / 0.732 but trains per image pair
# (seconds), guided filtering 0.572 / 0.773 / 0.714; maximum selection switches pixels hard
# between sources.
DEFAULT_METHOD = FUSE_DEFAULT_METHOD

CT_WINDOW = (-450.0, 1050.0)
"""Bone window (level 300 HU, width 1500 HU) applied to CT in Hounsfield units."""

_RGB_TO_YCBCR_CB = 0.564
_RGB_TO_YCBCR_CR = 0.713
_PERCENTILE_SAMPLE = 1 << 20
_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64, torch.int8: np.int8}


@dataclass
class FusionResult:
    """Outcome of a fusion.

    Attributes
    ----------
    fused : ndarray, shape (*spatial) or (*spatial, 3)
        float32 in [0, 1]; RGB (last axis) for colour fusion.
    weights : ndarray, shape (N, *spatial)
        float32 contribution of each input at each pixel; sums to 1 over the first axis.
    method : str
    params : dict
        The parameters the method ran with (defaults filled in).
    """

    fused: np.ndarray
    weights: np.ndarray
    method: str
    params: dict = field(default_factory=dict)


@dataclass
class FusionProgress:
    """One progress tick of a fusion: ``step`` of ``total`` done, with a short message."""

    step: int
    total: int
    message: str = ""


@dataclass(frozen=True)
class FusionMethod:
    """A registered fusion method.

    Attributes
    ----------
    name : str
    run : callable
        ``run(stack, **params)`` with ``stack`` a float32 tensor, shape (N, *spatial), in
        [0, 1], returning ``(fused, weights)`` tensors of shapes (*spatial) and
        (N, *spatial); iterative methods are generators that yield
        :class:`FusionProgress` and return that pair.
    defaults : dict
        Parameter names and default values (the widget builds its controls from them).
    description : str
    interactive : bool
        Fast enough for a live preview of a 256x256 slice.
    """

    name: str
    run: Callable[..., Any]
    defaults: dict
    description: str
    interactive: bool = True


# ----------------------------------------------------------------------------- filters


def _along(x: torch.Tensor, kernel: torch.Tensor, dim: int, *, stride: int = 1) -> torch.Tensor:
    """Correlate every line of ``x`` along ``dim`` with a 1D kernel (replicate padding)."""
    moved = x.movedim(dim, -1)
    shape = moved.shape
    lines = moved.reshape(-1, 1, shape[-1])
    pad = kernel.numel() // 2
    lines = F.pad(lines, (pad, pad), mode="replicate")
    out = F.conv1d(lines, kernel.view(1, 1, -1), stride=stride)
    return out.reshape(*shape[:-1], out.shape[-1]).movedim(-1, dim)


def _separable(x: torch.Tensor, kernel: torch.Tensor, n_spatial: int, *, stride: int = 1) -> torch.Tensor:
    for dim in range(x.ndim - n_spatial, x.ndim):
        x = _along(x, kernel, dim, stride=stride)
    return x


def _gaussian_kernel(sigma: float, device, radius: int | None = None) -> torch.Tensor:
    radius = int(math.ceil(3 * sigma)) if radius is None else radius
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    return kernel / kernel.sum()


def _gaussian(x: torch.Tensor, sigma: float, n_spatial: int, radius: int | None = None) -> torch.Tensor:
    return _separable(x, _gaussian_kernel(sigma, x.device, radius), n_spatial)


def _box_mean(x: torch.Tensor, radius: int, n_spatial: int) -> torch.Tensor:
    """Mean over a (2r+1)^n window clipped to the image (cumulative sums: O(1) per pixel)."""
    for dim in range(x.ndim - n_spatial, x.ndim):
        length = x.shape[dim]
        if radius == 1 and length > 1:
            summed = x.clone()
            summed.narrow(dim, 1, length - 1).add_(x.narrow(dim, 0, length - 1))
            summed.narrow(dim, 0, length - 1).add_(x.narrow(dim, 1, length - 1))
            scale = torch.full((length,), 1 / 3, dtype=x.dtype, device=x.device)
            scale[0] = scale[-1] = 0.5
            x = summed * scale.view(-1, *([1] * (x.ndim - dim - 1)))
            continue
        cumulative = F.pad(x.movedim(dim, -1).cumsum(-1), (1, 0))
        index = torch.arange(length, device=x.device)
        upper = (index + radius + 1).clamp(max=length)
        lower = (index - radius).clamp(min=0)
        summed = cumulative.index_select(-1, upper) - cumulative.index_select(-1, lower)
        x = (summed / (upper - lower).to(x.dtype)).movedim(-1, dim)
    return x


def _empty(shape: Sequence[int], like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Uninitialised tensor on ``like``'s device, of ``dtype`` (default: ``like``'s).

    CPU tensors are allocated by numpy, which asks the kernel to back large arrays with
    transparent huge pages (``madvise``); torch's CPU allocator does not (unless
    ``THP_MEM_ALLOC_ENABLE=1``), and the first-touch page faults of a fresh 4 KiB-paged
    volume cost more than the arithmetic that fills it.
    """
    dtype = like.dtype if dtype is None else dtype
    if like.device.type == "cpu" and dtype in _NUMPY_DTYPES:
        return torch.from_numpy(np.empty(tuple(shape), dtype=_NUMPY_DTYPES[dtype]))
    return torch.empty(tuple(shape), dtype=dtype, device=like.device)


def _every_other(x: torch.Tensor, dim: int, start: int) -> torch.Tensor:
    """View of the samples ``start, start + 2, ...`` of ``x`` along ``dim``."""
    return x[(slice(None),) * dim + (slice(start, None, 2),)]


def _burt_reduce(x: torch.Tensor, n_spatial: int) -> torch.Tensor:
    """Blur with the Burt-Adelson kernel [1, 4, 6, 4, 1] / 16 and keep every other sample.

    Along each spatial axis (replicate border) a length L becomes ceil(L / 2):
    ``out[n] = (x[2n-2] + 4 x[2n-1] + 6 x[2n] + 4 x[2n+1] + x[2n+2]) / 16`` with indices
    clamped to [0, L - 1], accumulated in place on strided views (no padded copy).
    """
    for dim in range(x.ndim - n_spatial, x.ndim):
        length = x.shape[dim]
        size = (length + 1) // 2
        even, odd = _every_other(x, dim, 0), _every_other(x, dim, 1)
        out = _empty(x.shape[:dim] + (size,) + x.shape[dim + 1 :], x)
        torch.mul(even, 6 / 16, out=out)
        out.narrow(dim, 0, length // 2).add_(odd, alpha=4 / 16)  # x[2n+1]
        out.narrow(dim, 1, size - 1).add_(odd.narrow(dim, 0, size - 1), alpha=4 / 16)  # x[2n-1]
        out.narrow(dim, 1, size - 1).add_(even.narrow(dim, 0, size - 1), alpha=1 / 16)  # x[2n-2]
        out.narrow(dim, 0, size - 1).add_(even.narrow(dim, 1, size - 1), alpha=1 / 16)  # x[2n+2]
        # clamped taps: x[-2], x[-1] -> x[0]; x[2n+2] (and x[2n+1] for odd L) past the end -> x[L-1]
        out.narrow(dim, 0, 1).add_(x.narrow(dim, 0, 1), alpha=5 / 16)
        out.narrow(dim, size - 1, 1).add_(x.narrow(dim, length - 1, 1), alpha=(5 if length % 2 else 1) / 16)
        x = out
    return x


def _expand_along(x: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """Linear interpolation of ``x`` along ``dim`` onto ``size`` samples (half-pixel centres).

    The 1D factor of ``F.interpolate(..., align_corners=False)``: output sample ``j`` reads
    input position ``(j + 0.5) * L / size - 0.5`` clamped to [0, L - 1]. Doubling (the
    pyramid's usual case) is two strided lerps: ``out[2m] = x[m] + (x[m-1] - x[m]) / 4``,
    ``out[2m+1] = x[m] + (x[m+1] - x[m]) / 4``.
    """
    length = x.shape[dim]
    if size == 2 * length and length > 1:
        out = _empty(x.shape[:dim] + (size,) + x.shape[dim + 1 :], x)
        pairs = out.unflatten(dim, (length, 2))
        even, odd = pairs.select(dim + 1, 0), pairs.select(dim + 1, 1)
        head, tail = x.narrow(dim, 0, length - 1), x.narrow(dim, 1, length - 1)
        torch.lerp(tail, head, 0.25, out=even.narrow(dim, 1, length - 1))
        torch.lerp(head, tail, 0.25, out=odd.narrow(dim, 0, length - 1))
        even.narrow(dim, 0, 1).copy_(x.narrow(dim, 0, 1))
        odd.narrow(dim, length - 1, 1).copy_(x.narrow(dim, length - 1, 1))
        return out
    position = ((torch.arange(size, dtype=torch.float64) + 0.5) * (length / size) - 0.5).clamp(min=0)
    lower = position.floor().long().clamp(max=length - 1)
    upper = (lower + 1).clamp(max=length - 1)
    fraction = (position - lower).to(x.dtype).to(x.device).view(size, *([1] * (x.ndim - dim - 1)))
    return torch.lerp(x.index_select(dim, lower.to(x.device)), x.index_select(dim, upper.to(x.device)), fraction)


def _expand(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Separable linear interpolation of (B, *spatial) onto ``size`` (as bi/trilinear ``F.interpolate``)."""
    for dim, length in zip(range(x.ndim - len(size), x.ndim), size):
        if x.shape[dim] != length:
            x = _expand_along(x, dim, int(length))
    return x


def _gradient_magnitude(x: torch.Tensor, n_spatial: int, eps: float = 0.0) -> torch.Tensor:
    """Central-difference gradient magnitude over the last ``n_spatial`` axes.

    ``eps`` is added under the square root (keeps the gradient finite where it is flat).
    """
    total = torch.zeros_like(x)
    for dim in range(x.ndim - n_spatial, x.ndim):
        padded = torch.cat([x.narrow(dim, 0, 1), x, x.narrow(dim, x.shape[dim] - 1, 1)], dim=dim)
        diff = (padded.narrow(dim, 2, x.shape[dim]) - padded.narrow(dim, 0, x.shape[dim])) / 2
        total = total + diff**2
    return (total + eps).sqrt()


def _box_sum3(x: torch.Tensor, n_spatial: int) -> torch.Tensor:
    """Sum over the 3^n window clipped to the image, two passes per axis.

    ``x`` is used as scratch space (its values are lost); the sum comes back in ``x`` or
    in one other buffer of its shape.
    """
    spare = _empty(x.shape, x)
    for dim in range(x.ndim - n_spatial, x.ndim):
        length = x.shape[dim]
        if length < 2:
            continue
        # neighbours first, out[j] = x[j-1] + x[j+1] (only the inner one at a border), then the centre
        torch.add(x.narrow(dim, 0, length - 2), x.narrow(dim, 2, length - 2), out=spare.narrow(dim, 1, length - 2))
        spare.narrow(dim, 0, 1).copy_(x.narrow(dim, 1, 1))
        spare.narrow(dim, length - 1, 1).copy_(x.narrow(dim, length - 2, 1))
        spare.add_(x)
        x, spare = spare, x
    return x


def _first_argmax(scores: Sequence[torch.Tensor | float]) -> torch.Tensor:
    """Index (uint8) of the largest of ``scores`` at every pixel, the first one on ties.

    ``scores`` are tensors of one shape; the first may be a number (the same score everywhere).
    """
    best = scores[0]
    winner = (scores[1] > best).view(torch.uint8)  # bool and uint8 share the layout: 1 where input 1 wins
    for i in range(1, len(scores)):
        if i > 1:
            winner.masked_fill_(scores[i] > best, i)
        if i < len(scores) - 1:
            best = torch.maximum(best, scores[i]) if isinstance(best, torch.Tensor) else scores[i].clamp(min=best)
    return winner


def _one_hot(winner: torch.Tensor, count: int, dtype: torch.dtype) -> torch.Tensor:
    """Masks, shape (count, *spatial): 1 where ``winner`` names that input."""
    return torch.stack([winner == i for i in range(count)]).to(dtype)


def _one_hot_max(score: torch.Tensor) -> torch.Tensor:
    """Selection mask, shape (N, *spatial): 1 for the input with the largest score (the first on ties)."""
    if score.shape[0] == 1:
        return torch.ones_like(score)
    return _one_hot(_first_argmax(list(score)), score.shape[0], score.dtype)


def _pick(values: torch.Tensor, winner: torch.Tensor) -> torch.Tensor:
    """``values[winner[p], p]`` at every pixel p of (N, *spatial) ``values``."""
    picked = _empty(values.shape[1:], values).copy_(values[0])
    for i in range(1, values.shape[0]):
        torch.where(winner == i, values[i], picked, out=picked)
    return picked


def _select_winner(coefficients: torch.Tensor, rule: str, n_spatial: int) -> torch.Tensor:
    """Index (uint8, shape (*spatial)) of the input whose band coefficients win ``rule``.

    "maxabs": the largest magnitude. "energy": the largest sum of squares over the 3^n
    neighbourhood (the argmax of the local mean energy, the window being the same for
    every input). The box sum is linear, so it runs on the energies relative to the first
    input (N - 1 volumes, not N), which then scores 0.
    """
    if rule == "maxabs":
        return _first_argmax(list(torch.abs(coefficients, out=_empty(coefficients.shape, coefficients))))
    if rule == "energy":
        relative = torch.square(coefficients[1:], out=_empty(coefficients[1:].shape, coefficients))
        relative.addcmul_(coefficients[0], coefficients[0], value=-1)
        return _first_argmax([0.0, *_box_sum3(relative, n_spatial)])
    raise ValueError(f"rule must be 'energy' or 'maxabs', not {rule!r}")


def _consistent(winner: torch.Tensor, count: int, n_spatial: int) -> torch.Tensor:
    """Consistency verification (Li, Manjunath & Mitra 1995) of a selection map.

    Every pixel takes the input that wins most pixels of its 3^n neighbourhood, its own
    choice on a tie. Votes are counted relative to input 0 (as in :func:`_select_winner`)
    and doubled, plus 1 for the pixel's own choice, so a tie goes to it while a strict
    majority still overrides it; they stay within +-55 (3D) and are counted in int8.

    Parameters
    ----------
    winner : Tensor, uint8, shape (*spatial)
    count : int
        Number of inputs.
    n_spatial : int

    Returns
    -------
    Tensor, uint8, shape (*spatial)
    """
    relative = _empty((count - 1, *winner.shape), winner, torch.int8)
    first = (winner == 0).view(torch.int8)
    for i in range(1, count):  # +1 where input i wins, -1 where input 0 does
        torch.sub((winner == i).view(torch.int8), first, out=relative[i - 1])
    votes = _box_sum3(_empty(relative.shape, relative).copy_(relative), n_spatial).mul_(2).add_(relative)
    return _first_argmax([0, *votes])


def _select(coefficients: torch.Tensor, rule: str, n_spatial: int) -> torch.Tensor:
    """Selection mask for a band of coefficients, shape (N, *spatial)."""
    return _one_hot(_select_winner(coefficients, rule, n_spatial), coefficients.shape[0], coefficients.dtype)


def _base_weights(base: torch.Tensor, rule: str) -> torch.Tensor:
    if rule == "mean":
        return torch.full_like(base, 1.0 / base.shape[0])
    if rule == "max":
        return _one_hot_max(base)
    raise ValueError(f"base must be 'mean' or 'max', not {rule!r}")


# ----------------------------------------------------------------------------- methods


def _average(stack: torch.Tensor, *, weights: Sequence[float] | None = None):
    n = stack.shape[0]
    if weights is None:
        w = torch.full((n,), 1.0 / n, device=stack.device)
    else:
        w = torch.as_tensor(np.asarray(weights, dtype=np.float32), device=stack.device)
        if w.shape != (n,) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError(f"weights must be {n} non-negative numbers with a positive sum, got {list(weights)}")
        w = w / w.sum()
    maps = w.view(-1, *([1] * (stack.ndim - 1))).expand_as(stack).clone()
    return (maps * stack).sum(0), maps


def _maximum(stack: torch.Tensor):
    maps = _one_hot_max(stack)
    return (maps * stack).sum(0), maps


def _minimum(stack: torch.Tensor):
    maps = _one_hot_max(-stack)
    return (maps * stack).sum(0), maps


def _pca(stack: torch.Tensor):
    flat = stack.reshape(stack.shape[0], -1).double()
    covariance = torch.cov(flat)
    _, vectors = torch.linalg.eigh(covariance)
    principal = vectors[:, -1].abs()
    w = (principal / principal.sum()).float()
    maps = w.view(-1, *([1] * (stack.ndim - 1))).expand_as(stack).clone()
    return (maps * stack).sum(0), maps


def _laplacian(stack: torch.Tensor, *, levels: int = 3, rule: str = "energy", base: str = "max", consistency: int = 1):
    """Laplacian-pyramid fusion (Burt & Adelson).

    ``levels`` band-pass levels (fewer if the image gets smaller than 4 pixels a side);
    each band keeps, per pixel, the coefficient of the input that wins ``rule`` (local
    energy or magnitude), with consistency verification unless ``consistency`` is 0; the
    low-pass top by ``base`` (maximum or mean). The weights average the selections of the
    bands and the top.
    """
    n_spatial = stack.ndim - 1
    gaussians = [stack]
    for _ in range(max(1, int(levels))):
        if min(gaussians[-1].shape[1:]) < 4:
            break
        gaussians.append(_burt_reduce(gaussians[-1], n_spatial))
    top = gaussians[-1]
    weights = _base_weights(top, base)
    fused = (weights * top).sum(0)
    weights = weights[:-1]  # the last input's weight is what the others leave
    for fine, coarse in zip(reversed(gaussians[:-1]), reversed(gaussians[1:])):
        spatial = fine.shape[1:]
        detail = _expand(coarse, spatial)
        torch.sub(fine, detail, out=detail)
        winner = _select_winner(detail, rule, n_spatial)
        if consistency:
            winner = _consistent(winner, stack.shape[0], n_spatial)
        fused = _expand(fused[None], spatial)[0].add_(_pick(detail, winner))
        weights = _expand(weights, spatial)
        for i in range(weights.shape[0]):
            weights[i].add_(winner == i)
    # the finest band is spent by now: its memory (shape of the stack) takes the weights
    all_weights = detail if len(gaussians) > 1 else _empty(stack.shape, stack)
    torch.div(weights, len(gaussians), out=all_weights[:-1])
    all_weights[-1].fill_(1)
    for i in range(weights.shape[0]):
        all_weights[-1].sub_(all_weights[i])
    all_weights[-1].clamp_(min=0)
    return fused, all_weights


_WAVELETS = {
    "haar": [1 / math.sqrt(2), 1 / math.sqrt(2)],
    "db2": [
        (1 + math.sqrt(3)) / (4 * math.sqrt(2)),
        (3 + math.sqrt(3)) / (4 * math.sqrt(2)),
        (3 - math.sqrt(3)) / (4 * math.sqrt(2)),
        (1 - math.sqrt(3)) / (4 * math.sqrt(2)),
    ],
}


def _filter_bank(wavelet: str, device) -> torch.Tensor:
    """Orthogonal analysis filters, shape (2, K): low-pass h and high-pass g[k] = (-1)^k h[K-1-k]."""
    if wavelet not in _WAVELETS:
        raise ValueError(f"wavelet must be one of {sorted(_WAVELETS)}, not {wavelet!r}")
    low = torch.tensor(_WAVELETS[wavelet], dtype=torch.float32, device=device)
    signs = torch.tensor([(-1.0) ** k for k in range(low.numel())], device=device)
    return torch.stack([low, signs * low.flip(0)])


def dwt_1d(x: torch.Tensor, bank: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One level of a periodised orthogonal DWT along ``dim`` (even length).

    ``a[n] = sum_k h[k] x[(2n + k) mod L]``, ``d[n] = sum_k g[k] x[(2n + k) mod L]``.

    Returns
    -------
    approximation, detail : Tensor, each with ``dim`` halved
    """
    moved = x.movedim(dim, -1)
    shape = moved.shape
    lines = moved.reshape(-1, 1, shape[-1])
    taps = bank.shape[1]
    lines = torch.cat([lines, lines[..., : taps - 2]], dim=-1) if taps > 2 else lines
    out = F.conv1d(lines, bank.unsqueeze(1), stride=2)
    half = shape[-1] // 2
    approximation = out[:, 0].reshape(*shape[:-1], half).movedim(-1, dim)
    detail = out[:, 1].reshape(*shape[:-1], half).movedim(-1, dim)
    return approximation, detail


def idwt_1d(approximation: torch.Tensor, detail: torch.Tensor, bank: torch.Tensor, dim: int) -> torch.Tensor:
    """Inverse of :func:`dwt_1d` (the transpose of the orthogonal analysis)."""
    a = approximation.movedim(dim, -1)
    shape = a.shape
    both = torch.stack([a.reshape(-1, shape[-1]), detail.movedim(dim, -1).reshape(-1, shape[-1])], dim=1)
    full = F.conv_transpose1d(both, bank.unsqueeze(1), stride=2)[:, 0]
    length = 2 * shape[-1]
    out = full[:, :length].clone()
    tail = full[:, length:]
    out[:, : tail.shape[-1]] += tail
    return out.reshape(*shape[:-1], length).movedim(-1, dim)


def _pad_even(x: torch.Tensor, n_spatial: int) -> torch.Tensor:
    for dim in range(x.ndim - n_spatial, x.ndim):
        if x.shape[dim] % 2:
            x = torch.cat([x, x.narrow(dim, x.shape[dim] - 1, 1)], dim=dim)
    return x


def dwt(x: torch.Tensor, bank: torch.Tensor, n_spatial: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One level of a separable nD DWT of (B, *spatial) with even sizes.

    Returns
    -------
    approximation : Tensor, shape (B, *spatial / 2)
    details : list of 2**n - 1 Tensors, same shape (every band with a high-pass factor)
    """
    bands = [x]
    for dim in range(x.ndim - n_spatial, x.ndim):
        bands = [part for band in bands for part in dwt_1d(band, bank, dim)]
    return bands[0], bands[1:]


def idwt(approximation: torch.Tensor, details: list[torch.Tensor], bank: torch.Tensor, n_spatial: int) -> torch.Tensor:
    """Inverse of :func:`dwt`."""
    bands = [approximation, *details]
    for dim in reversed(range(approximation.ndim - n_spatial, approximation.ndim)):
        bands = [idwt_1d(bands[i], bands[i + 1], bank, dim) for i in range(0, len(bands), 2)]
    return bands[0]


def _wavelet(stack: torch.Tensor, *, levels: int = 3, wavelet: str = "db2", rule: str = "maxabs", base: str = "mean"):
    n_spatial = stack.ndim - 1
    bank = _filter_bank(wavelet, stack.device)
    spatial = stack.shape[1:]
    pyramid, sizes = [], []
    current = stack
    for _ in range(max(1, int(levels))):
        if min(current.shape[1:]) < 2 * bank.shape[1]:
            break
        sizes.append(current.shape[1:])
        current, details = dwt(_pad_even(current, n_spatial), bank, n_spatial)
        pyramid.append(details)
    base_maps = _base_weights(current, base)
    fused = (base_maps * current).sum(0, keepdim=True)
    weight_sum = _expand(base_maps, spatial)
    for details, size in zip(reversed(pyramid), reversed(sizes)):
        chosen = []
        for band in details:
            masks = _select(band, rule, n_spatial)
            chosen.append((masks * band).sum(0, keepdim=True))
            weight_sum += _expand(masks, spatial) / len(details)
        fused = idwt(fused, chosen, bank, n_spatial)
        fused = fused[(slice(None), *(slice(0, s) for s in size))]
    return fused[0], weight_sum / (len(pyramid) + 1)


def _guided_filter(guide: torch.Tensor, source: torch.Tensor, radius: int, eps: float, n_spatial: int) -> torch.Tensor:
    """He et al. guided filter of ``source`` by ``guide`` (same shapes)."""
    mean_i = _box_mean(guide, radius, n_spatial)
    mean_p = _box_mean(source, radius, n_spatial)
    cov_ip = _box_mean(guide * source, radius, n_spatial) - mean_i * mean_p
    var_i = _box_mean(guide * guide, radius, n_spatial) - mean_i**2
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return _box_mean(a, radius, n_spatial) * guide + _box_mean(b, radius, n_spatial)


def _normalise_maps(maps: torch.Tensor) -> torch.Tensor:
    maps = maps.clamp(min=0)
    total = maps.sum(0, keepdim=True)
    uniform = torch.full_like(maps, 1.0 / maps.shape[0])
    return torch.where(total > 1e-8, maps / total.clamp(min=1e-8), uniform)


def _guided(stack: torch.Tensor, *, r1: int = 45, eps1: float = 0.3, r2: int = 7, eps2: float = 1e-6):
    """Guided-filter fusion (Li, Kang & Hu 2013) with the saliency measured on the detail layers.

    Two scales: base layers (31-pixel box mean) and details. As in the paper, every pixel
    goes to the most salient source, and that decision is refined by guided filters into
    base weights (``r1``, ``eps1``) and detail weights (``r2``, ``eps2``). The paper's
    saliency is the Gaussian-smoothed |Laplacian| of the image, which amplifies pixel
    noise and all but ignores smooth structures: beside a noisy source, a smooth one (a
    PET hot spot) is never the most salient, gets weight 0 everywhere and vanishes. Here
    the saliency is the local energy of the detail layer (the band being fused, smoothed
    the same way), where a hot spot stands out against the noise.
    """
    n_spatial = stack.ndim - 1
    base = _box_mean(stack, 15, n_spatial)
    detail = stack - base
    decision = _one_hot_max(_gaussian(detail**2, 5.0, n_spatial, radius=5))
    w_base = _normalise_maps(_guided_filter(stack, decision, int(r1), float(eps1), n_spatial))
    w_detail = _normalise_maps(_guided_filter(stack, decision, int(r2), float(eps2), n_spatial))
    fused = (w_base * base).sum(0) + (w_detail * detail).sum(0)
    return fused, (w_base + w_detail) / 2


def _sobel_magnitude(stack: torch.Tensor, n_spatial: int) -> torch.Tensor:
    """Sobel gradient magnitude of every input: a central difference along one axis,
    [1, 2, 1] / 4 smoothing along each other axis, summed in quadrature over the axes."""
    difference = torch.tensor([-0.5, 0.0, 0.5], device=stack.device)
    smoothing = torch.tensor([0.25, 0.5, 0.25], device=stack.device)
    dims = range(stack.ndim - n_spatial, stack.ndim)
    total = torch.zeros_like(stack)
    for axis in dims:
        derivative = stack
        for dim in dims:
            derivative = _along(derivative, difference if dim == axis else smoothing, dim)
        total.addcmul_(derivative, derivative)
    return total.sqrt_()


def _activity(stack: torch.Tensor, *, radius: int = 2, consistency: int = 3):
    """Spatial-domain selection: each pixel comes from the input with the most local detail.

    Activity is the mean Sobel gradient magnitude over the (2 radius + 1)^n window; the
    per-pixel choice then takes the majority over the (2 consistency + 1)^n window
    (consistency verification; 0: none). Pixels are copied from the sources, never blended.
    """
    n_spatial = stack.ndim - 1
    count = stack.shape[0]
    activity = _box_mean(_sobel_magnitude(stack, n_spatial), int(radius), n_spatial)
    winner = _first_argmax(list(activity))
    if consistency:
        votes = _box_mean(_one_hot(winner, count, stack.dtype), int(consistency), n_spatial)
        winner = _first_argmax(list(votes))
    return _pick(stack, winner), _one_hot(winner, count, stack.dtype)


def _saliency(stack: torch.Tensor, *, sigma: float = 1.0, smooth: float = 5.0):
    n_spatial = stack.ndim - 1
    means = stack.reshape(stack.shape[0], -1).mean(1).view(-1, *([1] * n_spatial))
    saliency = (_gaussian(stack, float(sigma), n_spatial) - means).abs()
    maps = _normalise_maps(_gaussian(saliency, float(smooth), n_spatial))
    return (maps * stack).sum(0), maps


# ----------------------------------------------------------------------------- learned


def _ssim_map(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM map of (B, 1, H, W) images in [0, 1] with a 7x7 uniform window."""
    c1, c2 = 0.01**2, 0.03**2
    mx, my = F.avg_pool2d(x, 7, 1, 3, count_include_pad=False), F.avg_pool2d(y, 7, 1, 3, count_include_pad=False)
    vx = F.avg_pool2d(x * x, 7, 1, 3, count_include_pad=False) - mx**2
    vy = F.avg_pool2d(y * y, 7, 1, 3, count_include_pad=False) - my**2
    cxy = F.avg_pool2d(x * y, 7, 1, 3, count_include_pad=False) - mx * my
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))


class WeightNet(torch.nn.Module):
    """Small fully convolutional net: N images -> N per-pixel softmax weights.

    Dilated 3x3 convolutions (receptive field 31 pixels); the last layer starts at zero
    so training starts from the plain average. Each input's logits are centred on their
    mean over the image: the net decides where a source wins, not whether it is used at
    all. Without that, the loss terms that favour one source on most pixels (a noisy
    T1's gradients, its brighter mean) move every logit together from the first steps,
    the softmax saturates (logit gaps of hundreds) and its gradients vanish before the
    net learns where the other source (a PET hot spot) should win: the fusion collapses
    to one source.
    """

    def __init__(self, n_inputs: int, width: int = 16):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(2 * n_inputs, width, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(width, width, 3, padding=2, dilation=2),
            torch.nn.ReLU(),
            torch.nn.Conv2d(width, width, 3, padding=4, dilation=4),
            torch.nn.ReLU(),
            torch.nn.Conv2d(width, width, 3, padding=8, dilation=8),
            torch.nn.ReLU(),
        )
        self.head = torch.nn.Conv2d(width, n_inputs, 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, stack: torch.Tensor) -> torch.Tensor:
        """Weights, shape (B, N, H, W), for images ``stack``, shape (B, N, H, W)."""
        features = torch.cat([stack, _gradient_magnitude(stack, 2)], dim=1)
        logits = self.head(self.body(features))
        return torch.softmax(logits - logits.mean(dim=(2, 3), keepdim=True), dim=1)


def _learned_loss(weights: torch.Tensor, stack: torch.Tensor, lambdas: tuple[float, float, float]) -> torch.Tensor:
    fused = (weights * stack).sum(1, keepdim=True)
    ssim_term = sum(1 - _ssim_map(fused, stack[:, i : i + 1]).mean() for i in range(stack.shape[1])) / stack.shape[1]
    grad_target = _gradient_magnitude(stack, 2).amax(1, keepdim=True)
    grad_term = (_gradient_magnitude(fused, 2, eps=1e-8) - grad_target).abs().mean()
    intensity_term = (fused - stack.amax(1, keepdim=True)).abs().mean()
    return lambdas[0] * ssim_term + lambdas[1] * grad_term + lambdas[2] * intensity_term


def _training_planes(stack: torch.Tensor, count: int) -> torch.Tensor:
    """Planes (B, N, H, W) to train on: the image itself (2D) or the most varied slices (3D)."""
    if stack.ndim == 3:
        return stack[None]
    spread = stack.std(dim=(2, 3)).sum(0)
    chosen = torch.argsort(spread, descending=True)[:count].sort().values
    return stack[:, chosen].transpose(0, 1)


def _random_crops(planes: torch.Tensor, size: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` random crops, shape (count, N, size, size), of planes (B, N, H, W)."""
    _, _, height, width = planes.shape
    size_y, size_x = min(size, height), min(size, width)
    picks = torch.randint(0, planes.shape[0], (count,), generator=generator)
    ys = torch.randint(0, height - size_y + 1, (count,), generator=generator)
    xs = torch.randint(0, width - size_x + 1, (count,), generator=generator)
    return torch.stack(
        [planes[int(p), :, int(y) : int(y) + size_y, int(x) : int(x) + size_x] for p, y, x in zip(picks, ys, xs)]
    )


def _learned(
    stack: torch.Tensor,
    *,
    n_iter: int = 80,
    lr: float = 0.01,
    width: int = 8,
    crop: int = 64,
    w_ssim: float = 1.0,
    w_grad: float = 10.0,
    w_intensity: float = 1.0,
    seed: int = 0,
):
    """Train :class:`WeightNet` on random crops of these images, then predict the weights.

    The loss pulls the fused image towards each source's structure (SSIM), the
    strongest source gradient and the brightest source intensity, as unsupervised
    fusion networks do; the softmax weights are the explanation.
    """
    if stack.ndim not in (3, 4):
        raise ValueError(f"learned fusion needs 2D or 3D images, got {stack.ndim - 1}D")
    generator = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        net = WeightNet(stack.shape[0], int(width)).to(stack.device)
    planes = _training_planes(stack, 8)
    optimiser = torch.optim.Adam(net.parameters(), lr=float(lr))
    lambdas = (float(w_ssim), float(w_grad), float(w_intensity))
    n_iter = int(n_iter)
    for step in range(n_iter):
        batch = _random_crops(planes, int(crop), 4, generator)
        loss = _learned_loss(net(batch), batch, lambdas)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        yield FusionProgress(step + 1, n_iter, f"training: loss {loss.item():.4f}")
    with torch.no_grad():
        if stack.ndim == 3:
            weights = net(stack[None])[0]
        else:
            weights = torch.cat([net(stack[:, z][None])[0][:, None] for z in range(stack.shape[1])], dim=1)
    return (weights * stack).sum(0), weights


# ----------------------------------------------------------------------------- registry

METHODS: dict[str, FusionMethod] = {
    m.name: m
    for m in (
        FusionMethod("average", _average, {}, "Weighted average (equal weights unless given)."),
        FusionMethod("maximum", _maximum, {}, "Per-pixel maximum selection."),
        FusionMethod("minimum", _minimum, {}, "Per-pixel minimum selection."),
        FusionMethod("pca", _pca, {}, "Weights from the principal component of the inputs' covariance."),
        FusionMethod(
            "laplacian",
            _laplacian,
            {"levels": 3, "rule": "energy", "base": "max", "consistency": 1},
            "Laplacian pyramid: detail coefficients chosen per band by local energy (or max-abs) with "
            "consistency verification (consistency=0: without), base by maximum (or mean).",
        ),
        FusionMethod(
            "wavelet",
            _wavelet,
            {"levels": 3, "wavelet": "db2", "rule": "maxabs", "base": "mean"},
            "Orthogonal DWT (Haar or db2): detail coefficients by max-abs (or local energy), approximation averaged.",
        ),
        FusionMethod(
            "activity",
            _activity,
            {"radius": 2, "consistency": 3},
            "Per-pixel selection of the input with the most local gradient activity (mean Sobel "
            "magnitude in a (2 radius + 1)^n window), majority-filtered over (2 consistency + 1)^n.",
        ),
        FusionMethod(
            "guided",
            _guided,
            {"r1": 45, "eps1": 0.3, "r2": 7, "eps2": 1e-6},
            "Guided-filter fusion (Li, Kang & Hu 2013): two-scale, saliency (local detail energy) "
            "decisions refined by guided filters.",
        ),
        FusionMethod(
            "saliency",
            _saliency,
            {"sigma": 1.0, "smooth": 5.0},
            "Frequency-tuned saliency (distance to the image mean) as per-pixel weights.",
        ),
        FusionMethod(
            "learned",
            _learned,
            {
                "n_iter": 80,
                "lr": 0.01,
                "width": 8,
                "crop": 64,
                "w_ssim": 1.0,
                "w_grad": 10.0,
                "w_intensity": 1.0,
                "seed": 0,
            },
            "Small CNN trained on these images (SSIM, gradient and intensity fidelity) to predict softmax weights.",
            interactive=False,
        ),
    )
}
COLOUR_METHOD = "colour"
COLOUR_DEFAULTS = {"inner": DEFAULT_METHOD, "colormap": "hot", "functional": None}
PARAMETER_CHOICES = {
    "rule": ("energy", "maxabs"),
    "base": ("max", "mean"),
    "wavelet": ("db2", "haar"),
    "colormap": ("hot", "jet"),
    "inner": tuple(METHODS),
}
"""Allowed values of the string parameters (the widget and the CLI offer these)."""
PARAMETER_RANGES: dict[str, ParameterRange] = {
    # laplacian, wavelet
    "levels": ParameterRange(int, 1, 10),
    # laplacian, activity
    "consistency": ParameterRange(int, 0, 25),
    # activity
    "radius": ParameterRange(int, 0, 100),
    # guided
    "r1": ParameterRange(int, 1, 500),
    "eps1": ParameterRange(float, 0.0, None, open_minimum=True),
    "r2": ParameterRange(int, 1, 500),
    "eps2": ParameterRange(float, 0.0, None, open_minimum=True),
    # saliency
    "sigma": ParameterRange(float, 0.0, 1000.0, open_minimum=True),
    "smooth": ParameterRange(float, 0.0, 1000.0, open_minimum=True),
    # learned
    "n_iter": ParameterRange(int, 1, 100_000),
    "lr": ParameterRange(float, 0.0, 10.0, open_minimum=True),
    "width": ParameterRange(int, 1, 256),
    "crop": ParameterRange(int, 8, 1024),
    "w_ssim": ParameterRange(float, 0.0, None),
    "w_grad": ParameterRange(float, 0.0, None),
    "w_intensity": ParameterRange(float, 0.0, None),
    "seed": ParameterRange(int, 0, 2**32 - 1),
    # average (each of the comma-separated weights)
    "weights": ParameterRange(float, 0.0, None),
}
"""Allowed values of the numeric parameters, by name (the CLI checks ``--param`` values against these)."""
MODALITIES = ("MR", "MRI", "CT", "PET", "SPECT", "NM", "US", "XR", "CR", "DX", "MG", "OT")
"""Modality names the CLI accepts (case-insensitive); :func:`intensity_window` gives CT, PET,
SPECT and NM their own windows, the others percentiles."""


def check_modality(name: str | None) -> None:
    """Refuse a modality name that is not one of :data:`MODALITIES` (None: unknown, allowed)."""
    if name is not None and name.upper() not in MODALITIES:
        raise ValueError(f"unknown modality {name!r}; choose one of {', '.join(MODALITIES)}")


def parse_parameter(method: str, key: str, text: str, *, inner: str | None = None):
    """Convert a ``key=value`` text (CLI, config) to the type of the method's default.

    For ``"colour"``, keys of the ``inner`` method (default :data:`DEFAULT_METHOD`) count too.

    Raises
    ------
    ValueError
        Unknown key for the method, or a value that does not parse / is not allowed.
    """
    defaults = method_defaults(method)
    if method == COLOUR_METHOD:
        inner = inner or defaults["inner"]
        if inner not in METHODS:
            raise ValueError(f"inner must be one of {list(METHODS)}, not {inner!r}")
        defaults = {**METHODS[inner].defaults, **defaults}
    if key not in defaults and not (method == "average" and key == "weights"):
        raise ValueError(f"method {method!r} has no parameter {key!r}; it takes {sorted(defaults)}")
    if key == "weights":
        weights = [check_parameter(key, v, PARAMETER_RANGES[key]) for v in text.split(",")]
        if not sum(weights) > 0:
            raise ValueError(f"weights must not all be 0, got {text}")
        return weights
    default = defaults[key]
    if key in PARAMETER_CHOICES:
        if text not in PARAMETER_CHOICES[key]:
            raise ValueError(f"{key} must be one of {list(PARAMETER_CHOICES[key])}, not {text!r}")
        return text
    if key in PARAMETER_RANGES:
        return check_parameter(key, text, PARAMETER_RANGES[key])
    if default is None or isinstance(default, int) and not isinstance(default, bool):
        return int(text)
    return float(text)


def method_names() -> list[str]:
    """Every method name :func:`fuse` accepts, grey methods first, then ``"colour"``."""
    return [*METHODS, COLOUR_METHOD]


def is_colour(image, rgb: bool | None = None) -> bool:
    """Whether an image carries colour: RGB(A) (``rgb``, by default a last axis of 3 or 4)
    whose R, G and B differ somewhere. Grey stored as RGB is not colour (fusion treats it as grey).
    """
    array = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image)
    if not (_infer_rgb([array])[0] if rgb is None else rgb):
        return False
    return not (np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 0], array[..., 2]))


def auto_method(images: Sequence, rgb: Sequence[bool] | None = None, *, grey_method: str = DEFAULT_METHOD) -> str:
    """The method a fusion "with the defaults" uses for these inputs.

    ``"colour"`` (luminance fused by ``grey_method``, the default inner method, chroma from
    the colour image) when any input is colour (see :func:`is_colour`), else ``grey_method``.

    Parameters
    ----------
    images : sequence of ndarray
    rgb : sequence of bool, optional
        Which images are RGB (default: inferred as in :func:`fuse`).
    grey_method : str
        The method for grey inputs.

    Returns
    -------
    str
    """
    flags = [None] * len(images) if rgb is None else list(rgb)
    return COLOUR_METHOD if any(is_colour(a, f) for a, f in zip(images, flags)) else grey_method


def method_defaults(method: str) -> dict:
    """Default parameters of a method (for ``"colour"``: its own plus the inner method's)."""
    if method == COLOUR_METHOD:
        return dict(COLOUR_DEFAULTS)
    if method not in METHODS:
        raise ValueError(f"unknown fusion method {method!r}; choose one of {method_names()}")
    return dict(METHODS[method].defaults)


# ----------------------------------------------------------------------------- colour


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 full-range YCbCr of an RGB image in [0, 1].

    Parameters
    ----------
    rgb : ndarray, shape (..., 3)

    Returns
    -------
    ndarray, shape (..., 3), float32
        Y in [0, 1]; Cb, Cr in [-0.5, 0.5].
    """
    rgb = np.asarray(rgb, dtype=np.float32)
    y = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    cb = _RGB_TO_YCBCR_CB * (rgb[..., 2] - y)
    cr = _RGB_TO_YCBCR_CR * (rgb[..., 0] - y)
    return np.stack([y, cb, cr], axis=-1).astype(np.float32)


def ycbcr_to_rgb(ycbcr: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_ycbcr`, clipped to [0, 1]; shape (..., 3), float32."""
    ycbcr = np.asarray(ycbcr, dtype=np.float32)
    y, cb, cr = ycbcr[..., 0], ycbcr[..., 1] / _RGB_TO_YCBCR_CB, ycbcr[..., 2] / _RGB_TO_YCBCR_CR
    r = y + cr
    b = y + cb
    g = (y - 0.299 * r - 0.114 * b) / 0.587
    return np.clip(np.stack([r, g, b], axis=-1), 0, 1).astype(np.float32)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Luminance Y (BT.601) of an RGB(A) image, shape (..., 3 or 4) -> (...), float32."""
    return rgb_to_ycbcr(np.asarray(rgb)[..., :3])[..., 0]


def apply_colormap(image: np.ndarray, name: str = "hot") -> np.ndarray:
    """Colour a grey image in [0, 1] with a standard functional-imaging colormap.

    Parameters
    ----------
    image : ndarray, shape (*spatial)
    name : {"hot", "jet"}
        "hot": black - red - yellow - white (the usual PET map); "jet": blue - cyan -
        yellow - red.

    Returns
    -------
    ndarray, shape (*spatial, 3), float32 in [0, 1]
    """
    x = np.clip(np.asarray(image, dtype=np.float32), 0, 1)
    if name == "hot":
        channels = [np.clip(3 * x, 0, 1), np.clip(3 * x - 1, 0, 1), np.clip(3 * x - 2, 0, 1)]
    elif name == "jet":
        channels = [np.clip(1.5 - np.abs(4 * x - c), 0, 1) for c in (3.0, 2.0, 1.0)]
    else:
        raise ValueError(f"colormap must be 'hot' or 'jet', not {name!r}")
    return np.stack(channels, axis=-1).astype(np.float32)


# ----------------------------------------------------------------------------- inputs


def intensity_window(
    image: np.ndarray,
    *,
    modality: str | None = None,
    low: float = 1.0,
    high: float = 99.0,
) -> tuple[float, float]:
    """The (lower, upper) intensities :func:`normalise_intensity` maps to 0 and 1.

    Parameters
    ----------
    image : ndarray, shape (*spatial)
    modality, low, high
        As in :func:`normalise_intensity`.

    Returns
    -------
    (float, float)
        A non-empty window (the full range when the percentiles coincide).

    Raises
    ------
    ValueError
        If the image holds NaN/Inf or is constant, or the percentiles are out of order.
    """
    data = np.asarray(image, dtype=np.float32)
    finite = np.isfinite(data)
    if not finite.all():
        raise ValueError(
            f"image has {data.size - int(finite.sum())} NaN/Inf pixels; fill them first (e.g. numpy.nan_to_num)"
        )
    if not 0 <= low < high <= 100:
        raise ValueError(f"percentiles need 0 <= low < high <= 100, got low={low}, high={high}")
    kind = (modality or "").upper()
    sample = data.ravel()[:: max(1, data.size // _PERCENTILE_SAMPLE)]
    minimum, maximum = float(data.min()), float(data.max())
    if kind == "CT" and minimum < -200:
        lower, upper = CT_WINDOW
    elif kind in ("PET", "SPECT", "NM") and minimum >= 0:
        lower, upper = 0.0, float(np.percentile(sample, high))
    else:
        lower, upper = (float(v) for v in np.percentile(sample, [low, high]))
    if upper <= lower:
        lower, upper = minimum, maximum
    if upper <= lower:
        raise ValueError(f"image is constant (every pixel = {lower:g}): it has nothing to contribute to a fusion")
    return lower, upper


def normalise_intensity(
    image: np.ndarray,
    *,
    modality: str | None = None,
    low: float = 1.0,
    high: float = 99.0,
    window: tuple[float, float] | None = None,
) -> np.ndarray:
    """Scale one modality's intensities robustly to [0, 1].

    Parameters
    ----------
    image : ndarray, shape (*spatial)
    modality : str, optional
        "CT" in Hounsfield units (minimum below -200) gets :data:`CT_WINDOW`; "PET"/"SPECT"
        keep 0 as black (SUV or counts) and clip at the ``high`` percentile; anything
        else is clipped between the ``low`` and ``high`` percentiles.
    low, high : float
        Percentiles (0-100) mapped to 0 and 1.
    window : (float, float), optional
        Explicit (lower, upper) intensity window; overrides ``modality`` and percentiles.

    Returns
    -------
    ndarray, shape (*spatial), float32 in [0, 1]

    Raises
    ------
    ValueError
        If the image holds NaN/Inf, is constant, or the window is empty.
    """
    data = np.asarray(image, dtype=np.float32)
    if window is None:
        lower, upper = intensity_window(data, modality=modality, low=low, high=high)
    else:
        lower, upper = (float(v) for v in window)
        if upper <= lower:
            raise ValueError(f"window must have lower < upper, got {window}")
        if not np.isfinite(data).all():
            raise ValueError("image has NaN/Inf pixels; fill them first (e.g. numpy.nan_to_num)")
    return np.clip((data - lower) / (upper - lower), 0, 1).astype(np.float32)


def _infer_rgb(images: Sequence[np.ndarray]) -> list[bool]:
    return [a.ndim in (3, 4) and a.shape[-1] in (3, 4) for a in images]


def _prepare(images: Sequence, rgb: Sequence[bool] | None, normalise: bool, colour: bool):
    """Validate inputs; return float32 images (achromatic RGB turned grey) and RGB flags.

    The images are new float32 memory (inputs are never written to): one stacked array,
    shape (N, *spatial), when all are grey, else a list of arrays.
    """
    if isinstance(images, np.ndarray) or len(images) < 2:
        count = 1 if isinstance(images, np.ndarray) else len(images)
        raise ValueError(f"fusion needs at least two images, got {count}; pass a list of arrays")
    arrays = [np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a) for a in images]
    flags = _infer_rgb(arrays) if rgb is None else [bool(f) for f in rgb]
    if len(flags) != len(arrays):
        raise ValueError(f"rgb has {len(flags)} flags for {len(arrays)} images")
    prepared, is_rgb, ranges = [], [], []
    for i, (array, flag) in enumerate(zip(arrays, flags)):
        if array.dtype.kind not in "biuf":
            raise ValueError(f"image {i} has dtype {array.dtype}; fusion needs numbers")
        data = np.asarray(array, dtype=np.float32)  # read only: copied (and scaled) below
        lo, hi = float(data.min()), float(data.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):  # min/max propagate NaN and reach Inf
            bad = data.size - int(np.isfinite(data).sum())
            raise ValueError(f"image {i} has {bad} NaN/Inf pixels; fill them first (e.g. numpy.nan_to_num)")
        if hi <= lo:
            raise ValueError(f"image {i} is constant (every pixel = {lo:g}): it has nothing to contribute to a fusion")
        if flag:
            data = data[..., :3]
            if np.array_equal(data[..., 0], data[..., 1]) and np.array_equal(data[..., 0], data[..., 2]):
                data, flag = data[..., 0], False
            lo, hi = float(data.min()), float(data.max())
        prepared.append(data)
        is_rgb.append(flag)
        ranges.append((lo, hi) if normalise else None)
    spatial = [a.shape[:-1] if f else a.shape for a, f in zip(prepared, is_rgb)]
    for i, shape in enumerate(spatial):
        if len(shape) not in (2, 3):
            raise ValueError(f"image {i} has {len(shape)} spatial axes; fusion handles 2D and 3D images")
        if len(shape) != len(spatial[0]):
            raise ValueError(
                f"image 0 is {len(spatial[0])}D but image {i} is {len(shape)}D; "
                "fuse images of one dimensionality (take a slice, or resample the 2D image into the volume)"
            )
        if shape != spatial[0]:
            raise ValueError(
                f"image 0 has shape {spatial[0]} but image {i} {shape}; put them on one grid first "
                "(fuse_on_reference resamples through the world affines)"
            )
    if any(is_rgb) and not colour:
        which = [i for i, f in enumerate(is_rgb) if f]
        raise ValueError(
            f"image(s) {which} are RGB and the other(s) grey; grey methods need grey images: use "
            "method='colour' to keep the colour, or pass the luminance (napari_mmfuse.core.fuse.luminance)"
        )
    if any(is_rgb):
        return [_copy_scaled(a, r, np.empty(a.shape, np.float32)) for a, r in zip(prepared, ranges)], is_rgb
    stacked = np.empty((len(prepared), *spatial[0]), np.float32)
    for data, value_range, out in zip(prepared, ranges, stacked):
        _copy_scaled(data, value_range, out)
    return stacked, is_rgb


def _copy_scaled(data: np.ndarray, value_range: tuple[float, float] | None, out: np.ndarray) -> np.ndarray:
    """Write ``data`` into ``out``, mapped from ``value_range`` = (lower, upper) onto [0, 1] if given."""
    if value_range is None:
        out[...] = data
    else:
        lower, upper = value_range
        np.subtract(data, lower, out=out, dtype=np.float32)
        out /= upper - lower
    return out


def _run(method: str, stack: torch.Tensor, params: dict):
    """Generator: run a registered grey method on a (N, *spatial) stack."""
    spec = METHODS[method]
    unknown = set(params) - set(spec.defaults) - ({"weights"} if method == "average" else set())
    if unknown:
        raise ValueError(f"method {method!r} has no parameter(s) {sorted(unknown)}; it takes {sorted(spec.defaults)}")
    if inspect.isgeneratorfunction(spec.run):
        return (yield from spec.run(stack, **params))
    with torch.no_grad():
        return spec.run(stack, **params)


def fuse_steps(
    images: Sequence[np.ndarray],
    *,
    method: str = DEFAULT_METHOD,
    rgb: Sequence[bool] | None = None,
    normalise: bool = True,
    device=None,
    **params,
) -> Generator[FusionProgress, None, FusionResult]:
    """Fuse images on one grid, yielding progress (a generator; see :func:`fuse`).

    Yields
    ------
    FusionProgress
        Only methods that iterate ("learned") yield; the others return at once.

    Returns
    -------
    FusionResult
    """
    if method not in METHODS and method != COLOUR_METHOD:
        raise ValueError(f"unknown fusion method {method!r}; choose one of {method_names()}")
    colour = method == COLOUR_METHOD
    arrays, is_rgb = _prepare(images, rgb, normalise, colour)
    device = get_device(device)
    if not colour:
        stack = torch.from_numpy(arrays).to(device)
        fused, weights = yield from _run(method, stack, params)
        used = {**METHODS[method].defaults, **params}
        return FusionResult(_to_numpy(fused.clamp(0, 1)), _to_numpy(weights), method, used)

    options = {**COLOUR_DEFAULTS, **params}
    inner, colormap, functional = options.pop("inner"), options.pop("colormap"), options.pop("functional")
    if inner not in METHODS:
        raise ValueError(f"colour fusion needs a grey inner method, one of {list(METHODS)}, not {inner!r}")
    rgb_indices = [i for i, f in enumerate(is_rgb) if f]
    if len(rgb_indices) > 1:
        raise ValueError(f"colour fusion takes one functional (colour) image, got {len(rgb_indices)} RGB images")
    if functional is None:
        functional = rgb_indices[0] if rgb_indices else len(arrays) - 1
    functional = int(functional)
    if not 0 <= functional < len(arrays):
        raise ValueError(f"functional must index one of the {len(arrays)} images, got {functional}")
    if rgb_indices and rgb_indices[0] != functional:
        raise ValueError(
            f"image {rgb_indices[0]} is RGB but functional={functional}; the colour image is the functional one"
        )
    colour_image = arrays[functional] if is_rgb[functional] else apply_colormap(arrays[functional], colormap)
    ycbcr = rgb_to_ycbcr(colour_image)
    lumas = [ycbcr[..., 0] if i == functional else a for i, a in enumerate(arrays)]
    stack = torch.from_numpy(np.stack(lumas)).to(device)
    fused, weights = yield from _run(inner, stack, options)
    fused_y = _to_numpy(fused.clamp(0, 1))
    out = ycbcr_to_rgb(np.concatenate([fused_y[..., None], ycbcr[..., 1:]], axis=-1))
    used = {"inner": inner, "colormap": colormap, "functional": functional, **METHODS[inner].defaults, **options}
    return FusionResult(out, _to_numpy(weights), COLOUR_METHOD, used)


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().float().cpu().numpy(), dtype=np.float32)


def fuse(
    images: Sequence[np.ndarray],
    *,
    method: str = DEFAULT_METHOD,
    rgb: Sequence[bool] | None = None,
    normalise: bool = True,
    device=None,
    **params,
) -> FusionResult:
    """Fuse N >= 2 images that lie on one grid.

    Parameters
    ----------
    images : sequence of ndarray, each shape (*spatial) or (*spatial, 3) for RGB
        2D or 3D images on the same grid (inputs are never modified).
    method : str
        A key of :data:`METHODS` or ``"colour"`` (see :func:`method_names`).
    rgb : sequence of bool, optional
        Which images are RGB; by default those whose last axis has length 3 or 4 (and
        that are 2D or 3D without it). RGB images with three equal channels count as grey.
    normalise : bool
        Scale each image to [0, 1] by its minimum and maximum (RGB images jointly over
        channels). With ``False`` the images must already be in [0, 1]; use
        :func:`normalise_intensity` or :func:`fuse_on_reference` for modality-aware scaling.
    device : str or torch.device, optional
        Compute device; defaults to :func:`~napari_mmfuse.core.device.get_device`.
    **params
        Method parameters (see :func:`method_defaults`). Colour fusion takes ``inner``
        (grey method fusing the luminance), ``colormap`` ("hot" or "jet", for a grey
        functional image), ``functional`` (its index; default the RGB image, else the
        last) and the inner method's parameters.

    Returns
    -------
    FusionResult
        ``fused`` float32, shape (*spatial) in [0, 1], or (*spatial, 3) for ``"colour"``;
        ``weights`` float32, shape (N, *spatial), summing to 1 over the first axis.

    Raises
    ------
    ValueError
        Fewer than two images, mixed dimensionality or shapes, RGB with a grey method,
        a constant image, NaN/Inf, an unknown method or parameter.
    """
    steps = fuse_steps(images, method=method, rgb=rgb, normalise=normalise, device=device, **params)
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


def check_overlap(shapes, affines, *, reference_index: int = 0, min_overlap: float = 1e-3) -> None:
    """Raise a ValueError naming every image whose world box misses the reference's.

    Parameters
    ----------
    shapes : sequence of tuple of int
        Spatial shapes.
    affines : sequence of ndarray, each shape (n + 1, n + 1)
    reference_index : int
    min_overlap : float
        Smallest fraction of the reference's world box an image must cover.
    """
    ref_shape, ref_affine = shapes[reference_index], affines[reference_index]
    for i, (shape, affine) in enumerate(zip(shapes, affines)):
        if len(shape) != len(ref_shape):
            raise ValueError(
                f"image {i} is {len(shape)}D but the reference (image {reference_index}) is "
                f"{len(ref_shape)}D; choose images of one dimensionality"
            )
        overlap = space.overlap_fraction(ref_shape, ref_affine, shape, affine)
        if overlap < min_overlap:
            raise ValueError(
                f"image {i} does not overlap the reference (image {reference_index}) in world space "
                f"(it covers {100 * overlap:.2g}% of it): check where they are placed, or register them first"
            )


def resample_to_reference(
    images: Sequence[np.ndarray],
    affines: Sequence[np.ndarray],
    *,
    reference_index: int = 0,
    rgb: Sequence[bool] | None = None,
    modalities: Sequence[str | None] | None = None,
    low: float = 1.0,
    high: float = 99.0,
    plane: int | None = None,
    windows: Sequence[tuple[float, float] | None] | None = None,
    min_overlap: float = 1e-3,
    device=None,
) -> list[np.ndarray]:
    """Resample every image onto the reference grid and normalise its intensities.

    Parameters
    ----------
    images : sequence of ndarray, each shape (*spatial) or (*spatial, 3) for RGB
    affines : sequence of ndarray, each shape (n + 1, n + 1)
        Index -> world affines (napari order, see :mod:`napari_mmfuse.core.space`).
    reference_index : int
        The image whose grid the others are resampled onto.
    rgb, modalities : sequences, optional
        Per-image RGB flags (default: inferred as in :func:`fuse`) and modality names
        for :func:`normalise_intensity`.
    low, high : float
        Percentiles for :func:`normalise_intensity`.
    plane : int, optional
        For a 3D reference, resample only this index along its first axis (a live
        preview); the images come back 2D, shape (Y, X).
    windows : sequence of (float, float) or None, optional
        Intensity windows of the grey images (as :func:`intensity_window` returns, e.g.
        cached between previews); None entries are computed from the whole image.
    min_overlap : float
        Smallest fraction of the reference's world box an image must cover.

    Returns
    -------
    list of ndarray, float32 in [0, 1]; shape reference spatial shape (plus 3 for RGB)

    Raises
    ------
    ValueError
        Mismatched counts or dimensionality, an image that does not overlap the reference
        in world space, NaN/Inf, a constant image.
    """
    if len(images) < 2:
        raise ValueError(f"fusion needs at least two images, got {len(images)}")
    if len(affines) != len(images):
        raise ValueError(f"got {len(images)} images but {len(affines)} affines")
    if not 0 <= reference_index < len(images):
        raise ValueError(f"reference_index {reference_index} is not one of the {len(images)} images")
    arrays = [np.asarray(a) for a in images]
    flags = _infer_rgb(arrays) if rgb is None else [bool(f) for f in rgb]
    modalities = list(modalities) if modalities is not None else [None] * len(arrays)
    ref = arrays[reference_index]
    ref_shape = ref.shape[:-1] if flags[reference_index] else ref.shape
    ref_affine = np.asarray(affines[reference_index], dtype=np.float64)
    n = len(ref_shape)
    grid_shape, grid_affine = ref_shape, ref_affine
    if plane is not None:
        if n != 3:
            raise ValueError("plane only applies to a 3D reference")
        if not 0 <= plane < ref_shape[0]:
            raise ValueError(f"plane {plane} is outside the reference's {ref_shape[0]} planes")
        shift = np.eye(4)
        shift[0, 3] = plane
        grid_shape, grid_affine = (1, *ref_shape[1:]), ref_affine @ shift
    shapes = [a.shape[:-1] if f else a.shape for a, f in zip(arrays, flags)]
    check_overlap(shapes, [np.asarray(a, dtype=np.float64) for a in affines], reference_index=reference_index,
                  min_overlap=min_overlap)
    out = []
    for i, (array, affine, flag) in enumerate(zip(arrays, affines, flags)):
        data = np.asarray(array, dtype=np.float32)
        bad = data.size - int(np.isfinite(data).sum())
        if bad:
            raise ValueError(f"image {i} has {bad} NaN/Inf pixels; fill them first (e.g. numpy.nan_to_num)")
        if flag:
            data = data[..., :3]
            lower, upper = 0.0, 255.0 if array.dtype == np.uint8 else max(float(data.max()), 1e-12)
        elif windows is not None and windows[i] is not None:
            lower, upper = (float(v) for v in windows[i])
        else:
            try:
                lower, upper = intensity_window(data, modality=modalities[i], low=low, high=high)
            except ValueError as error:
                raise ValueError(f"image {i}: {error}") from None
        shape = data.shape[:-1] if flag else data.shape
        if shape == tuple(ref_shape) and np.allclose(affine, ref_affine, atol=1e-9):
            resampled = data if plane is None else data[plane]  # already on the reference grid
        else:
            resampled = space.resample(
                data, affine, grid_shape, grid_affine, channel_axis=-1 if flag else None, fill_value=lower,
                device=device,
            )
            if plane is not None:
                resampled = resampled[0]
        out.append(np.clip((resampled - lower) / (upper - lower), 0, 1).astype(np.float32))
    return out


def fuse_on_reference(
    images: Sequence[np.ndarray],
    affines: Sequence[np.ndarray],
    *,
    reference_index: int = 0,
    method: str = DEFAULT_METHOD,
    rgb: Sequence[bool] | None = None,
    modalities: Sequence[str | None] | None = None,
    low: float = 1.0,
    high: float = 99.0,
    plane: int | None = None,
    device=None,
    **params,
) -> FusionResult:
    """Resample images onto a reference grid, normalise each modality, and fuse them.

    Parameters are those of :func:`resample_to_reference` and :func:`fuse`.

    Returns
    -------
    FusionResult
        On the reference grid (or its ``plane``, 2D); ``params`` also records
        ``reference_index``.
    """
    prepared = resample_to_reference(
        images,
        affines,
        reference_index=reference_index,
        rgb=rgb,
        modalities=modalities,
        low=low,
        high=high,
        plane=plane,
        device=device,
    )
    flags = _infer_rgb([np.asarray(a) for a in images]) if rgb is None else [bool(f) for f in rgb]
    result = fuse(prepared, method=method, rgb=flags, normalise=False, device=device, **params)
    result.params = {**result.params, "reference_index": reference_index}
    return result



def result_metrics(
    fused: np.ndarray, inputs: Sequence[np.ndarray], rgb: Sequence[bool], *, mi_base: float = 2.0
) -> dict[str, float]:
    """Fusion metrics of a fused image or volume against the images it was fused from.

    Parameters
    ----------
    fused : ndarray, shape (*spatial) or (*spatial, 3)
        In [0, 1]; colour when it has one axis more than the inputs' spatial shape.
    inputs : sequence of ndarray
        The inputs in [0, 1] on the fused image's grid (as :func:`resample_to_reference`
        returns them).
    rgb : sequence of bool
        Which inputs are colour (measured on their luminance, as is a colour result).
    mi_base : float
        Logarithm base of MI (2: bits; ``math.e``: nats).

    Returns
    -------
    dict
        :func:`napari_mmfuse.core.quality.fusion_metrics` on the 0-255 scale the literature
        uses (VIF when the images, or the planes of a volume, are 136 pixels a side or more).
    """
    from .quality import fusion_metrics

    grey = [luminance(image) if flag else np.asarray(image) for image, flag in zip(inputs, rgb)]
    fused = np.asarray(fused)
    fused_grey = luminance(fused) if fused.ndim > grey[0].ndim else fused
    return fusion_metrics(
        np.round(fused_grey * 255),
        [np.round(g * 255) for g in grey],
        mi_base=mi_base,
        vif=min(fused_grey.shape[-2:]) >= 136,
    )
