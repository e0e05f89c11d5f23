"""Pixel-selection and pyramid primitives of the fusion methods (torch, any batch shape).

Burt-Adelson reduction and its linear expansion, per-pixel selection of the winning input
(first argmax, local energy, consistency verification), and the guided filter. Every
function works on the last ``n_spatial`` axes of a (N, *spatial) stack.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..kernels import box_mean

_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64, torch.int8: np.int8}


def allocate(shape: Sequence[int], like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
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


def burt_reduce(x: torch.Tensor, n_spatial: int) -> torch.Tensor:
    """Blur with the Burt-Adelson kernel [1, 4, 6, 4, 1] / 16 and keep every other sample.

    Along each spatial axis (replicate border) a length L becomes ceil(L / 2):
    ``out[n] = (x[2n-2] + 4 x[2n-1] + 6 x[2n] + 4 x[2n+1] + x[2n+2]) / 16`` with indices
    clamped to [0, L - 1], accumulated in place on strided views (no padded copy).
    """
    for dim in range(x.ndim - n_spatial, x.ndim):
        length = x.shape[dim]
        size = (length + 1) // 2
        even, odd = _every_other(x, dim, 0), _every_other(x, dim, 1)
        out = allocate(x.shape[:dim] + (size,) + x.shape[dim + 1 :], x)
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
        out = allocate(x.shape[:dim] + (size,) + x.shape[dim + 1 :], x)
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


def expand(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Separable linear interpolation of (B, *spatial) onto ``size`` (as bi/trilinear ``F.interpolate``)."""
    for dim, length in zip(range(x.ndim - len(size), x.ndim), size):
        if x.shape[dim] != length:
            x = _expand_along(x, dim, int(length))
    return x


def box_sum3(x: torch.Tensor, n_spatial: int) -> torch.Tensor:
    """Sum over the 3^n window clipped to the image, two passes per axis.

    ``x`` is used as scratch space (its values are lost); the sum comes back in ``x`` or
    in one other buffer of its shape.
    """
    spare = allocate(x.shape, x)
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


def first_argmax(scores: Sequence[torch.Tensor | float]) -> torch.Tensor:
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


def one_hot(winner: torch.Tensor, count: int, dtype: torch.dtype) -> torch.Tensor:
    """Masks, shape (count, *spatial): 1 where ``winner`` names that input."""
    return torch.stack([winner == i for i in range(count)]).to(dtype)


def one_hot_max(score: torch.Tensor) -> torch.Tensor:
    """Selection mask, shape (N, *spatial): 1 for the input with the largest score (the first on ties)."""
    if score.shape[0] == 1:
        return torch.ones_like(score)
    return one_hot(first_argmax(list(score)), score.shape[0], score.dtype)


def pick(values: torch.Tensor, winner: torch.Tensor) -> torch.Tensor:
    """``values[winner[p], p]`` at every pixel p of (N, *spatial) ``values``."""
    picked = allocate(values.shape[1:], values).copy_(values[0])
    for i in range(1, values.shape[0]):
        torch.where(winner == i, values[i], picked, out=picked)
    return picked


def select_winner(coefficients: torch.Tensor, rule: str, n_spatial: int) -> torch.Tensor:
    """Index (uint8, shape (*spatial)) of the input whose band coefficients win ``rule``.

    "maxabs": the largest magnitude. "energy": the largest sum of squares over the 3^n
    neighbourhood (the argmax of the local mean energy, the window being the same for
    every input). The box sum is linear, so it runs on the energies relative to the first
    input (N - 1 volumes, not N), which then scores 0.
    """
    if rule == "maxabs":
        return first_argmax(list(torch.abs(coefficients, out=allocate(coefficients.shape, coefficients))))
    if rule == "energy":
        relative = torch.square(coefficients[1:], out=allocate(coefficients[1:].shape, coefficients))
        relative.addcmul_(coefficients[0], coefficients[0], value=-1)
        return first_argmax([0.0, *box_sum3(relative, n_spatial)])
    raise ValueError(f"rule must be 'energy' or 'maxabs', not {rule!r}")


def consistent(winner: torch.Tensor, count: int, n_spatial: int) -> torch.Tensor:
    """Consistency verification (Li, Manjunath & Mitra 1995) of a selection map.

    Every pixel takes the input that wins most pixels of its 3^n neighbourhood, its own
    choice on a tie. Votes are counted relative to input 0 (as in :func:`select_winner`)
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
    relative = allocate((count - 1, *winner.shape), winner, torch.int8)
    first = (winner == 0).view(torch.int8)
    for i in range(1, count):  # +1 where input i wins, -1 where input 0 does
        torch.sub((winner == i).view(torch.int8), first, out=relative[i - 1])
    votes = box_sum3(allocate(relative.shape, relative).copy_(relative), n_spatial).mul_(2).add_(relative)
    return first_argmax([0, *votes])


def select(coefficients: torch.Tensor, rule: str, n_spatial: int) -> torch.Tensor:
    """Selection mask for a band of coefficients, shape (N, *spatial)."""
    return one_hot(select_winner(coefficients, rule, n_spatial), coefficients.shape[0], coefficients.dtype)


def base_weights(base: torch.Tensor, rule: str) -> torch.Tensor:
    """Weights, shape (N, *spatial), of a low-pass band: uniform ("mean") or the largest input ("max")."""
    if rule == "mean":
        return torch.full_like(base, 1.0 / base.shape[0])
    if rule == "max":
        return one_hot_max(base)
    raise ValueError(f"base must be 'mean' or 'max', not {rule!r}")


def guided_filter(guide: torch.Tensor, source: torch.Tensor, radius: int, eps: float, n_spatial: int) -> torch.Tensor:
    """He et al. guided filter of ``source`` by ``guide`` (same shapes)."""
    mean_i = box_mean(guide, radius, n_spatial)
    mean_p = box_mean(source, radius, n_spatial)
    cov_ip = box_mean(guide * source, radius, n_spatial) - mean_i * mean_p
    var_i = box_mean(guide * guide, radius, n_spatial) - mean_i**2
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return box_mean(a, radius, n_spatial) * guide + box_mean(b, radius, n_spatial)


def normalise_maps(maps: torch.Tensor) -> torch.Tensor:
    """Non-negative maps, shape (N, *spatial), scaled to sum to 1 per pixel (uniform where all are 0)."""
    maps = maps.clamp(min=0)
    total = maps.sum(0, keepdim=True)
    uniform = torch.full_like(maps, 1.0 / maps.shape[0])
    return torch.where(total > 1e-8, maps / total.clamp(min=1e-8), uniform)


