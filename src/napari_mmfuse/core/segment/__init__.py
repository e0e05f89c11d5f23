"""Segmentation of one or several co-registered modalities: classical methods and small networks.

Arrays are channel-first: ``images`` has shape ``(C, *S)`` with ``S`` = ``(Y, X)`` or
``(Z, Y, X)``, one channel per modality, all on one grid (use :func:`stack_modalities`
to resample layers of any grids onto a reference grid through their world affines).

Three ways to segment:

* **classical** (:mod:`.classical`: :func:`threshold`, :func:`connected_components`,
  :func:`watershed`): Otsu, multi-Otsu and percentile thresholds (scikit-image's), a size
  filter on connected components, and a seeded watershed that grows the painted classes
  over the multimodal gradient;
* **trainable** (:mod:`.train`: :func:`train_steps`; :mod:`.predict`: :func:`predict`): a
  small MONAI UNet or BasicUNet learns from a few painted strokes (``0`` = unlabelled, any
  other value a class) with a cross-entropy restricted to the painted voxels, on patches
  sampled around them. The modalities are either the input channels of one network (early
  fusion) or each feed a network of its own whose class probabilities are combined by a
  weighted average or a majority vote (late, decision-level fusion);
* **bring your own model** (:mod:`.model`: :func:`load_model`): a TorchScript file or a
  state dict of this package's networks, with the JSON configuration (:mod:`.config`) that
  says which label value each output class has, how each input channel is normalised, and
  the voxel spacing; or a MONAI bundle folder (:mod:`napari_mmfuse.core.bundle`: its network
  from ``monai.networks.nets``, its weights, spacing, intensity preprocessing and
  sliding-window size).
"""

from .classical import connected_components, threshold, watershed
from .config import (
    ARCHITECTURES,
    CONFIG_SUFFIX,
    FUSIONS,
    INTENSITY_TRANSFORMS,
    LATE_COMBINE,
    TRAINABLE,
    WEIGHTS_SUFFIX,
    ModelConfig,
    read_config,
)
from .inputs import (
    channel_stats,
    check_images,
    check_scribbles,
    outside_view,
    stack_modalities,
    stroke_classes,
    strokes_on_grid,
    subject_channels,
)
from .model import SegmentationNet, load_model, save_model
from .predict import predict, uncertainty
from .train import TrainStep, sample_patches, train, train_steps

__all__ = [
    "ARCHITECTURES", "CONFIG_SUFFIX", "FUSIONS", "INTENSITY_TRANSFORMS", "LATE_COMBINE", "TRAINABLE", "WEIGHTS_SUFFIX",
    "ModelConfig", "SegmentationNet", "TrainStep", "channel_stats", "check_images", "check_scribbles",
    "connected_components", "load_model", "outside_view", "predict", "read_config", "sample_patches", "save_model",
    "stack_modalities", "stroke_classes", "strokes_on_grid", "subject_channels", "threshold", "train", "train_steps", "uncertainty", "watershed",
]
