"""Multiscale fusion: Laplacian pyramid and orthogonal wavelet transform."""

from __future__ import annotations

from .. import Param
from . import fusion_operation

_RULES = ("energy", "maxabs")
_BASES = ("max", "mean")

OPERATIONS = (
    fusion_operation(
        "laplacian", "Laplacian pyramid",
        "Laplacian pyramid: detail coefficients chosen per band by local energy (or max-abs) with "
        "consistency verification (consistency=0: without), base by maximum (or mean).",
        (
            Param("levels", int, 3, "band-pass levels (fewer when the image gets smaller than 4 pixels a side)",
                  minimum=1, maximum=10),
            Param("rule", str, "energy", "how a band's coefficient is chosen: local energy or largest magnitude",
                  choices=_RULES),
            Param("base", str, "max", "how the low-pass top is fused: maximum or mean", choices=_BASES),
            Param("consistency", int, 1, "consistency verification of the band selections (0: off)",
                  minimum=0, maximum=25),
        ),
        core="napari_mmfuse.core.fuse.methods:laplacian",
    ),
    fusion_operation(
        "wavelet", "Wavelet (DWT)",
        "Orthogonal DWT (Haar or db2): detail coefficients by max-abs (or local energy), approximation averaged.",
        (
            Param("levels", int, 3, "decomposition levels (fewer for small images)", minimum=1, maximum=10),
            Param("wavelet", str, "db2", "the orthogonal wavelet", choices=("db2", "haar")),
            Param("rule", str, "maxabs", "how a band's coefficient is chosen: local energy or largest magnitude",
                  choices=_RULES),
            Param("base", str, "mean", "how the approximation is fused: maximum or mean", choices=_BASES),
        ),
        core="napari_mmfuse.core.fuse.methods:wavelet",
    ),
)
