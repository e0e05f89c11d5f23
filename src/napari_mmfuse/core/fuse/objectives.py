"""Differentiable fusion metrics: Q^AB/F, SCD, SSIM and VIF as torch functions, for training.

Each function takes a fused batch ``fused`` (B, 1, H, W) and the sources ``sources``
(B, N, H, W) on the 0-255 scale of the fusion literature and returns one value per batch
item, shape (B,), with gradients with respect to ``fused``. They compute what the
evaluators in :mod:`napari_mmfuse.core.quality` compute (the same windows, constants and
border handling; Q^AB/F's Sobel edges are :func:`napari_mmfuse.core.kernels.sobel_xy` in both),
except that nothing is rounded and edge strengths carry a tiny epsilon under the square root
(differentiable where flat). ``tests/test_fusion_network.py`` checks each against its evaluator.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..kernels import sobel_xy
from ..quality import QABF_CONSTANTS

_EPS = 1e-6


def _strength_orientation(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    sx, sy = sobel_xy(image)
    strength = torch.sqrt(sx * sx + sy * sy + _EPS)
    flat_x = sx.abs() < _EPS
    orientation = torch.atan(sy / torch.where(flat_x, torch.ones_like(sx), sx))
    return strength, torch.where(flat_x, torch.full_like(sx, math.pi / 2), orientation)


def qabf(fused: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
    """Q^AB/F (Xydeas-Petrovic) per batch item, as :func:`napari_mmfuse.core.quality.fusion_qabf`."""
    c = QABF_CONSTANTS
    g_f, a_f = _strength_orientation(fused)
    with torch.no_grad():
        g_s, a_s = _strength_orientation(sources)
        g_s = torch.sqrt((g_s * g_s - _EPS).clamp(min=0))
    relative_strength = torch.minimum(g_s, g_f) / torch.maximum(g_s, g_f)
    relative_orientation = 1 - (a_s - a_f).abs() / (math.pi / 2)
    q_g = c["gamma_g"] / (1 + torch.exp(c["kappa_g"] * (relative_strength - c["sigma_g"])))
    q_a = c["gamma_a"] / (1 + torch.exp(c["kappa_a"] * (relative_orientation - c["sigma_a"])))
    return (q_g * q_a * g_s).sum(dim=(1, 2, 3)) / g_s.sum(dim=(1, 2, 3)).clamp(min=_EPS)


def scd(fused: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
    """SCD (sum over sources of corr(F - the other sources, source)) per batch item."""
    total = sources.sum(1, keepdim=True)
    difference = fused - (total - sources)  # (B, N, H, W)
    d = difference - difference.mean(dim=(2, 3), keepdim=True)
    s = sources - sources.mean(dim=(2, 3), keepdim=True)
    correlation = (d * s).sum(dim=(2, 3)) / torch.sqrt((d * d).sum(dim=(2, 3)) * (s * s).sum(dim=(2, 3)) + _EPS)
    return correlation.sum(1)


def ssim(fused: torch.Tensor, sources: torch.Tensor, data_range: float = 255.0) -> torch.Tensor:
    """SSIM of the fused image with each source, summed, per batch item (scikit-image's 7x7 uniform window,
    sample covariance, the border of 3 pixels left out), as :func:`napari_mmfuse.core.quality.fusion_ssim`."""
    window = 7
    cov_norm = window * window / (window * window - 1)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    x = fused.expand_as(sources)
    y = sources

    def mean(t):
        return F.avg_pool2d(t, window, stride=1)

    mx, my = mean(x), mean(y)
    vx = cov_norm * (mean(x * x) - mx * mx)
    vy = cov_norm * (mean(y * y) - my * my)
    vxy = cov_norm * (mean(x * y) - mx * my)
    s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean(dim=(2, 3)).sum(1)


def _vif_window(size: int, dtype, device) -> torch.Tensor:
    sigma = size / 5.0
    t = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    kernel = torch.exp(-(t * t) / (2 * sigma * sigma))
    kernel = kernel / kernel.sum()
    return torch.outer(kernel, kernel)[None, None]


def _valid(planes: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    channels = planes.shape[1]
    return F.conv2d(planes, window.expand(channels, 1, *window.shape[2:]), groups=channels)


def vif(fused: torch.Tensor, sources: torch.Tensor, sigma_nsq: float = 2.0) -> torch.Tensor:
    """Pixel-domain VIF of the fused image against each source, summed, per batch item (four scales),
    as :func:`napari_mmfuse.core.quality.fusion_vif`."""
    eps = 1e-10
    ref = sources
    dist = fused.expand_as(sources)
    numerator = torch.zeros(sources.shape[:2], dtype=fused.dtype, device=fused.device)
    denominator = torch.zeros_like(numerator)
    for scale in range(1, 5):
        size = 2 ** (4 - scale + 1) + 1
        window = _vif_window(size, fused.dtype, fused.device)
        if scale > 1:
            ref = _valid(ref, window)[:, :, ::2, ::2]
            dist = _valid(dist, window)[:, :, ::2, ::2]
        mu1, mu2 = _valid(ref, window), _valid(dist, window)
        sigma1_sq = (_valid(ref * ref, window) - mu1 * mu1).clamp(min=0)
        sigma2_sq = (_valid(dist * dist, window) - mu2 * mu2).clamp(min=0)
        sigma12 = _valid(ref * dist, window) - mu1 * mu2
        g = sigma12 / (sigma1_sq + eps)
        sv_sq = sigma2_sq - g * sigma12
        flat_ref = sigma1_sq < eps
        g = torch.where(flat_ref, torch.zeros_like(g), g)
        sv_sq = torch.where(flat_ref, sigma2_sq, sv_sq)
        sigma1_sq = torch.where(flat_ref, torch.zeros_like(sigma1_sq), sigma1_sq)
        flat_dist = sigma2_sq < eps
        g = torch.where(flat_dist, torch.zeros_like(g), g)
        sv_sq = torch.where(flat_dist, torch.zeros_like(sv_sq), sv_sq)
        negative = g < 0
        sv_sq = torch.where(negative, sigma2_sq, sv_sq)
        g = g.clamp(min=0)
        sv_sq = sv_sq.clamp(min=eps)
        numerator = numerator + torch.log10(1 + g * g * sigma1_sq / (sv_sq + sigma_nsq)).sum(dim=(2, 3))
        denominator = denominator + torch.log10(1 + sigma1_sq / sigma_nsq).sum(dim=(2, 3))
    return (numerator / denominator.clamp(min=eps)).sum(1)


#: The four metrics of the fusion target, by the names the benchmark prints.
OBJECTIVES = {"Qabf": qabf, "SCD": scd, "SSIM": ssim, "VIF": vif}
