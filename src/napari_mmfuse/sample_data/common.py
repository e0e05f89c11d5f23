"""Geometry shared by the head phantom and the slide pair: shapes, smooth warps, grid traversal.

Points are stored as columns, shape (n, N), in world coordinates (napari order).
"""

from __future__ import annotations

import numpy as np

from ..core.space import voxel_to_world

#: ``metadata["source"]`` of every sample record.
SOURCE = "napari_mmfuse.sample_data"
#: World points evaluated at once when a grid is rendered.
CHUNK_POINTS = 1 << 16


def rotation_matrix(angles_deg) -> np.ndarray:
    """Rotation (napari order) by angles about the world z, y and x axes, applied x first."""
    matrix = np.eye(3)
    for axis in (2, 1, 0):
        angle = np.deg2rad(angles_deg[axis])
        i, j = [a for a in range(3) if a != axis]
        step = np.eye(3)
        step[i, i] = step[j, j] = np.cos(angle)
        step[i, j], step[j, i] = -np.sin(angle), np.sin(angle)
        matrix = step @ matrix
    return matrix


def homogeneous(linear: np.ndarray, centre: np.ndarray, translation) -> np.ndarray:
    """Affine ``p -> linear (p - centre) + centre + translation`` as a homogeneous matrix."""
    n = linear.shape[0]
    matrix = np.eye(n + 1)
    matrix[:n, :n] = linear
    matrix[:n, n] = centre + np.asarray(translation, dtype=np.float64) - linear @ centre
    return matrix


def soft_inside(distance: np.ndarray, ramp: float) -> np.ndarray:
    """Fraction of a voxel of width ``ramp`` inside a shape, from the signed distance."""
    return np.clip(0.5 - distance / np.float32(ramp), 0.0, 1.0)


def as_column(vector) -> np.ndarray:
    """A float32 column (n, 1), to broadcast against points stored as (n, N)."""
    return np.asarray(vector, dtype=np.float32).reshape(-1, 1)


def sum_squares(array: np.ndarray) -> np.ndarray:
    """Sum of squares over the first axis (points are stored as (n, N) columns)."""
    return np.einsum("ij,ij->j", array, array)


def ellipsoid_distance(points: np.ndarray, radii, waves=None) -> tuple[np.ndarray, np.ndarray]:
    """Approximate signed distance (first order) to an ellipsoid centred at the origin.

    Parameters
    ----------
    points : ndarray, shape (n, N), float32
    radii : array-like, shape (n,) or (n, N)
        Semi-axes, shared or one set per point.
    waves : Waves, optional
        Relative modulation of the radius as a function of direction.

    Returns
    -------
    distance : ndarray, shape (N,)
    direction : ndarray, shape (n, N)
        Unit direction in the ellipsoid's normalised coordinates.
    """
    radii = np.asarray(radii, dtype=np.float32)
    radii = radii[:, None] if radii.ndim == 1 else radii
    eps = np.float32(1e-6)
    u = points / radii
    rho = np.sqrt(sum_squares(u))
    grad = np.sqrt(sum_squares(u / radii))
    direction = u / (rho + eps)
    level = 1.0 if waves is None else 1.0 + waves(direction)
    distance = (rho - level) * (rho + eps) / (grad + eps / radii.min(axis=0))
    return distance, direction


class Waves:
    """Smooth random function on the unit sphere: a sum of plane waves ``sin(w v.n + phi)``."""

    def __init__(self, rng: np.random.Generator, count: int, frequency: tuple[float, float], amplitude: float):
        directions = rng.normal(size=(count, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        frequencies = rng.uniform(*frequency, size=count)
        self.wavevectors = (directions * frequencies[:, None]).astype(np.float32)
        self.phases = rng.uniform(0, 2 * np.pi, size=(count, 1)).astype(np.float32)
        # each sine has standard deviation 1/sqrt(2): the sum has standard deviation ``amplitude``
        self.weights = np.full(count, amplitude / np.sqrt(count / 2), dtype=np.float32)

    def __call__(self, direction: np.ndarray) -> np.ndarray:
        """Evaluate at unit directions, shape (3, N)."""
        argument = self.phases + self.wavevectors[:, 0:1] * direction[0]
        for axis in (1, 2):
            argument += self.wavevectors[:, axis : axis + 1] * direction[axis]
        return np.einsum("j,ji->i", self.weights, np.sin(argument, out=argument))


class Warp:
    """A known world transform ``T(x) = A (x + u(x))``.

    ``A`` is affine (homogeneous matrix) and ``u`` a smooth displacement, a sum of
    Gaussian bumps (absent for a purely affine transform). ``u`` is kept small and smooth
    (``|grad u| < 1``), so ``T`` is invertible and :meth:`inverse` converges. Points are
    stored as columns, shape (n, N).
    """

    def __init__(self, matrix: np.ndarray, centres=None, vectors=None, sigma: float = 1.0):
        self.matrix = np.asarray(matrix, dtype=np.float64)
        n = self.matrix.shape[0] - 1
        self.centres = np.zeros((0, n)) if centres is None else np.asarray(centres, dtype=np.float64)
        self.vectors = np.zeros((0, n)) if vectors is None else np.asarray(vectors, dtype=np.float64)
        self.sigma = float(sigma)

    @property
    def deformable(self) -> bool:
        return len(self.centres) > 0

    def displacement(self, points: np.ndarray) -> np.ndarray:
        """The non-affine part ``u`` at world points (n, N)."""
        result = np.zeros(points.shape)
        for centre, vector in zip(self.centres, self.vectors):
            radius2 = np.zeros(points.shape[1])
            for axis, c in enumerate(centre):
                offset = points[axis] - c
                radius2 += offset * offset
            weight = np.exp(radius2 * (-0.5 / self.sigma**2))
            for axis, v in enumerate(vector):
                result[axis] += v * weight
        return result

    def forward(self, points: np.ndarray) -> np.ndarray:
        """``T(p)``: fixed-world points to moving-world points, (n, N)."""
        points = np.asarray(points, dtype=np.float64)
        return apply_affine(self.matrix, points + self.displacement(points))

    def inverse(self, points: np.ndarray, tolerance: float = 1e-4, max_iterations: int = 50) -> np.ndarray:
        """``T^-1(q)``: moving-world points to fixed-world points, (n, N).

        Solves ``p = A^-1 q - u(p)`` by fixed-point iteration (a contraction since
        ``|grad u| < 1``) until no point moves by more than ``tolerance``.
        """
        target = apply_affine(np.linalg.inv(self.matrix), np.asarray(points, dtype=np.float64))
        result = target
        for _ in range(max_iterations if self.deformable else 0):
            previous, result = result, target - self.displacement(result)
            if np.abs(result - previous).max(initial=0.0) < tolerance:
                break
        return result

    def displacement_field(self, shape, affine: np.ndarray) -> np.ndarray:
        """Total displacement ``T(p) - p`` at every voxel centre of a grid, float32 (*shape, n)."""
        n = len(shape)
        out = np.empty(tuple(shape) + (n,), dtype=np.float32)
        for start, stop, points in grid_chunks(shape, affine):
            out.reshape(-1, n)[start:stop] = (self.forward(points) - points).T
        return out


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a homogeneous affine to points stored as columns (n, N)."""
    n = matrix.shape[0] - 1
    result = np.empty(points.shape)
    for row in range(n):
        result[row] = matrix[row, n]
        for column in range(n):
            result[row] += matrix[row, column] * points[column]
    return result


def grid_chunks(shape, affine: np.ndarray):
    """Yield ``(start, stop, world points (n, N))`` over a grid's voxel centres in C order."""
    shape = tuple(int(s) for s in shape)
    n = len(shape)
    # the world position of a voxel is the origin plus one contribution per index axis
    lines = [
        (voxel_to_world(affine, np.outer(np.arange(s), np.eye(n)[axis])) - affine[:n, n]).T
        for axis, s in enumerate(shape)
    ]
    rest = affine[:n, n, None]
    for line in lines[1:]:
        rest = (rest[:, :, None] + line[:, None, :]).reshape(n, -1)
    plane = rest.shape[1]
    step = max(1, CHUNK_POINTS // plane)
    for first in range(0, shape[0], step):
        last = min(first + step, shape[0])
        yield first * plane, last * plane, (lines[0][:, first:last, None] + rest[:, None, :]).reshape(n, -1)



def scale_bumps(warp: Warp, lattice: np.ndarray, maximum: float) -> Warp:
    """The same warp with its bumps scaled so that ``max |u|`` over ``lattice`` is ``maximum``."""
    peak = np.linalg.norm(warp.displacement(lattice), axis=0).max()
    return Warp(warp.matrix, warp.centres, warp.vectors * (maximum / peak), warp.sigma)
