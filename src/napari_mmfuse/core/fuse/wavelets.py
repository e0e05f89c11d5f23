"""Periodised orthogonal discrete wavelet transform (Haar, Daubechies-2), separable in nD."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

WAVELETS = {
    "haar": [1 / math.sqrt(2), 1 / math.sqrt(2)],
    "db2": [
        (1 + math.sqrt(3)) / (4 * math.sqrt(2)),
        (3 + math.sqrt(3)) / (4 * math.sqrt(2)),
        (3 - math.sqrt(3)) / (4 * math.sqrt(2)),
        (1 - math.sqrt(3)) / (4 * math.sqrt(2)),
    ],
}


def filter_bank(wavelet: str, device) -> torch.Tensor:
    """Orthogonal analysis filters, shape (2, K): low-pass h and high-pass g[k] = (-1)^k h[K-1-k]."""
    if wavelet not in WAVELETS:
        raise ValueError(f"wavelet must be one of {sorted(WAVELETS)}, not {wavelet!r}")
    low = torch.tensor(WAVELETS[wavelet], dtype=torch.float32, device=device)
    signs = torch.tensor([(-1.0) ** k for k in range(low.numel())], device=device)
    return torch.stack([low, signs * low.flip(0)])


def dwt_1d(x: torch.Tensor, bank: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One level of a periodised orthogonal DWT along ``dim`` (even length).

    ``a[n] = sum_k h[k] x[(2n + k) mod L]``, ``d[n] = sum_k g[k] x[(2n + k) mod L]``.

    Returns
    -------
    approximation, detail : Tensor, each with ``dim`` halved
    """
    moved = x.movedim(dim, -1)
    shape = moved.shape
    lines = moved.reshape(-1, 1, shape[-1])
    taps = bank.shape[1]
    lines = torch.cat([lines, lines[..., : taps - 2]], dim=-1) if taps > 2 else lines
    out = F.conv1d(lines, bank.unsqueeze(1), stride=2)
    half = shape[-1] // 2
    approximation = out[:, 0].reshape(*shape[:-1], half).movedim(-1, dim)
    detail = out[:, 1].reshape(*shape[:-1], half).movedim(-1, dim)
    return approximation, detail


def idwt_1d(approximation: torch.Tensor, detail: torch.Tensor, bank: torch.Tensor, dim: int) -> torch.Tensor:
    """Inverse of :func:`dwt_1d` (the transpose of the orthogonal analysis)."""
    a = approximation.movedim(dim, -1)
    shape = a.shape
    both = torch.stack([a.reshape(-1, shape[-1]), detail.movedim(dim, -1).reshape(-1, shape[-1])], dim=1)
    full = F.conv_transpose1d(both, bank.unsqueeze(1), stride=2)[:, 0]
    length = 2 * shape[-1]
    out = full[:, :length].clone()
    tail = full[:, length:]
    out[:, : tail.shape[-1]] += tail
    return out.reshape(*shape[:-1], length).movedim(-1, dim)


def pad_even(x: torch.Tensor, n_spatial: int) -> torch.Tensor:
    """``x`` with its last sample repeated along every spatial axis of odd length."""
    for dim in range(x.ndim - n_spatial, x.ndim):
        if x.shape[dim] % 2:
            x = torch.cat([x, x.narrow(dim, x.shape[dim] - 1, 1)], dim=dim)
    return x


def dwt(x: torch.Tensor, bank: torch.Tensor, n_spatial: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One level of a separable nD DWT of (B, *spatial) with even sizes.

    Returns
    -------
    approximation : Tensor, shape (B, *spatial / 2)
    details : list of 2**n - 1 Tensors, same shape (every band with a high-pass factor)
    """
    bands = [x]
    for dim in range(x.ndim - n_spatial, x.ndim):
        bands = [part for band in bands for part in dwt_1d(band, bank, dim)]
    return bands[0], bands[1:]


def idwt(approximation: torch.Tensor, details: list[torch.Tensor], bank: torch.Tensor, n_spatial: int) -> torch.Tensor:
    """Inverse of :func:`dwt`."""
    bands = [approximation, *details]
    for dim in reversed(range(approximation.ndim - n_spatial, approximation.ndim)):
        bands = [idwt_1d(bands[i], bands[i + 1], bank, dim) for i in range(0, len(bands), 2)]
    return bands[0]


