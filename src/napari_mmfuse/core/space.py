"""Physical space: world affines, voxel <-> world, resampling one grid onto another.

Conventions
-----------
* **Patient frame: LPS** (DICOM/ITK): +x towards the patient's Left, +y Posterior,
  +z Superior, in millimetres for volumes and micrometres for slides.
* **napari axis order**: world coordinates are stored in array-axis order, i.e. the
  reverse of the physical (x, y, z) order: a 3D world point is ``(z, y, x)`` and a 2D one
  ``(y, x)``. With array axes close to (S, P, L) an axial slice shows anterior at the top
  and the patient's right on the left of the screen (radiological view).
* An **affine** is an ``(n + 1, n + 1)`` matrix mapping an array index (numpy axis order)
  to a world point (napari order), exactly what a napari layer's ``affine`` holds.
* An image without physical metadata has world = pixel coordinates (x = column,
  y = row, origin 0), as SimpleITK reads it.
"""

from __future__ import annotations

import numpy as np

FRAME = "LPS"
_LETTERS = {(0, 1): "L", (0, -1): "R", (1, 1): "P", (1, -1): "A", (2, 1): "S", (2, -1): "I"}


def check_affine(affine: np.ndarray, ndim: int | None = None) -> np.ndarray:
    """Validate an index -> world affine and return it as float64.

    Parameters
    ----------
    affine : array-like, shape (n + 1, n + 1)
    ndim : int, optional
        Number of spatial axes the affine must have.

    Returns
    -------
    ndarray

    Raises
    ------
    ValueError
        If it is not square, has the wrong size, holds NaN/Inf, or is singular.
    """
    affine = np.asarray(affine, dtype=np.float64)
    if affine.ndim != 2 or affine.shape[0] != affine.shape[1]:
        raise ValueError(f"an affine must be square (n+1, n+1), got shape {affine.shape}")
    if ndim is not None and affine.shape[0] != ndim + 1:
        raise ValueError(f"affine is {affine.shape} but the image has {ndim} spatial axes")
    if not np.all(np.isfinite(affine)):
        raise ValueError("affine contains NaN or Inf")
    if abs(np.linalg.det(affine[:-1, :-1])) < 1e-12:
        raise ValueError("affine is singular (zero spacing or degenerate direction)")
    return affine


def affine_from_itk(spacing, origin, direction=None) -> np.ndarray:
    """Build a napari-order affine from ITK-style geometry.

    Parameters
    ----------
    spacing, origin : sequence of float, length n
        Physical (x, y[, z]) spacing and origin, ITK/DICOM order.
    direction : array, shape (n, n), optional
        Direction cosines as columns (ITK ``GetDirection`` reshaped). Identity if omitted.

    Returns
    -------
    affine : ndarray, shape (n + 1, n + 1)
        Maps a numpy index (reversed ITK index) to a napari-order world point.
    """
    spacing = np.asarray(spacing, dtype=np.float64)
    n = spacing.size
    direction = np.eye(n) if direction is None else np.asarray(direction, np.float64).reshape(n, n)
    rev = np.eye(n)[::-1]
    affine = np.eye(n + 1)
    affine[:n, :n] = rev @ direction @ np.diag(spacing) @ rev
    affine[:n, n] = rev @ np.asarray(origin, dtype=np.float64)
    return affine


def itk_from_affine(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split a napari-order affine into ITK spacing, origin and direction.

    Returns
    -------
    spacing : ndarray, shape (n,)
    origin : ndarray, shape (n,)
    direction : ndarray, shape (n, n)
        Direction cosines as columns (orthonormal when the affine has no shear).
    """
    affine = check_affine(affine)
    n = affine.shape[0] - 1
    rev = np.eye(n)[::-1]
    linear = rev @ affine[:n, :n] @ rev
    spacing = np.linalg.norm(linear, axis=0)
    return spacing, rev @ affine[:n, n], linear / spacing


def affine_from_nifti(nifti_affine: np.ndarray) -> np.ndarray:
    """Convert a NIfTI (index i,j,k -> RAS x,y,z) affine to a napari-order LPS affine.

    The array keeps nibabel's axis order (i, j, k); only the world side changes.
    """
    nifti_affine = np.asarray(nifti_affine, dtype=np.float64)
    n = nifti_affine.shape[0] - 1
    flip = np.eye(n + 1)
    flip[0, 0] = flip[1, 1] = -1.0  # RAS -> LPS (x and y change sign)
    rev = np.eye(n + 1)
    rev[:n, :n] = np.eye(n)[::-1]
    return rev @ flip @ nifti_affine


def nifti_from_affine(affine: np.ndarray) -> np.ndarray:
    """Inverse of :func:`affine_from_nifti`: napari-order LPS affine -> NIfTI RAS affine."""
    affine = check_affine(affine)
    n = affine.shape[0] - 1
    flip = np.eye(n + 1)
    flip[0, 0] = flip[1, 1] = -1.0
    rev = np.eye(n + 1)
    rev[:n, :n] = np.eye(n)[::-1]
    return flip @ rev @ affine


def spacing_of(affine: np.ndarray) -> np.ndarray:
    """Voxel size along each array axis (world units per index step)."""
    affine = check_affine(affine)
    return np.linalg.norm(affine[:-1, :-1], axis=0)


def orientation_code(affine: np.ndarray) -> str:
    """Anatomical direction of each array axis, e.g. ``"SPL"`` (DICOM letters, LPS frame).

    Only meaningful for 3D affines; 2D affines return ``"YX"``-style letters ``"PL"``.
    """
    affine = check_affine(affine)
    n = affine.shape[0] - 1
    letters = []
    for axis in range(n):
        column = affine[:n, axis][::-1]  # physical (x, y[, z]) order
        dominant = int(np.argmax(np.abs(column)))
        letters.append(_LETTERS[(dominant, 1 if column[dominant] > 0 else -1)])
    return "".join(letters)


def obliquity_deg(affine: np.ndarray) -> float:
    """Largest angle, in degrees, between an array axis and its nearest world axis.

    napari's 2D view ignores the out-of-slice part of a rotation, so a layer tilted by
    more than about a degree is shown exactly only in 3D or after resampling.
    """
    affine = check_affine(affine)
    linear = affine[:-1, :-1] / spacing_of(affine)
    cosines = np.clip(np.abs(linear).max(axis=0), 0.0, 1.0)
    return float(np.degrees(np.arccos(cosines.min())))


def voxel_to_world(affine: np.ndarray, index) -> np.ndarray:
    """Map array indices, shape (..., n), to world points, shape (..., n)."""
    affine = check_affine(affine)
    index = np.asarray(index, dtype=np.float64)
    return index @ affine[:-1, :-1].T + affine[:-1, -1]


def world_to_voxel(affine: np.ndarray, points) -> np.ndarray:
    """Map world points, shape (..., n), to (fractional) array indices, shape (..., n)."""
    inverse = np.linalg.inv(check_affine(affine))
    points = np.asarray(points, dtype=np.float64)
    return points @ inverse[:-1, :-1].T + inverse[:-1, -1]


def world_bounds(shape, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned world bounding box of an image, from its voxel edges.

    Returns
    -------
    low, high : ndarray, shape (n,)
    """
    shape = np.asarray(shape)
    n = shape.size
    corners = np.array(np.meshgrid(*[[-0.5, s - 0.5] for s in shape], indexing="ij"))
    corners = corners.reshape(n, -1).T
    world = voxel_to_world(check_affine(affine, n), corners)
    return world.min(axis=0), world.max(axis=0)


def overlap_fraction(shape_a, affine_a, shape_b, affine_b) -> float:
    """Fraction of image A's world bounding box that image B's bounding box covers."""
    low_a, high_a = world_bounds(shape_a, affine_a)
    low_b, high_b = world_bounds(shape_b, affine_b)
    inter = np.clip(np.minimum(high_a, high_b) - np.maximum(low_a, low_b), 0, None)
    return float(np.prod(inter) / np.prod(high_a - low_a))


def reorient_to_nearest(data, affine: np.ndarray, *, first_axis: int = 0):
    """Permute and flip array axes so they run as close as possible along the world axes.

    Lossless (no interpolation): only transposes and reversals, and the affine is
    updated so that every voxel keeps its world position. Any oblique residual stays
    in the affine.

    Parameters
    ----------
    data : array-like (numpy or dask)
        Image whose spatial axes are ``first_axis .. first_axis + n - 1``.
    affine : ndarray, shape (n + 1, n + 1)
    first_axis : int
        Index of the first spatial axis (e.g. 1 for a leading time axis).

    Returns
    -------
    data, affine
        Reoriented view of the data and its affine.
    """
    affine = check_affine(affine)
    n = affine.shape[0] - 1
    linear = affine[:n, :n] / spacing_of(affine)
    order = [-1] * n  # order[world_axis] = old array axis
    remaining = list(range(n))
    # assign world axes greedily by the strongest direction cosine
    for _ in range(n):
        sub = np.abs(linear[np.ix_(range(n), remaining)])
        sub[[w for w in range(n) if order[w] >= 0], :] = -1
        world_axis, col = np.unravel_index(int(np.argmax(sub)), sub.shape)
        order[world_axis] = remaining.pop(col)
    flips = [linear[w, order[w]] < 0 for w in range(n)]

    permutation = np.zeros((n + 1, n + 1))
    permutation[n, n] = 1.0
    shape = data.shape[first_axis : first_axis + n]
    for new_axis, old_axis in enumerate(order):
        if flips[new_axis]:
            permutation[old_axis, new_axis] = -1.0
            permutation[old_axis, n] = shape[old_axis] - 1
        else:
            permutation[old_axis, new_axis] = 1.0
    axes = list(range(data.ndim))
    axes[first_axis : first_axis + n] = [first_axis + a for a in order]
    out = data.transpose(axes)
    slicer = [slice(None)] * data.ndim
    for new_axis in range(n):
        if flips[new_axis]:
            slicer[first_axis + new_axis] = slice(None, None, -1)
    return out[tuple(slicer)], affine @ permutation


def resample(
    image,
    affine: np.ndarray,
    reference_shape,
    reference_affine: np.ndarray,
    *,
    interpolation: str = "linear",
    fill_value: float = 0.0,
    channel_axis: int | None = None,
    device=None,
    max_chunk_voxels: int = 2**24,
) -> np.ndarray:
    """Resample an image onto another image's grid through both world affines.

    Each reference voxel centre is mapped to world space by ``reference_affine`` and
    into the image by the inverse of ``affine``; the image is interpolated there.
    Points outside the image's voxel extent (beyond half a voxel from the edge
    centres) get ``fill_value``.

    Parameters
    ----------
    image : array-like, shape (*spatial) or with a channel axis
        2D or 3D image (numpy, dask or torch).
    affine : ndarray, shape (n + 1, n + 1)
        Index -> world affine of ``image``.
    reference_shape : sequence of int, length n
        Spatial shape of the output grid.
    reference_affine : ndarray, shape (n + 1, n + 1)
        Index -> world affine of the output grid.
    interpolation : {"linear", "nearest"}
        "nearest" keeps the input dtype (use it for labels); "linear" returns float32.
    fill_value : float
        Value outside the image.
    channel_axis : int, optional
        Axis of ``image`` holding channels (e.g. -1 for RGB); kept at the same position.
    device : str or torch.device, optional
        Compute device; defaults to :func:`get_device`.
    max_chunk_voxels : int
        Output voxels computed at once (bounds memory for large grids).

    Returns
    -------
    ndarray, shape reference_shape (plus the channel axis)
    """
    import torch  # torch only when resampling runs: readers and `mmfuse --help` import this module
    import torch.nn.functional as F

    from .device import get_device

    if interpolation not in ("linear", "nearest"):
        raise ValueError(f"interpolation must be 'linear' or 'nearest', not {interpolation!r}")
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    array = np.asarray(image)
    out_dtype = array.dtype if interpolation == "nearest" else np.dtype(np.float32)
    if channel_axis is not None:
        channel_axis = channel_axis % array.ndim
        array = np.moveaxis(array, channel_axis, 0)
    else:
        array = array[np.newaxis]
    n = array.ndim - 1
    if n not in (2, 3):
        raise ValueError(f"resample needs a 2D or 3D image, got {n} spatial axes")
    reference_shape = tuple(int(s) for s in reference_shape)
    if len(reference_shape) != n:
        raise ValueError(f"image has {n} spatial axes but the reference grid {len(reference_shape)}")
    affine = check_affine(affine, n)
    reference_affine = check_affine(reference_affine, n)
    device = get_device(device)

    # reference index -> image index; float64 where the device has it (MPS does not)
    mapping = np.linalg.inv(affine) @ reference_affine
    in_shape = np.array(array.shape[1:], dtype=np.float64)
    source = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(device)[None]
    mode = "bilinear" if interpolation == "linear" else "nearest"
    precise = torch.float32 if device.type == "mps" else torch.float64
    linear = torch.as_tensor(mapping[:n, :n], dtype=precise, device=device)
    offset = torch.as_tensor(mapping[:n, n], dtype=precise, device=device)
    scale = torch.as_tensor(np.where(in_shape > 1, 2.0 / np.maximum(in_shape - 1, 1), 0.0), dtype=precise, device=device)
    upper = torch.as_tensor(in_shape - 0.5, dtype=precise, device=device)

    out = np.empty((array.shape[0],) + reference_shape, dtype=out_dtype)
    plane = int(np.prod(reference_shape[1:]))
    step = max(1, max_chunk_voxels // max(plane, 1))
    rest = [torch.arange(s, dtype=precise, device=device) for s in reference_shape[1:]]
    for start in range(0, reference_shape[0], step):
        stop = min(start + step, reference_shape[0])
        first = torch.arange(start, stop, dtype=precise, device=device)
        grids = torch.meshgrid(first, *rest, indexing="ij")
        index = torch.stack(grids, dim=-1) @ linear.T + offset  # (..., n) image indices
        inside = ((index >= -0.5) & (index <= upper)).all(dim=-1)
        normalised = (index * scale - (scale > 0).to(index.dtype)).flip(-1).to(torch.float32)
        with torch.no_grad():
            values = F.grid_sample(
                source, normalised[None], mode=mode, padding_mode="border", align_corners=True
            )[0]
        values = torch.where(inside, values, torch.as_tensor(fill_value, dtype=values.dtype, device=device))
        chunk = values.cpu().numpy()
        if interpolation == "nearest" and np.issubdtype(out_dtype, np.integer):
            chunk = np.rint(chunk)
        out[:, start:stop] = chunk.astype(out_dtype, copy=False)
    if channel_axis is None:
        return out[0]
    return np.moveaxis(out, 0, channel_axis)
