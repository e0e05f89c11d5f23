"""Least-squares transforms from corresponding landmark pairs."""

from __future__ import annotations

import numpy as np

from .linear import LINEAR_MODELS, check_model


def _minimum_pairs(model: str, ndim: int) -> int:
    if model == "affine":
        return ndim + 1
    return 2 if ndim == 2 else 3


def fit_landmarks(fixed_points, moving_points, *, model: str = "rigid") -> tuple[np.ndarray, np.ndarray]:
    """Fit the transform that maps fixed landmarks onto moving landmarks.

    Rigid and similarity use the SVD (Procrustes) solution without reflections;
    affine uses linear least squares.

    Parameters
    ----------
    fixed_points, moving_points : array, shape (K, n)
        Corresponding world points in napari order (z, y, x) / (y, x), same order.
    model : {"rigid", "similarity", "affine"}

    Returns
    -------
    transform : ndarray, shape (n + 1, n + 1)
        Maps fixed-world points to moving-world points.
    residuals : ndarray, shape (K,)
        Distance between each mapped fixed point and its moving point, world units.

    Raises
    ------
    ValueError
        Mismatched shapes, NaNs, too few pairs (rigid/similarity: 2 in 2D, 3 in 3D;
        affine: n + 1), or degenerate (coincident/collinear/coplanar) configurations.
    """
    check_model(model, LINEAR_MODELS)
    fixed = np.asarray(fixed_points, np.float64)
    moving = np.asarray(moving_points, np.float64)
    if fixed.ndim != 2 or fixed.shape != moving.shape:
        raise ValueError(f"need two (K, n) point arrays of the same shape, got {fixed.shape} and {moving.shape}")
    count, n = fixed.shape
    if n not in (2, 3):
        raise ValueError(f"landmarks must be 2D or 3D points, got {n} coordinates")
    if not (np.all(np.isfinite(fixed)) and np.all(np.isfinite(moving))):
        raise ValueError("landmarks contain NaN or Inf")
    needed = _minimum_pairs(model, n)
    if count < needed:
        raise ValueError(f"a {n}D {model} fit needs at least {needed} landmark pairs, got {count}")
    fixed_mean = fixed.mean(axis=0)
    moving_mean = moving.mean(axis=0)
    fc = fixed - fixed_mean
    mc = moving - moving_mean
    extent = max(float(np.abs(fc).max()), float(np.abs(mc).max()), 1e-300)
    singular = np.linalg.svd(fc / extent, compute_uv=False)
    rank = int(np.sum(singular > 1e-9 * max(1.0, np.sqrt(count))))
    needed_rank = n if model == "affine" else n - 1
    if rank < needed_rank:
        shape = {0: "coincident", 1: "collinear", 2: "coplanar"}[rank]
        raise ValueError(f"the fixed landmarks are {shape}: a {n}D {model} fit needs points spanning {needed_rank} dimensions")

    transform = np.eye(n + 1)
    if model == "affine":
        design = np.hstack([fixed, np.ones((count, 1))])
        solution, *_ = np.linalg.lstsq(design, moving, rcond=None)
        transform[:n, :] = solution.T
    else:
        u, s, vt = np.linalg.svd(mc.T @ fc)
        d = np.ones(n)
        d[-1] = np.sign(np.linalg.det(u @ vt)) or 1.0
        rotation = u @ np.diag(d) @ vt
        scale = 1.0
        if model == "similarity":
            scale = float((s * d).sum() / (fc**2).sum())
        transform[:n, :n] = scale * rotation
        transform[:n, n] = moving_mean - scale * rotation @ fixed_mean
    mapped = fixed @ transform[:n, :n].T + transform[:n, n]
    return transform, np.linalg.norm(mapped - moving, axis=1)
