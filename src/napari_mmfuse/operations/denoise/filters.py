"""Classical denoising filters: Gaussian, median, bilateral, total variation, non-local means, diffusion.

Computed by :mod:`napari_mmfuse.core.denoise` on torch, slab by slab. Distances are in the
image's world units (mm, µm); intensity parameters left unset are estimated from the
image's noise level (:func:`napari_mmfuse.core.denoise.estimated_parameters`).
"""

from __future__ import annotations

from .. import Image, Operation, Param, Port
from .inputs import fractions, grey_input

IMAGE = Port("image", "image", "grey 2D or 3D image (a single slice of a volume is filtered as 2D)")
RESULT = Port("image", "image", "denoised image, float32, on the input's grid")

LABELS = {
    "gaussian": "Gaussian",
    "median": "Median",
    "bilateral": "Bilateral",
    "tv": "Total variation",
    "nlm": "Non-local means",
    "diffusion": "Anisotropic diffusion",
}


def filter_run(method: str):
    """The run function of the classical filter ``method``."""

    def run(image: Image, *, device=None, seed=None, **params):
        from ...core.denoise import denoise_steps

        data, spacing, restore = grey_input(image, LABELS[method])
        steps = denoise_steps(data, method, spacing=spacing, device=device, **params)
        result = yield from fractions(steps, LABELS[method])
        return {"image": image.like(restore(result), name=f"{image.name} {method}")}

    run.__name__ = run.__qualname__ = f"run_{method}"
    run.__doc__ = f"{LABELS[method]} filter of ``image``; yields Progress, returns ``{{'image': Image}}``."
    return run


def _operation(method: str, doc: str, params: tuple, core: str) -> Operation:
    return Operation(capability="denoise", name=method, label=LABELS[method], doc=doc, params=params,
                     inputs=(IMAGE,), outputs=(RESULT,), run=filter_run(method), core=f"napari_mmfuse.core.denoise:{core}")


OPERATIONS = (
    _operation("gaussian", "Gaussian smoothing (scipy semantics: truncated at 4 sigma, mirrored edges)",
               (Param("sigma", float, 1.0, "standard deviation", minimum=0.0, unit="world"),), "gaussian"),
    _operation("median", "median over a box of half-width radius per axis",
               (Param("radius", float, 1.0, "half-width of the box", minimum=0.0, open_minimum=True, unit="world"),),
               "median"),
    _operation("bilateral", "bilateral filter: Gaussian in space times Gaussian in intensity", (
        Param("sigma_spatial", float, 1.5, "spatial standard deviation (the window reaches 2 sigma)", minimum=0.0,
              open_minimum=True, unit="world", label="spatial sigma"),
        Param("sigma_range", float, None, "intensity standard deviation; auto: twice the estimated noise",
              minimum=0.0, open_minimum=True, unit="intensity", label="intensity sigma"),
    ), "bilateral"),
    _operation("tv", "total-variation denoising (Chambolle's projection)", (
        Param("weight", float, None, "regularisation weight; auto: the estimated noise level", minimum=0.0,
              open_minimum=True, unit="intensity"),
    ), "total_variation"),
    _operation("nlm", "non-local means (fast variant: box-filtered patch distances per shift)", (
        Param("h", float, None, "cut-off; auto: 0.8 times the noise sigma", minimum=0.0, open_minimum=True,
              unit="intensity", label="h (cut-off)"),
        Param("sigma", float, None, "noise standard deviation; auto: estimated from the image", minimum=0.0,
              unit="intensity", label="noise sigma"),
        Param("patch_radius", float, 2.0, "patch half-width", minimum=0.0, unit="world"),
        Param("search_radius", float, 6.0, "search window half-width", minimum=0.0, open_minimum=True, unit="world"),
    ), "nl_means"),
    _operation("diffusion", "Perona-Malik anisotropic diffusion (explicit scheme)", (
        Param("kappa", float, None, "edge threshold; auto: twice the estimated noise", minimum=0.0,
              open_minimum=True, unit="intensity", label="kappa (edge)"),
        Param("n_iter", int, 10, "number of iterations", minimum=1, maximum=10_000, flag="iterations",
              label="iterations"),
    ), "anisotropic_diffusion"),
)
