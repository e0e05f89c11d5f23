"""Explanations on images: crops around the region, sliding windows as in prediction, pasting back.

The network runs on the windows of sliding-window inference (:class:`Tiling`); each
``*_steps`` generator computes one method window by window and yields
:class:`~napari_mmfuse.operations.Progress`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ...operations import Progress
from ..segment import SegmentationNet, check_images, outside_view
from .tensors import (
    channel_ablation, default_layer, gradcam, input_gradient, occluders, occlusion_drops, paint_occlusion,
    path_gradients, per_axis, touching,
)

#: sliding-window overlap, as :func:`~napari_mmfuse.core.segment.predict`'s default
OVERLAP = 0.25
#: a channel whose minimum holds at least this fraction of the voxels has a constant background
BACKGROUND_FRACTION = 0.1



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
        Grad-CAM layer, or the attention block(s) of "attention" ("rollout to ..." when
        rolled out).
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


def class_index_of(model: SegmentationNet, target: int) -> int:
    """Output channel of the label value ``target``; a clear error when the model has no such class."""
    values = model.config.label_values
    if int(target) not in values:
        raise ValueError(f"class {target} is not one of the model's classes {values}")
    return values.index(int(target))


def _fixed_window(config, shape, low, high, region_given: bool):
    """The crop of exactly the model's patch size centred on the box ``low:high``."""
    window = np.asarray(config.patch_size)
    if not region_given and np.any(np.asarray(shape) > window):
        raise ValueError(f"the {config.architecture} model sees windows of {config.patch_size} voxels but the "
                         f"images are {list(shape)}; choose a region (a label or a box) that fits in one window")
    if np.any(high - low > window):
        raise ValueError(f"the region spans {(high - low).tolist()} voxels, more than the {config.architecture} "
                         f"model's window of {config.patch_size}; choose a smaller region")
    start = np.clip((low + high - window) // 2, 0, np.maximum(np.asarray(shape) - window, 0))
    return start, np.minimum(start + window, shape)


def prepare(model: SegmentationNet, images, region, margin):
    """Normalised, cropped input tensor (CPU), region tensor, where the crop sits, and the reference.

    The whole image is normalised (as for :func:`~.segment.predict`), then cropped. A
    model with a fixed input size gets one window of its patch size centred on the
    region (the whole image if it fits), padded at the far side when the image is smaller.
    """
    images = check_images(images)
    config = model.config
    if images.shape[0] != config.in_channels:
        raise ValueError(f"the model takes {config.in_channels} channels ({', '.join(config.channel_names)}) "
                         f"but {images.shape[0]} images were given")
    shape = images.shape[1:]
    if len(shape) != config.spatial_dims:
        raise ValueError(f"the model is {config.spatial_dims}D but the images are {len(shape)}D")
    if region is None and not config.fixed_input:
        # the whole image means the imaged object: voxels outside the field of view are not
        # segmented (see segment.predict), so they are neither summed nor explained
        outside = outside_view(images)
        if outside.any() and not outside.all():
            region = ~outside
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
        margin = per_axis(margin, None, len(shape), minimum=0)
        where = np.argwhere(region)
        low, high = where.min(axis=0), where.max(axis=0) + 1
        if not config.fixed_input:
            low, high = np.maximum(low - margin, 0), np.minimum(high + np.asarray(margin), shape)
    else:
        low, high = np.zeros(len(shape), int), np.asarray(shape)
    if config.fixed_input:
        low, high = _fixed_window(config, shape, low, high, region is not None)
    crop = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
    normalised = model.normalise(images)
    sub = normalised[(slice(None), *crop)]
    if config.fixed_input:
        pad = [p - s for p, s in zip(config.patch_size, sub.shape[1:])]
    else:
        pad = [(-s) % config.size_divisor for s in sub.shape[1:]]
    x = torch.from_numpy(np.pad(sub, [(0, 0)] + [(0, p) for p in pad], mode="edge"))[None]
    region_tensor = None
    if region is not None:
        region_tensor = torch.from_numpy(np.pad(region[crop], [(0, p) for p in pad]))
    return x, region_tensor, crop, shape, _reference(normalised, x)


def _reference(normalised: np.ndarray, x: torch.Tensor) -> torch.Tensor:
    """Each channel's "no signal" value, shape (1, C, 1, ...), for baselines, occlusion and ablation.

    A channel with a constant background (the minimum held by at least
    :data:`BACKGROUND_FRACTION` of the image's voxels: skull-stripped MRI, padding, the
    outside of a field of view) gets that background value, so the background itself is
    never credited; any other channel gets its mean over ``x``.
    """
    reference = x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)
    for c, channel in enumerate(normalised):
        low = channel.min()
        if np.count_nonzero(channel == low) >= BACKGROUND_FRACTION * channel.size:
            reference[0, c] = float(low)
    return reference


def paste(values: np.ndarray, crop, shape, leading: int = 0) -> np.ndarray:
    """``values`` computed on a (padded) crop, placed on the full grid of ``shape`` (zeros elsewhere)."""
    spatial = tuple(s.stop - s.start for s in crop)
    out = np.zeros(values.shape[:leading] + tuple(shape), np.float32)
    out[(Ellipsis, *crop)] = values[(Ellipsis, *[slice(0, s) for s in spatial])]
    return out


class Tiling:
    """The sliding windows of :func:`~.segment.predict` over a grid, and how their overlaps blend.

    Windows of the model's patch size (clipped to the grid) on MONAI's scan with
    :data:`OVERLAP`, each weighted by a Gaussian importance map normalised so that the
    weights of all windows sum to 1 at every voxel (one window: weight 1). The target of
    a window is the class logit times its weight (times the region), so the targets of
    all windows add up to the target of the blended prediction, and gradient maps of the
    windows simply add up. Windows holding no region voxel are left out (they add nothing).
    """

    def __init__(self, shape, patch, region: torch.Tensor | None):
        from monai.data.utils import compute_importance_map
        from monai.inferers.utils import _get_scan_interval, dense_patch_slices

        shape = tuple(int(s) for s in shape)
        size = [min(int(p), s) for p, s in zip(patch, shape)]
        interval = _get_scan_interval(shape, size, len(size), [OVERLAP] * len(size))
        windows = [tuple(slice(int(w.start), int(w.stop)) for w in window)
                   for window in dense_patch_slices(shape, size, interval)]
        if len(windows) == 1:
            self.importance = torch.ones(size)
        else:
            self.importance = compute_importance_map(tuple(size), mode="gaussian", sigma_scale=0.125)
        self.total = torch.zeros(shape)
        for window in windows:
            self.total[window] += self.importance
        self.region = region
        self.windows = [w for w in windows if region is None or bool(region[w].any())]

    def weights(self, window) -> torch.Tensor:
        """Blending weight of each voxel of a window, shape (*P)."""
        return self.importance / self.total[window]

    def target(self, window, device) -> torch.Tensor:
        """Weight of each voxel's logit in the window's target, shape (*P), on ``device``."""
        weights = self.weights(window)
        return (weights if self.region is None else weights * self.region[window]).to(device)


def _patch(x: torch.Tensor, window, device) -> torch.Tensor:
    return x[(slice(None), slice(None), *window)].to(device)


def saliency_steps(model, x, tiling: Tiling, class_index: int, samples: int, device, *, noise: float = 0.15,
                    seed: int = 0):
    """:func:`saliency` window by window (SmoothGrad noise drawn on the whole grid); yields progress."""
    rounds = max(samples, 1)
    count = rounds * len(tiling.windows)
    yield Progress(0, count)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    axes = tuple(range(2, x.ndim))
    sigma = noise * (x.amax(dim=axes, keepdim=True) - x.amin(dim=axes, keepdim=True))
    total = torch.zeros_like(x[0])
    done = 0
    for _ in range(rounds):
        noisy = x + sigma * torch.randn(x.shape, generator=generator) if samples > 0 else x
        gradient = torch.zeros_like(x[0])
        for window in tiling.windows:
            part = input_gradient(model, _patch(noisy, window, device), class_index, tiling.target(window, device))
            gradient[(slice(None), *window)] += part[0].cpu()
            done += 1
            yield Progress(done, count)
        total += gradient.abs()
    return (total / rounds).numpy().astype(np.float32)


def ig_steps(model, x, tiling: Tiling, class_index: int, baseline, steps: int, device, batch_size: int = 8):
    """:func:`integrated_gradients` window by window; yields progress after each batch of path points."""
    count = math.ceil(steps / batch_size) * len(tiling.windows)
    yield Progress(0, count)
    baseline = baseline.expand_as(x)
    total = torch.zeros_like(x[0])
    done = 0
    for window in tiling.windows:
        for gradients in path_gradients(model, _patch(x, window, device), _patch(baseline, window, device),
                                         class_index, tiling.target(window, device), steps, batch_size):
            total[(slice(None), *window)] += gradients.cpu()
            done += 1
            yield Progress(done, count)
    return ((x - baseline)[0] * total / steps).numpy().astype(np.float32)


def gradcam_steps(model, x, tiling: Tiling, class_index: int, layer, plusplus: bool, device):
    """:func:`gradcam` window by window, the maps blended by the windows' weights; yields progress."""
    count = len(tiling.windows)
    yield Progress(0, count)
    layer = layer or default_layer(model, _patch(x, tiling.windows[0], device))
    cam = torch.zeros(x.shape[2:])
    for done, window in enumerate(tiling.windows, start=1):
        values = gradcam(model, _patch(x, window, device), class_index=class_index,
                         region=tiling.target(window, device), layer=layer, plusplus=plusplus)
        cam[window] += tiling.weights(window) * torch.from_numpy(values)
        yield Progress(done, count)
    return cam.numpy(), layer


def occlusion_steps(model, x, tiling: Tiling, class_index: int, fill, window, device, batch_size: int = 8,
                    stride=None):
    """:func:`occlusion` window by window: each occluder's drop summed over the windows it touches."""
    corners, edge = occluders(x.shape[2:], window, stride)
    starts = [np.array([w.start for w in window]) for window in tiling.windows]
    count = sum(math.ceil(len(touching(corners, edge, start, [w.stop - w.start for w in window])) / batch_size)
                for start, window in zip(starts, tiling.windows))
    yield Progress(0, count)
    drops = torch.zeros(len(corners), dtype=torch.float32)
    done = 0
    for start, window in zip(starts, tiling.windows):
        for _ in occlusion_drops(model, _patch(x, window, device), class_index, tiling.target(window, device),
                                  corners, edge, fill.to(device), batch_size, drops, offset=start):
            done += 1
            yield Progress(done, count)
    return paint_occlusion(drops, corners, edge, x.shape[2:]).numpy().astype(np.float32)


def ablation_steps(model, x, tiling: Tiling, class_index: int, fill, device):
    """:func:`channel_ablation` window by window: drops summed, maps blended; yields progress."""
    count = len(tiling.windows)
    yield Progress(0, count)
    raw = np.zeros(x.shape[1], np.float64)
    maps = torch.zeros(x.shape[1:])
    for done, window in enumerate(tiling.windows, start=1):
        drops, values = channel_ablation(model, _patch(x, window, device), class_index=class_index,
                                         region=tiling.target(window, device), fill=fill.flatten().to(device))
        raw += drops
        maps[(slice(None), *window)] += tiling.weights(window) * torch.from_numpy(values)
        yield Progress(done, count)
    return raw, maps.numpy()


def stride_period(model: nn.Module) -> int:
    """Period of the checkerboard in a network's input gradients (1: none).

    A convolution whose stride does not divide its kernel (MONAI's UNet: kernel 3, stride
    2) reaches the voxels of even and odd positions through different numbers of taps,
    so every gradient through it alternates with the position; stacked, the pattern
    repeats with the network's total stride (its size divisor).
    """
    uneven = any(isinstance(m, nn.modules.conv._ConvNd) and not m.transposed
                 and any(s > 1 and k % s for k, s in zip(m.kernel_size, m.stride)) for m in model.modules())
    return model.config.size_divisor if uneven else 1


def destripe(maps: np.ndarray, period: int) -> np.ndarray:
    """Remove the stride checkerboard from per-channel maps (C, *S) on the windows' grid.

    The first stride-2 convolution alternates its taps voxel by voxel: the binomial
    kernel ``[1, 2, 1] / 4`` along each axis (zero at that period-2 frequency, one voxel
    of reach) removes it. The deeper strides give each phase of the total stride (the
    voxel's position modulo ``period``; the windows start at multiples of it) its own
    gain: each map is divided by the mean magnitude of its voxels of the same phase,
    relative to the mean over all phases.
    """
    if period <= 1:
        return maps
    from scipy import ndimage

    for axis in range(1, maps.ndim):
        maps = ndimage.correlate1d(maps, np.array([0.25, 0.5, 0.25], np.float32), axis=axis, mode="nearest")
    spatial = maps.shape[1:]
    blocks = maps.reshape([maps.shape[0]] + [size for s in spatial for size in (s // period, period)])
    gain = np.abs(blocks).mean(axis=tuple(range(1, 2 * len(spatial), 2)), keepdims=True)
    gain /= np.maximum(gain.mean(axis=tuple(range(2, 2 * len(spatial) + 1, 2)), keepdims=True), 1e-30)
    return (blocks / np.where(gain > 0, gain, 1)).reshape(maps.shape).astype(np.float32)
