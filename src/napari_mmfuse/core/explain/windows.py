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
    channel_ablation, default_layer, gradcam, input_gradient, integrated_gradients, occluders, occlusion_drops,
    paint_occlusion, per_axis, touching,
)

#: sliding-window overlap, as :func:`~napari_mmfuse.core.segment.predict`'s default
OVERLAP = 0.25
#: a channel whose minimum holds at least this fraction of the voxels has a constant background
BACKGROUND_FRACTION = 0.1
#: voxels sent through the network in one pass (copies of a window times its voxels, at most 8 copies):
#: the activations kept for the backward pass, the memory that grows with the work, scale with this,
#: not with the image (a 48^3 window: 8 copies; 128^3: 1)
PASS_VOXELS = 2**20


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

    def ranking(self) -> list[str]:
        """The modalities, most attributed first."""
        return [self.names[i] for i in np.argsort(-np.asarray(self.scores), kind="stable")]

    def describe(self) -> dict:
        """The provenance entry: method, each modality's share and the ranking."""
        return {"name": "per-modality attribution", "kind": "table", "method": self.method,
                "scores": dict(zip(self.names, (round(float(s), 4) for s in self.scores))),
                "ranking": self.ranking()}


@dataclass
class Removal:
    """What removing each modality does to the segmentation of the target class, in the region.

    Attributes
    ----------
    dice : ndarray, shape (C,)
        Dice between the class's voxels predicted with all modalities and with this one
        removed (1: removing it changes nothing).
    probability_change : ndarray, shape (C,)
        Mean class probability with all modalities minus with this one removed.
    names : list of str
    how : str
        "replaced by its reference" (early fusion: the value :func:`prepare`'s reference
        gives the channel, its background or mean) or "its network left out" (late fusion).
    """

    dice: np.ndarray
    probability_change: np.ndarray
    names: list[str]
    how: str

    @property
    def scores(self) -> np.ndarray:
        """``1 - dice``: the share of the class's voxels that change when the modality is removed."""
        return 1.0 - np.asarray(self.dice)

    def ranking(self) -> list[str]:
        """The modalities whose removal changes the class most first (Dice, then probability)."""
        order = np.lexsort((-np.asarray(self.probability_change), -self.scores))
        return [self.names[i] for i in order]

    def describe(self) -> dict:
        """The provenance entry: Dice and probability change per modality and the ranking."""
        return {"name": "modality removal", "kind": "table", "how": self.how,
                "dice": dict(zip(self.names, (round(float(d), 4) for d in self.dice))),
                "probability_change": dict(zip(self.names, (round(float(p), 4) for p in self.probability_change))),
                "ranking": self.ranking()}


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


def copies_per_pass(tiling: Tiling) -> int:
    """Copies of a window (path points, occluded or ablated copies) per network pass: see :data:`PASS_VOXELS`."""
    return max(1, min(8, PASS_VOXELS // int(tiling.importance.numel())))


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


def ig_steps(model, x, tiling: Tiling, class_index: int, baseline, steps: int, device):
    """:func:`integrated_gradients` (Captum's) window by window; yields progress after each window.

    Each window's target is its share of the blended prediction's (:meth:`Tiling.target`),
    so the windows' attributions add up to those of the whole image; at most
    :func:`copies_per_pass` path points go through the network at once.
    """
    count = len(tiling.windows)
    yield Progress(0, count)
    baseline = baseline.expand_as(x)
    total = torch.zeros_like(x[0])
    batch_size = copies_per_pass(tiling)
    for done, window in enumerate(tiling.windows, start=1):
        values = integrated_gradients(model, _patch(x, window, device), class_index=class_index,
                                      region=tiling.target(window, device), baseline=_patch(baseline, window, device),
                                      steps=steps, batch_size=batch_size)
        total[(slice(None), *window)] += torch.from_numpy(values)
        yield Progress(done, count)
    return total.numpy()


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


def occlusion_steps(model, x, tiling: Tiling, class_index: int, fill, window, device, stride=None):
    """:func:`occlusion` window by window: each occluder's drop summed over the windows it touches."""
    corners, edge = occluders(x.shape[2:], window, stride)
    batch_size = copies_per_pass(tiling)
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


def removal_steps(model: SegmentationNet, x, tiling: Tiling, fill, device):
    """Blended class probabilities with all modalities and with each one removed, window by window.

    Early fusion: the modality is replaced by ``fill`` (its reference); late fusion: its
    network is left out of the weighted average. Probabilities are the softmax, or each
    label's sigmoid for a sigmoid head. Yields progress after each window.

    Returns
    -------
    Tensor, shape (C + 1, K, *S)
        All modalities first, then without each modality in channel order.
    """
    count = len(tiling.windows)
    yield Progress(0, count)
    channels = x.shape[1]
    blended = torch.zeros((channels + 1, model.config.n_classes) + tuple(x.shape[2:]))
    for done, window in enumerate(tiling.windows, start=1):
        with torch.no_grad():
            probabilities = _removed(model, _patch(x, window, device), fill.to(device))
        blended[(slice(None), slice(None), *window)] += tiling.weights(window) * probabilities.cpu()
        yield Progress(done, count)
    return blended


def _removed(model: SegmentationNet, patch: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Class probabilities of one window (C + 1, K, *P): all modalities, then without each."""
    channels = patch.shape[1]
    if model.config.fusion == "late":
        weights = model.weights.to(patch.device).reshape((-1,) + (1,) * (patch.ndim - 1))
        members = torch.cat([torch.softmax(m, dim=1) for m in model.member_logits(patch)]) * weights
        total = members.sum(dim=0, keepdim=True)
        without = [(total - members[c : c + 1]) / (1 - weights[c]).clamp_min(1e-8) for c in range(channels)]
        return torch.cat([total, *without])
    batch = patch.repeat(channels + 1, *([1] * (patch.ndim - 1)))
    for c in range(channels):
        batch[c + 1, c] = fill[0, c]
    logits = model(batch)
    return torch.sigmoid(logits) if model.config.activation == "sigmoid" else torch.softmax(logits, dim=1)


def removal_of(blended: torch.Tensor, class_index: int, where: torch.Tensor, names, how: str,
               sigmoid: bool = False) -> Removal:
    """Dice and mean probability change of the class in ``where`` (bool, *S) from :func:`removal_steps`.

    The class's voxels are those where it is the most probable class, or (``sigmoid``:
    independent, overlapping labels) where its probability exceeds 0.5.
    """
    if sigmoid:
        labels = blended[:, class_index][:, where] > 0.5
    else:
        labels = blended.argmax(dim=1)[:, where] == class_index
    probability = blended[:, class_index][:, where]
    full = labels[0]
    overlap = (labels[1:] & full).sum(dim=1).double()
    sizes = labels[1:].sum(dim=1).double() + full.sum().double()
    dice = torch.where(sizes > 0, 2 * overlap / sizes.clamp_min(1), torch.ones_like(sizes))
    change = probability[0].mean() - probability[1:].mean(dim=1)
    return Removal(dice.numpy(), change.double().numpy(), list(names), how)


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
