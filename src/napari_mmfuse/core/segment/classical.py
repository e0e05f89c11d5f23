"""Classical segmentation: intensity thresholds, connected components, seeded watershed."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .inputs import channel_stats, check_images


def threshold(image, *, method: str = "otsu", classes: int = 3, percentiles: Sequence[float] = (95.0,),
              mask=None) -> np.ndarray:
    """Label an image by intensity thresholds.

    Parameters
    ----------
    image : ndarray, shape (*S)
        One 2D or 3D image (for several modalities pass the one showing the target).
    method : {"otsu", "multiotsu", "percentile"}
        "otsu": 1 above Otsu's threshold; "multiotsu": ``classes`` intensity classes
        labelled 1..classes (darkest 1); "percentile": 1 + the number of
        ``percentiles`` each voxel is above (so one percentile gives labels 1 and 2).
    classes : int
        Number of classes for "multiotsu" (2 to 5).
    percentiles : sequence of float
        Percentiles (0-100) of the intensities inside ``mask`` for "percentile".
    mask : ndarray of bool, shape (*S), optional
        Thresholds are computed from these voxels only and voxels outside are 0.

    Returns
    -------
    ndarray, shape (*S), uint8
    """
    from skimage.filters import threshold_multiotsu, threshold_otsu

    image = np.asarray(image, dtype=np.float32)
    inside = np.ones(image.shape, bool) if mask is None else np.asarray(mask, bool)
    if inside.shape != image.shape:
        raise ValueError(f"mask has shape {inside.shape} but the image {image.shape}")
    values = image[inside]
    if values.size == 0 or values.min() == values.max():
        raise ValueError("the image is constant (inside the mask); there is nothing to threshold")
    if method == "otsu":
        labels = (image > threshold_otsu(values)).astype(np.uint8)
    elif method == "multiotsu":
        if not 2 <= classes <= 5:
            raise ValueError(f"multiotsu takes 2 to 5 classes, got {classes}")
        labels = (np.digitize(image, threshold_multiotsu(values, classes=classes)) + 1).astype(np.uint8)
    elif method == "percentile":
        cuts = np.percentile(values, sorted(float(p) for p in percentiles))
        labels = (np.digitize(image, cuts) + 1).astype(np.uint8)
    else:
        raise ValueError(f"unknown threshold method {method!r}; use 'otsu', 'multiotsu' or 'percentile'")
    labels[~inside] = 0
    return labels


def connected_components(mask, *, min_size: int = 0, keep: str = "all") -> np.ndarray:
    """Label the connected components of a binary mask and drop the small ones.

    Parameters
    ----------
    mask : ndarray, shape (*S)
        Non-zero voxels are foreground.
    min_size : int
        Components with fewer voxels are removed.
    keep : {"all", "largest"}
        Keep every remaining component (numbered 1..N by decreasing size) or the largest.

    Returns
    -------
    ndarray, shape (*S), int32
    """
    from scipy import ndimage

    if keep not in ("all", "largest"):
        raise ValueError(f"keep must be 'all' or 'largest', not {keep!r}")
    mask = np.asarray(mask) != 0
    labels, count = ndimage.label(mask)
    if count == 0:
        return labels.astype(np.int32)
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(-sizes, kind="stable")
    order = order[sizes[order] >= min_size]
    if keep == "largest":
        order = order[:1]
    lookup = np.zeros(count + 1, np.int32)
    lookup[order + 1] = np.arange(1, order.size + 1, dtype=np.int32)
    return lookup[labels]


def watershed(images, seeds, *, mask=None, compactness: float = 0.0) -> np.ndarray:
    """Grow painted seeds over the multimodal gradient (seeded watershed).

    Parameters
    ----------
    images : ndarray, shape (C, *S) or (*S)
        One or several modalities on one grid; their gradient magnitudes (each scaled
        by the channel's standard deviation) are summed.
    seeds : ndarray, shape (*S), int
        Painted strokes: 0 = unlabelled, any other value a class (kept in the output).
    mask : ndarray of bool, shape (*S), optional
        Voxels outside stay 0.
    compactness : float
        skimage's compact-watershed parameter (0 = classical watershed).

    Returns
    -------
    ndarray, shape (*S), the dtype of ``seeds``
    """
    from skimage.filters import sobel
    from skimage.segmentation import watershed as sk_watershed

    seeds = np.asarray(seeds)
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == seeds.ndim:
        images = images[np.newaxis]
    images = check_images(images)
    if images.shape[1:] != seeds.shape:
        raise ValueError(f"seeds have shape {seeds.shape} but the images {images.shape[1:]}")
    if np.unique(seeds[seeds != 0]).size < 2:
        raise ValueError("watershed needs strokes of at least two classes (0 is unlabelled)")
    _, std = channel_stats(images)
    gradient = sum(sobel(channel / s) for channel, s in zip(images, std))
    return sk_watershed(gradient, markers=seeds, mask=mask, compactness=compactness).astype(seeds.dtype)
