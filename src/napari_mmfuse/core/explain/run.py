"""Explain a segmentation model on images: :func:`explain_steps`, :func:`modality_attribution_steps`."""

from __future__ import annotations

import copy
from collections.abc import Generator, Sequence

import numpy as np
import torch

from ...operations import Progress, drive, operations
from ..device import get_device
from ..segment import SegmentationNet
from .attention import attention_map, block_names, vision_transformers
from .windows import (
    Attribution, Explanation, Removal, Tiling, ablation_steps, class_index_of, destripe, gradcam_steps, ig_steps,
    occlusion_steps, paste, prepare, removal_of, removal_steps, saliency_steps, stride_period,
)

#: The attribution methods (the explain operations' names, :mod:`napari_mmfuse.operations.explain`).
METHODS = tuple(operations("explain"))
ATTRIBUTIONS = ("ablation", "ig")


def default_target(label_values, class_voxels=None) -> int:
    """The class a user most likely wants explained: the object of interest, not its surroundings.

    The smallest class of the model's last segmentation when its sizes are known (the
    background surrounds the object), else the first foreground (non-zero) label.

    Parameters
    ----------
    label_values : sequence of int
        The model's classes.
    class_voxels : dict, optional
        Label value -> voxel count in the model's last segmentation.
    """
    foreground = [value for value in label_values if value != 0] or list(label_values)
    if class_voxels and all(value in class_voxels for value in foreground):
        return min(foreground, key=lambda value: class_voxels[value])
    return foreground[0]


def explain_steps(
    model: SegmentationNet,
    images,
    *,
    method: str,
    target: int | None = None,
    region=None,
    layer: str | None = None,
    rollout: bool = False,
    margin: int | Sequence[int] | None = None,
    samples: int = 16,
    steps: int = 32,
    noise: float = 0.15,
    window: Sequence[int] | int | None = None,
    stride: Sequence[int] | int | None = None,
    device=None,
) -> Generator[Progress, None, Explanation]:
    """Explain one class of a segmentation model on images, window by window, yielding progress.

    The network runs on the windows of sliding-window inference (its patch size, the
    overlap of :func:`~.segment.predict`), so memory is bounded by the patch: the target
    is the class logit of the blended prediction, each window contributing its logits
    times its blending weight; gradient maps of the windows add up, Grad-CAM and
    ablation maps are blended. Windows holding no region voxel are skipped. Use
    :func:`explain_steps` for progress and cancelling.

    Parameters
    ----------
    model : SegmentationNet
    images : ndarray, shape (C, *S)
        The model's input modalities on one grid (raw intensities; normalised here).
    method : {"gradcam", "gradcampp", "occlusion", "saliency", "smoothgrad", "ig", "attention"}
        "attention" needs a transformer (``architecture="unetr"``); its map is in [0, 1].
    target : int, optional
        Label value of the class explained; the model's first foreground class by default
        (see :func:`default_target`).
    region : ndarray of bool, shape (*S), or tuple ``(low, high)``, optional
        Where the class logit is summed (a mask, or a box of voxel corners with ``high``
        exclusive); the whole image without one. For "attention": whose tokens'
        attention is shown.
    layer : str, optional
        Grad-CAM layer name (the deepest convolution by default), or the attention
        block of "attention" (see :func:`attention_blocks`; the last by default).
    rollout : bool
        "attention": roll the attention out across blocks up to ``layer``.
    margin : int or sequence of int, optional
        Context kept around the region (voxels); half the model's patch by default.
        The maps are zero outside the region's box plus this margin (outside the
        window for a model with a fixed input size).
    samples : int
        SmoothGrad noisy copies.
    steps : int
        Integrated-gradients path points.
    noise : float
        SmoothGrad noise standard deviation, as a fraction of each channel's range.
    window : int or sequence of int, optional
        Occlusion window edge (voxels); ``max(2, S // 8)`` per axis by default.
    stride : int or sequence of int, optional
        Step between occlusion windows; half the window in 2D, the window in 3D by default.
    device : str or torch.device, optional

    Yields
    ------
    Progress
        ``done`` of ``total`` units of work (network passes on one window), integers:
        ``done == 0`` first, before any pass; each is a cancel point (closing the generator
        frees its arrays).

    Returns
    -------
    Explanation
        The generator's return value (``StopIteration.value``).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {METHODS}")
    device = get_device(device)
    model = model.to(device).eval()
    target = default_target(model.config.label_values) if target is None else target
    class_index = class_index_of(model, target)
    x, region_tensor, crop, shape, reference = prepare(model, images, region, margin)
    channel_maps = None
    if method == "attention":
        yield Progress(0, 1)
        if region_tensor is None:  # the padding is not part of the image
            region_tensor = torch.zeros(x.shape[2:], dtype=torch.bool)
            region_tensor[tuple(slice(0, s.stop - s.start) for s in crop)] = True
        values = attention_map(model, x.to(device), class_index=class_index, region=region_tensor.to(device),
                               layer=layer, rollout=rollout)
        blocks = [layer] if layer else [block_names(name, vit)[-1] for name, vit in vision_transformers(model)]
        layer = ("rollout to " if rollout else "") + ", ".join(blocks)
        yield Progress(1, 1)
        return Explanation(paste(values, crop, shape), None, method, int(target), layer)
    tiling = Tiling(x.shape[2:], model.config.patch_size, region_tensor)
    if method in ("gradcam", "gradcampp"):
        values, layer = yield from gradcam_steps(model, x, tiling, class_index, layer, method == "gradcampp", device)
    elif method == "occlusion":
        values = np.clip((yield from occlusion_steps(model, x, tiling, class_index, reference, window, device,
                                                        stride=stride)), 0,
                         None)
    else:
        if method == "ig":
            per_channel = yield from ig_steps(model, x, tiling, class_index, reference, steps, device)
        else:
            per_channel = yield from saliency_steps(model, x, tiling, class_index,
                                                     samples if method == "smoothgrad" else 0, device, noise=noise)
        per_channel = destripe(per_channel, stride_period(model))
        channel_maps = paste(per_channel, crop, shape, leading=1)
        values = np.abs(per_channel).sum(axis=0)
    return Explanation(paste(values, crop, shape), channel_maps, method, int(target),
                       layer if method.startswith("gradcam") else None)


def explain(model: SegmentationNet, images, **options) -> Explanation:
    """Explain one class of a segmentation model on images: :func:`explain_steps` run to its end.

    Parameters
    ----------
    model : SegmentationNet
    images : ndarray, shape (C, *S)
    **options
        The keyword arguments of :func:`explain_steps` (``method`` and ``target`` required).

    Returns
    -------
    Explanation
    """
    return drive(explain_steps(model, images, **options))


def modality_attribution_steps(
    model: SegmentationNet,
    images,
    *,
    target: int,
    region=None,
    method: str = "ablation",
    margin: int | Sequence[int] | None = None,
    steps: int = 32,
    device=None,
) -> Generator[Progress, None, Attribution]:
    """One number per modality: how much it drives the target.

    Window by window as :func:`explain_steps`, yielding progress.

    Parameters
    ----------
    model : SegmentationNet
    images : ndarray, shape (C, *S)
    target : int
        Label value of the class explained.
    region : ndarray of bool, shape (*S), or tuple ``(low, high)``, optional
    method : {"ablation", "ig"}
        "ablation": ``|target(x) - target(x with the channel replaced by its reference)|``
        (its constant background where it has one, else its mean); maps are the
        per-voxel drop of the class logit. "ig": the sum of the magnitudes of the
        channel's integrated gradients; maps are those magnitudes.
    margin, steps, device
        As in :func:`explain_steps`.

    Yields
    ------
    Progress
        ``done`` of ``total``, ``done == 0`` first.

    Returns
    -------
    Attribution
    """
    if method not in ATTRIBUTIONS:
        raise ValueError(f"unknown attribution method {method!r}; use 'ablation' or 'ig'")
    device = get_device(device)
    model = model.to(device).eval()
    class_index = class_index_of(model, target)
    x, region_tensor, crop, shape, reference = prepare(model, images, region, margin)
    tiling = Tiling(x.shape[2:], model.config.patch_size, region_tensor)
    if method == "ablation":
        raw, maps = yield from ablation_steps(model, x, tiling, class_index, reference, device)
        magnitude = np.abs(raw)
    else:
        per_channel = yield from ig_steps(model, x, tiling, class_index, reference, steps, device)
        maps = np.abs(destripe(per_channel, stride_period(model)))
        raw = maps.reshape(maps.shape[0], -1).sum(axis=1).astype(np.float64)
        magnitude = raw
    total = magnitude.sum()
    scores = magnitude / total if total > 0 else np.zeros_like(magnitude)
    return Attribution(scores, raw, paste(maps, crop, shape, leading=1), list(model.config.channel_names), method)


def modality_attribution(model: SegmentationNet, images, **options) -> Attribution:
    """One number per modality: :func:`modality_attribution_steps` run to its end.

    Parameters
    ----------
    model : SegmentationNet
    images : ndarray, shape (C, *S)
    **options
        The keyword arguments of :func:`modality_attribution_steps` (``target`` required).

    Returns
    -------
    Attribution
    """
    return drive(modality_attribution_steps(model, images, **options))


def modality_removal_steps(
    model: SegmentationNet,
    images,
    *,
    target: int,
    region=None,
    margin: int | Sequence[int] | None = None,
    device=None,
) -> Generator[Progress, None, Removal]:
    """What removing each modality does to the segmentation of the target class; yields progress.

    The check beside an attribution: sliding-window prediction (the windows and blending
    of :func:`explain_steps`) with all modalities and with each one removed (early
    fusion: replaced by the reference the attribution's baseline uses; late fusion: its
    network left out), compared in the region (the imaged object without one).

    Parameters
    ----------
    model : SegmentationNet
    images : ndarray, shape (C, *S)
    target : int
        Label value of the class.
    region, margin, device
        As in :func:`explain_steps`.

    Yields
    ------
    Progress
        One step per window, ``done == 0`` first.

    Returns
    -------
    Removal
    """
    device = get_device(device)
    model = model.to(device).eval()
    class_index = class_index_of(model, target)
    x, region_tensor, crop, _, reference = prepare(model, images, region, margin)
    tiling = Tiling(x.shape[2:], model.config.patch_size, region_tensor)
    blended = yield from removal_steps(model, x, tiling, reference, device)
    if region_tensor is None:  # the crop without its padding
        region_tensor = torch.zeros(x.shape[2:], dtype=torch.bool)
        region_tensor[tuple(slice(0, s.stop - s.start) for s in crop)] = True
    how = "its network left out" if model.config.fusion == "late" else "replaced by its reference"
    return removal_of(blended, class_index, region_tensor, model.config.channel_names, how,
                      sigmoid=model.config.activation == "sigmoid")


def maps_attribution(maps: np.ndarray, names, method: str) -> Attribution:
    """Per-modality attribution from one map per modality (C, *S): each one's share of the summed magnitudes."""
    raw = np.abs(maps).reshape(maps.shape[0], -1).sum(axis=1).astype(np.float64)
    total = raw.sum()
    return Attribution(raw / total if total > 0 else np.zeros_like(raw), raw, np.abs(maps), list(names), method)


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
