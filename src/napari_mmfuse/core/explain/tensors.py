"""Explanation methods on tensors: the target, Grad-CAM, occlusion, saliency, integrated gradients, ablation.

Each function takes any ``torch.nn.Module`` and a normalised input tensor of shape
``(1, C, *S)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...operations import drive

#: Module types Grad-CAM can be computed at.
CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)


# ----------------------------------------------------------------------------- targets and layers


def target_score(output: torch.Tensor, class_index: int, region: torch.Tensor | None = None) -> torch.Tensor:
    """The explained quantity for each item of a batch.

    Parameters
    ----------
    output : Tensor, shape (B, K, *S) or (B, K)
        Segmentation logits or classification logits.
    class_index : int
        Output channel of the class.
    region : Tensor of bool or float, shape (*S), optional
        Voxels summed over (segmentation only), or a weight per voxel; all voxels if
        omitted.

    Returns
    -------
    Tensor, shape (B,)
    """
    if not 0 <= class_index < output.shape[1]:
        raise ValueError(f"class index {class_index} is outside the model's {output.shape[1]} classes")
    logit = output[:, class_index]
    if logit.ndim == 1:
        return logit
    if region is None:
        return logit.flatten(1).sum(dim=1)
    if region.shape != logit.shape[1:]:
        raise ValueError(f"region has shape {tuple(region.shape)} but the output {tuple(logit.shape[1:])}")
    return (logit * region.to(logit.dtype)).flatten(1).sum(dim=1)


def conv_layers(module: nn.Module) -> list[str]:
    """Names of the convolution modules of a network (candidates for Grad-CAM), in order."""
    return [name for name, sub in module.named_modules() if isinstance(sub, CONV_TYPES)]


def default_layer(module: nn.Module, x: torch.Tensor) -> str:
    """The deepest convolution: the last one among those with the smallest output.

    Parameters
    ----------
    module : nn.Module
    x : Tensor, shape (1, C, *S)
    """
    names = conv_layers(module)
    if not names:
        raise ValueError("the model has no convolution layer to compute Grad-CAM at")
    sizes: dict[str, int] = {}
    modules = dict(module.named_modules())
    handles = [
        modules[name].register_forward_hook(lambda _m, _i, out, name=name: sizes.__setitem__(name, out[0, 0].numel()))
        for name in names
    ]
    try:
        with torch.no_grad():
            module(x)
    finally:
        for handle in handles:
            handle.remove()
    smallest = min(sizes.values())
    return [name for name in names if sizes.get(name) == smallest][-1]


# ----------------------------------------------------------------------------- methods on tensors


def gradcam(module: nn.Module, x: torch.Tensor, *, class_index: int, region=None, layer: str,
            plusplus: bool = False) -> np.ndarray:
    """Grad-CAM (or Grad-CAM++) at one convolution, upsampled to the input grid.

    Parameters
    ----------
    module : nn.Module
        Not a TorchScript module (hooks are needed).
    x : Tensor, shape (1, C, *S)
    class_index : int
    region : Tensor of bool, shape (*S), optional
    layer : str
        Name of a convolution module (see :func:`conv_layers`).
    plusplus : bool
        Grad-CAM++ weights (second-order, with the exponential-score closed form).

    Returns
    -------
    ndarray, shape (*S), float32, >= 0
    """
    modules = dict(module.named_modules())
    if any(isinstance(m, torch.jit.ScriptModule) for m in modules.values()):
        raise ValueError("Grad-CAM needs hooks, which TorchScript models do not support; use saliency or occlusion")
    if layer not in modules:
        raise ValueError(f"no layer {layer!r} in the model; choose one of {conv_layers(module)}")
    saved: dict[str, torch.Tensor] = {}

    def keep(_module, _inputs, output):
        saved["activation"] = output
        output.register_hook(lambda grad: saved.__setitem__("gradient", grad))

    handle = modules[layer].register_forward_hook(keep)
    try:
        module.zero_grad(set_to_none=True)
        score = target_score(module(x), class_index, region).sum()
        score.backward()
    finally:
        handle.remove()
    activation, gradient = saved["activation"].detach()[0], saved["gradient"].detach()[0]
    axes = tuple(range(1, activation.ndim))
    if plusplus:
        g2, g3 = gradient**2, gradient**3
        denominator = 2 * g2 + activation.sum(dim=axes, keepdim=True) * g3
        alpha = g2 / torch.where(denominator != 0, denominator, torch.ones_like(denominator))
        weights = (alpha * F.relu(gradient)).sum(dim=axes)
    else:
        weights = gradient.mean(dim=axes)
    cam = F.relu((weights.reshape((-1,) + (1,) * len(axes)) * activation).sum(dim=0))
    mode = "bilinear" if cam.ndim == 2 else "trilinear"
    cam = F.interpolate(cam[None, None], size=x.shape[2:], mode=mode, align_corners=False)[0, 0]
    return cam.cpu().numpy().astype(np.float32)


def occlusion(module: nn.Module, x: torch.Tensor, *, class_index: int, region=None,
              window: Sequence[int] | int | None = None, stride: Sequence[int] | int | None = None,
              batch_size: int = 8, fill: torch.Tensor | None = None) -> np.ndarray:
    """Occlusion sensitivity: drop of the target when a window is replaced by the channel means.

    Parameters
    ----------
    module : nn.Module
    x : Tensor, shape (1, C, *S)
    class_index : int
    region : Tensor of bool, shape (*S), optional
    window : int or sequence of int, optional
        Occluding window edge per axis; default ``max(2, S // 8)``.
    stride : int or sequence of int, optional
        Step between windows; default half the window in 2D, the window in 3D.
    batch_size : int
        Occluded copies per forward pass.
    fill : Tensor, shape (1, C, 1, ...), optional
        Value of each channel inside the window; each channel's mean by default.

    Returns
    -------
    ndarray, shape (*S), float32
        Mean drop of the target over the windows covering each voxel (positive: the
        voxel supports the class).
    """
    corners, window = occluders(x.shape[2:], window, stride)
    if fill is None:
        fill = x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)
    drops = torch.zeros(len(corners), dtype=torch.float32, device=x.device)
    drive(occlusion_drops(module, x, class_index, region, corners, window, fill, batch_size, drops))
    return paint_occlusion(drops, corners, window, x.shape[2:]).cpu().numpy().astype(np.float32)


def occluders(spatial, window, stride) -> tuple[np.ndarray, list[int]]:
    """Corners (one row each) and edge of the occluding windows tiling a grid."""
    n = len(spatial)
    window = per_axis(window, [max(2, s // 8) for s in spatial], n)
    stride = per_axis(stride, [max(1, w // 2) if n == 2 else w for w in window], n)
    starts = [list(range(0, max(s - w, 0) + 1, st)) for s, w, st in zip(spatial, window, stride)]
    for axis, s in enumerate(spatial):  # cover the far edge too
        if starts[axis][-1] + window[axis] < s:
            starts[axis].append(s - window[axis])
    return np.array(np.meshgrid(*starts, indexing="ij")).reshape(n, -1).T, window


def occlusion_drops(module, x, class_index, region, corners, window, fill, batch_size, drops, offset=(0,)):
    """Add the drop of the target of ``x`` (a patch at ``offset``) when each window is filled.

    Only the windows that intersect the patch are run; yields after each batch.
    """
    offset = np.broadcast_to(np.asarray(offset), corners.shape[1:])
    spatial = np.asarray(x.shape[2:])
    low, high = np.maximum(corners - offset, 0), np.minimum(corners + window - offset, spatial)
    hits = touching(corners, window, offset, spatial)
    with torch.no_grad():
        reference = target_score(module(x), class_index, region)[0]
        for begin in range(0, len(hits), batch_size):
            chunk = hits[begin : begin + batch_size]
            batch = x.repeat(len(chunk), *([1] * (x.ndim - 1)))
            for i, index in enumerate(chunk):
                where = tuple(slice(int(a), int(b)) for a, b in zip(low[index], high[index]))
                batch[(i, slice(None), *where)] = fill[0].expand(-1, *[w.stop - w.start for w in where])
            scores = target_score(module(batch), class_index, region)
            drops[torch.from_numpy(chunk)] += (reference - scores).to(drops.device)
            yield


def touching(corners: np.ndarray, window, start, size) -> np.ndarray:
    """Indices of the occluding windows that intersect the box ``start:start + size``."""
    low = np.maximum(corners, start)
    high = np.minimum(corners + np.asarray(window), np.asarray(start) + np.asarray(size))
    return np.flatnonzero(np.all(high > low, axis=1))


def paint_occlusion(drops: torch.Tensor, corners, window, spatial) -> torch.Tensor:
    """Mean drop over the occluding windows covering each voxel."""
    total = torch.zeros(tuple(spatial), dtype=torch.float32, device=drops.device)
    count = torch.zeros(tuple(spatial), dtype=torch.float32, device=drops.device)
    for corner, drop in zip(corners, drops):
        where = tuple(slice(int(c), int(c) + w) for c, w in zip(corner, window))
        total[where] += drop
        count[where] += 1
    return total / count.clamp_min(1)


def per_axis(value, default, n, minimum: int = 1) -> list[int]:
    """``value`` as ``n`` integers of at least ``minimum`` (one number is repeated); ``default`` when None."""
    if value is None:
        return [int(v) for v in default]
    values = [int(value)] * n if np.isscalar(value) else [int(v) for v in value]
    if len(values) != n or min(values) < minimum:
        raise ValueError(f"expected {n} sizes of at least {minimum}, got {value}")
    return values


def input_gradient(module: nn.Module, x: torch.Tensor, class_index: int, region) -> torch.Tensor:
    """``d target / d x`` for a batch ``x``, shape of ``x``."""
    x = x.detach().requires_grad_(True)
    score = target_score(module(x), class_index, region).sum()
    (grad,) = torch.autograd.grad(score, x)
    return grad


def saliency(module: nn.Module, x: torch.Tensor, *, class_index: int, region=None, samples: int = 0,
             noise: float = 0.15, seed: int = 0) -> np.ndarray:
    """Gradient saliency ``|d target / d x|`` per channel; SmoothGrad when ``samples > 0``.

    Parameters
    ----------
    module : nn.Module
    x : Tensor, shape (1, C, *S)
    class_index : int
    region : Tensor of bool, shape (*S), optional
    samples : int
        SmoothGrad: number of noisy copies averaged (0: vanilla gradient).
    noise : float
        SmoothGrad noise standard deviation as a fraction of each channel's range.
    seed : int

    Returns
    -------
    ndarray, shape (C, *S), float32, >= 0
    """
    if samples <= 0:
        return input_gradient(module, x, class_index, region)[0].abs().cpu().numpy().astype(np.float32)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    axes = tuple(range(2, x.ndim))
    sigma = noise * (x.amax(dim=axes, keepdim=True) - x.amin(dim=axes, keepdim=True))
    total = torch.zeros_like(x[0])
    for _ in range(samples):
        noisy = x + sigma * torch.randn(x.shape, generator=generator).to(x.device)
        total += input_gradient(module, noisy, class_index, region)[0].abs()
    return (total / samples).cpu().numpy().astype(np.float32)


def integrated_gradients(module: nn.Module, x: torch.Tensor, *, class_index: int, region=None,
                         baseline: torch.Tensor | None = None, steps: int = 32,
                         batch_size: int = 8) -> np.ndarray:
    """Integrated gradients from a baseline (each channel's mean by default), by Captum.

    Captum's ``IntegratedGradients`` (Riemann midpoints) on the target of
    :func:`target_score`, so a region or a per-voxel weight (a sliding window's blending
    weight) is explained as any other output.

    Parameters
    ----------
    module : nn.Module
    x : Tensor, shape (1, C, *S)
    class_index : int
    region : Tensor of bool or float, shape (*S), optional
    baseline : Tensor, shape (1, C, *S) or broadcastable, optional
    steps : int
        Riemann midpoints along the straight path.
    batch_size : int
        Path points per backward pass.

    Returns
    -------
    ndarray, shape (C, *S), float32
        Signed attributions; they sum to about ``target(x) - target(baseline)``.

    References
    ----------
    Sundararajan, Taly & Yan, "Axiomatic attribution for deep networks", ICML 2017.
    """
    from captum.attr import IntegratedGradients

    if baseline is None:
        baseline = x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)
    method = IntegratedGradients(lambda inputs: target_score(module(inputs), class_index, region))
    attributions = method.attribute(x, baselines=baseline.expand_as(x).contiguous(), n_steps=steps,
                                    method="riemann_middle", internal_batch_size=batch_size)
    return attributions[0].detach().cpu().numpy().astype(np.float32)


def channel_ablation(module: nn.Module, x: torch.Tensor, *, class_index: int, region=None,
                     fill: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Replace each channel by its mean and measure the change of the target.

    Parameters
    ----------
    module : nn.Module
    x : Tensor, shape (1, C, *S)
    class_index : int
    region : Tensor of bool, shape (*S), optional
    fill : Tensor, shape (C,), optional
        Value each channel is replaced by; its mean by default.

    Returns
    -------
    drops : ndarray, shape (C,)
        ``target(x) - target(x with channel c ablated)``.
    maps : ndarray, shape (C, *S), float32
        Per-voxel drop of the class logit (segmentation models only; zeros otherwise).
    """
    channels = x.shape[1]
    batch = x.repeat(channels + 1, *([1] * (x.ndim - 1)))
    for c in range(channels):
        batch[c + 1, c] = x[0, c].mean() if fill is None else fill[c]
    with torch.no_grad():
        output = module(batch)
        scores = target_score(output, class_index, region)
    drops = (scores[0] - scores[1:]).cpu().numpy()
    if output.ndim > 2:
        maps = (output[:1, class_index] - output[1:, class_index]).cpu().numpy().astype(np.float32)
    else:
        maps = np.zeros((channels,) + tuple(x.shape[2:]), np.float32)
    return drops.astype(np.float64), maps
