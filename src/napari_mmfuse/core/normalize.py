"""Preparing images: intensity normalisation, MRI bias field, H&E stain normalisation, tissue masks.

Grey-level functions take a 2D ``(Y, X)`` or 3D ``(Z, Y, X)`` image and return float32 of the
same shape. Stain functions take RGB ``(Y, X, 3)`` uint8 slides and return uint8 RGB (the
slide's own type, so the result displays and saves like the input). numpy, SciPy and
scikit-image's Otsu threshold.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

#: Methods of :func:`normalize` by name (``"poly-bias"``: :func:`correct_bias_field`).
METHODS = ("percentile", "zscore", "histogram", "poly-bias", "macenko", "reinhard")

#: Reference H&E optical-density stain vectors (rows: haematoxylin, eosin) and 99th-percentile
#: concentrations, the values published with Macenko et al. (2009) and widely used as a target.
REFERENCE_STAINS = np.array([[0.5626, 0.7201, 0.4062], [0.2159, 0.8012, 0.5581]])
REFERENCE_MAX_CONCENTRATIONS = np.array([1.9705, 1.0308])


# ----------------------------------------------------------------------------- checks


def _grey(image, name: str = "image") -> np.ndarray:
    array = np.asarray(image)
    if array.dtype == bool or not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise ValueError(f"{name} must hold real numbers, got dtype {array.dtype}")
    if array.ndim not in (2, 3):
        raise ValueError(f"{name} must be a 2D or 3D grey image, got {array.ndim}D shape {array.shape}")
    if array.ndim == 3 and array.shape[-1] in (3, 4) and min(array.shape[:2]) > 4:
        raise ValueError(f"{name} of shape {array.shape} looks like RGB(A); this method needs a grey image")
    array = np.asarray(array, dtype=np.float32)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or Inf; fill or mask them first")
    return array


def _mask(mask, shape) -> np.ndarray | None:
    if mask is None:
        return None
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != tuple(shape):
        raise ValueError(f"mask shape {mask.shape} does not match the image {tuple(shape)}")
    if not mask.any():
        raise ValueError("mask is empty")
    return mask


def _rgb(image, name: str = "image") -> np.ndarray:
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ValueError(f"{name} must be an RGB(A) slide of shape (Y, X, 3), got shape {array.shape}")
    if array.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 RGB (0-255), got dtype {array.dtype}")
    return array[..., :3]


# ----------------------------------------------------------------------------- intensity


def percentile(image, *, low: float = 1.0, high: float = 99.8, clip: bool = False, mask=None) -> np.ndarray:
    """Map the ``low`` and ``high`` percentiles to 0 and 1.

    Parameters
    ----------
    image : array-like, shape (Y, X) or (Z, Y, X)
    low, high : float
        Percentiles in [0, 100], ``low < high``.
    clip : bool
        Clip the result to [0, 1].
    mask : array of bool, same shape, optional
        Percentiles are taken inside the mask only.

    Returns
    -------
    ndarray, float32, same shape
    """
    array = _grey(image)
    if not 0 <= low < high <= 100:
        raise ValueError(f"need 0 <= low < high <= 100, got low={low}, high={high}")
    mask = _mask(mask, array.shape)
    values = array[mask] if mask is not None else array
    lo, hi = np.percentile(values, [low, high])
    if hi <= lo:
        raise ValueError(f"percentiles {low} and {high} are equal ({lo}); the image is (nearly) constant")
    out = (array - lo) / (hi - lo)
    return (np.clip(out, 0, 1) if clip else out).astype(np.float32)


def zscore(image, *, mask=None) -> np.ndarray:
    """Subtract the mean and divide by the standard deviation (inside ``mask`` if given).

    Parameters
    ----------
    image : array-like, shape (Y, X) or (Z, Y, X)
    mask : array of bool, same shape, optional

    Returns
    -------
    ndarray, float32, same shape
    """
    array = _grey(image)
    mask = _mask(mask, array.shape)
    values = (array[mask] if mask is not None else array).astype(np.float64)
    std = values.std()
    if std == 0:
        raise ValueError("image is constant; its z-score is undefined")
    return ((array - values.mean()) / std).astype(np.float32)


def match_histogram(image, reference) -> np.ndarray:
    """Map intensities so the image's cumulative histogram follows the reference's.

    Parameters
    ----------
    image : array-like, shape (Y, X) or (Z, Y, X)
    reference : array-like, any 2D/3D shape

    Returns
    -------
    ndarray, float32, same shape as ``image``
    """
    array = _grey(image)
    ref = _grey(reference, "reference")
    if float(ref.max()) == float(ref.min()):
        raise ValueError(
            f"the reference image is constant (every pixel = {float(ref.min()):g}); "
            "matching its histogram would make the image constant: choose a reference with contrast"
        )
    values, inverse, counts = np.unique(array.ravel(), return_inverse=True, return_counts=True)
    ref_values, ref_counts = np.unique(ref.ravel(), return_counts=True)
    quantiles = np.cumsum(counts) / array.size
    ref_quantiles = np.cumsum(ref_counts) / ref.size
    mapped = np.interp(quantiles, ref_quantiles, ref_values)
    return mapped[inverse].reshape(array.shape).astype(np.float32)


# ----------------------------------------------------------------------------- bias field


def _sharpen(u: np.ndarray, *, bins: int, fwhm: float, wiener: float) -> np.ndarray:
    """N4's histogram sharpening: expected true log-intensity for each observed one.

    The histogram of ``u`` is deconvolved (Wiener) by a Gaussian of ``fwhm`` (the blur a
    smooth field adds), and each value is mapped to the conditional mean of the sharpened
    distribution.
    """
    lo, hi = float(u.min()), float(u.max())
    if hi <= lo:
        return u.copy()
    width = (hi - lo) / (bins - 1)
    hist = np.bincount(np.clip(np.rint((u - lo) / width).astype(int), 0, bins - 1), minlength=bins).astype(np.float64)
    size = 1 << int(math.ceil(math.log2(2 * bins)))
    padded = np.zeros(size)
    offset = (size - bins) // 2
    padded[offset : offset + bins] = hist
    sigma = fwhm / (2 * math.sqrt(2 * math.log(2))) / width
    index = np.fft.fftfreq(size) * size
    kernel = np.exp(-0.5 * (index / sigma) ** 2)
    kernel /= kernel.sum()
    k = np.fft.fft(kernel)
    sharpened = np.real(np.fft.ifft(np.fft.fft(padded) * np.conj(k) / (np.abs(k) ** 2 + wiener)))
    sharpened = np.clip(sharpened, 0, None)
    centres = lo + (np.arange(size) - offset) * width
    numerator = np.real(np.fft.ifft(np.fft.fft(sharpened * centres) * k))
    denominator = np.real(np.fft.ifft(np.fft.fft(sharpened) * k))
    expected = np.where(denominator > 1e-12 * denominator.max(), numerator / np.maximum(denominator, 1e-300), centres)
    return np.interp(u, centres[offset : offset + bins], expected[offset : offset + bins])


def _poly_basis(coords: np.ndarray, degree: int) -> np.ndarray:
    """Monomials of total degree 1..``degree`` in coordinates of shape (N, ndim) in [-1, 1]."""
    ndim = coords.shape[1]
    terms = []
    for powers in np.ndindex(*([degree + 1] * ndim)):
        if 0 < sum(powers) <= degree:
            terms.append(np.prod([coords[:, a] ** p for a, p in enumerate(powers)], axis=0))
    return np.stack(terms, axis=1)


def _grid_coords(shape, spacing) -> list[np.ndarray]:
    extent = np.array(shape) * spacing
    half = extent.max() / 2
    return [((np.arange(n) - (n - 1) / 2) * s) / half for n, s in zip(shape, spacing)]


def estimate_bias_field(
    image,
    *,
    mask=None,
    spacing=None,
    degree: int = 3,
    n_iter: int = 50,
    fwhm: float = 0.15,
    wiener: float = 0.01,
    bins: int = 200,
    tol: float = 1e-4,
    max_points: int = 200_000,
    seed: int = 0,
) -> np.ndarray:
    """Estimate a smooth multiplicative bias field: a polynomial fitted in the log domain (``poly-bias``).

    Iterates: sharpen the histogram of the current log-corrected image (Wiener deconvolution
    of a Gaussian of ``fwhm``), take the residual between the observed log intensity and its
    sharpened expectation, fit a polynomial of total ``degree`` to it (least squares, inside
    the mask, physical coordinates), until the field changes by less than ``tol``. A
    polynomial replaces N4's B-spline lattice: smoother and lower-dimensional, so suited to
    the slowly varying fields of MR coils.

    Parameters
    ----------
    image : array-like, shape (Y, X) or (Z, Y, X)
        Positive intensities inside the tissue (MR magnitude).
    mask : array of bool, same shape, optional
        Tissue; default voxels above Otsu's threshold.
    spacing : sequence of float, optional
        Voxel size per axis, so the polynomial is isotropic in world space.
    degree : int
        Total polynomial degree (1-5).
    n_iter, fwhm, wiener, bins, tol
        Iterations, histogram blur in log units, Wiener noise, histogram bins, stop threshold.
    max_points : int
        Tissue voxels sampled for the fit (bounds time on large volumes).
    seed : int

    Returns
    -------
    field : ndarray, float32, same shape
        Multiplicative field with geometric mean 1 inside the mask; ``image / field`` is corrected.
    """
    array = _grey(image)
    if not 1 <= degree <= 5:
        raise ValueError(f"degree must be 1..5, got {degree}")
    spacing = np.ones(array.ndim) if spacing is None else np.broadcast_to(np.asarray(spacing, float), (array.ndim,))
    mask = _mask(mask, array.shape)
    if mask is None:
        if array.max() <= array.min():
            raise ValueError("image is constant; there is no bias field to estimate")
        mask = array > threshold_otsu(array, nbins=256)
    mask = mask & (array > 0)
    if mask.sum() < 50:
        raise ValueError("fewer than 50 positive tissue voxels; bias correction needs a tissue mask with signal")
    index = np.flatnonzero(mask)
    if index.size > max_points:
        index = np.sort(np.random.default_rng(seed).choice(index, max_points, replace=False))
    axes = _grid_coords(array.shape, spacing)
    positions = np.unravel_index(index, array.shape)
    basis = _poly_basis(np.stack([axes[a][positions[a]] for a in range(array.ndim)], axis=1), degree)
    basis -= basis.mean(axis=0)  # the constant is not identifiable: keep mean log field 0
    v = np.log(array.ravel()[index].astype(np.float64))
    log_field = np.zeros_like(v)
    coefficients = np.zeros(basis.shape[1])
    for _ in range(n_iter):
        u = v - log_field
        residual = v - _sharpen(u, bins=bins, fwhm=fwhm, wiener=wiener)
        coefficients, *_ = np.linalg.lstsq(basis, residual - residual.mean(), rcond=None)
        new_field = basis @ coefficients
        change = float(np.std(new_field - log_field))
        log_field = new_field
        if change < tol:
            break
    full_axes = np.meshgrid(*axes, indexing="ij")
    grid = np.stack([a.ravel() for a in full_axes], axis=1)
    centre = _poly_basis(np.stack([axes[a][positions[a]] for a in range(array.ndim)], axis=1), degree).mean(axis=0)
    field = np.exp((_poly_basis(grid, degree) - centre) @ coefficients).reshape(array.shape)
    return field.astype(np.float32)


def correct_bias_field(image, **params) -> np.ndarray:
    """``image / estimate_bias_field(image, **params)``: the bias-corrected image.

    Returns
    -------
    ndarray, float32, same shape
    """
    array = _grey(image)
    return (array / estimate_bias_field(array, **params)).astype(np.float32)


# ----------------------------------------------------------------------------- colour


def _srgb_to_linear(c: np.ndarray) -> np.ndarray:
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(c: np.ndarray) -> np.ndarray:
    c = np.clip(c, 0, None)
    return np.where(c <= 0.0031308, 12.92 * c, 1.055 * c ** (1 / 2.4) - 0.055)


_RGB_TO_XYZ = np.array(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
)
_WHITE = np.array([0.95047, 1.0, 1.08883])


def rgb_to_lab(rgb) -> np.ndarray:
    """sRGB uint8 (or float in [0, 1]) ``(..., 3)`` -> CIE L*a*b* (D65), float64."""
    rgb = np.asarray(rgb)
    c = rgb / 255.0 if rgb.dtype == np.uint8 else np.asarray(rgb, dtype=np.float64)
    xyz = _srgb_to_linear(c) @ _RGB_TO_XYZ.T / _WHITE
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def lab_to_rgb(lab) -> np.ndarray:
    """CIE L*a*b* (D65) ``(..., 3)`` -> sRGB float in [0, 1] (out-of-gamut values clipped)."""
    lab = np.asarray(lab, dtype=np.float64)
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], axis=-1)
    xyz = np.where(f > 6 / 29, f**3, 3 * (6 / 29) ** 2 * (f - 4 / 29)) * _WHITE
    return np.clip(_linear_to_srgb(xyz @ np.linalg.inv(_RGB_TO_XYZ).T), 0, 1)


def _to_uint8(rgb01: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(rgb01 * 255), 0, 255).astype(np.uint8)


def lab_statistics(rgb, *, mask=None) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel L*a*b* means and standard deviations, shape (3,) each (inside ``mask``)."""
    lab = rgb_to_lab(_rgb(rgb))
    values = lab[mask] if mask is not None else lab.reshape(-1, 3)
    return values.mean(axis=0), values.std(axis=0)


def reinhard(rgb, *, reference=None, target_means=None, target_stds=None, mask=None) -> np.ndarray:
    """Reinhard colour transfer in L*a*b*: match each channel's mean and std to a target.

    Parameters
    ----------
    rgb : ndarray, uint8, shape (Y, X, 3)
    reference : ndarray, uint8, shape (Y', X', 3), optional
        Slide whose statistics are the target (inside its own tissue mask).
    target_means, target_stds : sequence of 3 float, optional
        Explicit target instead of ``reference``.
    mask : array of bool, shape (Y, X), optional
        Pixels whose statistics are measured (default: all); all pixels are transformed.

    Returns
    -------
    ndarray, uint8, shape (Y, X, 3)
    """
    image = _rgb(rgb)
    if reference is not None:
        target_means, target_stds = lab_statistics(reference, mask=tissue_mask(reference))
    if target_means is None or target_stds is None:
        raise ValueError("reinhard needs a reference slide or target_means and target_stds")
    target_means = np.asarray(target_means, float)
    target_stds = np.asarray(target_stds, float)
    if mask is not None:
        mask = _mask(mask, image.shape[:2])
    lab = rgb_to_lab(image)
    means, stds = lab_statistics(image, mask=mask)
    if np.any(stds == 0):
        raise ValueError("the slide has a constant colour channel; Reinhard normalisation is undefined")
    out = (lab - means) / stds * target_stds + target_means
    return _to_uint8(lab_to_rgb(out))


def optical_density(rgb, *, io: float = 240.0) -> np.ndarray:
    """Beer-Lambert optical density ``-log((I + 1) / io)`` of an RGB uint8 slide, shape (..., 3)."""
    return -np.log((np.asarray(rgb, dtype=np.float64) + 1.0) / io)


def macenko_stains(rgb, *, io: float = 240.0, alpha: float = 1.0, beta: float = 0.15) -> np.ndarray:
    """Estimate the H&E stain vectors of a slide (Macenko et al. 2009).

    Optical densities above ``beta`` are projected onto the plane of their two main
    principal directions; the robust extreme angles (``alpha`` and ``100 - alpha``
    percentiles) give the two stain vectors.

    Parameters
    ----------
    rgb : ndarray, uint8, shape (Y, X, 3)
    io : float
        Background (unstained) transmitted intensity.
    alpha : float
        Percentile (in %) for the robust extreme angles.
    beta : float
        Optical-density threshold that drops the transparent background.

    Returns
    -------
    ndarray, shape (2, 3)
        Unit optical-density vectors, haematoxylin first, eosin second.
    """
    od = optical_density(_rgb(rgb), io=io).reshape(-1, 3)
    od = od[np.all(od > beta, axis=1)]
    if od.shape[0] < 100:
        raise ValueError(f"only {od.shape[0]} stained pixels (optical density > {beta}); is this an H&E slide?")
    _, vectors = np.linalg.eigh(np.cov(od.T))
    plane = vectors[:, [2, 1]]  # two largest eigenvalues
    plane *= np.where(plane.sum(axis=0) < 0, -1.0, 1.0)
    projected = od @ plane
    angles = np.arctan2(projected[:, 1], projected[:, 0])
    lo, hi = np.percentile(angles, [alpha, 100 - alpha])
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    stains = np.array([v1, v2] if v1[0] > v2[0] else [v2, v1])
    stains *= np.where(stains.sum(axis=1, keepdims=True) < 0, -1.0, 1.0)
    return stains / np.linalg.norm(stains, axis=1, keepdims=True)


def stain_concentrations(rgb, stains: np.ndarray, *, io: float = 240.0) -> np.ndarray:
    """Least-squares stain concentrations, shape (Y, X, 2), for stain vectors of shape (2, 3)."""
    image = _rgb(rgb)
    od = optical_density(image, io=io).reshape(-1, 3)
    concentrations, *_ = np.linalg.lstsq(np.asarray(stains, float).T, od.T, rcond=None)
    return concentrations.T.reshape(image.shape[:2] + (2,))


def macenko(
    rgb,
    *,
    reference=None,
    target_stains=None,
    target_max_concentrations=None,
    io: float = 240.0,
    alpha: float = 1.0,
    beta: float = 0.15,
) -> np.ndarray:
    """Macenko stain normalisation: re-express the slide with target stain vectors and strengths.

    Parameters
    ----------
    rgb : ndarray, uint8, shape (Y, X, 3)
    reference : ndarray, uint8, shape (Y', X', 3), optional
        Slide that defines the target stains and concentrations.
    target_stains : ndarray, shape (2, 3), optional
        Explicit target (default :data:`REFERENCE_STAINS`).
    target_max_concentrations : sequence of 2 float, optional
        99th-percentile concentrations of the target (default :data:`REFERENCE_MAX_CONCENTRATIONS`).
    io, alpha, beta : float
        See :func:`macenko_stains`.

    Returns
    -------
    ndarray, uint8, shape (Y, X, 3)
    """
    image = _rgb(rgb)
    if reference is not None:
        target_stains = macenko_stains(reference, io=io, alpha=alpha, beta=beta)
        target_max_concentrations = np.percentile(
            stain_concentrations(reference, target_stains, io=io).reshape(-1, 2), 99, axis=0
        )
    target_stains = REFERENCE_STAINS if target_stains is None else np.asarray(target_stains, float)
    target_max = (
        REFERENCE_MAX_CONCENTRATIONS if target_max_concentrations is None else np.asarray(target_max_concentrations, float)
    )
    stains = macenko_stains(image, io=io, alpha=alpha, beta=beta)
    concentrations = stain_concentrations(image, stains, io=io)
    source_max = np.percentile(concentrations.reshape(-1, 2), 99, axis=0)
    concentrations = concentrations * (target_max / np.maximum(source_max, 1e-6))
    out = io * np.exp(-concentrations @ target_stains)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def tissue_mask(
    rgb,
    *,
    closing_radius: int = 2,
    min_fraction: float = 0.001,
    fill_holes: bool = True,
) -> np.ndarray:
    """Tissue vs. background of a slide (use a coarse pyramid level).

    Otsu's threshold on the HSV saturation, combined with an optical-density floor (so
    grey/black debris and the bright glass are background), then closing, hole filling and
    removal of components smaller than ``min_fraction`` of the image.

    Parameters
    ----------
    rgb : ndarray, uint8, shape (Y, X, 3)
    closing_radius : int
        Radius (pixels) of the closing that bridges small gaps.
    min_fraction : float
        Smallest kept component, as a fraction of the image area.
    fill_holes : bool

    Returns
    -------
    ndarray, bool, shape (Y, X)
    """
    image = _rgb(rgb).astype(np.float64)
    high, low = image.max(axis=-1), image.min(axis=-1)
    saturation = np.where(high > 0, (high - low) / np.maximum(high, 1e-6), 0.0)
    if saturation.max() <= saturation.min():
        raise ValueError("the slide has no colour contrast; cannot separate tissue from background")
    od = optical_density(image.astype(np.uint8), io=255.0).sum(axis=-1)
    mask = (saturation > threshold_otsu(saturation, nbins=256)) & (od > 0.1)
    if closing_radius > 0:
        r = closing_radius
        disk = np.add.outer(np.arange(-r, r + 1) ** 2, np.arange(-r, r + 1) ** 2) <= r * r
        mask = ndi.binary_closing(np.pad(mask, r), structure=disk)[r:-r, r:-r]
    if fill_holes:
        mask = ndi.binary_fill_holes(mask)
    labels, n = ndi.label(mask)
    if n:
        sizes = np.bincount(labels.ravel())
        keep = sizes >= min_fraction * mask.size
        keep[0] = False
        mask = keep[labels]
    return mask


def normalize(image, method: str, *, reference=None, **params) -> np.ndarray:
    """Apply one normalisation by name (see :data:`METHODS`).

    Parameters
    ----------
    image : ndarray
        Grey ``(Y, X)``/``(Z, Y, X)`` for percentile, zscore, histogram, poly-bias; RGB uint8
        ``(Y, X, 3)`` for macenko, reinhard.
    method : str
    reference : ndarray, optional
        Required by "histogram"; optional target slide for "macenko" and "reinhard".
    **params
        The method's keyword arguments.

    Returns
    -------
    ndarray
        float32 for grey methods, uint8 RGB for stain methods.
    """
    if method == "percentile":
        return percentile(image, **params)
    if method == "zscore":
        return zscore(image, **params)
    if method == "histogram":
        if reference is None:
            raise ValueError("histogram matching needs a reference image")
        return match_histogram(image, reference)
    if method == "poly-bias":
        return correct_bias_field(image, **params)
    if method == "macenko":
        return macenko(image, reference=reference, **params)
    if method == "reinhard":
        if reference is None and "target_means" not in params:
            raise ValueError("reinhard needs a reference slide (or target_means and target_stds)")
        return reinhard(image, reference=reference, **params)
    raise ValueError(f"unknown normalisation {method!r}; choose one of {list(METHODS)}")
