"""Learned fusion: a small CNN trained on the images themselves (reproducible with its seed)."""

from __future__ import annotations

from .. import Param
from . import fusion_operation

OPERATIONS = (
    fusion_operation(
        "learned", "Learned (CNN)",
        "Small CNN trained on these images (SSIM, gradient and intensity fidelity) to predict softmax weights.",
        (
            Param("n_iter", int, 80, "training steps", minimum=1, maximum=100_000),
            Param("lr", float, 0.01, "Adam learning rate", minimum=0.0, maximum=10.0, open_minimum=True),
            Param("width", int, 8, "channels of the hidden layers", minimum=1, maximum=256),
            Param("crop", int, 64, "side of the random training crops", minimum=8, maximum=1024, unit="px"),
            Param("w_ssim", float, 1.0, "weight of the structural (SSIM) loss", minimum=0.0),
            Param("w_grad", float, 10.0, "weight of the gradient loss", minimum=0.0),
            Param("w_intensity", float, 1.0, "weight of the intensity loss", minimum=0.0),
        ),
        core="napari_mmfuse.core.fuse.learned:learned",
        deterministic=False,
    ),
)
