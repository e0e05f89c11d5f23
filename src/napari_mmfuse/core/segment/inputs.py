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
    stroke_classes(scribbles)
    return scribbles


def stroke_classes(scribbles) -> list[int]:
    """The classes painted (values other than 0), refused unless there are at least two.

    Raises
    ------
    ValueError
        No strokes, or strokes of a single class.
    """
    scribbles = np.asarray(scribbles)
    values = np.unique(scribbles[scribbles != 0])
    if values.size == 0:
        raise ValueError("the scribble layer is empty; paint a few strokes of at least two classes")
    if values.size < 2:
        raise ValueError(f"the scribbles hold one class only ({int(values[0])}); "
                         "paint at least one other class, e.g. background")
    return [int(v) for v in values]


def subject_channels(images: Sequence, *, device=None) -> np.ndarray:
    """One subject's modalities as channels on the first one's grid.

    Parameters
    ----------
    images : sequence of napari_mmfuse.operations.Image
        Grey 2D or 3D images (``data``, ``affine``, ``name``, ``rgb``), each on its own grid.
    device : str or torch.device, optional

    Returns
    -------
    ndarray, shape (C, *S), float32
        ``S`` is the first image's shape.

    Raises
    ------
    ValueError
        No images, an RGB image, one that is not 2D or 3D, or a mix of 2D and 3D.
    """
    if not images:
        raise ValueError("no images given; choose at least one modality")
    for image in images:
        if image.rgb:
            raise ValueError(f"{image.name} is RGB; give grey images, one per modality")
        if image.data.ndim not in (2, 3):
            raise ValueError(f"{image.name} is {image.data.ndim}D; segmentation needs 2D or 3D images")
    if len({image.data.ndim for image in images}) > 1:
        raise ValueError("the images mix 2D and 3D; give images of one dimensionality")
    first = images[0]
    return stack_modalities([image.data for image in images], [image.affine for image in images],
                            first.data.shape, first.affine, device=device)


def strokes_on_grid(strokes, reference, *, device=None) -> np.ndarray:
    """Painted strokes on the reference image's grid (nearest neighbour), refused when none lands on it.

    Parameters
    ----------
    strokes, reference : napari_mmfuse.operations.Image
        The strokes (a labels image) and the image whose grid the result is on.
    device : str or torch.device, optional

    Returns
    -------
    ndarray, shape of ``reference.data``
        A copy: the painted data is never changed.

    Raises
    ------
    ValueError
        Strokes of another dimensionality, or painted strokes that all fall off the grid.
    """
    data, shape = np.asarray(strokes.data), tuple(reference.data.shape)
    if data.ndim != len(shape):
        raise ValueError(f"{strokes.name} is {data.ndim}D but the images are {len(shape)}D")
    if data.shape == shape and np.allclose(strokes.affine, reference.affine, atol=1e-6):
        return data.copy()
    painted = bool(np.any(data))
    if painted and space.overlap_fraction(shape, reference.affine, data.shape, strokes.affine) == 0:
        raise ValueError(f"the scribbles do not overlap the images' grid: {strokes.name} lies elsewhere in world "
                         "space; check its placement (origin/units)")
    on_grid = space.resample(data, strokes.affine, shape, reference.affine, interpolation="nearest", device=device)
    if painted and not np.any(on_grid):
        raise ValueError(f"the scribbles do not overlap the images' grid: none of the strokes in {strokes.name} "
                         "lands on the images; check its placement (origin/units)")
    return on_grid


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
