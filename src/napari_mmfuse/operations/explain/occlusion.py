"""Occlusion sensitivity: the target's drop when a sliding window of the input is replaced."""

from __future__ import annotations

from .. import Operation, Param
from . import ATTRIBUTION, CORE, INPUTS, MARGIN, OUTPUTS, TARGET, explain

WINDOW = Param("window", int, None, "occluding window edge", minimum=1, unit="px",
               auto="an eighth of the crop, at least 2")
STRIDE = Param("stride", int, None, "step between windows", minimum=1, unit="px",
               auto="half the window in 2D, the window in 3D")


def run_occlusion(images, model, region=None, *, target, window, stride, margin, attribution, device=None, seed=None):
    """Occlusion sensitivity map (yields Progress)."""
    return (yield from explain("occlusion", images, model, region, device, target=target, window=window,
                               stride=stride, margin=margin, attribution=attribution))


OPERATIONS = (
    Operation("explain", "occlusion",
              "occlusion sensitivity: the target's drop when a window is filled with each channel's reference",
              (TARGET, WINDOW, STRIDE, MARGIN, ATTRIBUTION), INPUTS, OUTPUTS, run_occlusion,
              label="occlusion sensitivity", core=CORE),
)
