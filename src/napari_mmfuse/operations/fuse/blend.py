"""Fusion by per-pixel weights or selection: average, maximum, minimum, PCA, saliency."""

from __future__ import annotations

from .. import Param
from . import fusion_operation

OPERATIONS = (
    fusion_operation(
        "average", "Average", "Weighted average (equal weights unless given).",
        (Param("weights", str, None,
               "comma-separated non-negative weights, one per input, e.g. 3,1", auto="equal weights"),),
        core="napari_mmfuse.core.fuse.methods:average",
    ),
    fusion_operation("maximum", "Maximum", "Per-pixel maximum selection."),
    fusion_operation("minimum", "Minimum", "Per-pixel minimum selection."),
    fusion_operation("pca", "PCA", "Weights from the principal component of the inputs' covariance."),
    fusion_operation(
        "saliency", "Saliency", "Frequency-tuned saliency (distance to the image mean) as per-pixel weights.",
        (
            Param("sigma", float, 1.0, "Gaussian smoothing of each image before its distance to the mean",
                  minimum=0.0, maximum=1000.0, open_minimum=True, unit="px"),
            Param("smooth", float, 5.0, "Gaussian smoothing of the saliency maps into weights",
                  minimum=0.0, maximum=1000.0, open_minimum=True, unit="px"),
        ),
        core="napari_mmfuse.core.fuse.methods:saliency",
    ),
)
