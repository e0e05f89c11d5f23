"""Training a network on painted strokes (partial cross-entropy on patches around them).

With modality dropout, training removes modalities of patches at random so that the
network still segments a case that lacks some; :func:`fill_missing` fills a missing
modality at prediction exactly as training removed it.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from ...operations import Progress, drive
from ..device import get_device
from .config import TRAINABLE, ModelConfig
from .inputs import channel_stats, check_images, check_scribbles
from .model import SegmentationNet


class TrainStep(Progress):
    """Progress of training: ``done`` steps of ``total``, the step's partial cross-entropy in ``values["loss"]``."""

    @property
    def step(self) -> int:
        """Index of the step, from 1."""
        return int(self.done)

    @property
    def loss(self) -> float:
        """Partial cross-entropy of the step."""
        return float(self.values["loss"])


def _class_indices(scribbles: np.ndarray, label_values: list[int]) -> np.ndarray:
    target = np.full(scribbles.shape, -1, np.int64)
    for index, value in enumerate(label_values):
        target[scribbles == value] = index
    return target


def _crop(array: np.ndarray, start, size, fill=0) -> np.ndarray:
    """Crop ``array[..., start:start+size]`` over the last len(size) axes, ``fill`` outside.

    ``fill`` is a scalar or broadcasts against the cropped shape (e.g. one value per channel).
    """
    n = len(size)
    spatial = array.shape[-n:]
    out = np.empty(array.shape[:-n] + tuple(size), array.dtype)
    out[...] = fill
    src, dst = [], []
    for s, length, extent in zip(start, size, spatial):
        lo, hi = max(s, 0), min(s + length, extent)
        src.append(slice(lo, max(hi, lo)))
        dst.append(slice(lo - s, lo - s + max(hi - lo, 0)))
    out[(Ellipsis, *dst)] = array[(Ellipsis, *src)]
    return out


def sample_patches(normalised, target, by_class, patch, batch, rng, fill, *, intensity=0.1, dropout=0.0):
    """A batch of augmented training patches around painted voxels.

    Parameters
    ----------
    normalised : ndarray, shape (C, *S)
        Normalised images.
    target : ndarray, shape (*S), int64
        Class index of each voxel, -1 where unpainted.
    by_class : list of ndarray
        Painted voxel coordinates of each painted class; patch centres are drawn from a
        random class first, so every class is seen equally often.
    patch : sequence of int
    batch : int
    rng : numpy.random.Generator
    fill : ndarray, shape (C, 1, ...)
        Value of each channel outside the image.
    intensity : float
        Each channel of each patch is scaled by a gain in ``1 ± intensity`` and shifted
        by up to ``± intensity`` (normalised units).
    dropout : float
        Probability of removing each channel of a patch (set to 0, the channel's mean
        after normalisation; at least one channel is kept).

    Returns
    -------
    x : ndarray, shape (B, C, *patch), float32
    y : ndarray, shape (B, *patch), int64
        Flipped together with ``x``.
    """
    n = len(patch)
    xs, ys = [], []
    for _ in range(batch):
        voxels = by_class[rng.integers(len(by_class))]
        centre = voxels[rng.integers(len(voxels))]
        jitter = rng.integers(-(np.array(patch) // 2) + 1, np.array(patch) // 2)
        start = centre + jitter - np.array(patch) // 2
        x = _crop(normalised, start, patch, fill)
        y = _crop(target, start, patch, -1)  # outside the image: unlabelled
        for axis in range(n):
            if rng.random() < 0.5:
                x, y = np.flip(x, axis + 1), np.flip(y, axis)
        gain = rng.uniform(1 - intensity, 1 + intensity, size=(x.shape[0],) + (1,) * n).astype(np.float32)
        shift = rng.uniform(-intensity, intensity, size=gain.shape).astype(np.float32)
        x = x * gain + shift
        if dropout > 0 and x.shape[0] > 1:
            removed = rng.random(x.shape[0]) < dropout
            if removed.all():
                removed[rng.integers(x.shape[0])] = False
            x[removed] = 0.0
        xs.append(x)
        ys.append(y)
    return np.stack(xs).astype(np.float32), np.stack(ys)


def train_steps(
    images,
    scribbles,
    *,
    model: SegmentationNet | None = None,
    architecture: str = "unet",
    features: Sequence[int] | None = None,
    fusion: str = "early",
    combine: str = "average",
    fusion_weights: Sequence[float] | None = None,
    patch_size: Sequence[int] | None = None,
    channel_names: Sequence[str] | None = None,
    spacing: Sequence[float] | None = None,
    steps: int = 200,
    batch_size: int = 4,
    learning_rate: float = 2e-3,
    modality_dropout: float = 0.0,
    seed: int = 0,
    device=None,
) -> Generator[TrainStep, None, SegmentationNet]:
    """Train (or keep training) a network on painted strokes; a generator of progress.

    Each step samples ``batch_size`` patches centred near painted voxels (every class
    equally often, random flips and a small intensity jitter) and minimises the
    cross-entropy over the painted voxels only (partial cross-entropy, classes weighted
    by the inverse square root of their painted volume).

    Parameters
    ----------
    images : ndarray, shape (C, *S)
        Modalities on one grid (see :func:`stack_modalities`).
    scribbles : ndarray, shape (*S), int
        0 = unlabelled; every other value is a class, kept as the label value.
    model : SegmentationNet, optional
        Warm start: continue training these weights (same channels and classes); the
        architecture options are then taken from it. The model is trained in place.
    architecture : {"unet", "basicunet", "unetr"}
    features : sequence of int, optional
        Channels per level; default (16, 32, 64) for "unet" and "unetr" (feature size,
        hidden size, MLP size), (16, 16, 32, 64, 128, 16) for "basicunet".
    fusion : {"early", "late"}
    combine : {"average", "vote"}
        Late fusion only: how :func:`predict` combines the per-modality networks.
    fusion_weights : sequence of float, optional
        Late fusion weight of each modality (equal by default).
    patch_size : sequence of int, optional
        Patch edge per axis; default 64 (2D) or 48 (3D), at most the image size rounded
        up to the network's size divisor.
    channel_names : sequence of str, optional
    spacing : sequence of float, optional
        Voxel spacing of ``images``; recorded so that :func:`predict` resamples other
        inputs to it.
    steps, batch_size, learning_rate, seed
        Optimisation settings (Adam).
    modality_dropout : float
        Early fusion: probability of removing each modality of a training patch (see
        :func:`sample_patches`), so that the model segments cases lacking modalities
        (:func:`fill_missing`); recorded in the configuration. Late fusion ignores it
        (each network sees one modality; a missing one is left out of the average).
    device : str or torch.device, optional

    Yields
    ------
    TrainStep
        After every optimisation step; closing the generator stops training.

    Returns
    -------
    SegmentationNet
        The trained model (``generator.send``/``StopIteration.value``), in eval mode.

    Raises
    ------
    ValueError
        Empty scribbles, a single class, shapes that do not match, or a warm-start model
        with other channels or classes.
    """
    images = check_images(images)
    scribbles = check_scribbles(images, scribbles)
    values = [int(v) for v in np.unique(scribbles[scribbles != 0])]
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if model is None and architecture not in TRAINABLE:
        raise ValueError(f"architecture must be one of {TRAINABLE} for training, not {architecture!r}")
    device = get_device(device)
    if model is None:
        mean, std = channel_stats(images)
        n = images.ndim - 1
        if features is None:
            features = (16, 16, 32, 64, 128, 16) if architecture == "basicunet" else (16, 32, 64)
        config = ModelConfig(
            spatial_dims=n, in_channels=images.shape[0], label_values=values, architecture=architecture,
            features=list(features), patch_size=list(patch_size or []), channel_mean=mean, channel_std=std,
            channel_names=list(channel_names or []), fusion=fusion, combine=combine,
            fusion_weights=list(fusion_weights or []), spacing=list(spacing) if spacing is not None else None,
            modality_dropout=modality_dropout if fusion == "early" else 0.0,
        )
        divisor = config.size_divisor
        config.patch_size = [
            min(p, math.ceil(s / divisor) * divisor) for p, s in zip(config.patch_size, images.shape[1:])
        ]
        torch.manual_seed(seed)
        model = SegmentationNet(config)
    else:
        config = model.config
        if config.in_channels != images.shape[0]:
            raise ValueError(f"the model takes {config.in_channels} channels but {images.shape[0]} images were given")
        missing = sorted(set(values) - set(config.label_values))
        if missing:
            raise ValueError(f"scribble classes {missing} are not among the model's classes {config.label_values}; "
                             "train a new model instead of warm-starting")
        if config.architecture == "torchscript":
            raise ValueError("a TorchScript model cannot be retrained here; train a new model")
    model = model.prepare(device).train()
    normalised = model.normalise(images)
    target = _class_indices(scribbles, config.label_values)
    by_class = [np.argwhere(target == k) for k in range(config.n_classes) if np.any(target == k)]
    counts = np.bincount(target[target >= 0], minlength=config.n_classes).astype(np.float64)
    # patches are centred on every class equally often; the square root tempers the rest
    weight = np.where(counts > 0, np.sqrt(counts.sum() / np.maximum(counts, 1)), 0.0)
    weight = torch.as_tensor(weight / weight[counts > 0].mean(), dtype=torch.float32, device=device)
    loss_fn = nn.CrossEntropyLoss(weight=weight, ignore_index=-1)
    optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate)
    rng = np.random.default_rng(seed)
    fill = normalised.reshape(normalised.shape[0], -1).min(axis=1).reshape((-1,) + (1,) * (images.ndim - 1))
    try:
        for step in range(1, steps + 1):
            x, y = sample_patches(normalised, target, by_class, config.patch_size, batch_size, rng, fill,
                                  dropout=config.modality_dropout if config.fusion == "early" else 0.0)
            x = torch.from_numpy(x).to(device)
            y = torch.from_numpy(np.ascontiguousarray(y)).to(device)
            optimiser.zero_grad(set_to_none=True)
            members = model.member_logits(x)
            loss = sum(loss_fn(m, y) for m in members) / len(members)
            loss.backward()
            optimiser.step()
            value = float(loss.detach())
            yield TrainStep(step, steps, f"step {step}/{steps}, loss {value:.4f}", {"loss": value})
    finally:
        model.eval()
    return model


def train(images, scribbles, **options) -> tuple[SegmentationNet, list[float]]:
    """Run :func:`train_steps` to the end; returns the model and the loss of each step."""
    losses = []
    model = drive(train_steps(images, scribbles, **options), on_progress=lambda step: losses.append(step.loss))
    return model, losses


def fill_missing(model: SegmentationNet, channels) -> tuple[np.ndarray, SegmentationNet]:
    """The model's input with missing modalities filled as modality dropout removed them in training.

    Early fusion: a missing channel is its training mean (0 after normalisation, the value
    :func:`sample_patches` gave a removed channel), which needs a model trained with
    ``modality_dropout > 0``. Late fusion: the missing modality's network is left out of
    the weighted average (any subset works).

    Parameters
    ----------
    model : SegmentationNet
    channels : sequence of ndarray or None, length ``in_channels``
        Each modality in the model's channel order on one grid, None where missing.

    Returns
    -------
    images : ndarray, shape (C, *S), float32
    model : SegmentationNet
        ``model`` itself, or for late fusion a shallow copy (the same networks) whose
        fusion weights are 0 for the missing modalities.

    Raises
    ------
    ValueError
        All modalities missing, or an early-fusion model trained without modality dropout.
    """
    import copy

    config = model.config
    if len(channels) != config.in_channels:
        raise ValueError(f"give {config.in_channels} channels (None where missing), got {len(channels)}")
    present = [c for c in channels if c is not None]
    if not present:
        raise ValueError(f"every modality of the model ({', '.join(config.channel_names)}) is missing")
    missing = [name for name, c in zip(config.channel_names, channels) if c is None]
    if not missing:
        return check_images(np.stack(present)), model
    if config.fusion == "early" and config.modality_dropout <= 0:
        raise ValueError(f"{', '.join(missing)} missing, but the model was trained without modality dropout; "
                         "give every modality, or train with modality dropout")
    shape = present[0].shape
    images = np.stack([np.asarray(c, np.float32) if c is not None else np.full(shape, mean, np.float32)
                       for c, mean in zip(channels, config.channel_mean)])
    if config.fusion == "late":
        model = copy.copy(model)
        model.config = replace(config, fusion_weights=[0.0 if c is None else w
                                                       for c, w in zip(channels, config.fusion_weights)])
    return check_images(images), model
