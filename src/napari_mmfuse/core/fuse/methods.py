"""The grey fusion methods: ``method(stack, **params) -> (fused, weights)``.

``stack`` is a float32 tensor, shape (N, *spatial), in [0, 1]; ``fused`` has shape
(*spatial) and ``weights`` (N, *spatial), summing to 1 per pixel. The keyword defaults are
those of the ``fuse`` operations (:mod:`napari_mmfuse.operations.fuse`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..kernels import box_mean, gaussian_blur, gradient_magnitude, sobel_magnitude
from .primitives import (
    allocate,
    base_weights,
    burt_reduce,
    consistent,
    expand,
    first_argmax,
    guided_filter,
    normalise_maps,
    one_hot,
    one_hot_max,
    pick,
    select,
    select_winner,
)
from .wavelets import dwt, filter_bank, idwt, pad_even


def average(stack: torch.Tensor, *, weights: Sequence[float] | None = None):
    """Weighted average: equal weights, or ``weights`` (one non-negative number per input) normalised."""
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


def maximum(stack: torch.Tensor):
    """Per-pixel maximum selection (the first input on ties)."""
    maps = one_hot_max(stack)
    return (maps * stack).sum(0), maps


def minimum(stack: torch.Tensor):
    """Per-pixel minimum selection (the first input on ties)."""
    maps = one_hot_max(-stack)
    return (maps * stack).sum(0), maps


def pca(stack: torch.Tensor):
    """Global weights from the principal eigenvector of the inputs' covariance."""
    flat = stack.reshape(stack.shape[0], -1).double()
    covariance = torch.cov(flat)
    _, vectors = torch.linalg.eigh(covariance)
    principal = vectors[:, -1].abs()
    w = (principal / principal.sum()).float()
    maps = w.view(-1, *([1] * (stack.ndim - 1))).expand_as(stack).clone()
    return (maps * stack).sum(0), maps


def laplacian(stack: torch.Tensor, *, levels: int = 3, rule: str = "energy", base: str = "max", consistency: int = 1):
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
        gaussians.append(burt_reduce(gaussians[-1], n_spatial))
    top = gaussians[-1]
    weights = base_weights(top, base)
    fused = (weights * top).sum(0)
    weights = weights[:-1]  # the last input's weight is what the others leave
    for fine, coarse in zip(reversed(gaussians[:-1]), reversed(gaussians[1:])):
        spatial = fine.shape[1:]
        detail = expand(coarse, spatial)
        torch.sub(fine, detail, out=detail)
        winner = select_winner(detail, rule, n_spatial)
        if consistency:
            winner = consistent(winner, stack.shape[0], n_spatial)
        fused = expand(fused[None], spatial)[0].add_(pick(detail, winner))
        weights = expand(weights, spatial)
        for i in range(weights.shape[0]):
            weights[i].add_(winner == i)
    # the finest band is spent by now: its memory (shape of the stack) takes the weights
    all_weights = detail if len(gaussians) > 1 else allocate(stack.shape, stack)
    torch.div(weights, len(gaussians), out=all_weights[:-1])
    all_weights[-1].fill_(1)
    for i in range(weights.shape[0]):
        all_weights[-1].sub_(all_weights[i])
    all_weights[-1].clamp_(min=0)
    return fused, all_weights


def wavelet(stack: torch.Tensor, *, levels: int = 3, wavelet: str = "db2", rule: str = "maxabs", base: str = "mean"):
    """Orthogonal DWT fusion: detail bands chosen by ``rule``, the approximation by ``base``."""
    n_spatial = stack.ndim - 1
    bank = filter_bank(wavelet, stack.device)
    spatial = stack.shape[1:]
    pyramid, sizes = [], []
    current = stack
    for _ in range(max(1, int(levels))):
        if min(current.shape[1:]) < 2 * bank.shape[1]:
            break
        sizes.append(current.shape[1:])
        current, details = dwt(pad_even(current, n_spatial), bank, n_spatial)
        pyramid.append(details)
    base_maps = base_weights(current, base)
    fused = (base_maps * current).sum(0, keepdim=True)
    weight_sum = expand(base_maps, spatial)
    for details, size in zip(reversed(pyramid), reversed(sizes)):
        chosen = []
        for band in details:
            masks = select(band, rule, n_spatial)
            chosen.append((masks * band).sum(0, keepdim=True))
            weight_sum += expand(masks, spatial) / len(details)
        fused = idwt(fused, chosen, bank, n_spatial)
        fused = fused[(slice(None), *(slice(0, s) for s in size))]
    return fused[0], weight_sum / (len(pyramid) + 1)


def guided(stack: torch.Tensor, *, r1: int = 45, eps1: float = 0.3, r2: int = 7, eps2: float = 1e-6):
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
    base = box_mean(stack, 15, n_spatial)
    detail = stack - base
    decision = one_hot_max(gaussian_blur(detail**2, 5.0, n_spatial, radius=5))
    w_base = normalise_maps(guided_filter(stack, decision, int(r1), float(eps1), n_spatial))
    w_detail = normalise_maps(guided_filter(stack, decision, int(r2), float(eps2), n_spatial))
    fused = (w_base * base).sum(0) + (w_detail * detail).sum(0)
    return fused, (w_base + w_detail) / 2


def activity(stack: torch.Tensor, *, radius: int = 2, consistency: int = 3):
    """Spatial-domain selection: each pixel comes from the input with the most local detail.

    Activity is the mean Sobel gradient magnitude over the (2 radius + 1)^n window; the
    per-pixel choice then takes the majority over the (2 consistency + 1)^n window
    (consistency verification; 0: none). Pixels are copied from the sources, never blended.
    """
    n_spatial = stack.ndim - 1
    count = stack.shape[0]
    activity = box_mean(sobel_magnitude(stack, n_spatial), int(radius), n_spatial)
    winner = first_argmax(list(activity))
    if consistency:
        votes = box_mean(one_hot(winner, count, stack.dtype), int(consistency), n_spatial)
        winner = first_argmax(list(votes))
    return pick(stack, winner), one_hot(winner, count, stack.dtype)


def saliency(stack: torch.Tensor, *, sigma: float = 1.0, smooth: float = 5.0):
    """Frequency-tuned saliency (distance of the smoothed image to its mean) as per-pixel weights."""
    n_spatial = stack.ndim - 1
    means = stack.reshape(stack.shape[0], -1).mean(1).view(-1, *([1] * n_spatial))
    saliency = (gaussian_blur(stack, float(sigma), n_spatial) - means).abs()
    maps = normalise_maps(gaussian_blur(saliency, float(smooth), n_spatial))
    return (maps * stack).sum(0), maps




def modulated(stack: torch.Tensor, *, gain: float = 0.6, radius: int = 8, consistency: int = 8,
              brightness: float = 0.07, softness: int = 2):
    """Anatomy shaded by the functional signal, with the other inputs' own structures selected in.

    The first input (the anatomical image) is multiplied by ``1 + gain * m``, ``m`` the mean
    of the others: every anatomical edge stays where it is while its brightness carries the
    functional signal (a PET/SPECT uptake brightens the tissue under it). Each pixel then
    comes from that modulated image or from another input, whichever scores higher: the
    mean central-difference gradient magnitude of the unmodulated inputs over the
    (2 radius + 1)^n window plus ``brightness`` times the candidate's value (so flat bright
    structures, the inside of CT bone, are kept). The choice takes the majority over the
    (2 consistency + 1)^n window and is averaged over the (2 softness + 1)^n window into soft
    weights (0: hard selection). Volumes are fused with 3D windows, not plane by plane.

    The contribution of the first input is its share of the modulated image where that was
    chosen, ``1 / (1 + gain * m)``; the rest goes to the others in proportion to their values.
    """
    n_spatial = stack.ndim - 1
    count = stack.shape[0]
    gain = float(gain)
    # few full-size temporaries, reused through out= (a fresh volume costs its page faults)
    others = stack[1:].mean(0)
    scale = others.mul_(gain).add_(1)  # 1 + gain m
    modulated_first = stack[0] * scale
    # box means are linear: score each input against the first (N - 1 maps instead of N)
    activity = gradient_magnitude(stack, n_spatial)
    advantage = box_mean(activity[1:].sub_(activity[0]), int(radius), n_spatial)
    difference = torch.sub(stack[1:], modulated_first, out=activity[1:])
    advantage.add_(difference, alpha=float(brightness))
    winner = first_argmax([0.0, *advantage])
    del advantage, difference, activity
    if consistency:  # the majority vote needs the masks of inputs 1.. only
        votes = box_mean(_masks(winner, count, stack.dtype), int(consistency), n_spatial)
        winner = first_argmax([1 - votes.sum(0), *votes])
        del votes
    selection = _masks(winner, count, stack.dtype)  # inputs 1..; the first's is what they leave
    if softness > 0:
        selection = box_mean(selection, int(softness), n_spatial)
    first = selection.sum(0).neg_().add_(1)
    fused = torch.mul(first, modulated_first, out=modulated_first)
    for i in range(1, count):
        fused.add_(selection[i - 1] * stack[i])
    # where the modulated image is chosen, its share 1 / (1 + gain m) is the first input's
    first_share = scale.reciprocal_()
    weights = allocate(stack.shape, stack)
    torch.mul(first, first_share, out=weights[0])
    totals = stack[1:].sum(0)
    shares = stack[1:] / totals.clamp(min=1e-12)
    shares.masked_fill_(~(totals > 0), 1 / (count - 1))
    rest = first_share.neg_().add_(1).mul_(first)  # the first's selection less its share
    torch.add(selection, shares.mul_(rest), out=weights[1:])
    return fused, weights


def _masks(winner: torch.Tensor, count: int, dtype: torch.dtype) -> torch.Tensor:
    """Masks of inputs 1 .. count - 1, shape (count - 1, *spatial): 1 where ``winner`` names that input."""
    return torch.stack([winner == i for i in range(1, count)]).to(dtype)
