"""Registration: metrics, linear and deformable models, landmarks, multi-resolution driver.

Transforms are ``(n + 1, n + 1)`` world matrices in napari axis order that map a
fixed-world point to the moving-world point (the ITK resampling convention). Apply a
linear result to a napari layer with ``np.linalg.inv(T) @ moving_affine``.
"""

from ..kernels import luminance as to_luminance
from .deformable import jacobian_determinant
from .driver import MODELS, RegResult, RegStep, register, register_steps, run_to_end
from .landmarks import fit_landmarks
from .linear import center_of_mass, parameters_from_transform, transform_from_parameters
from .metrics import METRICS
from .warp import apply_transform, local_similarity_map, metric_value

__all__ = [
    "METRICS",
    "MODELS",
    "RegResult",
    "RegStep",
    "apply_transform",
    "center_of_mass",
    "fit_landmarks",
    "jacobian_determinant",
    "local_similarity_map",
    "metric_value",
    "parameters_from_transform",
    "register",
    "register_steps",
    "run_to_end",
    "to_luminance",
    "transform_from_parameters",
]
