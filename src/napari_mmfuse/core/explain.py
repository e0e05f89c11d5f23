"""Explanations of segmentation (and classification) networks: where and which modality mattered.

The explained quantity (the *target*) is, for a segmentation network, the sum of one
class's logit over a region (a label mask or a box; the whole image without one), and
for a classification network that class's logit. Methods:

* **Grad-CAM / Grad-CAM++** at a chosen convolution (forward and gradient hooks),
  upsampled to the input grid;
* **occlusion sensitivity**: the drop of the target when a sliding window of the input is
  replaced by each channel's mean;
* **gradient saliency**: ``|d target / d input|`` (vanilla) or its average over noisy
  copies of the input (SmoothGrad);
* **integrated gradients** from the channel-mean baseline (a Riemann sum with midpoints);
* **per-modality attribution**: each channel replaced by its mean (ablation) or the
  integrated gradients summed per channel, giving one number per modality (normalised
  to sum to 1) and one map per modality.

The low-level functions take any ``torch.nn.Module`` and a normalised input tensor of
shape ``(1, C, *S)``; :func:`explain` and :func:`modality_attribution` take a
:class:`~napari_mmfuse.core.segment.SegmentationNet` and images ``(C, *S)``, normalise
them, crop around the region (with the network's patch as context) and paste the
maps back on the full grid. Attention maps of transformer models are not provided.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .device import get_device
from .segment import SegmentationNet, check_images

METHODS = ("gradcam", "gradcampp", "occlusion", "saliency", "smoothgrad", "ig")
ATTRIBUTIONS = ("ablation", "ig")
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)


# ----------------------------------------------------------------------------- targets and layers


def target_score(output: torch.Tensor, class_index: int, region: torch.Tensor | None = None) -> torch.Tensor:
    """The explained quantity for each item of a batch.

    Parameters
    ----------
    output : Tensor, shape (B, K, *S) or (B, K)
        Segmentation logits or classification logits.
    class_index : int
        Output channel of the class.
    region : Tensor of bool, shape (*S), optional
        Voxels summed over (segmentation only); all voxels if omitted.

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
    return [name for name, sub in module.named_modules() if isinstance(sub, _CONV)]


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
              batch_size: int = 8) -> np.ndarray:
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

    Returns
    -------
    ndarray, shape (*S), float32
        Mean drop of the target over the windows covering each voxel (positive: the
        voxel supports the class).
    """
    spatial = x.shape[2:]
    n = len(spatial)
    window = _per_axis(window, [max(2, s // 8) for s in spatial], n)
    stride = _per_axis(stride, [max(1, w // 2) if n == 2 else w for w in window], n)
    mean = x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)
    starts = [list(range(0, max(s - w, 0) + 1, st)) for s, w, st in zip(spatial, window, stride)]
    for axis, s in enumerate(spatial):  # cover the far edge too
        if starts[axis][-1] + window[axis] < s:
            starts[axis].append(s - window[axis])
    corners = np.array(np.meshgrid(*starts, indexing="ij")).reshape(n, -1).T
    with torch.no_grad():
        reference = target_score(module(x), class_index, region)[0]
        drop = torch.zeros(spatial, dtype=torch.float32, device=x.device)
        count = torch.zeros(spatial, dtype=torch.float32, device=x.device)
        for begin in range(0, len(corners), batch_size):
            chunk = corners[begin : begin + batch_size]
            batch = x.repeat(len(chunk), *([1] * (x.ndim - 1)))
            slices = [tuple(slice(int(c), int(c) + w) for c, w in zip(corner, window)) for corner in chunk]
            for i, where in enumerate(slices):
                batch[(i, slice(None), *where)] = mean[0].expand(-1, *[w.stop - w.start for w in where])
            scores = target_score(module(batch), class_index, region)
            for where, score in zip(slices, scores):
                drop[where] += reference - score
                count[where] += 1
    return (drop / count.clamp_min(1)).cpu().numpy().astype(np.float32)


def _per_axis(value, default, n, minimum: int = 1) -> list[int]:
    if value is None:
        return [int(v) for v in default]
    values = [int(value)] * n if np.isscalar(value) else [int(v) for v in value]
    if len(values) != n or min(values) < minimum:
        raise ValueError(f"expected {n} sizes of at least {minimum}, got {value}")
    return values


def _gradient(module: nn.Module, x: torch.Tensor, class_index: int, region) -> torch.Tensor:
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
        return _gradient(module, x, class_index, region)[0].abs().cpu().numpy().astype(np.float32)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    axes = tuple(range(2, x.ndim))
    sigma = noise * (x.amax(dim=axes, keepdim=True) - x.amin(dim=axes, keepdim=True))
    total = torch.zeros_like(x[0])
    for _ in range(samples):
        noisy = x + sigma * torch.randn(x.shape, generator=generator).to(x.device)
        total += _gradient(module, noisy, class_index, region)[0].abs()
    return (total / samples).cpu().numpy().astype(np.float32)


def integrated_gradients(module: nn.Module, x: torch.Tensor, *, class_index: int, region=None,
                         baseline: torch.Tensor | None = None, steps: int = 32,
                         batch_size: int = 8) -> np.ndarray:
    """Integrated gradients from a baseline (each channel's mean by default).

    Parameters
    ----------
    module : nn.Module
    x : Tensor, shape (1, C, *S)
    class_index : int
    region : Tensor of bool, shape (*S), optional
    baseline : Tensor, shape (1, C, *S) or broadcastable, optional
    steps : int
        Riemann midpoints along the straight path.
    batch_size : int
        Path points per backward pass.

    Returns
    -------
    ndarray, shape (C, *S), float32
        Signed attributions; they sum to about ``target(x) - target(baseline)``.
    """
    if baseline is None:
        baseline = x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)
    baseline = baseline.expand_as(x)
    alphas = (torch.arange(steps, dtype=x.dtype, device=x.device) + 0.5) / steps
    total = torch.zeros_like(x[0])
    for begin in range(0, steps, batch_size):
        a = alphas[begin : begin + batch_size].reshape((-1,) + (1,) * (x.ndim - 1))
        path = baseline + a * (x - baseline)
        total += _gradient(module, path, class_index, region).sum(dim=0)
    return ((x - baseline)[0] * total / steps).detach().cpu().numpy().astype(np.float32)


def channel_ablation(module: nn.Module, x: torch.Tensor, *, class_index: int, region=None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Replace each channel by its mean and measure the change of the target.

    Parameters
    ----------
    module : nn.Module
    x : Tensor, shape (1, C, *S)
    class_index : int
    region : Tensor of bool, shape (*S), optional

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
        batch[c + 1, c] = x[0, c].mean()
    with torch.no_grad():
        output = module(batch)
        scores = target_score(output, class_index, region)
    drops = (scores[0] - scores[1:]).cpu().numpy()
    if output.ndim > 2:
        maps = (output[:1, class_index] - output[1:, class_index]).cpu().numpy().astype(np.float32)
    else:
        maps = np.zeros((channels,) + tuple(x.shape[2:]), np.float32)
    return drops.astype(np.float64), maps


# ----------------------------------------------------------------------------- on images


@dataclass
class Explanation:
    """An explanation on the images' grid.

    Attributes
    ----------
    map : ndarray, shape (*S), float32
        One non-negative map (per-channel maps combined by the sum of magnitudes).
    channel_maps : ndarray, shape (C, *S), float32, or None
        One map per input modality (saliency, SmoothGrad, integrated gradients).
    method : str
    target : int
        Label value explained.
    layer : str or None
        Grad-CAM layer.
    """

    map: np.ndarray
    channel_maps: np.ndarray | None
    method: str
    target: int
    layer: str | None = None


@dataclass
class Attribution:
    """How much each modality contributed to the target.

    Attributes
    ----------
    scores : ndarray, shape (C,)
        Non-negative, summing to 1 (all zeros when no channel changes the target).
    raw : ndarray, shape (C,)
        Unnormalised values: the target's drop (ablation) or the summed attribution (IG).
    maps : ndarray, shape (C, *S), float32
        One map per modality on the images' grid.
    names : list of str
    method : str
    """

    scores: np.ndarray
    raw: np.ndarray
    maps: np.ndarray
    names: list[str]
    method: str


def box_region(shape, box) -> np.ndarray:
    """A boolean mask of a box given as ``(low, high)`` voxel corners (high exclusive).

    Parameters
    ----------
    shape : sequence of int
    box : pair of sequences of int, each of length len(shape)

    Returns
    -------
    ndarray of bool, shape ``shape``
    """
    low, high = (np.asarray(corner, dtype=np.int64) for corner in box)
    if low.size != len(shape) or high.size != len(shape):
        raise ValueError(f"a box for a {len(shape)}D image needs {len(shape)} low and high coordinates")
    low, high = np.clip(low, 0, shape), np.clip(high, 0, shape)
    if np.any(high <= low):
        raise ValueError(f"the box {box} is empty inside the image of shape {tuple(shape)}")
    mask = np.zeros(shape, bool)
    mask[tuple(slice(int(a), int(b)) for a, b in zip(low, high))] = True
    return mask


def _class_index(model: SegmentationNet, target: int) -> int:
    values = model.config.label_values
    if int(target) not in values:
        raise ValueError(f"class {target} is not one of the model's classes {values}")
    return values.index(int(target))


def _prepare(model: SegmentationNet, images, region, margin, device):
    """Normalised, cropped input tensor, region tensor, and where the crop sits."""
    images = check_images(images)
    config = model.config
    if images.shape[0] != config.in_channels:
        raise ValueError(f"the model takes {config.in_channels} channels ({', '.join(config.channel_names)}) "
                         f"but {images.shape[0]} images were given")
    shape = images.shape[1:]
    if len(shape) != config.spatial_dims:
        raise ValueError(f"the model is {config.spatial_dims}D but the images are {len(shape)}D")
    if region is not None:
        if isinstance(region, tuple) and len(region) == 2:
            region = box_region(shape, region)
        region = np.asarray(region).astype(bool)
        if region.shape != shape:
            raise ValueError(f"the region has shape {region.shape} but the images {shape}")
        if not region.any():
            raise ValueError("the region is empty; choose a label present in the mask or a larger box")
        if margin is None:
            margin = [p // 2 for p in config.patch_size]
        margin = _per_axis(margin, None, len(shape), minimum=0)
        where = np.argwhere(region)
        low = np.maximum(where.min(axis=0) - margin, 0)
        high = np.minimum(where.max(axis=0) + 1 + np.asarray(margin), shape)
    else:
        low, high = np.zeros(len(shape), int), np.asarray(shape)
    divisor = config.size_divisor
    crop = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
    sub = model.normalise(images[(slice(None), *crop)])
    pad = [(-s) % divisor for s in sub.shape[1:]]
    x = torch.from_numpy(np.pad(sub, [(0, 0)] + [(0, p) for p in pad], mode="edge"))[None].to(device)
    region_tensor = None
    if region is not None:
        padded = np.pad(region[crop], [(0, p) for p in pad])
        region_tensor = torch.from_numpy(padded).to(device)
    return x, region_tensor, crop, shape


def _paste(values: np.ndarray, crop, shape, leading: int = 0) -> np.ndarray:
    spatial = tuple(s.stop - s.start for s in crop)
    out = np.zeros(values.shape[:leading] + tuple(shape), np.float32)
    out[(Ellipsis, *crop)] = values[(Ellipsis, *[slice(0, s) for s in spatial])]
    return out


def explain(
    model: SegmentationNet,
    images,
    *,
    method: str,
    target: int,
    region=None,
    layer: str | None = None,
    margin: int | Sequence[int] | None = None,
    samples: int = 16,
    steps: int = 32,
    window: Sequence[int] | int | None = None,
    device=None,
) -> Explanation:
    """Explain one class of a segmentation model on images.

    Parameters
    ----------
    model : SegmentationNet
    images : ndarray, shape (C, *S)
        The model's input modalities on one grid (raw intensities; normalised here).
    method : {"gradcam", "gradcampp", "occlusion", "saliency", "smoothgrad", "ig"}
    target : int
        Label value of the class explained.
    region : ndarray of bool, shape (*S), or tuple ``(low, high)``, optional
        Where the class logit is summed (a mask, or a box of voxel corners with ``high``
        exclusive); the whole image without one.
    layer : str, optional
        Grad-CAM layer name; the deepest convolution by default.
    margin : int or sequence of int, optional
        Context kept around the region (voxels); half the model's patch by default.
        The maps are zero outside the region's box plus this margin.
    samples : int
        SmoothGrad noisy copies.
    steps : int
        Integrated-gradients path points.
    window : int or sequence of int, optional
        Occlusion window.
    device : str or torch.device, optional

    Returns
    -------
    Explanation
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {METHODS}")
    device = get_device(device)
    model = model.to(device).eval()
    class_index = _class_index(model, target)
    x, region_tensor, crop, shape = _prepare(model, images, region, margin, device)
    channel_maps = None
    if method in ("gradcam", "gradcampp"):
        layer = layer or default_layer(model, x)
        values = gradcam(model, x, class_index=class_index, region=region_tensor, layer=layer,
                         plusplus=method == "gradcampp")
    elif method == "occlusion":
        values = np.clip(occlusion(model, x, class_index=class_index, region=region_tensor, window=window), 0, None)
    else:
        if method == "ig":
            per_channel = integrated_gradients(model, x, class_index=class_index, region=region_tensor, steps=steps)
        else:
            per_channel = saliency(model, x, class_index=class_index, region=region_tensor,
                                   samples=samples if method == "smoothgrad" else 0)
        channel_maps = _paste(per_channel, crop, shape, leading=1)
        values = np.abs(per_channel).sum(axis=0)
    return Explanation(_paste(values, crop, shape), channel_maps, method, int(target),
                       layer if method.startswith("gradcam") else None)


def modality_attribution(
    model: SegmentationNet,
    images,
    *,
    target: int,
    region=None,
    method: str = "ablation",
    margin: int | Sequence[int] | None = None,
    steps: int = 32,
    device=None,
) -> Attribution:
    """One number per modality: how much it drives the target.

    Parameters
    ----------
    model : SegmentationNet
    images : ndarray, shape (C, *S)
    target : int
        Label value of the class explained.
    region : ndarray of bool, shape (*S), or tuple ``(low, high)``, optional
    method : {"ablation", "ig"}
        "ablation": ``|target(x) - target(x with the channel replaced by its mean)|``;
        maps are the per-voxel drop of the class logit. "ig": the sum of the magnitudes
        of the channel's integrated gradients; maps are those magnitudes.
    margin, steps, device
        As in :func:`explain`.

    Returns
    -------
    Attribution
    """
    if method not in ATTRIBUTIONS:
        raise ValueError(f"unknown attribution method {method!r}; use 'ablation' or 'ig'")
    device = get_device(device)
    model = model.to(device).eval()
    class_index = _class_index(model, target)
    x, region_tensor, crop, shape = _prepare(model, images, region, margin, device)
    if method == "ablation":
        raw, maps = channel_ablation(model, x, class_index=class_index, region=region_tensor)
        magnitude = np.abs(raw)
    else:
        maps = np.abs(integrated_gradients(model, x, class_index=class_index, region=region_tensor, steps=steps))
        raw = maps.reshape(maps.shape[0], -1).sum(axis=1).astype(np.float64)
        magnitude = raw
    total = magnitude.sum()
    scores = magnitude / total if total > 0 else np.zeros_like(magnitude)
    return Attribution(scores, raw, _paste(maps, crop, shape, leading=1), list(model.config.channel_names), method)


def randomized_copy(model: SegmentationNet, *, seed: int = 0) -> SegmentationNet:
    """A copy of the model with every weight re-drawn (for the model-randomisation sanity check).

    Parameters
    ----------
    model : SegmentationNet
    seed : int

    Returns
    -------
    SegmentationNet
        Same architecture and configuration; parameters re-initialised by each
        module's own ``reset_parameters``.
    """
    clone = copy.deepcopy(model)
    torch.manual_seed(seed)
    for module in clone.modules():
        if module is not clone and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return clone.eval()
