"""What widgets read from and write to napari layers: data, world affine, geometry."""

from __future__ import annotations

import numpy as np

GEOMETRY_KEYS = ("scale", "translate", "rotate", "shear", "affine", "units", "axis_labels")


def compose_world_affine(*, affine, scale, translate, rotate, shear, ndim: int) -> np.ndarray:
    """napari's data -> world matrix: ``affine`` after (translate . rotate . shear . scale)."""
    from napari.utils.transforms import Affine, CompositeAffine

    data2physical = CompositeAffine(scale=scale, translate=translate, rotate=rotate, shear=shear, ndim=ndim)
    physical2world = affine if isinstance(affine, Affine) else Affine(affine_matrix=np.asarray(affine), ndim=ndim)
    return np.asarray(physical2world.affine_matrix) @ np.asarray(data2physical.affine_matrix)


def world_affine(layer) -> np.ndarray:
    """Full index -> world affine of a layer (its ``affine`` composed with scale/translate/rotate/shear).

    Parameters
    ----------
    layer : napari.layers.Layer

    Returns
    -------
    ndarray, shape (layer.ndim + 1, layer.ndim + 1)
    """
    return compose_world_affine(
        affine=layer.affine,
        scale=layer.scale,
        translate=layer.translate,
        rotate=layer.rotate,
        shear=layer.shear,
        ndim=layer.ndim,
    )


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
