"""Stationary velocity field (SVF) deformation on a coarse control grid.

The velocity ``v`` lives on control nodes that span the fixed image's voxel-centre
extent, in world units (napari order). Its exponential (scaling and squaring) is the
displacement ``u``; the full mapping from fixed to moving world is

    x  ->  T(x + u(x))

with ``T`` the linear transform, the same as an ITK composite transform holding ``T``
and then a displacement field transform.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .pyramid import sample

#: Squarings of the scaling-and-squaring exponential.
SQUARINGS = 6


class ControlGrid:
    """Control nodes spanning a fixed grid, with the maps the SVF needs.

    Parameters
    ----------
    fixed_shape : tuple of int
        Full-resolution fixed grid.
    fixed_affine : ndarray, shape (n + 1, n + 1)
    node_shape : tuple of int
        Nodes per axis (at least 2 each).
    device : torch.device
    """

    def __init__(self, fixed_shape, fixed_affine, node_shape, device):
        self.fixed_shape = tuple(int(s) for s in fixed_shape)
        self.node_shape = tuple(int(s) for s in node_shape)
        self.fixed_affine = np.asarray(fixed_affine, np.float64)
        n = len(self.fixed_shape)
        shape = np.asarray(self.fixed_shape, np.float64)
        step = (shape - 1) / (np.asarray(self.node_shape, np.float64) - 1)
        self.node_affine = np.asarray(fixed_affine, np.float64) @ np.diag(np.append(step, 1.0))
        self.node_spacing = np.linalg.norm(self.node_affine[:n, :n], axis=0)
        # world displacement -> grid_sample coordinate displacement (reversed axis order)
        unit = np.diag(np.where(shape > 1, 2.0 / np.maximum(shape - 1, 1), 0.0))
        to_grid = np.eye(n)[::-1] @ unit @ np.linalg.inv(np.asarray(fixed_affine, np.float64)[:n, :n])
        self.to_grid = torch.as_tensor(to_grid, dtype=torch.float32, device=device)
        axes = [torch.linspace(-1.0, 1.0, s, device=device) for s in self.node_shape]
        self.identity = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).flip(-1)  # (*nodes, n)
        self.device = device

    def exponential(self, velocity: torch.Tensor) -> torch.Tensor:
        """Displacement ``exp(v) - id`` at the nodes by scaling and squaring.

        Parameters
        ----------
        velocity : Tensor, shape (n, *nodes), world units

        Returns
        -------
        Tensor, shape (n, *nodes), world units
        """
        u = velocity / 2**SQUARINGS
        n = u.shape[0]
        for _ in range(SQUARINGS):
            moved = self.identity + torch.einsum("ij,j...->...i", self.to_grid, u)
            u = u + sample(u, moved.reshape(-1, n)).reshape(u.shape)
        return u

    def refine(self, velocity: torch.Tensor, node_shape) -> tuple["ControlGrid", torch.Tensor]:
        """A finer control grid over the same extent, with the velocity interpolated onto it."""
        finer = ControlGrid(self.fixed_shape, self.fixed_affine, node_shape, self.device)
        mode = "trilinear" if velocity.ndim == 4 else "bilinear"
        upsampled = F.interpolate(velocity[None], size=tuple(node_shape), mode=mode, align_corners=True)[0]
        return finer, upsampled

    def smoothness(self, displacement: torch.Tensor) -> torch.Tensor:
        """Diffusion plus bending energy of a node displacement field (dimensionless).

        Sum over axes of the mean squared first derivative (penalises any non-uniform
        displacement, so fields decay smoothly where the images carry no information)
        and of the mean squared second derivative times the squared node spacing.

        Parameters
        ----------
        displacement : Tensor, shape (n, *nodes), world units
        """
        n = displacement.shape[0]
        energy = displacement.new_zeros(())
        for axis in range(n):
            h = float(self.node_spacing[axis])
            first = displacement.diff(dim=1 + axis) / h
            energy = energy + (first**2).mean()
            if displacement.shape[1 + axis] >= 3:
                energy = energy + (displacement.diff(n=2, dim=1 + axis) / h).pow(2).mean()
        return energy

    def dense(self, displacement: torch.Tensor, shape=None) -> torch.Tensor:
        """Node displacement interpolated onto the full fixed grid (or ``shape`` over the same extent).

        Returns
        -------
        Tensor, shape (n, *shape)
        """
        mode = "trilinear" if displacement.ndim == 4 else "bilinear"
        size = tuple(shape or self.fixed_shape)
        return F.interpolate(displacement[None], size=size, mode=mode, align_corners=True)[0]


def node_shape_for(fixed_shape, spacing_voxels: float) -> tuple[int, ...]:
    """Nodes per axis so that neighbouring nodes are about ``spacing_voxels`` apart."""
    return tuple(max(2, int(np.ceil((s - 1) / spacing_voxels)) + 1) for s in fixed_shape)


def jacobian_determinant(displacement: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Jacobian determinant of ``x -> x + u(x)`` on a grid.

    Parameters
    ----------
    displacement : ndarray, shape (*shape, n)
        World units, napari order, on the grid of ``affine``.
    affine : ndarray, shape (n + 1, n + 1)

    Returns
    -------
    ndarray, shape (*shape), float32
        Values <= 0 mark folding.
    """
    displacement = np.asarray(displacement, np.float64)
    n = displacement.shape[-1]
    inverse = np.linalg.inv(np.asarray(affine, np.float64)[:n, :n])
    # d u_i / d index_j
    by_index = np.stack(
        [np.gradient(displacement, axis=j) if displacement.shape[j] > 1 else np.zeros_like(displacement) for j in range(n)],
        axis=-1,
    )
    jacobian = np.eye(n) + by_index @ inverse
    return np.linalg.det(jacobian).astype(np.float32)
