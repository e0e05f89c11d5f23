"""Spatial-domain fusion by local detail: modulated selection, gradient-activity selection, guided filtering."""

from __future__ import annotations

from .. import Param
from . import fusion_operation

OPERATIONS = (
    fusion_operation(
        "modulated", "Modulated selection",
        "The first (anatomical) image shaded by the others' intensity (times 1 + gain x their mean), "
        "each pixel taken from it or from another input by local gradient activity plus brightness, "
        "majority-filtered and softened. The first image is the anatomical one.",
        (
            Param("gain", float, 0.6, "how strongly the other inputs' intensity brightens the first image",
                  minimum=0.0, maximum=10.0),
            Param("radius", int, 8, "radius of the window the gradient magnitude is averaged over",
                  minimum=0, maximum=100, unit="px"),
            Param("consistency", int, 8, "radius of the majority filter of the selection (0: off)",
                  minimum=0, maximum=25, unit="px"),
            Param("brightness", float, 0.07, "weight of a candidate's intensity in its selection score",
                  minimum=0.0, maximum=10.0),
            Param("softness", int, 2, "radius of the box mean that softens the selection into weights (0: hard)",
                  minimum=0, maximum=50, unit="px"),
        ),
        core="napari_mmfuse.core.fuse.methods:modulated",
    ),
    fusion_operation(
        "activity", "Gradient activity",
        "Per-pixel selection of the input with the most local gradient activity (mean Sobel "
        "magnitude in a (2 radius + 1)^n window), majority-filtered over (2 consistency + 1)^n.",
        (
            Param("radius", int, 2, "radius of the window the Sobel magnitude is averaged over",
                  minimum=0, maximum=100, unit="px"),
            Param("consistency", int, 3, "radius of the majority filter of the selection (0: off)",
                  minimum=0, maximum=25, unit="px"),
        ),
        core="napari_mmfuse.core.fuse.methods:activity",
    ),
    fusion_operation(
        "guided", "Guided filter",
        "Guided-filter fusion (Li, Kang & Hu 2013): two-scale, saliency (local detail energy) "
        "decisions refined by guided filters.",
        (
            Param("r1", int, 45, "guided-filter radius of the base-layer weights", minimum=1, maximum=500, unit="px"),
            Param("eps1", float, 0.3, "guided-filter regularisation of the base-layer weights",
                  minimum=0.0, open_minimum=True),
            Param("r2", int, 7, "guided-filter radius of the detail-layer weights", minimum=1, maximum=500, unit="px"),
            Param("eps2", float, 1e-6, "guided-filter regularisation of the detail-layer weights",
                  minimum=0.0, open_minimum=True),
        ),
        core="napari_mmfuse.core.fuse.methods:guided",
    ),
)
