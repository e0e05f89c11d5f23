"""Differentiable similarity metrics for (multimodal) registration, on torch tensors.

Every metric compares fixed intensities with moving intensities sampled at the same
points, with a weight per point (0 where the moving image is missing or masked out).

* ``"mi"``: Mattes-style mutual information with cubic B-spline Parzen windows
  (see :class:`JointHistogram`).
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


def _bin_position(values: torch.Tensor, low: float, high: float, bins: int) -> torch.Tensor:
    """Continuous bin position: ``low .. high`` spans bins 2 .. bins - 3 (unclamped)."""
    return 2.0 + (values - low) * ((bins - 5) / max(high - low, 1e-12))


def fixed_window(values: torch.Tensor, low: float, high: float, bins: int = BINS) -> tuple[torch.Tensor, torch.Tensor]:
    """Cubic B-spline Parzen window of each fixed value: its first bin (N,) and four weights (N, 4)."""
    position = _bin_position(values, low, high, bins).clamp(2.0, bins - 3.0 - 1e-4)
    floor = position.floor()
    return floor.to(torch.int64) - 1, _cubic_bspline(position - floor)


def _cubic_bspline(t: torch.Tensor) -> torch.Tensor:
    """Weights of bins ``floor - 1 .. floor + 2`` for fractional positions ``t``, shape (N, 4)."""
    t2 = t * t
    t3 = t2 * t
    return torch.stack([(1.0 - t) ** 3, 3.0 * t3 - 6.0 * t2 + 4.0, -3.0 * t3 + 3.0 * t2 + 3.0 * t + 1.0, t3], dim=-1) / 6.0


def _cubic_bspline_derivative(t: torch.Tensor) -> torch.Tensor:
    """d/dt of :func:`_cubic_bspline`, shape (N, 4)."""
    t2 = t * t
    return torch.stack([-0.5 * (1.0 - t) ** 2, 1.5 * t2 - 2.0 * t, -1.5 * t2 + t + 0.5, 0.5 * t2], dim=-1)


class JointHistogram(torch.autograd.Function):
    """Parzen joint histogram (bins, bins) of fixed and moving values, differentiable in the moving values.

    Each value spreads over four bins with a cubic B-spline window, so a point adds
    4 x 4 weighted entries: one ``index_add`` forward, one gather backward, with the
    window's derivative written out instead of recorded by autograd (several times
    faster than the dense (N, bins) one-hot product on the CPU).
    ``JointHistogram.apply(moving, weight, fixed_first, fixed_weights, low, high, bins)``
    with the fixed window from :func:`fixed_window`; moving values outside ``low .. high``
    are clamped (no gradient there).
    """

    @staticmethod
    def forward(ctx, moving, weight, fixed_first, fixed_weights, low, high, bins):
        position = _bin_position(moving, low, high, bins)
        upper = bins - 3.0 - 1e-4
        free = (position > 2.0) & (position < upper)
        position = position.clamp(2.0, upper)
        floor = position.floor()
        t = position - floor
        taps = torch.arange(4, device=moving.device)
        rows = (fixed_first[:, None] + taps) * bins  # (N, 4) fixed bins
        index = rows[:, :, None] + (floor.to(torch.int64) - 1)[:, None, None] + taps  # (N, 4, 4)
        fixed = fixed_weights * weight[:, None]
        joint = torch.zeros(bins * bins, dtype=moving.dtype, device=moving.device)
        joint.index_add_(0, index.reshape(-1), (fixed[:, :, None] * _cubic_bspline(t)[:, None, :]).reshape(-1))
        scale = (bins - 5) / max(high - low, 1e-12)
        ctx.save_for_backward(index, t, fixed, free.to(moving.dtype) * scale)
        return joint.reshape(bins, bins)

    @staticmethod
    def backward(ctx, grad):
        index, t, fixed, factor = ctx.saved_tensors
        picked = grad.reshape(-1).index_select(0, index.reshape(-1)).reshape(index.shape)
        per_moving_bin = (picked * fixed[:, :, None]).sum(dim=1)  # (N, 4)
        grad_moving = (per_moving_bin * _cubic_bspline_derivative(t)).sum(dim=1) * factor
        return grad_moving, None, None, None, None, None, None


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
            self.fixed_window = fixed_window(fixed.reshape(-1), *fixed_range, bins)
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
            joint = JointHistogram.apply(moving.reshape(-1), weight.reshape(-1), *self.fixed_window, *self.moving_range, self.bins)
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
