"""Denoising on torch: classical filters and self-supervised Noise2Void training.

Every filter takes a 2D ``(Y, X)`` or 3D ``(Z, Y, X)`` grey image, keeps its intensity
scale (no rescaling to [0, 1]) and returns float32 of the same shape. Parameters that are
distances (``sigma``, ``radius``) are in world units (mm, µm) and are converted per axis
through ``spacing=``; without ``spacing`` they are in pixels. Large inputs are processed in
slabs along the first axis with a halo, and a CUDA out-of-memory error halves the slab.

Modules: :mod:`.checks` (input and parameter checks), :mod:`.filter_kernels` (torch
kernels, slab runner), :mod:`.filters` (the filters by name), :mod:`.noise` (noise estimate,
parameters from it), :mod:`.n2v` (Noise2Void network, training, model files).
"""

from .checks import DISTANCE_PARAMETERS, check_distances, check_image, spacing_per_axis, world_radii
from .filters import (
    DEFAULT_MAX_VOXELS,
    anisotropic_diffusion,
    bilateral,
    denoise,
    denoise_steps,
    gaussian,
    median,
    nl_means,
    total_variation,
)
from .n2v import (
    N2V_ARCHITECTURES,
    MaxBlurPool,
    N2V2UNet,
    N2VConfig,
    N2VModel,
    TrainStep,
    n2v_multiple,
    n2v_network,
    n2v_patch_shape,
    n2v_train,
    noise2void,
)
from .noise import METHODS, estimate_noise, estimated_parameters, suggest_parameters

__all__ = [
    "DEFAULT_MAX_VOXELS", "DISTANCE_PARAMETERS", "METHODS", "N2V_ARCHITECTURES", "MaxBlurPool",
    "N2V2UNet", "N2VConfig", "N2VModel", "TrainStep", "anisotropic_diffusion", "bilateral", "check_distances",
    "check_image", "denoise", "denoise_steps", "estimate_noise", "estimated_parameters", "gaussian", "median",
    "n2v_multiple", "n2v_network", "n2v_patch_shape", "n2v_train", "nl_means", "noise2void", "spacing_per_axis",
    "suggest_parameters", "total_variation", "world_radii",
]
