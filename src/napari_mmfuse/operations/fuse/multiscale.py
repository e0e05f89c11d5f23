"""Multiscale fusion: Laplacian pyramid and orthogonal wavelet transform."""

from __future__ import annotations

from functools import partial

from .. import Operation, Param
from . import INPUTS, OUTPUTS, run_fusion

_LEVELS = dict(minimum=1, maximum=10)
_RULES = ("energy", "maxabs")
_BASES = ("max", "mean")

OPERATIONS = (
    Operation(
        capability="fuse",
        name="laplacian",
        label="Laplacian pyramid",
        doc="Laplacian pyramid: detail coefficients chosen per band by local energy (or max-abs) with "
        "consistency verification (consistency=0: without), base by maximum (or mean).",
        params=(
            Param("levels", int, 3, "band-pass levels (fewer when the image gets smaller than 4 pixels a side)",
                  **_LEVELS),
            Param("rule", str, "energy", "how a band's coefficient is chosen: local energy or largest magnitude",
                  choices=_RULES),
            Param("base", str, "max", "how the low-pass top is fused: maximum or mean", choices=_BASES),
            Param("consistency", int, 1, "consistency verification of the band selections (0: off)",
                  minimum=0, maximum=25),
        ),
        inputs=INPUTS,
        outputs=OUTPUTS,
        run=partial(run_fusion, method="laplacian"),
        core="napari_mmfuse.core.fuse.methods:laplacian",
    ),
    Operation(
        capability="fuse",
        name="wavelet",
        label="Wavelet (DWT)",
        doc="Orthogonal DWT (Haar or db2): detail coefficients by max-abs (or local energy), approximation averaged.",
        params=(
            Param("levels", int, 3, "decomposition levels (fewer for small images)", **_LEVELS),
            Param("wavelet", str, "db2", "the orthogonal wavelet", choices=("db2", "haar")),
            Param("rule", str, "maxabs", "how a band's coefficient is chosen: local energy or largest magnitude",
                  choices=_RULES),
            Param("base", str, "mean", "how the approximation is fused: maximum or mean", choices=_BASES),
        ),
        inputs=INPUTS,
        outputs=OUTPUTS,
        run=partial(run_fusion, method="wavelet"),
        core="napari_mmfuse.core.fuse.methods:wavelet",
    ),
)
