"""Differentiable similarity metrics for (multimodal) registration, on torch tensors.

Every metric compares fixed intensities with moving intensities sampled at the same
points, with a weight per point (0 where the moving image is missing or masked out).

* ``"mi"``: Mattes-style mutual information with cubic B-spline Parzen windows.
* ``"nmi"``: normalised mutual information ``(H(F) + H(M)) / H(F, M)`` (1 .. 2).
* ``"lncc"``: local normalised cross-correlation, squared (so inverted contrast counts as
  aligned), averaged over a box window; needs points on a dense grid.
* ``"mse"``: mean squared difference of intensities each rescaled to [0, 1] by its
  0.5 - 99.5 percentile range (same-modality pairs only).

MI, NMI and LNCC are higher when better aligned; MSE is lower.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

METRICS = ("mi", "nmi", "lncc", "mse")
#: Histogram bins of MI / NMI.
BINS = 32
#: Percentiles that define the intensity range mapped onto the bins.
PERCENTILES = (0.5, 99.5)
_EPS = 1e-10


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, not {metric!r}")
    return metric


def higher_is_better(metric: str) -> bool:
    """True for MI, NMI and LNCC; False for MSE."""
    return check_metric(metric) != "mse"


def intensity_range(image: np.ndarray | torch.Tensor, mask=None) -> tuple[float, float]:
    """Robust (0.5, 99.5 percentile) intensity range, widened when the image is nearly constant.

    Parameters
    ----------
    image : array, shape (*spatial)
    mask : array of bool, shape (*spatial), optional

    Returns
    -------
    low, high : float
    """
    values = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if mask is not None:
        mask = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
        values = values[mask.astype(bool)]
    values = values.reshape(-1)
    if values.size > 2**20:
        values = values[:: values.size // 2**20 + 1]
    low, high = np.percentile(values, PERCENTILES)
    if high - low <= 1e-12 * max(1.0, abs(high)):
        low, high = float(values.min()), float(values.max())
    return float(low), float(high)


def parzen_weights(values: torch.Tensor, low: float, high: float, bins: int = BINS) -> tuple[torch.Tensor, torch.Tensor]:
    """Cubic B-spline Parzen window of each value: its first bin and four weights.

    Values are mapped linearly so that ``low .. high`` spans bins 2 .. bins - 3 (the
    kernel's support stays inside the histogram) and clamped there.

    Parameters
    ----------
    values : Tensor, shape (N,)

    Returns
    -------
    first : Tensor, shape (N,), int64
        Bin of the first of the four weights.
    weights : Tensor, shape (N, 4)
        Weights of bins ``first .. first + 3`` (differentiable in ``values``); rows sum to 1.
    """
    position = 2.0 + (values - low) * ((bins - 5) / max(high - low, 1e-12))
    position = position.clamp(2.0, bins - 3.0 - 1e-4)
    floor = position.detach().floor()
    t = position - floor
    t2 = t * t
    t3 = t2 * t
    weights = torch.stack(
        [(1.0 - t) ** 3, 3.0 * t3 - 6.0 * t2 + 4.0, -3.0 * t3 + 3.0 * t2 + 3.0 * t + 1.0, t3], dim=-1
    ) / 6.0
    return floor.to(torch.int64) - 1, weights


def dense_weights(parzen: tuple[torch.Tensor, torch.Tensor], bins: int = BINS) -> torch.Tensor:
    """The (first, weights) of :func:`parzen_weights` spread over all bins, shape (N, bins)."""
    first, weights = parzen
    index = first[:, None] + torch.arange(4, device=first.device)
    return torch.zeros((first.numel(), bins), dtype=weights.dtype, device=weights.device).scatter(1, index, weights)


class Similarity:
    """A similarity metric bound to fixed intensities at a set of points.

    Parameters
    ----------
    metric : {"mi", "nmi", "lncc", "mse"}
    fixed : Tensor, shape (N,) or (*spatial)
        Fixed intensities; for "lncc" on a dense grid of shape ``(*spatial)``.
    fixed_range, moving_range : (float, float)
        Intensity ranges (see :func:`intensity_range`).
    radius : int
        Half width of the LNCC window, in grid steps.
    bins : int
        Histogram bins of MI / NMI.
    """

    def __init__(self, metric: str, fixed: torch.Tensor, *, fixed_range, moving_range, radius: int = 2, bins: int = BINS):
        self.metric = check_metric(metric)
        self.moving_range = moving_range
        self.bins = bins
        self.radius = radius
        if metric in ("mi", "nmi"):
            self.fixed_weights = dense_weights(parzen_weights(fixed.reshape(-1), *fixed_range, bins), bins)
        else:
            low, high = fixed_range
            self.fixed = (fixed - low) / max(high - low, 1e-12)

    def __call__(self, moving: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Metric value (a 0-d tensor, differentiable in ``moving``).

        Parameters
        ----------
        moving : Tensor, same shape as the fixed intensities
        weight : Tensor, same shape, float (0 = ignore the point)
        """
        if self.metric in ("mi", "nmi"):
            moving_weights = dense_weights(parzen_weights(moving.reshape(-1), *self.moving_range, self.bins), self.bins)
            joint = (self.fixed_weights * weight.reshape(-1, 1)).T @ moving_weights
            return histogram_similarity(joint, normalised=self.metric == "nmi")
        low, high = self.moving_range
        moving = (moving - low) / max(high - low, 1e-12)
        total = weight.sum().clamp(min=_EPS)
        if self.metric == "mse":
            return (weight * (self.fixed - moving) ** 2).sum() / total
        return (local_correlation(self.fixed, moving, weight, self.radius) * weight).sum() / total


def histogram_similarity(joint: torch.Tensor, *, normalised: bool = False) -> torch.Tensor:
    """Mutual information (or NMI) of a joint histogram, shape (bins, bins)."""
    p = joint / joint.sum().clamp(min=_EPS)
    pf = p.sum(dim=1)
    pm = p.sum(dim=0)
    h_joint = -(p * torch.log(p + _EPS)).sum()
    h_fixed = -(pf * torch.log(pf + _EPS)).sum()
    h_moving = -(pm * torch.log(pm + _EPS)).sum()
    if normalised:
        return (h_fixed + h_moving) / h_joint.clamp(min=_EPS)
    return h_fixed + h_moving - h_joint


def _box(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over a (2r+1)^n box, borders averaged over the part inside."""
    pool = F.avg_pool3d if x.ndim == 3 else F.avg_pool2d
    k = 2 * radius + 1
    return pool(x[None, None], k, stride=1, padding=radius, count_include_pad=False)[0, 0]


def local_correlation(fixed: torch.Tensor, moving: torch.Tensor, weight: torch.Tensor, radius: int) -> torch.Tensor:
    """Squared local normalised cross-correlation in (2r+1)^n windows.

    Parameters
    ----------
    fixed, moving, weight : Tensor, shape (*spatial), 2D or 3D
    radius : int

    Returns
    -------
    Tensor, shape (*spatial), values in [0, 1]
    """
    radius = max(1, min(int(radius), (min(fixed.shape) - 1) // 2))
    w = _box(weight, radius).clamp(min=_EPS)
    mf = _box(fixed * weight, radius) / w
    mm = _box(moving * weight, radius) / w
    vf = (_box(fixed * fixed * weight, radius) / w - mf * mf).clamp(min=0.0)
    vm = (_box(moving * moving * weight, radius) / w - mm * mm).clamp(min=0.0)
    cov = _box(fixed * moving * weight, radius) / w - mf * mm
    return cov * cov / (vf * vm + 1e-6)
