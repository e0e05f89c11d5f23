"""Fusion by per-pixel weights or selection: average, maximum, minimum, PCA, saliency."""

from __future__ import annotations

from functools import partial

from .. import Operation, Param
from . import INPUTS, OUTPUTS, run_fusion

_CORE = "napari_mmfuse.core.fuse.methods"


def _blend(name: str, doc: str, params: tuple = (), label: str = "") -> Operation:
    return Operation(capability="fuse", name=name, doc=doc, params=params, inputs=INPUTS, outputs=OUTPUTS,
                     run=partial(run_fusion, method=name), label=label or name.capitalize(), core=f"{_CORE}:{name}")


OPERATIONS = (
    _blend("average", "Weighted average (equal weights unless given).", (
        Param("weights", str, None, "comma-separated non-negative weights, one per input, e.g. 3,1 "
              "(default: equal)"),
    )),
    _blend("maximum", "Per-pixel maximum selection."),
    _blend("minimum", "Per-pixel minimum selection."),
    _blend("pca", "Weights from the principal component of the inputs' covariance.", label="PCA"),
    _blend("saliency", "Frequency-tuned saliency (distance to the image mean) as per-pixel weights.", (
        Param("sigma", float, 1.0, "Gaussian smoothing of each image before its distance to the mean",
              minimum=0.0, maximum=1000.0, open_minimum=True, unit="px"),
        Param("smooth", float, 5.0, "Gaussian smoothing of the saliency maps into weights",
              minimum=0.0, maximum=1000.0, open_minimum=True, unit="px"),
    )),
)
