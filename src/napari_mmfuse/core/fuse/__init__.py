"""Pixel-level fusion of co-registered images.

Every method takes N >= 2 grey images on one grid, scaled to [0, 1], and returns the fused
image plus one contribution (weight) map per input, shape ``(N, *spatial)``, that sums to 1
at every pixel. :func:`fuse` runs a method on images already on one grid;
:func:`fuse_on_reference` first resamples every image onto a reference grid through the
world affines and normalises each modality's intensities robustly.

Colour fusion (``method="colour"``) carries a functional image's colour (its own RGB, or
a PET colormap applied to a grey image) over the anatomical detail: the luminance Y is
fused by an inner method, Cb/Cr come from the functional image, the output is RGB.

The methods' parameters, defaults, ranges and documentation are declared once, by the
``fuse`` operations (:mod:`napari_mmfuse.operations.fuse`); the modules here compute:

- :mod:`.primitives`: pyramid reduction/expansion, per-pixel selection, guided filter;
- :mod:`.wavelets`: the orthogonal DWT;
- :mod:`.methods`, :mod:`.learned`, :mod:`.network`: the grey methods (the network's trained
  weights ship beside it; :mod:`.objectives` holds the differentiable metrics it was trained on);
- :mod:`.colour`: YCbCr, colormaps; :mod:`.intensity`: modality intensity windows;
- :mod:`.fusion`: :func:`fuse` and the method table; :mod:`.reference`: world-space fusion.
"""

from .._names import FUSE_DEFAULT_METHOD as DEFAULT_METHOD
from ..kernels import luminance
from .colour import apply_colormap, infer_rgb, is_colour, rgb_to_ycbcr, ycbcr_to_rgb
from .fusion import (
    COLOUR_METHOD,
    METHODS,
    FusionResult,
    auto_method,
    colour_steps,
    fuse,
    fuse_steps,
    method_defaults,
    method_names,
)
from .intensity import CT_WINDOW, MODALITIES, check_modality, intensity_window, normalise_intensity
from .learned import WeightNet
from .reference import check_overlap, fuse_on_reference, resample_to_reference, result_metrics
from .wavelets import dwt, dwt_1d, idwt, idwt_1d

__all__ = [
    "COLOUR_METHOD",
    "CT_WINDOW",
    "DEFAULT_METHOD",
    "METHODS",
    "MODALITIES",
    "FusionResult",
    "WeightNet",
    "apply_colormap",
    "auto_method",
    "check_modality",
    "check_overlap",
    "colour_steps",
    "dwt",
    "dwt_1d",
    "fuse",
    "fuse_on_reference",
    "fuse_steps",
    "idwt",
    "idwt_1d",
    "infer_rgb",
    "intensity_window",
    "is_colour",
    "luminance",
    "method_defaults",
    "method_names",
    "normalise_intensity",
    "resample_to_reference",
    "result_metrics",
    "rgb_to_ycbcr",
    "ycbcr_to_rgb",
]
