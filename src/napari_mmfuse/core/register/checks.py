"""Input checks of the registration functions: images, masks, transforms."""

from __future__ import annotations

import numpy as np

from ..space import check_affine


def check_image(image, affine, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A 2D/3D scalar image as finite, non-constant float32 and its checked affine; ``ValueError`` naming ``name``."""
    array = np.asarray(image)
    spatial = np.shape(affine)[0] - 1 if np.ndim(affine) == 2 else array.ndim
    if array.ndim == spatial + 1 and array.shape[-1] in (3, 4):
        raise ValueError(f"the {name} image looks RGB (shape {array.shape}); convert it to luminance first (to_luminance)")
    if array.size == 0:
        raise ValueError(f"the {name} image is empty (shape {array.shape})")
    if array.ndim not in (2, 3):
        raise ValueError(f"the {name} image must be 2D or 3D, got shape {array.shape}")
    if min(array.shape) < 4:
        raise ValueError(f"the {name} image is too small to register (shape {array.shape}; at least 4 voxels per axis)")
    array = array.astype(np.float32, copy=False)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"the {name} image contains NaN or Inf values; replace them (e.g. with 0) before registering")
    if float(array.max()) == float(array.min()):
        raise ValueError(f"the {name} image is constant (all {float(array.min())}); there is nothing to align")
    return array, check_affine(affine, array.ndim)


def check_mask(mask, shape, name: str):
    """A non-empty boolean mask of ``shape`` (None passes through); ``ValueError`` naming ``name``."""
    if mask is None:
        return None
    mask = np.asarray(mask).astype(bool)
    if mask.shape != tuple(shape):
        raise ValueError(f"the {name} mask has shape {mask.shape} but its image {tuple(shape)}")
    if not mask.any():
        raise ValueError(f"the {name} mask is empty")
    return mask


def check_transform(transform, n: int, name: str = "init") -> np.ndarray:
    """An ``(n + 1, n + 1)`` float64 affine matrix; ``ValueError`` naming ``name``."""
    transform = np.asarray(transform, np.float64)
    if transform.shape != (n + 1, n + 1):
        raise ValueError(f"{name} must be a {(n + 1, n + 1)} matrix for {n}D images, got {transform.shape}")
    return check_affine(transform, n)


def check_placed_overlap(shape, affine, transform, reference_shape, reference_affine, *, name: str, reference: str) -> None:
    """Refuse an image (``shape``, ``affine``) that ``transform`` places off the reference grid.

    Raises
    ------
    ValueError
        No voxel of the image, placed at ``inv(transform) @ affine``, overlaps the reference.
    """
    from ..space import overlap_fraction

    placed = np.linalg.inv(transform) @ affine
    if overlap_fraction(reference_shape, reference_affine, shape, placed) == 0:
        raise ValueError(
            f"{name} does not overlap the reference {reference} in world space under this transform "
            "(the output would be all zeros); check the images' placement (origin/units) and the transform"
        )
