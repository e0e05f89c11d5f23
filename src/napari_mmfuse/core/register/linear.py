"""Linear transform models (rigid, similarity, affine) and their parameterisations.

A transform ``T`` is an ``(n + 1, n + 1)`` world matrix in napari axis order mapping a
fixed-world point to the moving-world point. The optimised models write it as

    T(x) = A (x - c) + c + t

about a centre ``c``, with parameters scaled to millimetres so that one optimiser step
moves points by comparable amounts: rotation angles (radians) and log-scale are
multiplied by a radius (the image's extent), translation is in world units.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial.transform import Rotation

LINEAR_MODELS = ("rigid", "similarity", "affine")


def check_model(model: str, allowed=LINEAR_MODELS) -> str:
    if model not in allowed:
        raise ValueError(f"model must be one of {', '.join(allowed)}, not {model!r}")
    return model


def parameter_count(model: str, ndim: int) -> int:
    """Number of optimised parameters of a linear model in ``ndim`` dimensions."""
    rotations = 3 if ndim == 3 else 1
    if model == "rigid":
        return rotations + ndim
    if model == "similarity":
        return rotations + ndim + 1
    return rotations + ndim * (ndim + 1) // 2 + ndim


def _rotation(angles: torch.Tensor, ndim: int) -> torch.Tensor:
    if ndim == 2:
        c, s = torch.cos(angles[0]), torch.sin(angles[0])
        return torch.stack([torch.stack([c, -s]), torch.stack([s, c])])
    zero = torch.zeros((), dtype=angles.dtype, device=angles.device)
    skew = torch.stack(
        [
            torch.stack([zero, -angles[2], angles[1]]),
            torch.stack([angles[2], zero, -angles[0]]),
            torch.stack([-angles[1], angles[0], zero]),
        ]
    )
    return torch.linalg.matrix_exp(skew)


def matrix_from_parameters(params: torch.Tensor, *, model: str, ndim: int, radius: float, center) -> torch.Tensor:
    """Homogeneous matrix of the scaled parameters (differentiable).

    Parameters
    ----------
    params : Tensor, shape (parameter_count(model, ndim),), float64
        Rigid: rotation (rotation vector in 3D, one angle in 2D) times ``radius``, then
        translation. Similarity: rigid plus ``log(scale) * radius``. Affine: ``A = R S``
        (polar form) with the rotation as for rigid, then the upper triangle of the
        symmetric ``(S - I) * radius`` row by row, then translation. The explicit rotation
        lets the affine model find large rotations as reliably as the rigid one.
    model : {"rigid", "similarity", "affine"}
    ndim : {2, 3}
    radius : float
        World length that scales the non-translation parameters.
    center : array, shape (ndim,)
        Centre of rotation/scaling, world, napari order.

    Returns
    -------
    Tensor, shape (ndim + 1, ndim + 1), float64
    """
    n = ndim
    r = 3 if n == 3 else 1
    linear = _rotation(params[:r] / radius, n)
    if model == "affine":
        count = n * (n + 1) // 2
        rows, cols = torch.triu_indices(n, n, device=params.device)
        upper = torch.zeros((n, n), dtype=params.dtype, device=params.device).index_put((rows, cols), params[r : r + count] / radius)
        stretch = torch.eye(n, dtype=params.dtype, device=params.device) + upper + torch.triu(upper, diagonal=1).T
        linear = linear @ stretch
        translation = params[r + count :]
    else:
        translation = params[r : r + n]
        if model == "similarity":
            linear = linear * torch.exp(params[r + n] / radius)
    c = torch.as_tensor(np.asarray(center, np.float64), dtype=params.dtype, device=params.device)
    top = torch.cat([linear, (c + translation - linear @ c)[:, None]], dim=1)
    bottom = torch.zeros((1, n + 1), dtype=params.dtype, device=params.device)
    bottom[0, n] = 1.0
    return torch.cat([top, bottom], dim=0)


def transform_from_parameters(*, ndim: int, translation=None, rotation_deg=None, scale=1.0, center=None) -> np.ndarray:
    """Build ``T(x) = R S (x - center) + center + translation`` (fixed -> moving world).

    Parameters
    ----------
    ndim : {2, 3}
    translation : sequence of float, length ndim, optional
        World units, napari order (z, y, x) / (y, x).
    rotation_deg : float or sequence of 3 floats, optional
        2D: one angle turning the y axis towards the x axis. 3D: angles about napari
        axes 0, 1, 2 (z, y, x), each right-handed in the (axis 0, axis 1, axis 2) frame,
        composed as ``R = R0 @ R1 @ R2`` (scipy's intrinsic "XYZ" with x -> axis 0).
        Because napari order reverses (x, y, z), a positive angle about an axis turns the
        opposite way to the physical right-hand rule about the same LPS axis.
    scale : float or sequence of float, length ndim
        Isotropic or per-axis (napari order) scale factors.
    center : sequence of float, length ndim, optional
        World centre of rotation and scaling (origin by default).

    Returns
    -------
    ndarray, shape (ndim + 1, ndim + 1)
    """
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, not {ndim}")
    translation = np.zeros(ndim) if translation is None else np.asarray(translation, np.float64).reshape(ndim)
    center = np.zeros(ndim) if center is None else np.asarray(center, np.float64).reshape(ndim)
    scale = np.broadcast_to(np.asarray(scale, np.float64), (ndim,))
    if np.any(scale <= 0):
        raise ValueError(f"scale factors must be positive, got {scale.tolist()}")
    if ndim == 2:
        angle = np.deg2rad(float(np.ravel(0.0 if rotation_deg is None else rotation_deg)[0]))
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    else:
        angles = np.zeros(3) if rotation_deg is None else np.asarray(rotation_deg, np.float64).reshape(3)
        rotation = Rotation.from_euler("XYZ", angles, degrees=True).as_matrix()
    linear = rotation @ np.diag(scale)
    transform = np.eye(ndim + 1)
    transform[:ndim, :ndim] = linear
    transform[:ndim, ndim] = center + translation - linear @ center
    return transform


def parameters_from_transform(transform: np.ndarray, *, center=None) -> dict:
    """Split ``T`` into translation, rotation and per-axis scale about ``center``.

    Inverse of :func:`transform_from_parameters` for rotation times (per-axis) scale;
    for a sheared affine the rotation is the nearest one and ``shear`` reports the
    largest residual of ``A - R S``.

    Parameters
    ----------
    transform : ndarray, shape (n + 1, n + 1)
    center : sequence of float, length n, optional

    Returns
    -------
    dict
        ``translation`` (list, world units), ``rotation_deg`` (float in 2D, list of 3 in
        3D, same convention as :func:`transform_from_parameters`), ``scale`` (list),
        ``center`` (list), ``shear`` (float).
    """
    transform = np.asarray(transform, np.float64)
    n = transform.shape[0] - 1
    center = np.zeros(n) if center is None else np.asarray(center, np.float64).reshape(n)
    linear = transform[:n, :n]
    scale = np.linalg.norm(linear, axis=0)
    u, _, vt = np.linalg.svd(linear / scale)
    rotation = u @ vt
    if np.linalg.det(rotation) < 0:
        u[:, -1] *= -1
        rotation = u @ vt
    translation = transform[:n, :n] @ center + transform[:n, n] - center
    if n == 2:
        angle = float(np.rad2deg(np.arctan2(rotation[1, 0], rotation[0, 0])))
    else:
        angle = Rotation.from_matrix(rotation).as_euler("XYZ", degrees=True).tolist()
    return {
        "translation": translation.tolist(),
        "rotation_deg": angle,
        "scale": scale.tolist(),
        "center": center.tolist(),
        "shear": float(np.abs(linear - rotation * scale).max()),
    }


def center_of_mass(image: np.ndarray, affine: np.ndarray, mask=None) -> np.ndarray:
    """World centre of intensity mass (intensities above the 1st percentile, minus it).

    Falls back to the geometric centre when the image carries no mass.

    Returns
    -------
    ndarray, shape (n,)
    """
    image = np.asarray(image, np.float32)
    weights = image - np.percentile(image, 1.0)
    weights = np.clip(weights, 0.0, None)
    if mask is not None:
        weights = weights * np.asarray(mask, bool)
    n = image.ndim
    total = float(weights.sum(dtype=np.float64))
    if total <= 0:
        index = (np.asarray(image.shape, np.float64) - 1) / 2
    else:
        index = np.array(
            [
                float((weights.sum(axis=tuple(a for a in range(n) if a != axis), dtype=np.float64) * np.arange(image.shape[axis])).sum())
                / total
                for axis in range(n)
            ]
        )
    affine = np.asarray(affine, np.float64)
    return affine[:n, :n] @ index + affine[:n, n]
