"""Explanations of segmentation (and classification) networks: where and which modality mattered.

The explained quantity (the *target*) is, for a segmentation network, the sum of one
class's logit over a region (a label mask or a box; the whole image without one), and
for a classification network that class's logit. Methods:

* **Grad-CAM / Grad-CAM++** at a chosen convolution (forward and gradient hooks),
  upsampled to the input grid;
* **occlusion sensitivity**: the drop of the target when a sliding window of the input is
  replaced by each channel's mean;
* **gradient saliency**: ``|d target / d input|`` (vanilla) or its average over noisy
  copies of the input (SmoothGrad);
* **integrated gradients** from the channel-mean baseline (a Riemann sum with midpoints);
* **attention maps** of vision transformers (MONAI ``ViT`` inside e.g. UNETR): the
  attention the region's tokens pay to every token, each query token weighted by the
  target class's probability over its voxels, averaged over heads, at one block or
  rolled out across blocks with the residual identity (Abnar & Zuidema 2020), drawn
  on the voxels each token covers;
* **per-modality attribution**: each channel replaced by its mean (ablation) or the
  integrated gradients summed per channel, giving one number per modality (normalised
  to sum to 1) and one map per modality;
* **modality removal** (the check beside the attribution): the Dice of the class's
  segmentation and the change of its mean probability when each modality is replaced
  by its reference (early fusion) or its network left out (late fusion).

Every method runs on the windows of sliding-window inference, at most
:data:`~.windows.PASS_VOXELS` voxels through the network at once, so the memory beyond
a few copies of the image is bounded by the window, not the image. Integrated gradients
are Captum's; Grad-CAM++ (the paper's weights), region-weighted targets, the global
occlusion grid across windows and attention rollout are ours.

The low-level functions take any ``torch.nn.Module`` and a normalised input tensor of
shape ``(1, C, *S)``; :func:`explain` and :func:`modality_attribution` take a
:class:`~napari_mmfuse.core.segment.SegmentationNet` and images ``(C, *S)``, normalise
them, crop around the region (with the network's patch as context; a network with a
fixed input size gets one window of its patch size centred on the region) and paste
the maps back on the full grid.

Modules: :mod:`.tensors` (the methods on tensors), :mod:`.attention` (transformers),
:mod:`.windows` (crops, sliding windows, pasting back), :mod:`.run` (on images).
"""

from .attention import (
    NO_ATTENTION, TokenAttention, attention_blocks, attention_map, attention_rollout, query_attention,
    record_attention,
)
from .run import (
    ATTRIBUTIONS, METHODS, default_target, explain, explain_steps, maps_attribution, modality_attribution,
    modality_attribution_steps, modality_removal_steps, randomized_copy,
)
from .tensors import (
    channel_ablation, conv_layers, default_layer, gradcam, integrated_gradients, occlusion, saliency, target_score,
)
from .windows import (
    BACKGROUND_FRACTION, OVERLAP, PASS_VOXELS, Attribution, Explanation, Removal, Tiling, box_region,
    copies_per_pass, destripe, saliency_steps, stride_period,
)

__all__ = [
    "ATTRIBUTIONS", "Attribution", "BACKGROUND_FRACTION", "Explanation", "METHODS", "NO_ATTENTION", "OVERLAP",
    "PASS_VOXELS", "Removal", "Tiling", "TokenAttention", "attention_blocks", "attention_map", "attention_rollout", "box_region",
    "channel_ablation", "conv_layers", "copies_per_pass", "default_layer", "default_target", "destripe", "explain", "explain_steps", "gradcam",
    "integrated_gradients", "maps_attribution", "modality_attribution", "modality_attribution_steps",
    "modality_removal_steps", "occlusion", "query_attention",
    "randomized_copy", "record_attention", "saliency", "saliency_steps", "stride_period", "target_score",
]
