"""N4 bias-field correction (Tustison et al. 2010, IEEE TMI 29:1310), run by SimpleITK.

The field is fitted on a shrunken copy of the image inside a foreground mask (Otsu by
default) as a multi-level B-spline in the log domain, then evaluated on the full grid and
divided out, so the corrected image keeps the input's voxel grid and world placement.
"""

from __future__ import annotations

import numpy as np

from .. import Image, Operation, Param, Port, Progress


def run_n4(image: Image, *, shrink: int, iterations: int, levels: int, convergence: float, control_points: int,
           bias_fwhm: float, wiener_noise: float, bins: int, mask: str, device=None, seed=None):
    """Correct ``image``'s bias field; yields :class:`Progress`, returns ``{"image": corrected}``."""
    import SimpleITK as sitk

    data = np.asarray(image.data)
    if image.rgb or data.ndim not in (2, 3) or min(data.shape) < 2:
        raise ValueError(f"N4 corrects a 2D or 3D grey image, got shape {data.shape}{' (RGB)' if image.rgb else ''}")
    if not np.isfinite(data).all():
        raise ValueError("N4 needs finite intensities; the image holds NaN or infinite values")
    if data.min() < 0:
        raise ValueError("N4 models a multiplicative field of positive intensities; shift the image to be >= 0 first")
    yield Progress(0, levels + 1, "fitting the bias field")
    full = sitk.GetImageFromArray(data.astype(np.float32))
    full.SetSpacing([float(s) for s in image.spacing[::-1]])
    foreground = sitk.OtsuThreshold(full, 0, 1, 200) if mask == "otsu" else full * 0 + 1
    foreground = sitk.Cast(foreground, sitk.sitkUInt8)
    factors = [min(shrink, max(1, n // 4)) for n in full.GetSize()]
    small = sitk.Shrink(full, factors)
    small_mask = sitk.Shrink(foreground, factors)
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([iterations] * levels)
    corrector.SetConvergenceThreshold(convergence)
    corrector.SetNumberOfControlPoints([control_points] * data.ndim)
    corrector.SetBiasFieldFullWidthAtHalfMaximum(bias_fwhm)
    corrector.SetWienerFilterNoise(wiener_noise)
    corrector.SetNumberOfHistogramBins(bins)
    corrector.Execute(small, small_mask)
    yield Progress(levels, levels + 1, "applying the field at full resolution")
    log_field = sitk.GetArrayFromImage(corrector.GetLogBiasFieldAsImage(full))
    corrected = (data / np.exp(log_field)).astype(np.float32)
    yield Progress(levels + 1, levels + 1, "done")
    return {"image": image.like(corrected, name=f"{image.name} n4"), "field": image.like(np.exp(log_field).astype(
        np.float32), name=f"{image.name} bias field", kind="map")}


OPERATIONS = (
    Operation(
        capability="normalize",
        name="n4",
        label="Bias field: N4 (SimpleITK)",
        doc="N4 bias-field correction (B-spline field fitted in the log domain, SimpleITK)",
        params=(
            Param("shrink", int, 4, "shrink factor of the grid the field is fitted on", minimum=1, maximum=16,
                  unit="px"),
            Param("iterations", int, 50, "iterations per fitting level", minimum=1, maximum=1000),
            Param("levels", int, 4, "fitting levels (the B-spline grid doubles at each)", minimum=1, maximum=8),
            Param("convergence", float, 0.001, "stop a level when the field changes less than this",
                  minimum=0.0, maximum=1.0, open_minimum=True),
            Param("control_points", int, 4, "B-spline control points per axis at the first level", minimum=4,
                  maximum=64),
            Param("bias_fwhm", float, 0.15, "full width at half maximum of the assumed bias histogram blur",
                  minimum=0.0, maximum=5.0, open_minimum=True),
            Param("wiener_noise", float, 0.01, "Wiener filter noise of the histogram sharpening", minimum=0.0,
                  maximum=1.0, open_minimum=True),
            Param("bins", int, 200, "histogram bins", minimum=16, maximum=4096),
            Param("mask", str, "otsu", "where the field is fitted: Otsu foreground or every voxel",
                  choices=("otsu", "none")),
        ),
        inputs=(Port("image", "image", "grey 2D or 3D image"),),
        outputs=(Port("image", "image", "bias-corrected image"), Port("field", "map", "the estimated bias field")),
        run=run_n4,
    ),
)
