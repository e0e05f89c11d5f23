"""Classical denoising filters: Gaussian, median, bilateral, total variation, non-local means, diffusion.

Computed by :mod:`napari_mmfuse.core.denoise` on torch, slab by slab. Distances are in the
image's world units (mm, µm); intensity parameters left unset are estimated from the
image's noise level (:func:`napari_mmfuse.core.denoise.estimated_parameters`).
"""

from __future__ import annotations

from .. import Image, Operation, Param, Port
from ..inputs import fractions, grey_input

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


def run_filter(method: str, image: Image, device, **params):
    """Run the classical filter ``method`` on ``image``; yields Progress, returns ``{"image": Image}``."""
    from ...core.denoise import denoise_steps

    data, spacing, restore = grey_input(image, LABELS[method])
    steps = denoise_steps(data, method, spacing=spacing, device=device, **params)
    result = yield from fractions(steps, LABELS[method])
    return {"image": image.like(restore(result), name=f"{image.name} {method}")}


def run_gaussian(image: Image, *, sigma: float, device=None, seed=None):
    """Gaussian smoothing of ``image``."""
    return (yield from run_filter("gaussian", image, device, sigma=sigma))


def run_median(image: Image, *, radius: float, device=None, seed=None):
    """Median filter of ``image``."""
    return (yield from run_filter("median", image, device, radius=radius))


def run_bilateral(image: Image, *, sigma_spatial: float, sigma_range: float | None, device=None, seed=None):
    """Bilateral filter of ``image``."""
    return (yield from run_filter("bilateral", image, device, sigma_spatial=sigma_spatial, sigma_range=sigma_range))


def run_tv(image: Image, *, weight: float | None, device=None, seed=None):
    """Total-variation denoising of ``image``."""
    return (yield from run_filter("tv", image, device, weight=weight))


def run_nlm(image: Image, *, h: float | None, sigma: float | None, patch_radius: float, search_radius: float,
            device=None, seed=None):
    """Non-local means of ``image``."""
    return (yield from run_filter("nlm", image, device, h=h, sigma=sigma, patch_radius=patch_radius,
                                  search_radius=search_radius))


def run_diffusion(image: Image, *, kappa: float | None, n_iter: int, device=None, seed=None):
    """Perona-Malik diffusion of ``image``."""
    return (yield from run_filter("diffusion", image, device, kappa=kappa, n_iter=n_iter))


def _operation(method: str, doc: str, params: tuple, run, core: str) -> Operation:
    return Operation(capability="denoise", name=method, label=LABELS[method], doc=doc, params=params,
                     inputs=(IMAGE,), outputs=(RESULT,), run=run, core=f"napari_mmfuse.core.denoise:{core}")


OPERATIONS = (
    _operation("gaussian", "Gaussian smoothing (scipy semantics: truncated at 4 sigma, mirrored edges)", (
        Param("sigma", float, 1.0, "standard deviation in world units", minimum=0.0, unit="world"),
    ), run_gaussian, "gaussian"),
    _operation("median", "median over a box of half-width radius per axis", (
        Param("radius", float, 1.0, "half-width of the box in world units", minimum=0.0, open_minimum=True,
              unit="world"),
    ), run_median, "median"),
    _operation("bilateral", "bilateral filter: Gaussian in space times Gaussian in intensity", (
        Param("sigma_spatial", float, 1.5, "spatial standard deviation in world units (the window reaches 2 sigma)",
              minimum=0.0, open_minimum=True, unit="world", label="spatial sigma"),
        Param("sigma_range", float, None, "intensity standard deviation; when unset, twice the noise level",
              minimum=0.0, open_minimum=True, unit="intensity", label="intensity sigma"),
    ), run_bilateral, "bilateral"),
    _operation("tv", "total-variation denoising (Chambolle's projection)", (
        Param("weight", float, None, "regularisation weight; when unset, the noise level", minimum=0.0,
              open_minimum=True, unit="intensity"),
    ), run_tv, "total_variation"),
    _operation("nlm", "non-local means (fast variant: box-filtered patch distances per shift)", (
        Param("h", float, None, "cut-off; when unset, 0.8 times the noise sigma", minimum=0.0, open_minimum=True,
              unit="intensity", label="h (cut-off)"),
        Param("sigma", float, None, "noise standard deviation; when unset, the Haar-wavelet (MAD) estimate",
              minimum=0.0, unit="intensity", label="noise sigma"),
        Param("patch_radius", float, 2.0, "patch half-width in world units", minimum=0.0, unit="world"),
        Param("search_radius", float, 6.0, "search window half-width in world units", minimum=0.0,
              open_minimum=True, unit="world"),
    ), run_nlm, "nl_means"),
    _operation("diffusion", "Perona-Malik anisotropic diffusion (explicit scheme)", (
        Param("kappa", float, None, "edge threshold; when unset, twice the noise level", minimum=0.0,
              open_minimum=True, unit="intensity", label="kappa (edge)"),
        Param("n_iter", int, 10, "number of iterations", minimum=1, maximum=10_000, flag="iterations",
              label="iterations"),
    ), run_diffusion, "anisotropic_diffusion"),
)
