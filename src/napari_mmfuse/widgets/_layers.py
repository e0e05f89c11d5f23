"""What widgets read from and write to napari layers: data, world affine, geometry."""

from __future__ import annotations

import numpy as np

GEOMETRY_KEYS = ("scale", "translate", "rotate", "shear", "affine", "units", "axis_labels")


def world_affine(layer) -> np.ndarray:
    """Full index -> world affine of a layer (its ``affine`` composed with scale/translate/rotate/shear).

    Parameters
    ----------
    layer : napari.layers.Layer

    Returns
    -------
    ndarray, shape (layer.ndim + 1, layer.ndim + 1)
    """
    return np.asarray(layer.affine.affine_matrix) @ np.asarray(layer._transforms["data2physical"].affine_matrix)


def spatial_affine(layer, n_spatial: int | None = None) -> np.ndarray:
    """The world affine restricted to the last ``n_spatial`` (default: 3 if available, else 2) axes."""
    full = world_affine(layer)
    ndim = full.shape[0] - 1
    n = n_spatial or min(ndim, 3)
    out = np.eye(n + 1)
    out[:n, :n] = full[ndim - n : ndim, ndim - n : ndim]
    out[:n, n] = full[ndim - n : ndim, ndim]
    return out


def geometry_of(layer, **extra) -> dict:
    """Layer kwargs that place a new layer exactly where ``layer`` is."""
    geometry = {
        "affine": world_affine(layer),
        "units": tuple(str(u) for u in layer.units),
        "axis_labels": tuple(layer.axis_labels),
    }
    return geometry | extra
