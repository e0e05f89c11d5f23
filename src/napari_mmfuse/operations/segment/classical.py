"""Classical segmentation: Otsu and multi-Otsu thresholds of the first image, and a seeded watershed.

The thresholds are scikit-image's (:func:`napari_mmfuse.core.segment.threshold`); the
watershed grows the painted classes over the gradient of every modality.
"""

from __future__ import annotations

import numpy as np

from .. import Operation, Param, Port, Progress

IMAGES = Port("images", "images", "one subject's modalities, any grids; the output is on the first one's grid")
FIRST = Port("images", "images", "one subject's modalities; the first one is thresholded")
STROKES = Port("strokes", "labels", "painted strokes: 0 = unlabelled, any other value a class (kept in the output)")
LABELS = Port("labels", "labels", "labels on the first image's grid")


def run_otsu(images, *, min_size: int, device=None, seed=None):
    """1 above Otsu's threshold of the first image, components smaller than ``min_size`` dropped."""
    from ...core import segment

    yield Progress(0, 1, "thresholding")
    first = segment.subject_channels(images[:1])[0]
    labels = segment.threshold(first, method="otsu")
    if min_size:
        labels = (segment.connected_components(labels, min_size=min_size) > 0).astype(np.uint8)
    return {"labels": images[0].like(labels, kind="labels", name=f"{images[0].name} segmentation")}


def run_multiotsu(images, *, classes: int, device=None, seed=None):
    """``classes`` intensity classes of the first image, labelled 1..classes (darkest 1)."""
    from ...core import segment

    yield Progress(0, 1, "thresholding")
    labels = segment.threshold(segment.subject_channels(images[:1])[0], method="multiotsu", classes=classes)
    return {"labels": images[0].like(labels, kind="labels", name=f"{images[0].name} segmentation")}


def run_watershed(images, strokes, *, device=None, seed=None):
    """The painted classes grown over the summed gradient of the modalities."""
    from ...core import segment

    yield Progress(0, 2, "placing the modalities and strokes on the first image's grid")
    channels = segment.subject_channels(images, device=device)
    seeds = segment.strokes_on_grid(strokes, images[0], device=device)
    yield Progress(1, 2, "growing the strokes")
    labels = segment.watershed(channels, seeds)
    return {"labels": images[0].like(labels, kind="labels", name=f"{images[0].name} segmentation")}


OPERATIONS = (
    Operation(
        capability="segment",
        name="otsu",
        label="Otsu (first image)",
        doc="foreground above Otsu's threshold of the first image",
        params=(Param("min_size", int, 0, "drop connected components with fewer voxels than this", minimum=0,
                      unit="px"),),
        inputs=(FIRST,),
        outputs=(LABELS,),
        run=run_otsu,
        core="napari_mmfuse.core.segment:connected_components",
    ),
    Operation(
        capability="segment",
        name="multiotsu",
        label="Multi-Otsu (first image)",
        doc="intensity classes of the first image by multi-Otsu thresholds (darkest 1)",
        params=(Param("classes", int, 3, "number of intensity classes", minimum=2, maximum=5),),
        inputs=(FIRST,),
        outputs=(LABELS,),
        run=run_multiotsu,
        core="napari_mmfuse.core.segment:threshold",
    ),
    Operation(
        capability="segment",
        name="watershed",
        label="Seeded watershed",
        doc="painted strokes grown over the modalities' gradient (seeded watershed)",
        params=(),
        inputs=(IMAGES, STROKES),
        outputs=(LABELS,),
        run=run_watershed,
    ),
)
