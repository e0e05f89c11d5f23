"""Sliding-window prediction of a model, and the uncertainty of its class probabilities."""

from __future__ import annotations

import math

import numpy as np
import torch

from .. import space
from ..device import get_device, with_oom_retry
from .inputs import check_images, outside_view
from .model import SegmentationNet


#: array axis of the canonical (S, P, L) grid and direction each axis code runs along
_CODES = {"S": (0, 1), "I": (0, -1), "P": (1, 1), "A": (1, -1), "L": (2, 1), "R": (2, -1)}


def oriented_grid(shape, affine, axcodes: str) -> tuple[tuple[int, ...], np.ndarray]:
    """The same voxels with the axes permuted and flipped to run along ``axcodes`` (as MONAI's ``Orientation``).

    Parameters
    ----------
    shape : sequence of int, length 3
    affine : ndarray, shape (4, 4)
        Index -> world affine (LPS, napari order).
    axcodes : str
        Where each new axis points, e.g. "RAS": axis 0 towards the patient's right, 1
        anterior, 2 superior (the axes nearest to those directions; obliquity is kept).

    Returns
    -------
    shape : tuple of int
    affine : ndarray, shape (4, 4)
    """
    placeholder = np.broadcast_to(np.zeros((), np.uint8), tuple(shape))
    canonical, canonical_affine = space.reorient_to_nearest(placeholder, affine)  # axes along S, P, L
    permutation = np.zeros((4, 4))
    permutation[3, 3] = 1.0
    for axis, code in enumerate(axcodes.upper()):
        source, sign = _CODES[code]
        permutation[source, axis] = sign
        if sign < 0:
            permutation[source, 3] = canonical.shape[source] - 1
    new_shape = tuple(canonical.shape[_CODES[code][0]] for code in axcodes.upper())
    return new_shape, canonical_affine @ permutation


def spacing_grid(shape, affine, spacing) -> tuple[tuple[int, ...], np.ndarray]:
    """The grid of the same extent and axes with voxel ``spacing`` (one entry per array axis)."""
    current = space.spacing_of(affine)
    factor = np.asarray(spacing, np.float64) / current
    new_shape = tuple(max(1, int(round(s / f))) for s, f in zip(shape, factor))
    scale = np.diag(list(factor) + [1.0])
    new_affine = affine @ scale
    # keep the world extent: the first voxel's outer edge stays where it was
    new_affine[:-1, -1] = space.voxel_to_world(affine, (factor - 1) / 2)
    return new_shape, new_affine


def model_grid(config, shape, affine) -> tuple[tuple[int, ...], np.ndarray]:
    """The grid a model works on for an input grid: its orientation, then its spacing along those axes."""
    if config.orientation:
        shape, affine = oriented_grid(shape, affine, config.orientation)
    if config.spacing is not None:
        shape, affine = spacing_grid(shape, affine, config.spacing)
    return tuple(shape), affine


class ModelGrid:
    """The grid a model works on (:func:`model_grid`) for an input grid, and the way back.

    Parameters
    ----------
    config : ModelConfig
    shape : tuple of int
        The input grid's shape.
    affine : ndarray, shape (n + 1, n + 1), or None
        The input grid's index -> world affine; None: the model works on the input's grid.
    device : str or torch.device, optional
    """

    def __init__(self, config, shape, affine, device=None):
        self.shape, self.device = tuple(shape), device
        self.affine = None if affine is None else np.asarray(affine)
        if self.affine is None:
            self.work_shape, self.work, self.regrid = self.shape, None, False
        else:
            self.work_shape, self.work = model_grid(config, self.shape, self.affine)
            self.regrid = self.work_shape != self.shape or not np.allclose(self.work, self.affine)

    def forward(self, values):
        """Channels ``(C, *S)`` (linear) or a mask ``(*S)`` (nearest) onto the model's grid; None stays None."""
        if values is None or not self.regrid:
            return values
        if values.dtype == bool:
            return space.resample(values.astype(np.uint8), self.affine, self.work_shape, self.work,
                                  interpolation="nearest", device=self.device) > 0
        return space.resample(values, self.affine, self.work_shape, self.work, channel_axis=0, device=self.device)

    def back(self, values):
        """Values ``(*S)`` or ``(C, *S)`` on the model's grid back onto the input's (linear)."""
        if values is None or not self.regrid:
            return values
        leading = 0 if values.ndim > len(self.shape) else None
        return space.resample(values, self.work, self.shape, self.affine, channel_axis=leading, device=self.device)


def nested_labels(masks, values) -> np.ndarray:
    """One label map from overlapping masks: each voxel takes the value of its smallest positive mask.

    Nested regions (whole tumour > tumour core > enhancing tumour) all stay visible.

    Parameters
    ----------
    masks : ndarray, shape (K, *S), bool
    values : sequence of int, length K

    Returns
    -------
    ndarray, shape (*S), int32
    """
    masks = np.asarray(masks, bool)
    labels = np.zeros(masks.shape[1:], np.int32)
    sizes = masks.reshape(len(masks), -1).sum(axis=1)
    for index in np.argsort(-sizes, kind="stable"):
        labels[masks[index]] = int(values[index])
    return labels


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
        Index -> world affine of ``images``; when given and the model has an
        ``orientation`` or a ``spacing`` (a bundle's ``Orientationd`` and ``Spacingd``),
        the input is resampled onto the model's grid (:func:`model_grid`) and the result
        back onto ``images``' grid.
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
        For a sigmoid (multi-label) model, the value of each voxel's smallest region among
        the channels above 0.5 (:func:`nested_labels`).
    probabilities : ndarray, shape (K, *S), float32
        Class probabilities (a sigmoid model's: each channel's own probability) in the
        order of ``model.config.label_values`` (late fusion:
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
    grid = ModelGrid(config, shape, affine, device)
    images = grid.forward(images)
    device = get_device(device)
    model = model.to(device).eval()
    x = torch.from_numpy(model.normalise(images))[None]
    n_members = 1 if config.fusion == "early" else len(model.networks)
    sigmoid = config.activation == "sigmoid"

    flip_axes = [()] + ([(axis,) for axis in range(2, 2 + config.spatial_dims)] if test_time_flips else [])

    def members(window: torch.Tensor) -> torch.Tensor:
        total = 0.0
        for axes in flip_axes:
            logits = model.member_logits(torch.flip(window, axes) if axes else window)
            probabilities = torch.cat([torch.sigmoid(m) if sigmoid else torch.softmax(m, dim=1) for m in logits], dim=1)
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
    probabilities = grid.back(probabilities)  # back onto the input's grid: the labels are decided there
    values = np.asarray(config.label_values, np.int32)
    if sigmoid:
        labels = nested_labels(probabilities >= 0.5, values)
    elif config.combine == "vote" and n_members > 1:
        per_member = grid.back(per_member.reshape((-1,) + per_member.shape[2:])).reshape((n_members, k) + tuple(shape))
        votes = np.zeros_like(per_member[0])
        for member, w in zip(per_member.argmax(axis=1), weights.ravel()):
            for index in range(k):
                votes[index] += w * (member == index)
        # ties (e.g. two modalities that disagree) go to the class of highest averaged probability
        labels = values[(votes + 1e-3 * probabilities).argmax(axis=0)]
    else:
        labels = values[probabilities.argmax(axis=0)]
    if not sigmoid:
        probabilities /= np.maximum(probabilities.sum(axis=0, keepdims=True), 1e-8)
    labels[outside] = 0
    return labels, probabilities.astype(np.float32, copy=False)


def uncertainty(probabilities, *, kind: str = "entropy", multilabel: bool = False) -> np.ndarray:
    """Per-voxel uncertainty of class probabilities.

    Parameters
    ----------
    probabilities : ndarray, shape (K, *S)
    kind : {"entropy", "margin"}
        "entropy": normalised Shannon entropy (0 certain .. 1 uniform);
        "margin": 1 - the largest probability.
    multilabel : bool
        The channels are independent labels (a sigmoid head): the mean over channels of
        each one's binary entropy, or of 1 - its distance-based margin ``1 - |2p - 1|``.

    Returns
    -------
    ndarray, shape (*S), float32
    """
    p = np.asarray(probabilities, dtype=np.float32)
    if kind not in ("entropy", "margin"):
        raise ValueError(f"kind must be 'entropy' or 'margin', not {kind!r}")
    if multilabel:
        if kind == "margin":
            return (1.0 - np.abs(2.0 * p - 1.0)).mean(axis=0).astype(np.float32)
        q = np.clip(p, 1e-8, 1.0 - 1e-8)
        return (-(q * np.log(q) + (1 - q) * np.log(1 - q)) / math.log(2.0)).mean(axis=0).astype(np.float32)
    if kind == "margin":
        return (1.0 - p.max(axis=0)).astype(np.float32)
    entropy = -(p * np.log(np.clip(p, 1e-8, 1.0))).sum(axis=0)
    return (entropy / math.log(max(p.shape[0], 2))).astype(np.float32)
