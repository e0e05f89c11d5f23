"""``poly-bias``: a smooth multiplicative bias field fitted as a polynomial in the log domain.

The histogram-sharpening iteration of N4, with a low-degree polynomial in world coordinates
instead of N4's B-spline lattice (:func:`napari_mmfuse.core.normalize.estimate_bias_field`).
The real N4 (SimpleITK) is the ``n4`` method.
"""

from __future__ import annotations

import numpy as np

from .. import Image, Operation, Param, Port, Progress
from ..inputs import grey_input


def run_poly_bias(image: Image, *, degree: int, device=None, seed=None):
    """Estimate the field of ``image`` and divide it out; returns ``{"image", "field"}``."""
    from ...core.normalize import estimate_bias_field

    data, spacing, _ = grey_input(image, "Bias field (polynomial)", slice_as_2d=False)
    yield Progress(0, 1, "fitting the bias field")
    data = data.astype(np.float32)
    field = estimate_bias_field(data, spacing=spacing, degree=degree)
    corrected = (data / field).astype(np.float32)
    return {"image": image.like(corrected, name=f"{image.name} poly-bias"),
            "field": image.like(field, name=f"{image.name} bias field", kind="map")}


OPERATIONS = (
    Operation(
        capability="normalize",
        name="poly-bias",
        label="Bias field: polynomial (log domain)",
        doc="divide out a smooth bias field: a polynomial fitted in the log domain with N4's histogram sharpening",
        params=(Param("degree", int, 3, "total degree of the polynomial field", minimum=1, maximum=5,
                      label="field degree"),),
        inputs=(Port("image", "image", "grey 2D or 3D image with positive intensities in the tissue (MR)"),),
        outputs=(Port("image", "image", "bias-corrected image, float32"),
                 Port("field", "map", "the estimated multiplicative field (geometric mean 1 in the tissue)")),
        run=run_poly_bias,
        core="napari_mmfuse.core.normalize:estimate_bias_field",
    ),
)
