"""Class activation maps: Grad-CAM and Grad-CAM++ at one convolution, upsampled to the input grid."""

from __future__ import annotations

from .. import Operation, Param
from . import ATTRIBUTION, CORE, INPUTS, MARGIN, OUTPUTS, TARGET, explain

LAYER = Param("layer", str, None, "the convolution whose activations are weighted, by name",
              auto="the deepest convolution")


def run_gradcam(images, model, region=None, *, target, layer, margin, attribution, device=None, seed=None):
    """Grad-CAM map (yields Progress)."""
    return (yield from explain("gradcam", images, model, region, device, target=target, layer=layer, margin=margin,
                               attribution=attribution))


def run_gradcampp(images, model, region=None, *, target, layer, margin, attribution, device=None, seed=None):
    """Grad-CAM++ map (yields Progress)."""
    return (yield from explain("gradcampp", images, model, region, device, target=target, layer=layer,
                               margin=margin, attribution=attribution))


OPERATIONS = (
    Operation("explain", "gradcam", "Grad-CAM: a convolution's activations weighted by the target's mean gradient",
              (TARGET, LAYER, MARGIN, ATTRIBUTION), INPUTS, OUTPUTS, run_gradcam, label="Grad-CAM", core=CORE),
    Operation("explain", "gradcampp", "Grad-CAM++: activations weighted by second-order gradient weights",
              (TARGET, LAYER, MARGIN, ATTRIBUTION), INPUTS, OUTPUTS, run_gradcampp, label="Grad-CAM++", core=CORE),
)
