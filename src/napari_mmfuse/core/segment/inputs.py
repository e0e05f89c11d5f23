"""Inputs of segmentation: modalities stacked on one grid, checked, normalised; painted strokes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .. import space


def stack_modalities(images: Sequence, affines: Sequence, reference_shape, reference_affine, *, device=None):
    """Resample several images onto one grid and stack them as channels.

    Parameters
    ----------
    images : sequence of array, each shape (*S_i)
        One 2D or 3D image per modality, each on its own grid.
    affines : sequence of ndarray, each shape (n + 1, n + 1)
        Index -> world affine of each image.
    reference_shape : sequence of int, length n
    reference_affine : ndarray, shape (n + 1, n + 1)
    device : str or torch.device, optional

    Returns
    -------
    ndarray, shape (C, *reference_shape), float32
    """
    if len(images) != len(affines):
        raise ValueError(f"{len(images)} images but {len(affines)} affines")
    if not images:
        raise ValueError("no images given; choose at least one modality")
    reference_shape = tuple(int(s) for s in reference_shape)
    channels = []
    for image, affine in zip(images, affines):
        image = np.asarray(image, dtype=np.float32)
        if image.shape == reference_shape and np.allclose(affine, reference_affine, atol=1e-6):
            channels.append(image)
        else:
            channels.append(space.resample(image, affine, reference_shape, reference_affine, device=device))
    return np.stack(channels).astype(np.float32, copy=False)


def check_images(images) -> np.ndarray:
    """Validate (C, *S) images (2D or 3D, finite); returns them as float32."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim not in (3, 4):
        raise ValueError(f"images must be (C, Y, X) or (C, Z, Y, X), got shape {images.shape}")
    if not np.all(np.isfinite(images)):
        raise ValueError("images contain NaN or Inf; fill them before segmenting")
    return images


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation used to normalise network inputs.

    Voxels at the channel's minimum are left out when they are a constant background
    (skull-stripped MRI, padding, the outside of a field of view), as in "non-zero"
    normalisation: otherwise a background filling most of the volume sets the scale and
    squeezes the tissue into a narrow range. A channel with fewer than 1 % of its voxels
    above its minimum uses every voxel.

    Parameters
    ----------
    images : ndarray, shape (C, *S)

    Returns
    -------
    mean, std : list of float, length C
        ``std`` is at least 1e-6 so that constant channels stay finite.
    """
    images = check_images(images)
    means, stds = [], []
    for channel in images.reshape(images.shape[0], -1):
        foreground = channel[channel > channel.min()]
        values = (foreground if foreground.size >= 0.01 * channel.size else channel).astype(np.float64)
        means.append(float(values.mean()))
        stds.append(float(max(values.std(), 1e-6)))
    return means, stds


def check_scribbles(images: np.ndarray, scribbles) -> np.ndarray:
    """Validate painted strokes against images (C, *S); returns them as integers.

    Raises
    ------
    ValueError
        Wrong shape, non-integer values, no strokes, or strokes of a single class.
    """
    scribbles = np.asarray(scribbles)
    if scribbles.shape != images.shape[1:]:
        raise ValueError(f"scribbles have shape {scribbles.shape} but the images {images.shape[1:]}; "
                         "paint them on the grid of the first image")
    if not np.issubdtype(scribbles.dtype, np.integer):
        if np.any(np.modf(scribbles)[0]):
            raise ValueError("scribbles must hold integer class values")
        scribbles = scribbles.astype(np.int64)
    values = np.unique(scribbles[scribbles != 0])
    if values.size == 0:
        raise ValueError("the scribble layer is empty; paint a few strokes of at least two classes")
    if values.size < 2:
        raise ValueError(f"the scribbles hold one class only ({int(values[0])}); "
                         "paint at least one other class, e.g. background")
    return scribbles


def outside_view(images: np.ndarray, *, share: float = 0.05) -> np.ndarray:
    """Voxels outside the imaged object: every modality at its minimum, where that minimum is a background.

    A channel's minimum counts as a constant background (air of a skull-stripped MRI,
    padding, the outside of a field of view) when at least ``share`` of its voxels hold it;
    a channel without one marks nothing outside.

    Parameters
    ----------
    images : ndarray, shape (C, *S)
    share : float
        Smallest fraction of voxels at the minimum that makes it a background.

    Returns
    -------
    ndarray of bool, shape (*S)
    """
    outside = np.ones(images.shape[1:], bool)
    for channel in images:
        at_minimum = channel == channel.min()
        if at_minimum.mean() < share:
            return np.zeros(images.shape[1:], bool)
        outside &= at_minimum
    return outside
