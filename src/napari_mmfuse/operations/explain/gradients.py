"""Gradient maps: saliency, SmoothGrad and integrated gradients (one map per modality too)."""

from __future__ import annotations

from .. import Operation, Param
from . import ATTRIBUTION, CORE, INPUTS, MARGIN, OUTPUTS, TARGET, explain

SAMPLES = Param("samples", int, 16, "noisy copies averaged", minimum=1, maximum=1000)
NOISE = Param("noise", float, 0.15, "noise standard deviation, as a fraction of each channel's range", minimum=0.0,
              maximum=1.0)
STEPS = Param("steps", int, 32, "points along the path from the baseline (each is one pass of the network per "
              "window; fewer is faster and less exact)", minimum=2, maximum=256, label="path points")


def run_saliency(images, model, region=None, *, target, margin, attribution, device=None, seed=None):
    """Gradient saliency maps (yields Progress)."""
    return (yield from explain("saliency", images, model, region, device, target=target, margin=margin,
                               attribution=attribution))


def run_smoothgrad(images, model, region=None, *, target, samples, noise, margin, attribution, device=None,
                   seed=None):
    """SmoothGrad maps (yields Progress)."""
    return (yield from explain("smoothgrad", images, model, region, device, target=target, samples=samples,
                               noise=noise, margin=margin, attribution=attribution))


def run_ig(images, model, region=None, *, target, steps, margin, attribution, device=None, seed=None):
    """Integrated-gradients maps (yields Progress)."""
    return (yield from explain("ig", images, model, region, device, target=target, steps=steps, margin=margin,
                               attribution=attribution))


OPERATIONS = (
    Operation("explain", "saliency", "gradient saliency: |d target / d input|", (TARGET, MARGIN, ATTRIBUTION),
              INPUTS, OUTPUTS, run_saliency, label="gradient saliency", core=CORE),
    Operation("explain", "smoothgrad", "SmoothGrad: saliency averaged over noisy copies of the input (seed 0)",
              (TARGET, SAMPLES, NOISE, MARGIN, ATTRIBUTION), INPUTS, OUTPUTS, run_smoothgrad,
              label="SmoothGrad", core=CORE),
    Operation("explain", "ig", "integrated gradients from each channel's reference (background or mean)",
              (TARGET, STEPS, MARGIN, ATTRIBUTION), INPUTS, OUTPUTS, run_ig, label="integrated gradients",
              core=CORE),
)
