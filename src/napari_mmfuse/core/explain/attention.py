"""Attention maps of vision transformers (MONAI ``ViT`` inside e.g. UNETR)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .tensors import CONV_TYPES

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


def vision_transformers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The MONAI ``ViT`` modules of a network, with their names."""
    from monai.networks.nets import ViT

    return [(name, sub) for name, sub in module.named_modules() if isinstance(sub, ViT)]


def block_names(name: str, vit: nn.Module) -> list[str]:
    """Names of the attention blocks of the transformer ``vit`` called ``name``."""
    prefix = f"{name}." if name else ""
    return [f"{prefix}blocks.{index}.attn" for index in range(len(vit.blocks))]


def attention_blocks(module: nn.Module) -> list[str]:
    """Names of the self-attention blocks of a network's vision transformers, in order."""
    return [block for name, vit in vision_transformers(module) for block in block_names(name, vit)]


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
    found = vision_transformers(module)
    if not found:
        if any(isinstance(sub, torch.jit.ScriptModule) for sub in module.modules()):
            raise ValueError(f"{NO_ATTENTION}; a TorchScript model's attention cannot be read (no hooks)")
        raise ValueError(NO_ATTENTION)
    records, handles = [], []
    try:
        for name, vit in found:
            record = TokenAttention(name, block_names(name, vit), [])
            projection = vit.patch_embedding.patch_embeddings
            if not isinstance(projection, CONV_TYPES):
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
