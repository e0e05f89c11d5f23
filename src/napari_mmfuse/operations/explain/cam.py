"""Class activation maps: Grad-CAM and Grad-CAM++ at one convolution, upsampled to the input grid."""

from __future__ import annotations

from .. import Operation
from . import ATTRIBUTION, CORE, INPUTS, LAYER, MARGIN, OUTPUTS, TARGET, runner

OPERATIONS = tuple(
    Operation("explain", name, doc, (TARGET, LAYER, MARGIN, ATTRIBUTION), INPUTS, OUTPUTS, runner(name),
              label=label, core=CORE)
    for name, label, doc in (
        ("gradcam", "Grad-CAM", "Grad-CAM: a convolution's activations weighted by the target's mean gradient"),
        ("gradcampp", "Grad-CAM++", "Grad-CAM++: activations weighted by second-order gradient weights"),
    )
)
