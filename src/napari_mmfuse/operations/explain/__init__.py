"""explain operations: one module per method family, each defining ``OPERATIONS``.

Every method explains one class of a saved segmentation model on the subject's
modalities (the ``images``, in the model's channel order, resampled onto the first one's
grid) and gives a ``map`` on that grid; the parameters every method shares, the ports and
the run function they all use are defined here.
"""

from __future__ import annotations

from .. import Param, Port

#: Menu order (methods not listed follow by name).
ORDER: tuple = ("gradcam", "gradcampp", "occlusion", "saliency", "smoothgrad", "ig", "attention")

#: The core function whose keyword defaults the parameters share.
CORE = "napari_mmfuse.core.explain:explain_steps"

TARGET = Param("target", int, None, "label value of the class explained", label="target class",
               auto="the model's first foreground class")
MARGIN = Param("margin", int, None, "context kept around the region's box", minimum=0, unit="px",
               auto="half the model's patch")
ATTRIBUTION = Param("attribution", bool, False,
                    "also measure each modality's share of the target (integrated gradients) and, beside it, what "
                    "removing each modality does to the segmentation (Dice, mean probability)",
                    label="per-modality answers")

INPUTS = (
    Port("images", "images", "the model's input modalities, in its channel order, on any grids"),
    Port("model", "model", "a saved segmentation model"),
    Port("region", "labels", "where the class logit is summed: voxels > 0 (default: the whole image)",
         optional=True),
)
OUTPUTS = (
    Port("map", "map", "the explanation on the first image's grid"),
    Port("channel_maps", "images", "one map per modality (gradient methods)", optional=True),
    Port("attribution", "table", "each modality's share of the target (with attribution)", optional=True),
    Port("removal", "table", "Dice and mean probability change of the class with each modality removed "
         "(with attribution)", optional=True),
)



def explain(method: str, images, model, region, device, **params):
    """Run the explain operation ``method`` (see :func:`napari_mmfuse.core.explain.operation.explain_images`)."""
    from ...core.explain.operation import explain_images

    return (yield from explain_images(images, model, region, method=method, device=device, **params))
