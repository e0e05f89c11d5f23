"""What widgets read from and write to napari layers: data, world affine, geometry.

A layer shown resliced in 2D (:mod:`napari_mmfuse.widgets._reslice`) displays a lazy view
on a display grid; everything here answers with the data and placement the user gave it.
"""

from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np

GEOMETRY_KEYS = ("scale", "translate", "rotate", "shear", "affine", "units", "axis_labels")
PLACEMENT_KEYS = ("scale", "translate", "rotate", "shear")

# layer -> (its own data, its own scale/translate/rotate/shear) while it shows a resliced view
_ORIGINALS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def hold_original(layer) -> None:
    """Remember a layer's own data and data -> physical placement before it shows a view."""
    if layer not in _ORIGINALS:
        _ORIGINALS[layer] = (layer.data, {key: np.array(getattr(layer, key)) for key in PLACEMENT_KEYS})


def release_original(layer):
    """Forget and return ``(data, placement)`` held by :func:`hold_original`, or None."""
    return _ORIGINALS.pop(layer, None)


def original_data(layer):
    """The data the user gave the layer (not the resliced view it may be showing)."""
    held = _ORIGINALS.get(layer)
    return layer.data if held is None else held[0]


def _placement(layer) -> dict:
    held = _ORIGINALS.get(layer)
    return held[1] if held is not None else {key: getattr(layer, key) for key in PLACEMENT_KEYS}


def compose_world_affine(*, affine, scale, translate, rotate, shear, ndim: int) -> np.ndarray:
    """napari's data -> world matrix: ``affine`` after (translate . rotate . shear . scale)."""
    from napari.utils.transforms import Affine, CompositeAffine

    data2physical = CompositeAffine(scale=scale, translate=translate, rotate=rotate, shear=shear, ndim=ndim)
    physical2world = affine if isinstance(affine, Affine) else Affine(affine_matrix=np.asarray(affine), ndim=ndim)
    return np.asarray(physical2world.affine_matrix) @ np.asarray(data2physical.affine_matrix)


def world_affine(layer) -> np.ndarray:
    """Full index -> world affine of a layer (its ``affine`` composed with scale/translate/rotate/shear).

    For a layer shown resliced, the placement of its own data (see :func:`original_data`).

    Parameters
    ----------
    layer : napari.layers.Layer

    Returns
    -------
    ndarray, shape (layer.ndim + 1, layer.ndim + 1)
    """
    return compose_world_affine(affine=layer.affine, **_placement(layer), ndim=layer.ndim)


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


def image_of(layer, *, kind: str | None = None, copy: bool = True):
    """A layer as an :class:`~napari_mmfuse.operations.Image`: its data (level 0) and world affine.

    The data is copied by default, so work on it can never change the user's layer. A layer
    shown resliced gives its own data and affine, never the display view.
    """
    from ..operations import Image

    data = original_data(layer)
    data = data[0] if getattr(layer, "multiscale", False) else data
    data = np.array(data) if copy else data
    rgb = bool(getattr(layer, "rgb", False))
    n_spatial = data.ndim - int(rgb)
    metadata = dict(getattr(layer, "metadata", {}) or {})
    kind = kind or ("labels" if type(layer).__name__ == "Labels" else "image")
    kept = {key: metadata[key] for key in ("modality", "source") if key in metadata}
    if metadata.get("mmfuse"):
        kept["provenance"] = metadata["mmfuse"]
    elif metadata.get("source_path") and "source" not in kept:  # opened by our reader: replayable from the file
        kept["source"] = {"path": str(Path(metadata["source_path"]).resolve()), "series": int(metadata.get("series", 0)),
                          "kind": kind}
    units = str(layer.units[-1]) if getattr(layer, "units", None) else "mm"
    return Image(data, spatial_affine(layer, n_spatial), name=layer.name, kind=kind, rgb=rgb,
                 units={"millimeter": "mm", "micrometer": "um"}.get(units, units), metadata=kept)


def add_image_layer(viewer, image, *, like=None, name: str | None = None, **kwargs):
    """Add an :class:`~napari_mmfuse.operations.Image` as a layer placed in world space.

    Its provenance goes to ``layer.metadata["mmfuse"]``; with ``like``, the new layer takes
    that layer's units and axis labels (its affine is the image's own).
    """
    affine = np.asarray(image.affine, dtype=float)
    metadata = {"mmfuse": image.metadata["provenance"]} if image.metadata.get("provenance") else {}
    extra = {"units": tuple(str(u) for u in like.units)[-len(affine) + 1 :]} if like is not None else {}
    name = name or image.name
    if image.kind == "labels":
        return viewer.add_labels(image.data, affine=affine, name=name, metadata=metadata, **extra, **kwargs)
    return viewer.add_image(image.data, affine=affine, name=name, rgb=image.rgb, metadata=metadata, **extra, **kwargs)
