"""Image-quality metrics.

Fusion metrics (the ``fusion_*`` functions and :func:`fusion_metrics`) follow the
conventions of the image-fusion literature: grey images on a 0-255 scale, 256-bin
histograms for entropy and mutual information, Sobel gradients for Q^AB/F
(Xydeas & Petrovic 2000), scikit-image's 7x7 window SSIM
and pixel-domain VIF (Sheikh & Bovik 2006) summed over the sources.

Every metric takes 2D images (H, W) or volumes (Z, Y, X). On volumes EN, SD, MI and SCD
use every voxel, SF sums the neighbour differences along all three axes, SSIM uses a
7x7x7 window (as scikit-image does in 3D), and the two metrics defined on planes, Q^AB/F
and VIF, are computed on every plane along the first axis and pooled: their numerators
and denominators are summed over the planes, so a volume scores as one large image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from .kernels import sobel_xy

# Xydeas-Petrovic constants (edge strength g, orientation alpha), L = 1.
QABF_CONSTANTS = {
    "gamma_g": 0.9994,
    "kappa_g": -15.0,
    "sigma_g": 0.5,
    "gamma_a": 0.9879,
    "kappa_a": -22.0,
    "sigma_a": 0.8,
}


def _grey(image, name: str = "image") -> np.ndarray:
    """``image`` as float64, checked to be a 2D grey image or a 3D grey volume."""
    array = np.ascontiguousarray(image, dtype=np.float64)
    if array.ndim not in (2, 3):
        raise ValueError(f"{name} must be a 2D grey image or a 3D volume, got shape {array.shape}")
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        raise ValueError(
            f"{name} of shape {array.shape} looks like a colour image (RGB/RGBA channels last): give its luminance"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} holds NaN/Inf values")
    return array


def _same_shape(fused: np.ndarray, sources: Sequence[np.ndarray]) -> list[np.ndarray]:
    if len(sources) < 1:
        raise ValueError("give at least one source image")
    out = [_grey(s, f"source {i}") for i, s in enumerate(sources)]
    for i, s in enumerate(out):
        if s.shape != fused.shape:
            raise ValueError(f"source {i} has shape {s.shape} but the fused image {fused.shape}")
    return out


def _histogram(image: np.ndarray, bins: int, data_range: float) -> np.ndarray:
    """Bin index of every pixel: ``bins`` equal bins over [0, data_range] (values outside clipped)."""
    return np.clip(np.floor(image / data_range * bins), 0, bins - 1).astype(np.int64)


def fusion_entropy(fused, *, bins: int = 256, data_range: float = 255.0) -> float:
    """Shannon entropy EN (bits) of the fused image's ``bins``-bin histogram over [0, data_range].

    Parameters
    ----------
    fused : ndarray, shape (H, W) or (Z, Y, X)
    """
    index = _histogram(_grey(fused, "fused"), bins, data_range)
    p = np.bincount(index.ravel(), minlength=bins) / index.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def fusion_sd(fused) -> float:
    """Standard deviation SD of the fused image, shape (H, W) or (Z, Y, X) (population, ddof 0)."""
    return float(np.std(_grey(fused, "fused")))


def fusion_sf(fused) -> float:
    """Spatial frequency SF = sqrt(RF^2 + CF^2) of neighbour differences along rows and columns.

    For a volume the mean squared neighbour difference along each of the three axes is summed
    under the root.
    """
    image = _grey(fused, "fused")
    return float(np.sqrt(sum(np.mean(np.diff(image, axis=axis) ** 2) for axis in range(image.ndim))))


def mutual_information(a, b, *, bins: int = 256, data_range: float = 255.0, base: float = 2.0) -> float:
    """Mutual information of two images from their joint ``bins``x``bins`` histogram.

    Parameters
    ----------
    a, b : ndarray, shape (H, W) or (Z, Y, X)
    base : float
        Logarithm base: 2 gives bits, ``math.e`` nats (scikit-learn's ``mutual_info_score``).
    """
    a, b = _grey(a, "a"), _grey(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} and {b.shape}")
    ia, ib = _histogram(a, bins, data_range).ravel(), _histogram(b, bins, data_range).ravel()
    joint = np.bincount(ia * bins + ib, minlength=bins * bins).reshape(bins, bins) / ia.size
    pa, pb = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nonzero = joint > 0
    return float((joint[nonzero] * np.log(joint[nonzero] / (pa @ pb)[nonzero])).sum() / math.log(base))


def fusion_mi(fused, sources, *, bins: int = 256, data_range: float = 255.0, base: float = 2.0) -> float:
    """MI: mutual information between the fused image and each source, summed."""
    fused = _grey(fused, "fused")
    sources = _same_shape(fused, sources)
    return float(sum(mutual_information(fused, s, bins=bins, data_range=data_range, base=base) for s in sources))


def _sobel(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sobel responses (x, y) of every plane along the first axis of (P, H, W), zero padding."""
    sx, sy = sobel_xy(torch.from_numpy(image)[:, None])
    return sx[:, 0].numpy(), sy[:, 0].numpy()


def _planes(image: np.ndarray) -> np.ndarray:
    """A 2D image as one plane (1, H, W); a volume as its planes along the first axis."""
    return image[None] if image.ndim == 2 else image


def _edge_strength_orientation(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sx, sy = _sobel(_planes(image))
    strength = np.hypot(sx, sy)
    with np.errstate(divide="ignore", invalid="ignore"):
        orientation = np.where(sx == 0, np.pi / 2, np.arctan(sy / np.where(sx == 0, 1, sx)))
    return strength, orientation


def _edge_preservation(g_s, a_s, g_f, a_f) -> np.ndarray:
    c = QABF_CONSTANTS
    high, low = np.maximum(g_s, g_f), np.minimum(g_s, g_f)
    relative_strength = np.divide(low, high, out=np.zeros_like(low), where=high > 0)
    relative_orientation = 1 - np.abs(a_s - a_f) / (np.pi / 2)
    q_g = c["gamma_g"] / (1 + np.exp(c["kappa_g"] * (relative_strength - c["sigma_g"])))
    q_a = c["gamma_a"] / (1 + np.exp(c["kappa_a"] * (relative_orientation - c["sigma_a"])))
    return q_g * q_a


def fusion_qabf(fused, sources) -> float:
    """Q^AB/F (Xydeas-Petrovic): edge information carried from the sources to the fused image.

    Sobel edge strength g and orientation alpha = arctan(s_y / s_x); the per-pixel edge
    preservation Q^SF = Q_g Q_alpha (sigmoids with :data:`QABF_CONSTANTS`) is averaged
    with the source edge strengths as weights (L = 1). Its maximum, for a fused image
    identical to every source, is Q_g(1) Q_alpha(1) = 0.9748 with these constants.
    Volumes: the edges of every plane along the first axis, pooled over the planes.

    Parameters
    ----------
    fused : ndarray, shape (H, W) or (Z, Y, X)
    sources : sequence of ndarray, each shape (H, W) or (Z, Y, X)
    """
    fused = _grey(fused, "fused")
    g_f, a_f = _edge_strength_orientation(fused)
    numerator = denominator = 0.0
    for source in _same_shape(fused, sources):
        g_s, a_s = _edge_strength_orientation(source)
        numerator += float((_edge_preservation(g_s, a_s, g_f, a_f) * g_s).sum())
        denominator += float(g_s.sum())
    if denominator == 0:
        raise ValueError("the sources have no edges (all flat): Q^AB/F is undefined")
    return numerator / denominator


def _separable_filter(x: np.ndarray, kernel: np.ndarray, axes: Sequence[int] | None = None) -> np.ndarray:
    """Correlate ``x`` with the odd 1D ``kernel`` along ``axes`` (default: all; mirror padding)."""
    for axis in range(x.ndim) if axes is None else axes:
        x = ndimage.correlate1d(x, kernel, axis=axis, mode="reflect")
    return x


def ssim(a, b, *, data_range: float = 255.0, win_size: int = 7, gaussian: bool = False) -> float:
    """Mean structural similarity: ``skimage.metrics.structural_similarity`` of two grey images.

    scikit-image computes it (sample covariance, K1 = 0.01, K2 = 0.03, the border of half
    a window left out of the mean); this function adds the input checks of the other
    metrics and a clear error for an image smaller than the window.

    Parameters
    ----------
    a, b : ndarray, shape (H, W) or (Z, Y, X)
    data_range : float
    win_size : int
        Side of the uniform window (ignored with ``gaussian``); a cube for volumes.
    gaussian : bool
        Gaussian window (sigma 1.5, truncate 3.5, 11 pixels a side) instead of the uniform one.

    Raises
    ------
    ValueError
        Shapes differ, ``win_size`` is even or below 3, or an image is smaller than the window.
    """
    from skimage.metrics import structural_similarity

    a, b = _grey(a, "a"), _grey(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} and {b.shape}")
    if not gaussian and (win_size % 2 == 0 or win_size < 3):
        raise ValueError(f"win_size must be odd and >= 3, got {win_size}")
    side = 2 * int(3.5 * 1.5 + 0.5) + 1 if gaussian else win_size
    if min(a.shape) < side:
        raise ValueError(f"images of shape {a.shape} are smaller than the SSIM window ({side} pixels a side)")
    return float(
        structural_similarity(a, b, data_range=data_range, win_size=None if gaussian else win_size, gaussian_weights=gaussian)
    )


def fusion_ssim(fused, sources, *, data_range: float = 255.0, gaussian: bool = False) -> float:
    """SSIM between the fused image and each source, summed."""
    fused = _grey(fused, "fused")
    return float(sum(ssim(fused, s, data_range=data_range, gaussian=gaussian) for s in _same_shape(fused, sources)))


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum()) / denominator if denominator > 0 else 0.0


def fusion_scd(fused, sources) -> float:
    """SCD (Aslantas & Bendes): sum over sources of corr(F - sum of the other sources, source)."""
    fused = _grey(fused, "fused")
    sources = _same_shape(fused, sources)
    if len(sources) < 2:
        raise ValueError("SCD needs at least two sources")
    total = sum(sources)
    return float(sum(_correlation(fused - (total - s), s) for s in sources))


def _gaussian_kernel(size: int) -> np.ndarray:
    """1D factor of VIF's size x size Gaussian window (sigma = size / 5), normalised."""
    sigma = size / 5.0
    t = np.arange(size) - (size - 1) / 2
    kernel = np.exp(-(t * t) / (2 * sigma * sigma))
    return kernel / kernel.sum()


def _valid_filter(planes: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Filter each plane of (P, H, W) with the separable window; keep the 'valid' part."""
    cut = kernel.size // 2
    filtered = _separable_filter(planes, kernel, axes=(1, 2))
    return filtered[:, cut : filtered.shape[1] - cut, cut : filtered.shape[2] - cut]


def _vif_terms(ref: np.ndarray, dist: np.ndarray, sigma_nsq: float) -> tuple[float, float]:
    """Numerator and denominator of VIFP for planes (P, H, W), summed over planes and four scales."""
    eps = 1e-10
    numerator = denominator = 0.0
    for scale in range(1, 5):
        size = 2 ** (4 - scale + 1) + 1
        window = _gaussian_kernel(size)
        if scale > 1:
            ref = _valid_filter(ref, window)[:, ::2, ::2]
            dist = _valid_filter(dist, window)[:, ::2, ::2]
        if min(ref.shape[1:]) < size:
            raise ValueError(f"images are too small for VIF (need at least about {8 * 17} pixels a side)")
        mu1, mu2 = _valid_filter(ref, window), _valid_filter(dist, window)
        sigma1_sq = np.maximum(_valid_filter(ref * ref, window) - mu1 * mu1, 0)
        sigma2_sq = np.maximum(_valid_filter(dist * dist, window) - mu2 * mu2, 0)
        sigma12 = _valid_filter(ref * dist, window) - mu1 * mu2
        g = sigma12 / (sigma1_sq + eps)
        sv_sq = sigma2_sq - g * sigma12
        flat_ref = sigma1_sq < eps
        g[flat_ref] = 0
        sv_sq[flat_ref] = sigma2_sq[flat_ref]
        sigma1_sq[flat_ref] = 0
        flat_dist = sigma2_sq < eps
        g[flat_dist] = 0
        sv_sq[flat_dist] = 0
        negative = g < 0
        sv_sq[negative] = sigma2_sq[negative]
        g = np.maximum(g, 0)
        sv_sq = np.maximum(sv_sq, eps)
        numerator += float(np.log10(1 + g * g * sigma1_sq / (sv_sq + sigma_nsq)).sum())
        denominator += float(np.log10(1 + sigma1_sq / sigma_nsq).sum())
    return numerator, denominator


def vif_pixel(reference, distorted, *, sigma_nsq: float = 2.0) -> float:
    """Pixel-domain visual information fidelity VIFP (Sheikh & Bovik 2006), four scales.

    Gaussian windows of 17, 9, 5, 3 pixels (sigma = size / 5); each coarser scale
    filters and subsamples by 2. Equals 1 for identical images. Volumes: every plane along
    the first axis, numerators and denominators summed over the planes.

    Parameters
    ----------
    reference, distorted : ndarray, shape (H, W) or (Z, Y, X)
    """
    ref, dist = _grey(reference, "reference"), _grey(distorted, "distorted")
    if ref.shape != dist.shape:
        raise ValueError(f"images differ in shape: {ref.shape} and {dist.shape}")
    numerator, denominator = _vif_terms(_planes(ref), _planes(dist), sigma_nsq)
    if denominator == 0:
        raise ValueError("the reference image is flat: VIF is undefined")
    return numerator / denominator


def fusion_vif(fused, sources) -> float:
    """VIF of the fused image against each source (pixel-domain VIFP), summed."""
    fused = _grey(fused, "fused")
    return float(sum(vif_pixel(s, fused) for s in _same_shape(fused, sources)))


def fusion_metrics(
    fused,
    sources,
    *,
    data_range: float = 255.0,
    mi_base: float = 2.0,
    vif: bool = True,
) -> dict[str, float]:
    """Every fusion metric of a grey fused image or volume against its sources.

    Parameters
    ----------
    fused : ndarray, shape (H, W) or (Z, Y, X)
        On the same 0..``data_range`` scale as the sources (the literature uses 0-255).
    sources : sequence of ndarray, each shape (H, W) or (Z, Y, X)
    mi_base : float
        Logarithm base of MI (2: bits; ``math.e``: nats, as scikit-learn).
    vif : bool
        Also compute VIF (needs images, or planes of a volume, of about 136 pixels a side or more).

    Returns
    -------
    dict
        EN, SD, SF, MI, Qabf, SSIM, SCD (and VIF).
    """
    fused = _grey(fused, "fused")
    sources = _same_shape(fused, sources)
    metrics = {
        "EN": fusion_entropy(fused, data_range=data_range),
        "SD": fusion_sd(fused),
        "SF": fusion_sf(fused),
        "MI": fusion_mi(fused, sources, data_range=data_range, base=mi_base),
        "Qabf": fusion_qabf(fused, sources),
        "SSIM": fusion_ssim(fused, sources, data_range=data_range),
        "SCD": fusion_scd(fused, sources),
    }
    if vif:
        metrics["VIF"] = fusion_vif(fused, sources)
    return metrics
