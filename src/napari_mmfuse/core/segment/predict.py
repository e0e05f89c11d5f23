"""Sliding-window prediction of a model, and the uncertainty of its class probabilities."""

from __future__ import annotations

import math

import numpy as np
import torch

from .. import space
from ..device import get_device, with_oom_retry
from .inputs import check_images, outside_view
from .model import SegmentationNet


def _spacing_grid(shape, affine, spacing) -> tuple[tuple[int, ...], np.ndarray]:
    current = space.spacing_of(affine)
    factor = np.asarray(spacing, np.float64) / current
    new_shape = tuple(max(1, int(round(s / f))) for s, f in zip(shape, factor))
    scale = np.diag(list(factor) + [1.0])
    new_affine = affine @ scale
    # keep the world extent centred: shift so that the first voxel edge matches
    new_affine[:-1, -1] = space.voxel_to_world(affine, (factor - 1) / 2)
    return new_shape, new_affine


def predict(
    model: SegmentationNet,
    images,
    *,
    affine: np.ndarray | None = None,
    overlap: float = 0.25,
    batch_size: int = 4,
    test_time_flips: bool = False,
    device=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Segment a whole image with sliding-window inference.

    Parameters
    ----------
    model : SegmentationNet
    images : ndarray, shape (C, *S)
        Modalities in the model's channel order, on one grid.
    affine : ndarray, shape (n + 1, n + 1), optional
        Index -> world affine of ``images``; when given and the model has a ``spacing``,
        the input is resampled to that spacing and the result back to ``images``' grid.
    overlap : float
        Sliding-window overlap (0 to < 1).
    batch_size : int
        Windows per forward pass (halved on out-of-memory errors).
    test_time_flips : bool
        Also run each window flipped along each spatial axis (1 + n passes) and average
        the class probabilities, which evens out the errors of a network trained on few strokes.
    device : str or torch.device, optional

    Returns
    -------
    labels : ndarray, shape (*S)
        Label values of the model's classes (int32); 0 (unlabelled) outside the field of
        view, where every modality sits at its constant background (see :func:`outside_view`).
    probabilities : ndarray, shape (K, *S), float32
        Class probabilities in the order of ``model.config.label_values`` (late fusion:
        the weighted average of the networks'; with "vote" the labels are the weighted
        majority of the networks' decisions, ties broken by the averaged probabilities).
    """
    from monai.inferers import sliding_window_inference

    config = model.config
    images = check_images(images)
    if images.shape[0] != config.in_channels:
        raise ValueError(f"the model takes {config.in_channels} channels ({', '.join(config.channel_names)}) "
                         f"but {images.shape[0]} images were given")
    if images.ndim - 1 != config.spatial_dims:
        raise ValueError(f"the model is {config.spatial_dims}D but the images are {images.ndim - 1}D")
    shape = images.shape[1:]
    outside = outside_view(images)
    regrid = config.spacing is not None and affine is not None
    if regrid:
        work_shape, work_affine = _spacing_grid(shape, affine, config.spacing)
        images = space.resample(images, affine, work_shape, work_affine, channel_axis=0, device=device)
    device = get_device(device)
    model = model.to(device).eval()
    x = torch.from_numpy(model.normalise(images))[None]
    n_members = 1 if config.fusion == "early" else len(model.networks)

    flip_axes = [()] + ([(axis,) for axis in range(2, 2 + config.spatial_dims)] if test_time_flips else [])

    def members(window: torch.Tensor) -> torch.Tensor:
        total = 0.0
        for axes in flip_axes:
            logits = model.member_logits(torch.flip(window, axes) if axes else window)
            probabilities = torch.cat([torch.softmax(m, dim=1) for m in logits], dim=1)
            total = total + (torch.flip(probabilities, axes) if axes else probabilities)
        return total / len(flip_axes)

    def run(tile: int) -> torch.Tensor:
        with torch.inference_mode():
            return sliding_window_inference(
                x, roi_size=config.patch_size, sw_batch_size=tile, predictor=members, overlap=overlap,
                mode="gaussian", sw_device=device, device=torch.device("cpu"),
            )[0]

    stacked = with_oom_retry(run, tile=batch_size, min_tile=1).numpy()
    k = config.n_classes
    per_member = stacked.reshape((n_members, k) + stacked.shape[1:])
    weights = model.weights.numpy().reshape((-1,) + (1,) * (per_member.ndim - 1))
    probabilities = per_member[0] if n_members == 1 else (per_member * weights).sum(axis=0)
    values = np.asarray(config.label_values, np.int32)
    if config.combine == "vote" and n_members > 1:
        votes = np.zeros_like(per_member[0])
        for member, w in zip(per_member.argmax(axis=1), weights.ravel()):
            for index in range(k):
                votes[index] += w * (member == index)
        # ties (e.g. two modalities that disagree) go to the class of highest averaged probability
        labels = values[(votes + 1e-3 * probabilities).argmax(axis=0)]
    else:
        labels = values[probabilities.argmax(axis=0)]
    if regrid:
        probabilities = space.resample(probabilities, work_affine, shape, affine, channel_axis=0, device=device)
        labels = space.resample(labels, work_affine, shape, affine, interpolation="nearest", device=device)
    probabilities /= np.maximum(probabilities.sum(axis=0, keepdims=True), 1e-8)
    labels[outside] = 0
    return labels, probabilities.astype(np.float32, copy=False)


def uncertainty(probabilities, *, kind: str = "entropy") -> np.ndarray:
    """Per-voxel uncertainty of class probabilities.

    Parameters
    ----------
    probabilities : ndarray, shape (K, *S)
    kind : {"entropy", "margin"}
        "entropy": normalised Shannon entropy (0 certain .. 1 uniform);
        "margin": 1 - the largest probability.

    Returns
    -------
    ndarray, shape (*S), float32
    """
    p = np.asarray(probabilities, dtype=np.float32)
    if kind == "margin":
        return (1.0 - p.max(axis=0)).astype(np.float32)
    if kind != "entropy":
        raise ValueError(f"kind must be 'entropy' or 'margin', not {kind!r}")
    entropy = -(p * np.log(np.clip(p, 1e-8, 1.0))).sum(axis=0)
    return (entropy / math.log(max(p.shape[0], 2))).astype(np.float32)
