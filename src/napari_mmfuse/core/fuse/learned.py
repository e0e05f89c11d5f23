"""Learned fusion: a small CNN trained on the images it fuses to predict per-pixel weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...operations import Progress
from ..kernels import gradient_magnitude


def _ssim_map(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM map of (B, 1, H, W) images in [0, 1] with a 7x7 uniform window.

    Ours, not scikit-image's: it runs in torch and is differentiable (the training loss).
    """
    c1, c2 = 0.01**2, 0.03**2
    mx, my = F.avg_pool2d(x, 7, 1, 3, count_include_pad=False), F.avg_pool2d(y, 7, 1, 3, count_include_pad=False)
    vx = F.avg_pool2d(x * x, 7, 1, 3, count_include_pad=False) - mx**2
    vy = F.avg_pool2d(y * y, 7, 1, 3, count_include_pad=False) - my**2
    cxy = F.avg_pool2d(x * y, 7, 1, 3, count_include_pad=False) - mx * my
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))


class WeightNet(torch.nn.Module):
    """Small fully convolutional net: N images -> N per-pixel softmax weights.

    Dilated 3x3 convolutions (receptive field 31 pixels); the last layer starts at zero
    so training starts from the plain average. Each input's logits are centred on their
    mean over the image: the net decides where a source wins, not whether it is used at
    all. Without that, the loss terms that favour one source on most pixels (a noisy
    T1's gradients, its brighter mean) move every logit together from the first steps,
    the softmax saturates (logit gaps of hundreds) and its gradients vanish before the
    net learns where the other source (a PET hot spot) should win: the fusion collapses
    to one source.
    """

    def __init__(self, n_inputs: int, width: int = 16):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(2 * n_inputs, width, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(width, width, 3, padding=2, dilation=2),
            torch.nn.ReLU(),
            torch.nn.Conv2d(width, width, 3, padding=4, dilation=4),
            torch.nn.ReLU(),
            torch.nn.Conv2d(width, width, 3, padding=8, dilation=8),
            torch.nn.ReLU(),
        )
        self.head = torch.nn.Conv2d(width, n_inputs, 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, stack: torch.Tensor) -> torch.Tensor:
        """Weights, shape (B, N, H, W), for images ``stack``, shape (B, N, H, W)."""
        features = torch.cat([stack, gradient_magnitude(stack, 2)], dim=1)
        logits = self.head(self.body(features))
        return torch.softmax(logits - logits.mean(dim=(2, 3), keepdim=True), dim=1)


def _learned_loss(weights: torch.Tensor, stack: torch.Tensor, lambdas: tuple[float, float, float]) -> torch.Tensor:
    fused = (weights * stack).sum(1, keepdim=True)
    ssim_term = sum(1 - _ssim_map(fused, stack[:, i : i + 1]).mean() for i in range(stack.shape[1])) / stack.shape[1]
    grad_target = gradient_magnitude(stack, 2).amax(1, keepdim=True)
    grad_term = (gradient_magnitude(fused, 2, eps=1e-8) - grad_target).abs().mean()
    intensity_term = (fused - stack.amax(1, keepdim=True)).abs().mean()
    return lambdas[0] * ssim_term + lambdas[1] * grad_term + lambdas[2] * intensity_term


def _training_planes(stack: torch.Tensor, count: int) -> torch.Tensor:
    """Planes (B, N, H, W) to train on: the image itself (2D) or the most varied slices (3D)."""
    if stack.ndim == 3:
        return stack[None]
    spread = stack.std(dim=(2, 3)).sum(0)
    chosen = torch.argsort(spread, descending=True)[:count].sort().values
    return stack[:, chosen].transpose(0, 1)


def _random_crops(planes: torch.Tensor, size: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` random crops, shape (count, N, size, size), of planes (B, N, H, W)."""
    _, _, height, width = planes.shape
    size_y, size_x = min(size, height), min(size, width)
    picks = torch.randint(0, planes.shape[0], (count,), generator=generator)
    ys = torch.randint(0, height - size_y + 1, (count,), generator=generator)
    xs = torch.randint(0, width - size_x + 1, (count,), generator=generator)
    return torch.stack(
        [planes[int(p), :, int(y) : int(y) + size_y, int(x) : int(x) + size_x] for p, y, x in zip(picks, ys, xs)]
    )


def learned(
    stack: torch.Tensor,
    *,
    n_iter: int = 80,
    lr: float = 0.01,
    width: int = 8,
    crop: int = 64,
    w_ssim: float = 1.0,
    w_grad: float = 10.0,
    w_intensity: float = 1.0,
    seed: int = 0,
):
    """Train :class:`WeightNet` on random crops of these images, then predict the weights.

    The loss pulls the fused image towards each source's structure (SSIM), the
    strongest source gradient and the brightest source intensity, as unsupervised
    fusion networks do; the softmax weights are the explanation.
    """
    if stack.ndim not in (3, 4):
        raise ValueError(f"learned fusion needs 2D or 3D images, got {stack.ndim - 1}D")
    generator = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        net = WeightNet(stack.shape[0], int(width)).to(stack.device)
    planes = _training_planes(stack, 8)
    optimiser = torch.optim.Adam(net.parameters(), lr=float(lr))
    lambdas = (float(w_ssim), float(w_grad), float(w_intensity))
    n_iter = int(n_iter)
    for step in range(n_iter):
        batch = _random_crops(planes, int(crop), 4, generator)
        loss = _learned_loss(net(batch), batch, lambdas)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        yield Progress(step + 1, n_iter, f"training: loss {loss.item():.4f}")
    with torch.no_grad():
        if stack.ndim == 3:
            weights = net(stack[None])[0]
        else:
            weights = torch.cat([net(stack[:, z][None])[0][:, None] for z in range(stack.shape[1])], dim=1)
    return (weights * stack).sum(0), weights


