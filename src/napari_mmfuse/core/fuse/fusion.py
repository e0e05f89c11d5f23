"""Fusion of images on one grid: the method table, input checks, grey and colour fusion.

:func:`fuse` runs a method on N >= 2 images already on one grid; :func:`fuse_steps` is the
same as a generator that yields :class:`~napari_mmfuse.operations.Progress` (learned fusion
trains). Colour fusion (``method="colour"``) fuses the luminance by an inner grey method and
keeps the chroma of the functional image (its own RGB, or a colormap on a grey image).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ...operations import Progress, drive
from .._names import FUSE_DEFAULT_METHOD as DEFAULT_METHOD
from ..device import get_device
from .colour import apply_colormap, infer_rgb, is_colour, rgb_to_ycbcr, ycbcr_to_rgb
from .learned import learned
from .methods import activity, average, guided, laplacian, maximum, minimum, modulated, pca, saliency, wavelet
from .network import network

#: Grey methods by name: ``method(stack, **params) -> (fused, weights)`` (see :mod:`.methods`);
#: generator functions (``learned``) yield progress first. Their parameters are declared by
#: the ``fuse`` operations (:mod:`napari_mmfuse.operations.fuse`).
METHODS: dict[str, Callable] = {
    "network": network,
    "modulated": modulated,
    "average": average,
    "maximum": maximum,
    "minimum": minimum,
    "pca": pca,
    "laplacian": laplacian,
    "wavelet": wavelet,
    "activity": activity,
    "guided": guided,
    "saliency": saliency,
    "learned": learned,
}
#: The method that fuses a colour image with grey ones (luminance by an inner grey method).
COLOUR_METHOD = "colour"


@dataclass
class FusionResult:
    """Outcome of a fusion.

    Attributes
    ----------
    fused : ndarray, shape (*spatial) or (*spatial, 3)
        float32 in [0, 1]; RGB (last axis) for colour fusion.
    weights : ndarray, shape (N, *spatial)
        float32 contribution of each input at each pixel; sums to 1 over the first axis.
    method : str
    params : dict
        The parameters the method ran with (defaults filled in).
    """

    fused: np.ndarray
    weights: np.ndarray
    method: str
    params: dict = field(default_factory=dict)

def method_names() -> list[str]:
    """Every method name :func:`fuse` accepts, grey methods first, then ``"colour"``."""
    return [*METHODS, COLOUR_METHOD]


def auto_method(images: Sequence, rgb: Sequence[bool] | None = None, *, grey_method: str = DEFAULT_METHOD) -> str:
    """The method a fusion "with the defaults" uses for these inputs.

    ``"colour"`` (luminance fused by ``grey_method``, the default inner method, chroma from
    the colour image) when any input is colour (see :func:`is_colour`), else ``grey_method``.

    Parameters
    ----------
    images : sequence of ndarray
    rgb : sequence of bool, optional
        Which images are RGB (default: inferred as in :func:`fuse`).
    grey_method : str
        The method for grey inputs.

    Returns
    -------
    str
    """
    flags = [None] * len(images) if rgb is None else list(rgb)
    return COLOUR_METHOD if any(is_colour(a, f) for a, f in zip(images, flags)) else grey_method


def _prepare(images: Sequence, rgb: Sequence[bool] | None, normalise: bool, colour: bool):
    """Validate inputs; return float32 images (achromatic RGB turned grey) and RGB flags.

    The images are new float32 memory (inputs are never written to): one stacked array,
    shape (N, *spatial), when all are grey, else a list of arrays.
    """
    if isinstance(images, np.ndarray) or len(images) < 2:
        count = 1 if isinstance(images, np.ndarray) else len(images)
        raise ValueError(f"fusion needs at least two images, got {count}; pass a list of arrays")
    arrays = [np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a) for a in images]
    flags = infer_rgb(arrays) if rgb is None else [bool(f) for f in rgb]
    if len(flags) != len(arrays):
        raise ValueError(f"rgb has {len(flags)} flags for {len(arrays)} images")
    prepared, is_rgb, ranges = [], [], []
    for i, (array, flag) in enumerate(zip(arrays, flags)):
        if array.dtype.kind not in "biuf":
            raise ValueError(f"image {i} has dtype {array.dtype}; fusion needs numbers")
        data = np.asarray(array, dtype=np.float32)  # read only: copied (and scaled) below
        lo, hi = float(data.min()), float(data.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):  # min/max propagate NaN and reach Inf
            bad = data.size - int(np.isfinite(data).sum())
            raise ValueError(f"image {i} has {bad} NaN/Inf pixels; fill them first (e.g. numpy.nan_to_num)")
        if hi <= lo:
            raise ValueError(f"image {i} is constant (every pixel = {lo:g}): it has nothing to contribute to a fusion")
        if flag:
            data = data[..., :3]
            if np.array_equal(data[..., 0], data[..., 1]) and np.array_equal(data[..., 0], data[..., 2]):
                data, flag = data[..., 0], False
            lo, hi = float(data.min()), float(data.max())
        prepared.append(data)
        is_rgb.append(flag)
        ranges.append((lo, hi) if normalise else None)
    spatial = [a.shape[:-1] if f else a.shape for a, f in zip(prepared, is_rgb)]
    for i, shape in enumerate(spatial):
        if len(shape) not in (2, 3):
            raise ValueError(f"image {i} has {len(shape)} spatial axes; fusion handles 2D and 3D images")
        if len(shape) != len(spatial[0]):
            raise ValueError(
                f"image 0 is {len(spatial[0])}D but image {i} is {len(shape)}D; "
                "fuse images of one dimensionality (take a slice, or resample the 2D image into the volume)"
            )
        if shape != spatial[0]:
            raise ValueError(
                f"image 0 has shape {spatial[0]} but image {i} {shape}; put them on one grid first "
                "(fuse_on_reference resamples through the world affines)"
            )
    if any(is_rgb) and not colour:
        which = [i for i, f in enumerate(is_rgb) if f]
        raise ValueError(
            f"image(s) {which} are RGB and the other(s) grey; grey methods need grey images: use "
            "method='colour' to keep the colour, or pass the luminance (napari_mmfuse.core.fuse.luminance)"
        )
    if any(is_rgb):
        return [_copy_scaled(a, r, np.empty(a.shape, np.float32)) for a, r in zip(prepared, ranges)], is_rgb
    stacked = np.empty((len(prepared), *spatial[0]), np.float32)
    for data, value_range, out in zip(prepared, ranges, stacked):
        _copy_scaled(data, value_range, out)
    return stacked, is_rgb


def _copy_scaled(data: np.ndarray, value_range: tuple[float, float] | None, out: np.ndarray) -> np.ndarray:
    """Write ``data`` into ``out``, mapped from ``value_range`` = (lower, upper) onto [0, 1] if given."""
    if value_range is None:
        out[...] = data
    else:
        lower, upper = value_range
        np.subtract(data, lower, out=out, dtype=np.float32)
        out /= upper - lower
    return out


def method_defaults(method: str) -> dict:
    """The keyword defaults of a grey method's function (``{}`` for those without parameters)."""
    if method not in METHODS:
        raise ValueError(f"unknown fusion method {method!r}; choose one of {method_names()}")
    signature = inspect.signature(METHODS[method])
    return {name: p.default for name, p in signature.parameters.items() if p.kind is p.KEYWORD_ONLY}


def _run(method: str, stack: torch.Tensor, params: dict):
    """Generator: run a grey method on a (N, *spatial) stack; returns ``(fused, weights, params used)``."""
    defaults = method_defaults(method)
    unknown = set(params) - set(defaults)
    if unknown:
        raise ValueError(f"method {method!r} has no parameter(s) {sorted(unknown)}; it takes {sorted(defaults)}")
    function = METHODS[method]
    if inspect.isgeneratorfunction(function):
        fused, weights = yield from function(stack, **params)
    else:
        with torch.no_grad():
            fused, weights = function(stack, **params)
    return fused, weights, {**defaults, **params}


def colour_steps(arrays: list, is_rgb: list, device, *, inner: str = DEFAULT_METHOD, colormap: str = "hot",
                 functional: int | None = None, **params):
    """Generator: colour fusion of prepared images; returns a :class:`FusionResult`.

    Parameters
    ----------
    arrays : list of ndarray
        float32 images on one grid in [0, 1], at most one of them RGB (last axis 3).
    is_rgb : list of bool
    device : torch.device
    inner : str
        The grey method that fuses the luminance.
    colormap : {"hot", "jet"}
        Colours a grey functional image.
    functional : int, optional
        Index of the functional image (default: the RGB image, else the last).
    **params
        The inner method's parameters.
    """
    if inner not in METHODS:
        raise ValueError(f"colour fusion needs a grey inner method, one of {list(METHODS)}, not {inner!r}")
    rgb_indices = [i for i, f in enumerate(is_rgb) if f]
    if len(rgb_indices) > 1:
        raise ValueError(f"colour fusion takes one functional (colour) image, got {len(rgb_indices)} RGB images")
    if functional is None:
        functional = rgb_indices[0] if rgb_indices else len(arrays) - 1
    functional = int(functional)
    if not 0 <= functional < len(arrays):
        raise ValueError(f"functional must index one of the {len(arrays)} images, got {functional}")
    if rgb_indices and rgb_indices[0] != functional:
        raise ValueError(
            f"image {rgb_indices[0]} is RGB but functional={functional}; the colour image is the functional one"
        )
    colour_image = arrays[functional] if is_rgb[functional] else apply_colormap(arrays[functional], colormap)
    ycbcr = rgb_to_ycbcr(colour_image)
    lumas = [ycbcr[..., 0] if i == functional else a for i, a in enumerate(arrays)]
    stack = torch.from_numpy(np.stack(lumas)).to(device)
    fused, weights, used = yield from _run(inner, stack, params)
    fused_y = _to_numpy(fused.clamp(0, 1))
    out = ycbcr_to_rgb(np.concatenate([fused_y[..., None], ycbcr[..., 1:]], axis=-1))
    used = {"inner": inner, "colormap": colormap, "functional": functional, **used}
    return FusionResult(out, _to_numpy(weights), COLOUR_METHOD, used)


def fuse_steps(
    images: Sequence[np.ndarray],
    *,
    method: str = DEFAULT_METHOD,
    rgb: Sequence[bool] | None = None,
    normalise: bool = True,
    device=None,
    **params,
) -> Generator[Progress, None, FusionResult]:
    """Fuse images on one grid, yielding progress (a generator; see :func:`fuse`).

    Yields
    ------
    Progress
        Only methods that iterate ("learned") yield; the others return at once.

    Returns
    -------
    FusionResult
    """
    if method not in METHODS and method != COLOUR_METHOD:
        raise ValueError(f"unknown fusion method {method!r}; choose one of {method_names()}")
    colour = method == COLOUR_METHOD
    arrays, is_rgb = _prepare(images, rgb, normalise, colour)
    device = get_device(device)
    if colour:
        return (yield from colour_steps(arrays, is_rgb, device, **params))
    stack = torch.from_numpy(arrays).to(device)
    fused, weights, used = yield from _run(method, stack, params)
    return FusionResult(_to_numpy(fused.clamp(0, 1)), _to_numpy(weights), method, used)


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().float().cpu().numpy(), dtype=np.float32)


def fuse(
    images: Sequence[np.ndarray],
    *,
    method: str = DEFAULT_METHOD,
    rgb: Sequence[bool] | None = None,
    normalise: bool = True,
    device=None,
    **params,
) -> FusionResult:
    """Fuse N >= 2 images that lie on one grid.

    Parameters
    ----------
    images : sequence of ndarray, each shape (*spatial) or (*spatial, 3) for RGB
        2D or 3D images on the same grid (inputs are never modified).
    method : str
        A key of :data:`METHODS` or ``"colour"`` (see :func:`method_names`).
    rgb : sequence of bool, optional
        Which images are RGB; by default those whose last axis has length 3 or 4 (and
        that are 2D or 3D without it). RGB images with three equal channels count as grey.
    normalise : bool
        Scale each image to [0, 1] by its minimum and maximum (RGB images jointly over
        channels). With ``False`` the images must already be in [0, 1]; use
        :func:`normalise_intensity` or :func:`fuse_on_reference` for modality-aware scaling.
    device : str or torch.device, optional
        Compute device; defaults to :func:`~napari_mmfuse.core.device.get_device`.
    **params
        Method parameters (see :func:`method_defaults`; declared, with their ranges, by the
        ``fuse`` operations). Colour fusion takes ``inner``
        (grey method fusing the luminance), ``colormap`` ("hot" or "jet", for a grey
        functional image), ``functional`` (its index; default the RGB image, else the
        last) and the inner method's parameters.

    Returns
    -------
    FusionResult
        ``fused`` float32, shape (*spatial) in [0, 1], or (*spatial, 3) for ``"colour"``;
        ``weights`` float32, shape (N, *spatial), summing to 1 over the first axis.

    Raises
    ------
    ValueError
        Fewer than two images, mixed dimensionality or shapes, RGB with a grey method,
        a constant image, NaN/Inf, an unknown method or parameter.
    """
    steps = fuse_steps(images, method=method, rgb=rgb, normalise=normalise, device=device, **params)
    return drive(steps)
