"""Noise level estimate and the filter parameters proposed from it."""

from __future__ import annotations

import math

import numpy as np

from .checks import spacing_per_axis



def estimate_noise(image) -> float:
    """Gaussian noise standard deviation from the finest diagonal Haar wavelet band (MAD / 0.6745).

    Parameters
    ----------
    image : array-like, shape (Y, X) or (Z, Y, X)

    Returns
    -------
    float
        In the image's intensity units.
    """
    array = np.asarray(image, dtype=np.float64)
    if array.ndim not in (2, 3) or min(array.shape) < 2:
        raise ValueError(f"noise estimation needs a 2D or 3D image of at least 2 pixels per axis, got {array.shape}")
    trimmed = array[tuple(slice(0, n - n % 2) for n in array.shape)]
    detail = trimmed
    for axis in range(array.ndim):
        even = np.take(detail, np.arange(0, detail.shape[axis], 2), axis=axis)
        odd = np.take(detail, np.arange(1, detail.shape[axis], 2), axis=axis)
        detail = (even - odd) / math.sqrt(2.0)
    return float(np.median(np.abs(detail)) / 0.6745)


#: Methods :func:`suggest_parameters` knows: the classical filters and ``"n2v"``.
METHODS = ("gaussian", "median", "bilateral", "tv", "nlm", "diffusion", "n2v")


def estimated_parameters(method: str, sigma: float) -> dict:
    """The intensity parameters a filter takes from the noise level ``sigma`` when they are not given.

    This is what a parameter left unset ("auto") becomes: the filters call it for their
    ``None`` keywords and :func:`suggest_parameters` proposes the same values.

    Parameters
    ----------
    method : str
    sigma : float
        Noise standard deviation (image intensity units).

    Returns
    -------
    dict
        Empty for methods without an intensity parameter.
    """
    estimates = {
        "bilateral": {"sigma_range": 2.0 * sigma},
        "tv": {"weight": sigma},
        "nlm": {"h": 0.8 * sigma, "sigma": sigma},
        "diffusion": {"kappa": 2.0 * sigma},
    }
    return estimates.get(method, {})


def suggest_parameters(image, method: str, *, spacing=None, sigma: float | None = None) -> dict:
    """Parameters for ``method`` proposed from the estimated noise level and the voxel size.

    Intensity parameters are those the filters use when left unset
    (:func:`estimated_parameters`); distances are given in voxels of the finest axis
    (non-local means in 3D proposes smaller patches and search windows: 7^3 shifts instead of 13^3).

    Parameters
    ----------
    image : array-like, shape (Y, X) or (Z, Y, X)
    method : str
        One of :data:`METHODS`.
    spacing : sequence of float, optional
        Distances come back in these world units.
    sigma : float, optional
        Known noise level; otherwise :func:`estimate_noise`.

    Returns
    -------
    dict
        Keyword arguments for the method, plus nothing else.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    ndim = np.ndim(image)
    unit = float(np.min(spacing_per_axis(spacing, ndim)))
    sigma = estimate_noise(image) if sigma is None else float(sigma)
    sigma = max(sigma, 1e-6)
    distances = {
        "gaussian": {"sigma": 1.0 * unit},
        "median": {"radius": 1.0 * unit},
        "bilateral": {"sigma_spatial": 1.5 * unit},
        "nlm": {"patch_radius": (2.0 if ndim == 2 else 1.0) * unit, "search_radius": (6.0 if ndim == 2 else 3.0) * unit},
        "diffusion": {"n_iter": 10},
        "n2v": {"steps": 400 if ndim == 2 else 800, "patch": 64 if ndim == 2 else 32},
    }
    return distances.get(method, {}) | estimated_parameters(method, sigma)
