"""Input checks of the denoising filters: the image, its spacing and distance parameters.

The parameters' ranges are declared once, in the operation registry
(:mod:`napari_mmfuse.operations.denoise`); here distances are bounded by the image itself.
"""

from __future__ import annotations

import numpy as np

#: Keywords that are distances in world units, per method (bounded by the image's extent).
DISTANCE_PARAMETERS = {
    "gaussian": ("sigma",),
    "median": ("radius",),
    "bilateral": ("sigma_spatial",),
    "nlm": ("patch_radius", "search_radius"),
}


def check_distances(shape, spacing, method: str, params: dict) -> None:
    """Refuse a distance parameter larger than the image (it would only cost memory and time).

    Parameters
    ----------
    shape : tuple of int
    spacing : sequence of float or None
        World size of a voxel per axis (None: pixels).
    method : str
    params : dict
        The method's keywords.

    Raises
    ------
    ValueError
        Naming the parameter and the largest allowed value (the image's largest extent).
    """
    spacing = spacing_per_axis(spacing, len(shape))
    extent = float(max(n * s for n, s in zip(shape, spacing)))
    for key in DISTANCE_PARAMETERS.get(method, ()):
        value = params.get(key)
        if value is not None and value > extent:
            raise ValueError(
                f"{key} {value:g} is larger than the image (largest extent {extent:g} world units); "
                f"choose {key} <= {extent:g}"
            )


# ----------------------------------------------------------------------------- validation


def check_image(image, *, min_size: int = 3, name: str = "image") -> np.ndarray:
    """Validate a grey 2D/3D image and return it as a float32 array.

    Raises
    ------
    ValueError
        For anything but a finite, non-constant 2D or 3D grey image at least ``min_size``
        pixels along every axis.
    """
    array = np.asarray(image)
    if array.dtype == bool or not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise ValueError(f"{name} must hold real numbers, got dtype {array.dtype}")
    if array.ndim not in (2, 3):
        raise ValueError(
            f"{name} must be a 2D (Y, X) or 3D (Z, Y, X) grey image, got {array.ndim}D shape {array.shape}; "
            "select one channel or time point first"
        )
    if array.ndim == 3 and array.shape[-1] in (3, 4) and min(array.shape[:2]) > 4:
        raise ValueError(
            f"{name} of shape {array.shape} looks like RGB(A); denoising needs a grey image "
            "(convert to grey or pick one channel)"
        )
    if min(array.shape) < min_size:
        raise ValueError(f"{name} of shape {array.shape} is smaller than the filter window ({min_size} pixels)")
    array = np.asarray(array, dtype=np.float32)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or Inf; fill or mask them before denoising")
    if float(array.max()) == float(array.min()):
        raise ValueError(f"{name} is constant ({float(array.min())}); there is nothing to denoise")
    return array


def spacing_per_axis(spacing, ndim: int) -> np.ndarray:
    if spacing is None:
        return np.ones(ndim)
    spacing = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
    if spacing.size == 1:
        spacing = np.repeat(spacing, ndim)
    if spacing.shape != (ndim,):
        raise ValueError(f"spacing has {spacing.size} values for a {ndim}D image")
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ValueError(f"spacing must be positive and finite, got {spacing.tolist()}")
    return spacing


def world_radii(distance: float, spacing: np.ndarray, *, minimum: int = 0) -> tuple[int, ...]:
    """Distance in world units -> integer radius per axis."""
    if distance < 0:
        raise ValueError(f"a distance must be >= 0, got {distance}")
    return tuple(max(minimum, int(round(distance / s))) for s in spacing)

