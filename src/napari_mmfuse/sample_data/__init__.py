"""Synthetic multimodal sample data with exact ground truth: no downloads, fixed seeds.

Two families of data, both defined analytically in continuous world coordinates and
rendered onto voxel grids (see :mod:`napari_mmfuse.core.space` for the conventions:
LPS patient frame, world points in napari axis order, affines map a numpy index to the
world):

* a **head phantom** (millimetres): scalp, skull, CSF, a folded grey-matter cortex,
  white matter, deep grey nuclei, lateral ventricles and a rimmed tumour with oedema,
  imaged as T1- and T2-weighted MRI, CT (Hounsfield units) and PET (SUV), each on its own
  grid (different spacing, origin, orientation) with modality-appropriate noise;
* a **slide pair** (micrometres): one synthetic tissue section (glands, nuclei,
  stroma, immune cells) rendered as a brightfield H&E RGB image and as a three-channel
  immunofluorescence image seen through a known smooth deformation.

Misaligned pairs carry their exact ground truth in ``metadata["ground_truth"]``.
Transform convention (ITK's, for registration): ``T`` maps a point of the **fixed**
image's world to the corresponding point of the **moving** image's world, so that
``moving(T(p))`` shows the same anatomy as ``fixed(p)``. The moving images are rendered
by evaluating the anatomy at ``T^-1`` of their own voxel centres, never by resampling.

Partial volume comes from an analytic box-filter ramp across each tissue boundary:
every shape is an approximate signed distance ``d`` (negative inside), and a voxel of
width ``h`` holds the fraction ``clip(1/2 - d/h, 0, 1)`` of it.
"""

from __future__ import annotations

from ..io import ImageRecord
from .common import SOURCE
from .head import (
    DEFAULT_HEAD_FOV_MM,
    HEAD_CLASSES,
    HEAD_MODALITIES,
    head_phantom,
    head_phantom_labels,
    misaligned_phantom,
    render_head_phantom,
)
from .slide import HAEMATOXYLIN_OD, SLIDE_CHANNELS, slide_pair

__all__ = [
    "DEFAULT_HEAD_FOV_MM", "HAEMATOXYLIN_OD", "HEAD_CLASSES", "HEAD_MODALITIES", "SLIDE_CHANNELS", "SOURCE",
    "head_phantom", "head_phantom_labels", "misaligned_phantom", "render_head_phantom", "sample_head_phantom",
    "sample_misaligned_affine", "sample_misaligned_deformable", "sample_misaligned_rigid", "sample_slide_pair",
    "slide_pair",
]

_DISPLAY = {
    "MR-T1": {"colormap": "gray"},
    "MR-T2": {"colormap": "gray"},
    "CT": {"colormap": "gray", "contrast_limits": [-100.0, 200.0]},
    "PET": {"colormap": "inferno", "blending": "additive", "contrast_limits": [0.0, 12.0]},
    "IF": {
        "colormap": ["blue", "green", "magenta"],
        "blending": "additive",
        "contrast_limits": [[100.0, 3000.0], [100.0, 2500.0], [100.0, 2500.0]],
    },
}


def _layer(record: ImageRecord, **display) -> tuple:
    """``record.to_layer_data()`` with display settings for its modality, then ``display``."""
    data, kwargs, layer_type = record.to_layer_data()
    if layer_type == "image":
        kwargs.update(_DISPLAY.get(record.metadata.get("modality"), {}))
    kwargs.update(display)
    return data, kwargs, layer_type


def sample_head_phantom() -> list[tuple]:
    """napari sample: the head phantom (T1, T2, CT, PET) and its T1-grid tissue labels.

    T1 is shown with PET blended on top; T2, CT and the labels start hidden.

    Returns
    -------
    list of tuple
        napari LayerDataTuples ``(data, kwargs, layer_type)``: T1, T2, CT, PET and labels.
    """
    t1, t2, ct, pet, labels = render_head_phantom(DEFAULT_HEAD_FOV_MM, 0, labels=True)
    return [
        _layer(t1),
        _layer(t2, visible=False),
        _layer(ct, visible=False),
        _layer(pet, opacity=0.6),
        _layer(labels, visible=False, opacity=0.5),
    ]


def _misaligned_sample(kind: str) -> list[tuple]:
    fixed, moving = misaligned_phantom(kind)[:2]
    overlay = {"blending": "additive"}
    return [
        _layer(fixed, colormap="green", **overlay),
        _layer(moving, colormap="magenta", **overlay),
    ]


def sample_misaligned_rigid() -> list[tuple]:
    """napari sample: T1 (fixed, green) and T2 (moving, magenta) misaligned by a known rigid motion.

    Returns
    -------
    list of tuple
        napari LayerDataTuples ``(data, kwargs, layer_type)``: fixed, moving.
    """
    return _misaligned_sample("rigid")


def sample_misaligned_affine() -> list[tuple]:
    """napari sample: T1 (fixed, green) and T2 (moving, magenta) misaligned by a known affine.

    Returns
    -------
    list of tuple
        napari LayerDataTuples ``(data, kwargs, layer_type)``: fixed, moving.
    """
    return _misaligned_sample("affine")


def sample_misaligned_deformable() -> list[tuple]:
    """napari sample: T1 (fixed, green) and T2 (moving, magenta) with a known smooth deformation.

    Returns
    -------
    list of tuple
        napari LayerDataTuples ``(data, kwargs, layer_type)``: fixed, moving.
    """
    return _misaligned_sample("deformable")


def sample_slide_pair() -> list[tuple]:
    """napari sample: H&E and immunofluorescence of one tissue, plus their matching landmarks.

    Returns
    -------
    list of tuple
        napari LayerDataTuples ``(data, kwargs, layer_type)``: H&E, immunofluorescence
        (three channels), and the fixed and moving landmarks as points.
    """
    he, fluorescence = slide_pair()
    landmarks = he.metadata["landmarks"]
    points = {"size": 6.0, "symbol": "cross", "units": ("um", "um")}
    return [
        _layer(he),
        _layer(fluorescence),
        (landmarks["fixed"], {"name": "landmarks (H&E)", "face_color": "yellow", **points}, "points"),
        (landmarks["moving"], {"name": "landmarks (IF)", "face_color": "cyan", **points}, "points"),
    ]
