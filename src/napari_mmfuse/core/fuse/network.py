"""Feature-level fusion network, trained offline: its weights ship with the package.

:class:`FusionNet` encodes every input with one shared encoder (the anatomical first input
is flagged by an extra channel), fuses the inputs' features by per-pixel attention, and
decodes, for every input (from the fused features and that input's own), a non-negative
per-pixel gain: the fused image is the sum of the inputs times their gains. Each input's
contribution is its term's share of that sum, so the contribution maps say exactly where
the fused intensity came from. The network takes
any number of inputs (two in training) and any image size; volumes are fused plane by
plane along their first axis.

The weights (``fusion_net.pt`` beside this module) are trained by
``training/train_fusion.py`` on the tuning split of the Harvard pairs and load with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F

from ..kernels import cpu_memory_format

#: The shipped weights: a plain state dict plus the constructor's arguments.
WEIGHTS = Path(__file__).with_name("fusion_net.pt")
#: Planes of a volume sent through the network at once (bounds the memory of 3D fusion).
PLANES_PER_PASS = 2


def _conv(cin: int, cout: int, dilation: int = 1) -> torch.nn.Conv2d:
    return torch.nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, padding_mode="replicate")


class FusionNet(torch.nn.Module):
    """Shared encoder per input -> attention fusion of features -> per-input gain decoder.

    Parameters
    ----------
    width : int
        Channels of the features.
    """

    def __init__(self, width: int = 12):
        super().__init__()
        self.width = int(width)
        w = self.width
        # input channels: the image, its gradient magnitude, the anatomical flag
        self.encoder = torch.nn.Sequential(
            _conv(3, w), torch.nn.LeakyReLU(0.1),
            _conv(w, w, 2), torch.nn.LeakyReLU(0.1),
            _conv(w, w, 4), torch.nn.LeakyReLU(0.1),
        )
        self.attention = torch.nn.Conv2d(w, 1, 1)
        self.decoder = torch.nn.Sequential(
            _conv(2 * w, w, 4), torch.nn.LeakyReLU(0.1),
            _conv(w, w, 2), torch.nn.LeakyReLU(0.1),
            _conv(w, w), torch.nn.LeakyReLU(0.1),
        )
        self.gain = torch.nn.Conv2d(2 * w + 1, 1, 1)

    def forward(self, stack: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fuse a batch.

        Parameters
        ----------
        stack : Tensor, shape (B, N, H, W)
            N co-registered grey images in [0, 1]; the first is the anatomical one.

        Returns
        -------
        fused : Tensor, shape (B, 1, H, W), in [0, 1]
        terms : Tensor, shape (B, N, H, W), >= 0
            Each input times its per-pixel gain; ``fused`` is their sum clipped to [0, 1].
        """
        batch, count, height, width = stack.shape
        images = stack.reshape(batch * count, 1, height, width)
        gx = images[..., :, 1:] - images[..., :, :-1]
        gy = images[..., 1:, :] - images[..., :-1, :]
        gradient = torch.sqrt(F.pad(gx, (0, 1, 0, 0)) ** 2 + F.pad(gy, (0, 0, 0, 1)) ** 2 + 1e-8)
        flag = torch.zeros(batch, count, 1, height, width, dtype=stack.dtype, device=stack.device)
        flag[:, 0] = 1
        features = self.encoder(torch.cat([images, gradient, flag.reshape(batch * count, 1, height, width)], 1))
        features = features.reshape(batch, count, self.width, height, width)
        attention = torch.softmax(self.attention(features.flatten(0, 1)).reshape(batch, count, height, width), 1)
        fused_features = (attention[:, :, None] * features).sum(1)  # (B, w, H, W)
        decoded = self.decoder(torch.cat([fused_features, features[:, 0]], 1))
        per_input = torch.cat([decoded[:, None].expand(-1, count, -1, -1, -1), features, stack[:, :, None]], 2)
        gains = F.softplus(self.gain(per_input.flatten(0, 1))).reshape(batch, count, height, width)
        terms = gains * stack
        fused = terms.sum(1, keepdim=True).clamp(0, 1)
        return fused, terms


def contributions(terms: torch.Tensor) -> torch.Tensor:
    """Each input's share of the fused image, ``term_i / sum_j term_j``, shape of ``terms`` (equal where all are 0)."""
    total = terms.sum(1, keepdim=True)
    shares = terms / total.clamp(min=1e-12)
    return torch.where(total > 0, shares, torch.full_like(shares, 1 / terms.shape[1]))


def load(path: str | Path = WEIGHTS, device: torch.device | str = "cpu") -> FusionNet:
    """A :class:`FusionNet` with the weights in ``path`` (read with ``weights_only=True``), in eval mode,
    in :func:`~napari_mmfuse.core.kernels.cpu_memory_format` (channels-last on the CPU).

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        The file is not a fusion-network checkpoint.
    """
    checkpoint = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "width" not in checkpoint:
        raise ValueError(f"{path} is not a fusion-network checkpoint (expected 'state_dict' and 'width')")
    net = FusionNet(int(checkpoint["width"]))
    net.load_state_dict(checkpoint["state_dict"])
    # channels-last on the CPU: a bare 256x256 forward pass in 39 ms instead of 50 on one thread (issue 15's note)
    return net.to(device, memory_format=cpu_memory_format(2, device)).eval()


@functools.lru_cache(maxsize=4)
def _shipped(device: str) -> FusionNet:
    return load(WEIGHTS, device)


def network(stack: torch.Tensor):
    """Fuse with the shipped :class:`FusionNet`; volumes plane by plane along the first axis.

    Parameters
    ----------
    stack : Tensor, shape (N, H, W) or (N, Z, Y, X), in [0, 1]; the first input is the anatomical one.

    Returns
    -------
    fused : Tensor, shape (H, W) or (Z, Y, X)
    weights : Tensor, shape of ``stack``: each input's share of the fused intensity
    """
    if stack.ndim not in (3, 4):
        raise ValueError(f"the fusion network needs 2D or 3D images, got {stack.ndim - 1}D")
    net = _shipped(str(stack.device))
    with torch.inference_mode():
        if stack.ndim == 3:
            fused, terms = net(stack[None])
            return fused[0, 0], contributions(terms)[0]
        fused = torch.empty(stack.shape[1:], dtype=stack.dtype, device=stack.device)
        weights = torch.empty_like(stack)
        for start in range(0, stack.shape[1], PLANES_PER_PASS):
            planes = stack[:, start : start + PLANES_PER_PASS].transpose(0, 1)
            out, terms = net(planes)
            fused[start : start + PLANES_PER_PASS] = out[:, 0]
            weights[:, start : start + PLANES_PER_PASS] = contributions(terms).transpose(0, 1)
        return fused, weights
