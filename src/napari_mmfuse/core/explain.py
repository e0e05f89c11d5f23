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
  to sum to 1) and one map per modality.

The low-level functions take any ``torch.nn.Module`` and a normalised input tensor of
shape ``(1, C, *S)``; :func:`explain` and :func:`modality_attribution` take a
:class:`~napari_mmfuse.core.segment.SegmentationNet` and images ``(C, *S)``, normalise
them, crop around the region (with the network's patch as context; a network with a
fixed input size gets one window of its patch size centred on the region) and paste
the maps back on the full grid.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Generator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._names import EXPLAIN_METHODS
from .device import get_device
from .segment import SegmentationNet, check_images, outside_view

METHODS = EXPLAIN_METHODS
ATTRIBUTIONS = ("ablation", "ig")
#: sliding-window overlap, as :func:`~.segment.predict`'s default
OVERLAP = 0.25
#: a channel whose minimum holds at least this fraction of the voxels has a constant background
BACKGROUND_FRACTION = 0.1
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)


# ----------------------------------------------------------------------------- targets and layers


def target_score(output: torch.Tensor, class_index: int, region: torch.Tensor | None = None) -> torch.Tensor:
    """The explained quantity for each item of a batch.

    Parameters
    ----------
    output : Tensor, shape (B, K, *S) or (B, K)
        Segmentation logits or classification logits.
    class_index : int
        Output channel of the class.
    region : Tensor of bool or float, shape (*S), optional
        Voxels summed over (segmentation only), or a weight per voxel; all voxels if
        omitted.

    Returns
    -------
    Tensor, shape (B,)
    """
    if not 0 <= class_index < output.shape[1]:
        raise ValueError(f"class index {class_index} is outside the model's {output.shape[1]} classes")
    logit = output[:, class_index]
    if logit.ndim == 1:
        return logit
    if region is None:
        return logit.flatten(1).sum(dim=1)
    if region.shape != logit.shape[1:]:
        raise ValueError(f"region has shape {tuple(region.shape)} but the output {tuple(logit.shape[1:])}")
    return (logit * region.to(logit.dtype)).flatten(1).sum(dim=1)


def conv_layers(module: nn.Module) -> list[str]:
    """Names of the convolution modules of a network (candidates for Grad-CAM), in order."""
    return [name for name, sub in module.named_modules() if isinstance(sub, _CONV)]


def default_layer(module: nn.Module, x: torch.Tensor) -> str:
    """The deepest convolution: the last one among those with the smallest output.

    Parameters
    ----------
    module : nn.Module
    x : Tensor, shape (1, C, *S)
    """
    names = conv_layers(module)
    if not names:
        raise ValueError("the model has no convolution layer to compute Grad-CAM at")
    sizes: dict[str, int] = {}
    modules = dict(module.named_modules())
    handles = [
        modules[name].register_forward_hook(lambda _m, _i, out, name=name: sizes.__setitem__(name, out[0, 0].numel()))
        for name in names
    ]
    try:
        with torch.no_grad():
            module(x)
    finally:
        for handle in handles:
            handle.remove()
    smallest = min(sizes.values())
    return [name for name in names if sizes.get(name) == smallest][-1]


# ----------------------------------------------------------------------------- methods on tensors


def gradcam(module: nn.Module, x: torch.Tensor, *, class_index: int, region=None, layer: str,
            plusplus: bool = False) -> np.ndarray:
    """Grad-CAM (or Grad-CAM++) at one convolution, upsampled to the input grid.

    Parameters
    ----------
    module : nn.Module
        Not a TorchScript module (hooks are needed).
    x : Tensor, shape (1, C, *S)
    class_index : int
    region : Tensor of bool, shape (*S), optional
    layer : str
        Name of a convolution module (see :func:`conv_layers`).
    plusplus : bool
        Grad-CAM++ weights (second-order, with the exponential-score closed form).

    Returns
    -------
    ndarray, shape (*S), float32, >= 0
    """
    modules = dict(module.named_modules())
    if any(isinstance(m, torch.jit.ScriptModule) for m in modules.values()):
        raise ValueError("Grad-CAM needs hooks, which TorchScript models do not support; use saliency or occlusion")
    if layer not in modules:
        raise ValueError(f"no layer {layer!r} in the model; choose one of {conv_layers(module)}")
    saved: dict[str, torch.Tensor] = {}

    def keep(_module, _inputs, output):
        saved["activation"] = output
        output.register_hook(lambda grad: saved.__setitem__("gradient", grad))

    handle = modules[layer].register_forward_hook(keep)
    try:
        module.zero_grad(set_to_none=True)
        score = target_score(module(x), class_index, region).sum()
        score.backward()
    finally:
        handle.remove()
    activation, gradient = saved["activation"].detach()[0], saved["gradient"].detach()[0]
    axes = tuple(range(1, activation.ndim))
    if plusplus:
        g2, g3 = gradient**2, gradient**3
        denominator = 2 * g2 + activation.sum(dim=axes, keepdim=True) * g3
        alpha = g2 / torch.where(denominator != 0, denominator, torch.ones_like(denominator))
        weights = (alpha * F.relu(gradient)).sum(dim=axes)
    else:
        weights = gradient.mean(dim=axes)
    cam = F.relu((weights.reshape((-1,) + (1,) * len(axes)) * activation).sum(dim=0))
    mode = "bilinear" if cam.ndim == 2 else "trilinear"
    cam = F.interpolate(cam[None, None], size=x.shape[2:], mode=mode, align_corners=False)[0, 0]
    return cam.cpu().numpy().astype(np.float32)


def occlusion(module: nn.Module, x: torch.Tensor, *, class_index: int, region=None,
              window: Sequence[int] | int | None = None, stride: Sequence[int] | int | None = None,
              batch_size: int = 8, fill: torch.Tensor | None = None) -> np.ndarray:
    """Occlusion sensitivity: drop of the target when a window is replaced by the channel means.

    Parameters
    ----------
    module : nn.Module
    x : Tensor, shape (1, C, *S)
    class_index : int
    region : Tensor of bool, shape (*S), optional
    window : int or sequence of int, optional
        Occluding window edge per axis; default ``max(2, S // 8)``.
    stride : int or sequence of int, optional
        Step between windows; default half the window in 2D, the window in 3D.
    batch_size : int
        Occluded copies per forward pass.
    fill : Tensor, shape (1, C, 1, ...), optional
        Value of each channel inside the window; each channel's mean by default.

    Returns
    -------
    ndarray, shape (*S), float32
        Mean drop of the target over the windows covering each voxel (positive: the
        voxel supports the class).
    """
    corners, window = _occluders(x.shape[2:], window, stride)
    if fill is None:
        fill = x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)
    drops = torch.zeros(len(corners), dtype=torch.float32, device=x.device)
    _drain(_occlusion_drops(module, x, class_index, region, corners, window, fill, batch_size, drops))
    return _paint_occlusion(drops, corners, window, x.shape[2:]).cpu().numpy().astype(np.float32)


def _occluders(spatial, window, stride) -> tuple[np.ndarray, list[int]]:
    """Corners (one row each) and edge of the occluding windows tiling a grid."""
    n = len(spatial)
    window = _per_axis(window, [max(2, s // 8) for s in spatial], n)
    stride = _per_axis(stride, [max(1, w // 2) if n == 2 else w for w in window], n)
    starts = [list(range(0, max(s - w, 0) + 1, st)) for s, w, st in zip(spatial, window, stride)]
    for axis, s in enumerate(spatial):  # cover the far edge too
        if starts[axis][-1] + window[axis] < s:
            starts[axis].append(s - window[axis])
    return np.array(np.meshgrid(*starts, indexing="ij")).reshape(n, -1).T, window


def _occlusion_drops(module, x, class_index, region, corners, window, fill, batch_size, drops, offset=(0,)):
    """Add the drop of the target of ``x`` (a patch at ``offset``) when each window is filled.

    Only the windows that intersect the patch are run; yields after each batch.
    """
    offset = np.broadcast_to(np.asarray(offset), corners.shape[1:])
    spatial = np.asarray(x.shape[2:])
    low, high = np.maximum(corners - offset, 0), np.minimum(corners + window - offset, spatial)
    hits = _touching(corners, window, offset, spatial)
    with torch.no_grad():
        reference = target_score(module(x), class_index, region)[0]
        for begin in range(0, len(hits), batch_size):
            chunk = hits[begin : begin + batch_size]
            batch = x.repeat(len(chunk), *([1] * (x.ndim - 1)))
            for i, index in enumerate(chunk):
                where = tuple(slice(int(a), int(b)) for a, b in zip(low[index], high[index]))
                batch[(i, slice(None), *where)] = fill[0].expand(-1, *[w.stop - w.start for w in where])
            scores = target_score(module(batch), class_index, region)
            drops[torch.from_numpy(chunk)] += (reference - scores).to(drops.device)
            yield


def _touching(corners: np.ndarray, window, start, size) -> np.ndarray:
    """Indices of the occluding windows that intersect the box ``start:start + size``."""
    low = np.maximum(corners, start)
    high = np.minimum(corners + np.asarray(window), np.asarray(start) + np.asarray(size))
    return np.flatnonzero(np.all(high > low, axis=1))


def _paint_occlusion(drops: torch.Tensor, corners, window, spatial) -> torch.Tensor:
    """Mean drop over the occluding windows covering each voxel."""
    total = torch.zeros(tuple(spatial), dtype=torch.float32, device=drops.device)
    count = torch.zeros(tuple(spatial), dtype=torch.float32, device=drops.device)
    for corner, drop in zip(corners, drops):
        where = tuple(slice(int(c), int(c) + w) for c, w in zip(corner, window))
        total[where] += drop
        count[where] += 1
    return total / count.clamp_min(1)


def _per_axis(value, default, n, minimum: int = 1) -> list[int]:
    if value is None:
        return [int(v) for v in default]
    values = [int(value)] * n if np.isscalar(value) else [int(v) for v in value]
    if len(values) != n or min(values) < minimum:
        raise ValueError(f"expected {n} sizes of at least {minimum}, got {value}")
    return values


def _gradient(module: nn.Module, x: torch.Tensor, class_index: int, region) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    score = target_score(module(x), class_index, region).sum()
    (grad,) = torch.autograd.grad(score, x)
    return grad


def saliency(module: nn.Module, x: torch.Tensor, *, class_index: int, region=None, samples: int = 0,
             noise: float = 0.15, seed: int = 0) -> np.ndarray:
    """Gradient saliency ``|d target / d x|`` per channel; SmoothGrad when ``samples > 0``.

    Parameters
    ----------
    module : nn.Module
    x : Tensor, shape (1, C, *S)
    class_index : int
    region : Tensor of bool, shape (*S), optional
    samples : int
        SmoothGrad: number of noisy copies averaged (0: vanilla gradient).
    noise : float
        SmoothGrad noise standard deviation as a fraction of each channel's range.
    seed : int

    Returns
    -------
    ndarray, shape (C, *S), float32, >= 0
    """
    if samples <= 0:
        return _gradient(module, x, class_index, region)[0].abs().cpu().numpy().astype(np.float32)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    axes = tuple(range(2, x.ndim))
    sigma = noise * (x.amax(dim=axes, keepdim=True) - x.amin(dim=axes, keepdim=True))
    total = torch.zeros_like(x[0])
    for _ in range(samples):
        noisy = x + sigma * torch.randn(x.shape, generator=generator).to(x.device)
        total += _gradient(module, noisy, class_index, region)[0].abs()
    return (total / samples).cpu().numpy().astype(np.float32)


def integrated_gradients(module: nn.Module, x: torch.Tensor, *, class_index: int, region=None,
                         baseline: torch.Tensor | None = None, steps: int = 32,
                         batch_size: int = 8) -> np.ndarray:
    """Integrated gradients from a baseline (each channel's mean by default).

    Parameters
    ----------
    module : nn.Module
    x : Tensor, shape (1, C, *S)
    class_index : int
    region : Tensor of bool, shape (*S), optional
    baseline : Tensor, shape (1, C, *S) or broadcastable, optional
    steps : int
        Riemann midpoints along the straight path.
    batch_size : int
        Path points per backward pass.

    Returns
    -------
    ndarray, shape (C, *S), float32
        Signed attributions; they sum to about ``target(x) - target(baseline)``.
    """
    if baseline is None:
        baseline = x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)
    baseline = baseline.expand_as(x)
    total = torch.zeros_like(x[0])
    for gradients in _path_gradients(module, x, baseline, class_index, region, steps, batch_size):
        total += gradients
    return ((x - baseline)[0] * total / steps).detach().cpu().numpy().astype(np.float32)


def _path_gradients(module, x, baseline, class_index, region, steps: int, batch_size: int):
    """Yield the gradients summed over each batch of midpoints of the path from ``baseline`` to ``x``."""
    alphas = (torch.arange(steps, dtype=x.dtype, device=x.device) + 0.5) / steps
    for begin in range(0, steps, batch_size):
        a = alphas[begin : begin + batch_size].reshape((-1,) + (1,) * (x.ndim - 1))
        yield _gradient(module, baseline + a * (x - baseline), class_index, region).sum(dim=0)


def channel_ablation(module: nn.Module, x: torch.Tensor, *, class_index: int, region=None,
                     fill: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Replace each channel by its mean and measure the change of the target.

    Parameters
    ----------
    module : nn.Module
    x : Tensor, shape (1, C, *S)
    class_index : int
    region : Tensor of bool, shape (*S), optional
    fill : Tensor, shape (C,), optional
        Value each channel is replaced by; its mean by default.

    Returns
    -------
    drops : ndarray, shape (C,)
        ``target(x) - target(x with channel c ablated)``.
    maps : ndarray, shape (C, *S), float32
        Per-voxel drop of the class logit (segmentation models only; zeros otherwise).
    """
    channels = x.shape[1]
    batch = x.repeat(channels + 1, *([1] * (x.ndim - 1)))
    for c in range(channels):
        batch[c + 1, c] = x[0, c].mean() if fill is None else fill[c]
    with torch.no_grad():
        output = module(batch)
        scores = target_score(output, class_index, region)
    drops = (scores[0] - scores[1:]).cpu().numpy()
    if output.ndim > 2:
        maps = (output[:1, class_index] - output[1:, class_index]).cpu().numpy().astype(np.float32)
    else:
        maps = np.zeros((channels,) + tuple(x.shape[2:]), np.float32)
    return drops.astype(np.float64), maps


# ----------------------------------------------------------------------------- attention

NO_ATTENTION = "attention maps need a transformer model, e.g. architecture='unetr'"


@dataclass
class TokenAttention:
    """The attention of one vision transformer, recorded during a forward pass.

    Attributes
    ----------
    name : str
        The transformer's module name.
    blocks : list of str
        Names of its self-attention blocks, in order.
    matrices : list of Tensor, each shape (N, N)
        Each block's attention (softmax weights, before dropout) for the first item of
        the batch, averaged over heads; row ``i`` is what query token ``i`` pays to
        every key token and sums to 1.
    grid : tuple of int
        Token grid (tokens per axis); token order is C order over it.
    patch : tuple of int
        Voxels per token along each axis.
    """

    name: str
    blocks: list[str]
    matrices: list[torch.Tensor]
    grid: tuple[int, ...] = ()
    patch: tuple[int, ...] = ()


def _transformers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    from monai.networks.nets import ViT

    return [(name, sub) for name, sub in module.named_modules() if isinstance(sub, ViT)]


def _block_names(name: str, vit: nn.Module) -> list[str]:
    prefix = f"{name}." if name else ""
    return [f"{prefix}blocks.{index}.attn" for index in range(len(vit.blocks))]


def attention_blocks(module: nn.Module) -> list[str]:
    """Names of the self-attention blocks of a network's vision transformers, in order."""
    return [block for name, vit in _transformers(module) for block in _block_names(name, vit)]


def record_attention(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[TokenAttention]]:
    """Run the network once and keep the attention of every block of its vision transformers.

    Parameters
    ----------
    module : nn.Module
        A network holding MONAI ``ViT`` encoders (UNETR, ViT, ...) with a convolutional
        patch embedding.
    x : Tensor, shape (1, C, *S)

    Returns
    -------
    output : Tensor
        The network's output.
    records : list of TokenAttention
        One per transformer.

    Raises
    ------
    ValueError
        The network has no vision transformer, or its attention is never materialised
        (flash attention).
    """
    transformers = _transformers(module)
    if not transformers:
        if any(isinstance(sub, torch.jit.ScriptModule) for sub in module.modules()):
            raise ValueError(f"{NO_ATTENTION}; a TorchScript model's attention cannot be read (no hooks)")
        raise ValueError(NO_ATTENTION)
    records, handles = [], []
    try:
        for name, vit in transformers:
            record = TokenAttention(name, _block_names(name, vit), [])
            projection = vit.patch_embedding.patch_embeddings
            if not isinstance(projection, _CONV):
                raise ValueError(f"{name or 'the transformer'} embeds patches with a perceptron; attention maps "
                                 "need proj_type='conv'")

            def keep_grid(_module, args, record=record, stride=tuple(int(s) for s in projection.stride)):
                record.patch = stride
                record.grid = tuple(int(s) // p for s, p in zip(args[0].shape[2:], stride))

            handles.append(vit.register_forward_pre_hook(keep_grid))
            for block_name, block in zip(record.blocks, vit.blocks):
                if block.attn.use_flash_attention:
                    raise ValueError(f"{block_name} uses flash attention, whose weights cannot be read")
                handles.append(block.attn.drop_weights.register_forward_hook(
                    lambda _module, args, _output, record=record: record.matrices.append(
                        args[0].detach()[0].float().mean(dim=0))))
            records.append(record)
        with torch.no_grad():
            output = module(x)
    finally:
        for handle in handles:
            handle.remove()
    return output, records


def attention_rollout(matrices: Sequence[torch.Tensor]) -> torch.Tensor:
    """Attention rollout across blocks with the residual identity (Abnar & Zuidema 2020).

    Each block's attention ``A`` becomes ``(A + I) / 2`` (the skip connection carries the
    token itself), rows renormalised, and the blocks are chained: ``R = Â_L ... Â_1``.

    Parameters
    ----------
    matrices : sequence of Tensor, each shape (N, N)
        Head-averaged attention of consecutive blocks, first block first.

    Returns
    -------
    Tensor, shape (N, N)
        Row ``i``: how much token ``i`` after the last block draws from every input token;
        rows sum to 1.
    """
    identity = torch.eye(matrices[0].shape[-1], dtype=matrices[0].dtype, device=matrices[0].device)
    rolled = identity
    for matrix in matrices:
        mixed = 0.5 * matrix + 0.5 * identity
        rolled = (mixed / mixed.sum(dim=-1, keepdim=True)) @ rolled
    return rolled


def query_attention(matrix: torch.Tensor, query_weights: torch.Tensor) -> torch.Tensor:
    """The attention that weighted query tokens pay to every token.

    Parameters
    ----------
    matrix : Tensor, shape (N, N)
        Attention (or rollout) with rows summing to 1.
    query_weights : Tensor, shape (N,)
        Non-negative weight of each query token, not all zero.

    Returns
    -------
    Tensor, shape (N,)
        ``w @ A / sum(w)``: a distribution over the key tokens (sums to 1).
    """
    total = query_weights.sum()
    if total <= 0:
        raise ValueError("the query tokens have no weight; choose a region the model sees")
    return (query_weights / total) @ matrix


def _pool_to_tokens(voxels: torch.Tensor, grid, patch) -> torch.Tensor:
    """Sum voxel values over each token's patch; C order over the grid."""
    covered = voxels[tuple(slice(0, g * p) for g, p in zip(grid, patch))]
    split = covered.reshape([size for pair in zip(grid, patch) for size in pair])
    return split.sum(dim=tuple(range(1, 2 * len(grid), 2))).flatten()


def _tokens_to_voxels(values: torch.Tensor, grid, patch, spatial) -> torch.Tensor:
    """Spread one value per token over the voxels it covers (zero where no token reaches)."""
    out = values.reshape(grid)
    for axis, p in enumerate(patch):
        out = out.repeat_interleave(p, dim=axis)
    return F.pad(out, [pad for axis in reversed(range(len(grid))) for pad in (0, spatial[axis] - out.shape[axis])])


def attention_map(module: nn.Module, x: torch.Tensor, *, class_index: int, region=None, layer: str | None = None,
                  rollout: bool = False) -> np.ndarray:
    """Where the target's tokens look: attention of the region's tokens, on the input grid.

    Each query token is weighted by the sum, over its voxels inside the region, of the
    target class's probability (the region alone where that underflows to zero). The
    attention those queries pay to every token (averaged over heads; at one block, or
    rolled out from the first block to it) is drawn on the voxels each key token covers.
    A network with several transformers (late fusion) gets the mean of their maps.

    Parameters
    ----------
    module : nn.Module
        Holds MONAI ``ViT`` encoders fed with ``x``'s grid (UNETR, ViT).
    x : Tensor, shape (1, C, *S)
    class_index : int
    region : Tensor of bool, shape (*S), optional
    layer : str, optional
        An attention block (see :func:`attention_blocks`); its transformer only. The
        last block of every transformer by default.
    rollout : bool
        Attention rollout up to the block instead of the block's own attention.

    Returns
    -------
    ndarray, shape (*S), float32
        In [0, 1], 1 at the most attended token.
    """
    output, records = record_attention(module, x)
    if layer is not None:
        records = [record for record in records if layer in record.blocks]
        if not records:
            raise ValueError(f"no attention block {layer!r} in the model; choose one of {attention_blocks(module)}")
    spatial = tuple(x.shape[2:])
    if not 0 <= class_index < output.shape[1]:
        raise ValueError(f"class index {class_index} is outside the model's {output.shape[1]} classes")
    inside = torch.ones(spatial, device=x.device) if region is None else region.to(x.device, torch.float32)
    weights = inside
    if output.ndim > 2:
        weights = inside * torch.softmax(output.float(), dim=1)[0, class_index]
        if not weights.any():
            weights = inside
    total = torch.zeros(spatial, dtype=torch.float32, device=x.device)
    for record in records:
        if len(record.grid) != len(spatial) or record.grid != tuple(s // p for s, p in zip(spatial, record.patch)):
            raise ValueError(f"{record.name or 'the transformer'} does not see the input grid {spatial}; "
                             "attention maps need transformers fed with the model's input")
        stop = record.blocks.index(layer) + 1 if layer is not None else len(record.matrices)
        matrix = attention_rollout(record.matrices[:stop]) if rollout else record.matrices[stop - 1]
        tokens = math.prod(record.grid)
        special = matrix.shape[-1] - tokens  # a class token comes first
        queries = torch.zeros(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
        queries[special:] = _pool_to_tokens(weights, record.grid, record.patch)
        keys = query_attention(matrix, queries)[special:]
        total += _tokens_to_voxels(keys / keys.sum(), record.grid, record.patch, spatial)
    return (total / total.max()).cpu().numpy().astype(np.float32)


# ----------------------------------------------------------------------------- on images


@dataclass
class Explanation:
    """An explanation on the images' grid.

    Attributes
    ----------
    map : ndarray, shape (*S), float32
        One non-negative map (per-channel maps combined by the sum of magnitudes).
    channel_maps : ndarray, shape (C, *S), float32, or None
        One map per input modality (saliency, SmoothGrad, integrated gradients).
    method : str
    target : int
        Label value explained.
    layer : str or None
        Grad-CAM layer, or the attention block(s) of "attention" ("rollout to ..." when
        rolled out).
    """

    map: np.ndarray
    channel_maps: np.ndarray | None
    method: str
    target: int
    layer: str | None = None


@dataclass
class Attribution:
    """How much each modality contributed to the target.

    Attributes
    ----------
    scores : ndarray, shape (C,)
        Non-negative, summing to 1 (all zeros when no channel changes the target).
    raw : ndarray, shape (C,)
        Unnormalised values: the target's drop (ablation) or the summed attribution (IG).
    maps : ndarray, shape (C, *S), float32
        One map per modality on the images' grid.
    names : list of str
    method : str
    """

    scores: np.ndarray
    raw: np.ndarray
    maps: np.ndarray
    names: list[str]
    method: str


def box_region(shape, box) -> np.ndarray:
    """A boolean mask of a box given as ``(low, high)`` voxel corners (high exclusive).

    Parameters
    ----------
    shape : sequence of int
    box : pair of sequences of int, each of length len(shape)

    Returns
    -------
    ndarray of bool, shape ``shape``
    """
    low, high = (np.asarray(corner, dtype=np.int64) for corner in box)
    if low.size != len(shape) or high.size != len(shape):
        raise ValueError(f"a box for a {len(shape)}D image needs {len(shape)} low and high coordinates")
    low, high = np.clip(low, 0, shape), np.clip(high, 0, shape)
    if np.any(high <= low):
        raise ValueError(f"the box {box} is empty inside the image of shape {tuple(shape)}")
    mask = np.zeros(shape, bool)
    mask[tuple(slice(int(a), int(b)) for a, b in zip(low, high))] = True
    return mask


def _class_index(model: SegmentationNet, target: int) -> int:
    values = model.config.label_values
    if int(target) not in values:
        raise ValueError(f"class {target} is not one of the model's classes {values}")
    return values.index(int(target))


def _fixed_window(config, shape, low, high, region_given: bool):
    """The crop of exactly the model's patch size centred on the box ``low:high``."""
    window = np.asarray(config.patch_size)
    if not region_given and np.any(np.asarray(shape) > window):
        raise ValueError(f"the {config.architecture} model sees windows of {config.patch_size} voxels but the "
                         f"images are {list(shape)}; choose a region (a label or a box) that fits in one window")
    if np.any(high - low > window):
        raise ValueError(f"the region spans {(high - low).tolist()} voxels, more than the {config.architecture} "
                         f"model's window of {config.patch_size}; choose a smaller region")
    start = np.clip((low + high - window) // 2, 0, np.maximum(np.asarray(shape) - window, 0))
    return start, np.minimum(start + window, shape)


def _prepare(model: SegmentationNet, images, region, margin):
    """Normalised, cropped input tensor (CPU), region tensor, where the crop sits, and the reference.

    The whole image is normalised (as for :func:`~.segment.predict`), then cropped. A
    model with a fixed input size gets one window of its patch size centred on the
    region (the whole image if it fits), padded at the far side when the image is smaller.
    """
    images = check_images(images)
    config = model.config
    if images.shape[0] != config.in_channels:
        raise ValueError(f"the model takes {config.in_channels} channels ({', '.join(config.channel_names)}) "
                         f"but {images.shape[0]} images were given")
    shape = images.shape[1:]
    if len(shape) != config.spatial_dims:
        raise ValueError(f"the model is {config.spatial_dims}D but the images are {len(shape)}D")
    if region is None and not config.fixed_input:
        # the whole image means the imaged object: voxels outside the field of view are not
        # segmented (see segment.predict), so they are neither summed nor explained
        outside = outside_view(images)
        if outside.any() and not outside.all():
            region = ~outside
    if region is not None:
        if isinstance(region, tuple) and len(region) == 2:
            region = box_region(shape, region)
        region = np.asarray(region).astype(bool)
        if region.shape != shape:
            raise ValueError(f"the region has shape {region.shape} but the images {shape}")
        if not region.any():
            raise ValueError("the region is empty; choose a label present in the mask or a larger box")
        if margin is None:
            margin = [p // 2 for p in config.patch_size]
        margin = _per_axis(margin, None, len(shape), minimum=0)
        where = np.argwhere(region)
        low, high = where.min(axis=0), where.max(axis=0) + 1
        if not config.fixed_input:
            low, high = np.maximum(low - margin, 0), np.minimum(high + np.asarray(margin), shape)
    else:
        low, high = np.zeros(len(shape), int), np.asarray(shape)
    if config.fixed_input:
        low, high = _fixed_window(config, shape, low, high, region is not None)
    crop = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
    normalised = model.normalise(images)
    sub = normalised[(slice(None), *crop)]
    if config.fixed_input:
        pad = [p - s for p, s in zip(config.patch_size, sub.shape[1:])]
    else:
        pad = [(-s) % config.size_divisor for s in sub.shape[1:]]
    x = torch.from_numpy(np.pad(sub, [(0, 0)] + [(0, p) for p in pad], mode="edge"))[None]
    region_tensor = None
    if region is not None:
        region_tensor = torch.from_numpy(np.pad(region[crop], [(0, p) for p in pad]))
    return x, region_tensor, crop, shape, _reference(normalised, x)


def _reference(normalised: np.ndarray, x: torch.Tensor) -> torch.Tensor:
    """Each channel's "no signal" value, shape (1, C, 1, ...), for baselines, occlusion and ablation.

    A channel with a constant background (the minimum held by at least
    :data:`BACKGROUND_FRACTION` of the image's voxels: skull-stripped MRI, padding, the
    outside of a field of view) gets that background value, so the background itself is
    never credited; any other channel gets its mean over ``x``.
    """
    reference = x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)
    for c, channel in enumerate(normalised):
        low = channel.min()
        if np.count_nonzero(channel == low) >= BACKGROUND_FRACTION * channel.size:
            reference[0, c] = float(low)
    return reference


def _paste(values: np.ndarray, crop, shape, leading: int = 0) -> np.ndarray:
    spatial = tuple(s.stop - s.start for s in crop)
    out = np.zeros(values.shape[:leading] + tuple(shape), np.float32)
    out[(Ellipsis, *crop)] = values[(Ellipsis, *[slice(0, s) for s in spatial])]
    return out


class _Tiling:
    """The sliding windows of :func:`~.segment.predict` over a grid, and how their overlaps blend.

    Windows of the model's patch size (clipped to the grid) on MONAI's scan with
    :data:`OVERLAP`, each weighted by a Gaussian importance map normalised so that the
    weights of all windows sum to 1 at every voxel (one window: weight 1). The target of
    a window is the class logit times its weight (times the region), so the targets of
    all windows add up to the target of the blended prediction, and gradient maps of the
    windows simply add up. Windows holding no region voxel are left out (they add nothing).
    """

    def __init__(self, shape, patch, region: torch.Tensor | None):
        from monai.data.utils import compute_importance_map
        from monai.inferers.utils import _get_scan_interval, dense_patch_slices

        shape = tuple(int(s) for s in shape)
        size = [min(int(p), s) for p, s in zip(patch, shape)]
        interval = _get_scan_interval(shape, size, len(size), [OVERLAP] * len(size))
        windows = [tuple(slice(int(w.start), int(w.stop)) for w in window)
                   for window in dense_patch_slices(shape, size, interval)]
        if len(windows) == 1:
            self.importance = torch.ones(size)
        else:
            self.importance = compute_importance_map(tuple(size), mode="gaussian", sigma_scale=0.125)
        self.total = torch.zeros(shape)
        for window in windows:
            self.total[window] += self.importance
        self.region = region
        self.windows = [w for w in windows if region is None or bool(region[w].any())]

    def weights(self, window) -> torch.Tensor:
        """Blending weight of each voxel of a window, shape (*P)."""
        return self.importance / self.total[window]

    def target(self, window, device) -> torch.Tensor:
        """Weight of each voxel's logit in the window's target, shape (*P), on ``device``."""
        weights = self.weights(window)
        return (weights if self.region is None else weights * self.region[window]).to(device)


def _patch(x: torch.Tensor, window, device) -> torch.Tensor:
    return x[(slice(None), slice(None), *window)].to(device)


def _saliency_steps(model, x, tiling: _Tiling, class_index: int, samples: int, device, *, noise: float = 0.15,
                    seed: int = 0):
    """:func:`saliency` window by window (SmoothGrad noise drawn on the whole grid); yields progress."""
    rounds = max(samples, 1)
    count = rounds * len(tiling.windows)
    yield 0, count
    generator = torch.Generator(device="cpu").manual_seed(seed)
    axes = tuple(range(2, x.ndim))
    sigma = noise * (x.amax(dim=axes, keepdim=True) - x.amin(dim=axes, keepdim=True))
    total = torch.zeros_like(x[0])
    done = 0
    for _ in range(rounds):
        noisy = x + sigma * torch.randn(x.shape, generator=generator) if samples > 0 else x
        gradient = torch.zeros_like(x[0])
        for window in tiling.windows:
            part = _gradient(model, _patch(noisy, window, device), class_index, tiling.target(window, device))
            gradient[(slice(None), *window)] += part[0].cpu()
            done += 1
            yield done, count
        total += gradient.abs()
    return (total / rounds).numpy().astype(np.float32)


def _ig_steps(model, x, tiling: _Tiling, class_index: int, baseline, steps: int, device, batch_size: int = 8):
    """:func:`integrated_gradients` window by window; yields progress after each batch of path points."""
    count = math.ceil(steps / batch_size) * len(tiling.windows)
    yield 0, count
    baseline = baseline.expand_as(x)
    total = torch.zeros_like(x[0])
    done = 0
    for window in tiling.windows:
        for gradients in _path_gradients(model, _patch(x, window, device), _patch(baseline, window, device),
                                         class_index, tiling.target(window, device), steps, batch_size):
            total[(slice(None), *window)] += gradients.cpu()
            done += 1
            yield done, count
    return ((x - baseline)[0] * total / steps).numpy().astype(np.float32)


def _gradcam_steps(model, x, tiling: _Tiling, class_index: int, layer, plusplus: bool, device):
    """:func:`gradcam` window by window, the maps blended by the windows' weights; yields progress."""
    count = len(tiling.windows)
    yield 0, count
    layer = layer or default_layer(model, _patch(x, tiling.windows[0], device))
    cam = torch.zeros(x.shape[2:])
    for done, window in enumerate(tiling.windows, start=1):
        values = gradcam(model, _patch(x, window, device), class_index=class_index,
                         region=tiling.target(window, device), layer=layer, plusplus=plusplus)
        cam[window] += tiling.weights(window) * torch.from_numpy(values)
        yield done, count
    return cam.numpy(), layer


def _occlusion_steps(model, x, tiling: _Tiling, class_index: int, fill, window, device, batch_size: int = 8):
    """:func:`occlusion` window by window: each occluder's drop summed over the windows it touches."""
    corners, edge = _occluders(x.shape[2:], window, None)
    starts = [np.array([w.start for w in window]) for window in tiling.windows]
    count = sum(math.ceil(len(_touching(corners, edge, start, [w.stop - w.start for w in window])) / batch_size)
                for start, window in zip(starts, tiling.windows))
    yield 0, count
    drops = torch.zeros(len(corners), dtype=torch.float32)
    done = 0
    for start, window in zip(starts, tiling.windows):
        for _ in _occlusion_drops(model, _patch(x, window, device), class_index, tiling.target(window, device),
                                  corners, edge, fill.to(device), batch_size, drops, offset=start):
            done += 1
            yield done, count
    return _paint_occlusion(drops, corners, edge, x.shape[2:]).numpy().astype(np.float32)


def _ablation_steps(model, x, tiling: _Tiling, class_index: int, fill, device):
    """:func:`channel_ablation` window by window: drops summed, maps blended; yields progress."""
    count = len(tiling.windows)
    yield 0, count
    raw = np.zeros(x.shape[1], np.float64)
    maps = torch.zeros(x.shape[1:])
    for done, window in enumerate(tiling.windows, start=1):
        drops, values = channel_ablation(model, _patch(x, window, device), class_index=class_index,
                                         region=tiling.target(window, device), fill=fill.flatten().to(device))
        raw += drops
        maps[(slice(None), *window)] += tiling.weights(window) * torch.from_numpy(values)
        yield done, count
    return raw, maps.numpy()


def _stride_period(model: nn.Module) -> int:
    """Period of the checkerboard in a network's input gradients (1: none).

    A convolution whose stride does not divide its kernel (MONAI's UNet: kernel 3, stride
    2) reaches the voxels of even and odd positions through different numbers of taps,
    so every gradient through it alternates with the position; stacked, the pattern
    repeats with the network's total stride (its size divisor).
    """
    uneven = any(isinstance(m, nn.modules.conv._ConvNd) and not m.transposed
                 and any(s > 1 and k % s for k, s in zip(m.kernel_size, m.stride)) for m in model.modules())
    return model.config.size_divisor if uneven else 1


def _destripe(maps: np.ndarray, period: int) -> np.ndarray:
    """Remove the stride checkerboard from per-channel maps (C, *S) on the windows' grid.

    The first stride-2 convolution alternates its taps voxel by voxel: the binomial
    kernel ``[1, 2, 1] / 4`` along each axis (zero at that period-2 frequency, one voxel
    of reach) removes it. The deeper strides give each phase of the total stride (the
    voxel's position modulo ``period``; the windows start at multiples of it) its own
    gain: each map is divided by the mean magnitude of its voxels of the same phase,
    relative to the mean over all phases.
    """
    if period <= 1:
        return maps
    from scipy import ndimage

    for axis in range(1, maps.ndim):
        maps = ndimage.correlate1d(maps, np.array([0.25, 0.5, 0.25], np.float32), axis=axis, mode="nearest")
    spatial = maps.shape[1:]
    blocks = maps.reshape([maps.shape[0]] + [size for s in spatial for size in (s // period, period)])
    gain = np.abs(blocks).mean(axis=tuple(range(1, 2 * len(spatial), 2)), keepdims=True)
    gain /= np.maximum(gain.mean(axis=tuple(range(2, 2 * len(spatial) + 1, 2)), keepdims=True), 1e-30)
    return (blocks / np.where(gain > 0, gain, 1)).reshape(maps.shape).astype(np.float32)


def _drain(steps):
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


def explain_steps(
    model: SegmentationNet,
    images,
    *,
    method: str,
    target: int,
    region=None,
    layer: str | None = None,
    rollout: bool = False,
    margin: int | Sequence[int] | None = None,
    samples: int = 16,
    steps: int = 32,
    window: Sequence[int] | int | None = None,
    device=None,
) -> Generator[tuple[int, int], None, Explanation]:
    """Explain one class of a segmentation model on images, window by window, yielding progress.

    The network runs on the windows of sliding-window inference (its patch size, the
    overlap of :func:`~.segment.predict`), so memory is bounded by the patch: the target
    is the class logit of the blended prediction, each window contributing its logits
    times its blending weight; gradient maps of the windows add up, Grad-CAM and
    ablation maps are blended. Windows holding no region voxel are skipped. Use
    :func:`explain_steps` for progress and cancelling.

    Parameters
    ----------
    model : SegmentationNet
    images : ndarray, shape (C, *S)
        The model's input modalities on one grid (raw intensities; normalised here).
    method : {"gradcam", "gradcampp", "occlusion", "saliency", "smoothgrad", "ig", "attention"}
        "attention" needs a transformer (``architecture="unetr"``); its map is in [0, 1].
    target : int
        Label value of the class explained.
    region : ndarray of bool, shape (*S), or tuple ``(low, high)``, optional
        Where the class logit is summed (a mask, or a box of voxel corners with ``high``
        exclusive); the whole image without one. For "attention": whose tokens'
        attention is shown.
    layer : str, optional
        Grad-CAM layer name (the deepest convolution by default), or the attention
        block of "attention" (see :func:`attention_blocks`; the last by default).
    rollout : bool
        "attention": roll the attention out across blocks up to ``layer``.
    margin : int or sequence of int, optional
        Context kept around the region (voxels); half the model's patch by default.
        The maps are zero outside the region's box plus this margin (outside the
        window for a model with a fixed input size).
    samples : int
        SmoothGrad noisy copies.
    steps : int
        Integrated-gradients path points.
    window : int or sequence of int, optional
        Occlusion window.
    device : str or torch.device, optional

    Yields
    ------
    tuple of int
        ``(done, total)`` units of work (network passes on one window): ``(0, total)``
        first, before any pass; each is a cancel point (closing the generator frees its
        arrays).

    Returns
    -------
    Explanation
        The generator's return value (``StopIteration.value``).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {METHODS}")
    device = get_device(device)
    model = model.to(device).eval()
    class_index = _class_index(model, target)
    x, region_tensor, crop, shape, reference = _prepare(model, images, region, margin)
    channel_maps = None
    if method == "attention":
        yield 0, 1
        if region_tensor is None:  # the padding is not part of the image
            region_tensor = torch.zeros(x.shape[2:], dtype=torch.bool)
            region_tensor[tuple(slice(0, s.stop - s.start) for s in crop)] = True
        values = attention_map(model, x.to(device), class_index=class_index, region=region_tensor.to(device),
                               layer=layer, rollout=rollout)
        blocks = [layer] if layer else [_block_names(name, vit)[-1] for name, vit in _transformers(model)]
        layer = ("rollout to " if rollout else "") + ", ".join(blocks)
        yield 1, 1
        return Explanation(_paste(values, crop, shape), None, method, int(target), layer)
    tiling = _Tiling(x.shape[2:], model.config.patch_size, region_tensor)
    if method in ("gradcam", "gradcampp"):
        values, layer = yield from _gradcam_steps(model, x, tiling, class_index, layer, method == "gradcampp", device)
    elif method == "occlusion":
        values = np.clip((yield from _occlusion_steps(model, x, tiling, class_index, reference, window, device)), 0,
                         None)
    else:
        if method == "ig":
            per_channel = yield from _ig_steps(model, x, tiling, class_index, reference, steps, device)
        else:
            per_channel = yield from _saliency_steps(model, x, tiling, class_index,
                                                     samples if method == "smoothgrad" else 0, device)
        per_channel = _destripe(per_channel, _stride_period(model))
        channel_maps = _paste(per_channel, crop, shape, leading=1)
        values = np.abs(per_channel).sum(axis=0)
    return Explanation(_paste(values, crop, shape), channel_maps, method, int(target),
                       layer if method.startswith("gradcam") else None)


def explain(model: SegmentationNet, images, **options) -> Explanation:
    """Explain one class of a segmentation model on images: :func:`explain_steps` run to its end.

    Parameters
    ----------
    model : SegmentationNet
    images : ndarray, shape (C, *S)
    **options
        The keyword arguments of :func:`explain_steps` (``method`` and ``target`` required).

    Returns
    -------
    Explanation
    """
    return _drain(explain_steps(model, images, **options))


def modality_attribution_steps(
    model: SegmentationNet,
    images,
    *,
    target: int,
    region=None,
    method: str = "ablation",
    margin: int | Sequence[int] | None = None,
    steps: int = 32,
    device=None,
) -> Generator[tuple[int, int], None, Attribution]:
    """One number per modality: how much it drives the target.

    Window by window as :func:`explain_steps`, yielding progress.

    Parameters
    ----------
    model : SegmentationNet
    images : ndarray, shape (C, *S)
    target : int
        Label value of the class explained.
    region : ndarray of bool, shape (*S), or tuple ``(low, high)``, optional
    method : {"ablation", "ig"}
        "ablation": ``|target(x) - target(x with the channel replaced by its reference)|``
        (its constant background where it has one, else its mean); maps are the
        per-voxel drop of the class logit. "ig": the sum of the magnitudes of the
        channel's integrated gradients; maps are those magnitudes.
    margin, steps, device
        As in :func:`explain_steps`.

    Yields
    ------
    tuple of int
        ``(done, total)``, ``(0, total)`` first.

    Returns
    -------
    Attribution
    """
    if method not in ATTRIBUTIONS:
        raise ValueError(f"unknown attribution method {method!r}; use 'ablation' or 'ig'")
    device = get_device(device)
    model = model.to(device).eval()
    class_index = _class_index(model, target)
    x, region_tensor, crop, shape, reference = _prepare(model, images, region, margin)
    tiling = _Tiling(x.shape[2:], model.config.patch_size, region_tensor)
    if method == "ablation":
        raw, maps = yield from _ablation_steps(model, x, tiling, class_index, reference, device)
        magnitude = np.abs(raw)
    else:
        per_channel = yield from _ig_steps(model, x, tiling, class_index, reference, steps, device)
        maps = np.abs(_destripe(per_channel, _stride_period(model)))
        raw = maps.reshape(maps.shape[0], -1).sum(axis=1).astype(np.float64)
        magnitude = raw
    total = magnitude.sum()
    scores = magnitude / total if total > 0 else np.zeros_like(magnitude)
    return Attribution(scores, raw, _paste(maps, crop, shape, leading=1), list(model.config.channel_names), method)


def modality_attribution(model: SegmentationNet, images, **options) -> Attribution:
    """One number per modality: :func:`modality_attribution_steps` run to its end.

    Parameters
    ----------
    model : SegmentationNet
    images : ndarray, shape (C, *S)
    **options
        The keyword arguments of :func:`modality_attribution_steps` (``target`` required).

    Returns
    -------
    Attribution
    """
    return _drain(modality_attribution_steps(model, images, **options))


def randomized_copy(model: SegmentationNet, *, seed: int = 0) -> SegmentationNet:
    """A copy of the model with every weight re-drawn (for the model-randomisation sanity check).

    Parameters
    ----------
    model : SegmentationNet
    seed : int

    Returns
    -------
    SegmentationNet
        Same architecture and configuration; parameters re-initialised by each
        module's own ``reset_parameters``.
    """
    clone = copy.deepcopy(model)
    torch.manual_seed(seed)
    for module in clone.modules():
        if module is not clone and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return clone.eval()
