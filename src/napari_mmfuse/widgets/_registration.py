"""Layers as registration inputs: their pixels (luminance, a pyramid's coarse level) and world affines.

Shared by the Register, Manual correction and Quality views widgets.
"""

from __future__ import annotations

import numpy as np
from napari.layers import Labels

from ..core import space
from ..core.lazy import MAX_REGISTRATION_SIZE, coarse_level_index, level_affine
from ..operations import Image as Picture
from ..operations.register.intensity import gray
from ._layers import original_data, spatial_affine
from ._session import same


def layer_image(layer) -> tuple[np.ndarray, np.ndarray]:
    """Spatial pixels of a 2D/3D image or labels layer and its index -> world affine.

    RGB slides are reduced to their luminance. A multiscale layer gives its finest level
    no larger than ``MAX_REGISTRATION_SIZE`` a side, with that level's affine.

    Parameters
    ----------
    layer : napari.layers.Image or napari.layers.Labels

    Returns
    -------
    data : ndarray, shape (Y, X) or (Z, Y, X)
        float32 for images, the layer's dtype for labels.
    affine : ndarray, shape (n + 1, n + 1)

    Raises
    ------
    ValueError
        For layers that are not 2D or 3D, and NaN/Inf pixels.
    """
    rgb = bool(getattr(layer, "rgb", False))
    levels = list(layer.data) if layer.multiscale else [original_data(layer)]
    n = levels[0].ndim - int(rgb)
    if n not in (2, 3):
        raise ValueError(f"{layer.name} is {n}D; registration needs 2D or 3D layers")
    affine = spatial_affine(layer, n)
    level = levels[coarse_level_index([lv.shape[:n] for lv in levels], MAX_REGISTRATION_SIZE)]
    if level is not levels[0]:
        affine = level_affine(affine, levels[0].shape[:n], level.shape[:n])
    data = np.asarray(level)
    if isinstance(layer, Labels):
        return data, affine
    data = gray(Picture(data, affine, rgb=rgb))
    if not np.all(np.isfinite(data)):
        raise ValueError(f"{layer.name} contains NaN or Inf pixels; fill or mask them first")
    return data, affine


def registration_pair(fixed, moving) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Check a fixed/moving layer pair and return their pixels and world affines.

    Parameters
    ----------
    fixed, moving : napari.layers.Image

    Returns
    -------
    fixed_data, fixed_affine, moving_data, moving_affine

    Raises
    ------
    ValueError
        With a message for the user: missing or identical layers, 2D against 3D,
        no overlap in world space, NaN pixels.
    """
    if fixed is None or moving is None:
        raise ValueError("choose a fixed and a moving image layer")
    if same(fixed, moving):
        raise ValueError(f"fixed and moving are the same layer ({fixed.name}); choose two layers")
    fixed_data, fixed_affine = layer_image(fixed)
    moving_data, moving_affine = layer_image(moving)
    if fixed_data.ndim != moving_data.ndim:
        raise ValueError(
            f"{fixed.name} is {fixed_data.ndim}D and {moving.name} {moving_data.ndim}D; both must be 2D or both 3D"
        )
    overlap = space.overlap_fraction(fixed_data.shape, fixed_affine, moving_data.shape, moving_affine)
    if overlap == 0.0:
        raise ValueError(
            f"{fixed.name} and {moving.name} do not overlap in world space; "
            "move the moving layer closer (Manual correction) first"
        )
    return fixed_data, fixed_affine, moving_data, moving_affine


def mask_data(layer, reference) -> np.ndarray | None:
    """Pixels of an optional Labels mask, checked against the grid of ``reference``."""
    if layer is None:
        return None
    data, _ = layer_image(layer)
    reference_shape = original_data(reference).shape[: data.ndim]
    if data.shape != reference_shape:
        raise ValueError(f"mask {layer.name} has shape {data.shape} but {reference.name} {reference_shape}")
    return data > 0


def layer_picture(layer, *, name: str | None = None) -> Picture:
    """A layer's registration pixels and world affine (:func:`layer_image`) as an operation input."""
    data, affine = layer_image(layer)
    return Picture(data, affine, name=name or layer.name, kind="labels" if isinstance(layer, Labels) else "image")
