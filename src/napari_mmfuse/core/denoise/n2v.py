"""Noise2Void: self-supervised denoising trained on the noisy image itself.

:func:`n2v_train` trains a UNet built against checkerboard artefacts (N2V2: blur-pooling,
no full-resolution skip) with blind-spot masking and weight averaging; the trained
:class:`N2VModel` predicts with test-time augmentation, saves to ``.pt`` + ``.json`` and
applies, tiled by MONAI, to other images of the same kind.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...operations import drive
from ..device import get_device, with_oom_retry
from ..kernels import cpu_memory_format
from .checks import check_image



@dataclass
class N2VConfig:
    """What a saved Noise2Void model needs besides its weights.

    Attributes
    ----------
    ndim : int
        2 or 3 spatial axes.
    channels : tuple of int
        UNet feature channels per level.
    patch : int
        Training patch edge (a multiple of :func:`n2v_multiple`).
    mean, std : float
        Intensity normalisation learned from the training image.
    steps_trained : int
    loss : list of float
        Masked-pixel loss per step.
    architecture : str
        ``"n2v2-unet"`` (:class:`N2V2UNet`); models saved before it existed load as
        ``"monai-unet"`` (MONAI's UNet with strided and transposed convolutions).
    """

    ndim: int = 2
    channels: tuple[int, ...] = (32, 64, 128)
    patch: int = 64
    mean: float = 0.0
    std: float = 1.0
    steps_trained: int = 0
    loss: list[float] = field(default_factory=list)
    architecture: str = "n2v2-unet"

    def to_json(self) -> str:
        return json.dumps(asdict(self) | {"kind": "napari-mmfuse n2v"}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> N2VConfig:
        data = json.loads(text)
        if data.pop("kind", None) != "napari-mmfuse n2v":
            raise ValueError("not a napari-mmfuse Noise2Void config")
        data["channels"] = tuple(data["channels"])
        data.setdefault("architecture", "monai-unet")
        return cls(**data)


N2V_ARCHITECTURES = ("n2v2-unet", "monai-unet")


def n2v_multiple(channels, architecture: str = "n2v2-unet") -> int:
    """Input edges must be multiples of this: 2 per downsampling of the UNet."""
    if architecture not in N2V_ARCHITECTURES:
        raise ValueError(f"unknown Noise2Void architecture {architecture!r}; expected one of {N2V_ARCHITECTURES}")
    # the MONAI UNet runs its first level at full resolution (stride 1)
    return 2 ** (len(channels) - (1 if architecture == "n2v2-unet" else 2))


def _double_conv(ndim: int, in_channels: int, out_channels: int) -> torch.nn.Sequential:
    conv = torch.nn.Conv2d if ndim == 2 else torch.nn.Conv3d
    return torch.nn.Sequential(
        conv(in_channels, out_channels, 3, padding=1),
        torch.nn.LeakyReLU(0.1),
        conv(out_channels, out_channels, 3, padding=1),
        torch.nn.LeakyReLU(0.1),
    )


class MaxBlurPool(torch.nn.Module):
    """Halve the resolution without aliasing: 2-wide max (stride 1), then a binomial blur with stride 2.

    A plain max-pool (or strided convolution) aliases the high frequencies that a blind-spot
    network learns from, which shows up as a checkerboard in Noise2Void outputs (N2V2,
    Höck et al. 2022); blurring before subsampling removes it.
    """

    def __init__(self, ndim: int):
        super().__init__()
        self.ndim = ndim
        binomial = torch.tensor([1.0, 2.0, 1.0]) / 4
        kernel = binomial
        for _ in range(ndim - 1):
            kernel = kernel[..., None] * binomial
        self.register_buffer("kernel", kernel[None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = F.max_pool2d if self.ndim == 2 else F.max_pool3d
        x = pool(F.pad(x, (0, 1) * self.ndim, mode="replicate"), 2, stride=1)
        conv = F.conv2d if self.ndim == 2 else F.conv3d
        channels = x.shape[1]
        kernel = self.kernel.expand(channels, *self.kernel.shape[1:])
        return conv(F.pad(x, (1, 1) * self.ndim, mode="replicate"), kernel, stride=2, groups=channels)


class N2V2UNet(torch.nn.Module):
    """UNet for blind-spot training without checkerboard artefacts (the N2V2 design).

    Double 3x3 convolutions (LeakyReLU, no normalisation, so a tile predicts like a training
    patch) on ``len(channels)`` levels; :class:`MaxBlurPool` down, linear interpolation up,
    skip connections on every level except the full-resolution one: that skip would hand the
    output the input's pixel grid, the source of N2V's checkerboard.

    Parameters
    ----------
    ndim : int
        2 or 3.
    channels : tuple of int
        Features per level, full resolution first (at least 2 levels).
    """

    def __init__(self, ndim: int, channels: tuple[int, ...]):
        super().__init__()
        self.ndim = ndim
        self.pool = MaxBlurPool(ndim)
        self.encoders = torch.nn.ModuleList(
            _double_conv(ndim, previous, current) for previous, current in zip((1,) + tuple(channels[:-1]), channels)
        )
        self.decoders = torch.nn.ModuleList(
            _double_conv(ndim, deeper + (current if level > 0 else 0), current)
            for level, (current, deeper) in enumerate(zip(channels[:-1], channels[1:]))
        )
        conv = torch.nn.Conv2d if ndim == 2 else torch.nn.Conv3d
        self.output = conv(channels[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, encoder in enumerate(self.encoders):
            x = encoder(self.pool(x) if level else x)
            skips.append(x)
        mode = "bilinear" if self.ndim == 2 else "trilinear"
        for level in reversed(range(len(self.decoders))):
            x = F.interpolate(x, size=skips[level].shape[2:], mode=mode, align_corners=False)
            x = self.decoders[level](torch.cat([x, skips[level]], dim=1) if level else x)
        return self.output(x)


def n2v_network(config: N2VConfig) -> torch.nn.Module:
    n2v_multiple(config.channels, config.architecture)  # validates the architecture name
    if config.architecture == "n2v2-unet":
        return N2V2UNet(config.ndim, tuple(config.channels))
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=config.ndim,
        in_channels=1,
        out_channels=1,
        channels=tuple(config.channels),
        strides=(1,) + (2,) * (len(config.channels) - 2),
        num_res_units=1,
        norm=None,  # no instance statistics: a tile of any size predicts like a training patch
    )


@dataclass(frozen=True)
class TrainStep:
    """One Noise2Void optimisation step: its index (from 1), masked-pixel MSE loss and the number of steps."""

    step: int
    loss: float
    total: int = 0


class N2VModel:
    """A trained Noise2Void network with its config; predicts, saves and loads.

    Parameters
    ----------
    network : torch.nn.Module
    config : N2VConfig
    """

    def __init__(self, network: torch.nn.Module, config: N2VConfig):
        self.network = network
        self.config = config

    def predict(
        self, image, *, device=None, tile: int | None = None, overlap: float = 0.25, augment: bool = True
    ) -> np.ndarray:
        """Denoise an image of the same kind, tiled by MONAI sliding-window inference.

        Parameters
        ----------
        image : array-like, shape (Y, X) or (Z, Y, X)
            Same number of axes as the training image.
        device : str or torch.device, optional
        tile : int, optional
            Tile edge; default 512 (2D) or 128 (3D, one tile at a time); halved on CUDA out-of-memory.
        overlap : float
            Tile overlap fraction (Gaussian blending).
        augment : bool
            Average the predictions of the 8 flips and 90-degree rotations of the last two axes,
            each mapped back: test-time augmentation, which averages out the network's
            orientation-dependent errors. False predicts once (8 times faster).

        Returns
        -------
        ndarray, float32, same shape
        """
        from monai.inferers import sliding_window_inference

        array = check_image(image, min_size=1)
        if array.ndim != self.config.ndim:
            raise ValueError(f"this model was trained on {self.config.ndim}D images; got a {array.ndim}D image")
        device = get_device(device)
        network = self.network.to(device, memory_format=cpu_memory_format(array.ndim, device)).eval()  # as trained
        x = torch.from_numpy((array - self.config.mean) / self.config.std)[None, None]
        multiple = n2v_multiple(self.config.channels, self.config.architecture)
        flips = [(), (-1,), (-2,), (-2, -1)]
        transforms = [(flip, swap) for flip in flips for swap in (False, True)] if augment else [((), False)]
        windows_per_batch = 4 if array.ndim == 2 else 1  # a 128^3 window's activations take about 1 GB

        def oriented(t: torch.Tensor, flip: tuple[int, ...], swap: bool) -> torch.Tensor:
            t = t.flip(flip) if flip else t
            return t.transpose(-1, -2) if swap else t

        def run(edge: int) -> np.ndarray:
            total = torch.zeros_like(x)
            for flip, swap in transforms:
                view = oriented(x, flip, swap)
                roi = tuple(max(multiple, min(edge, -(-n // multiple) * multiple)) for n in view.shape[2:])
                with torch.inference_mode():
                    y = sliding_window_inference(
                        view,
                        roi,
                        windows_per_batch,
                        network,
                        overlap=overlap,
                        mode="gaussian",
                        sw_device=device,
                        device="cpu",
                    )
                y = y.transpose(-1, -2) if swap else y  # undo in reverse order: swap, then flip
                total += y.flip(flip) if flip else y
            return (total / len(transforms))[0, 0].numpy()

        y = with_oom_retry(run, tile=tile or (512 if array.ndim == 2 else 128), min_tile=multiple * 4)
        return (y * self.config.std + self.config.mean).astype(np.float32)

    def save(self, path, *, overwrite: bool = True) -> Path:
        """Write ``<path>.pt`` (state_dict) and ``<path>.json`` (config); return the ``.pt`` path.

        Each file is renamed into place whole; with ``overwrite=False`` an existing one is refused.
        """
        path = Path(path)
        stem = path.with_suffix("") if path.suffix in (".pt", ".json") else path
        stem.parent.mkdir(parents=True, exist_ok=True)
        weights = stem.with_suffix(".pt")
        from ...io.atomic import atomic_output, write_text

        with atomic_output(weights, overwrite=overwrite) as temporary:
            torch.save({k: v.detach().cpu() for k, v in self.network.state_dict().items()}, temporary)
        write_text(stem.with_suffix(".json"), self.config.to_json(), overwrite=overwrite)
        return weights

    def describe(self) -> dict:
        """The provenance entry of this model as an input: its architecture and training."""
        return {"name": "Noise2Void model", "kind": "model", "architecture": self.config.architecture,
                "channels": list(self.config.channels), "steps_trained": self.config.steps_trained,
                "mean": self.config.mean, "std": self.config.std}

    @classmethod
    def load(cls, path, *, device=None) -> N2VModel:
        """Load a model written by :meth:`save` (``torch.load(weights_only=True)``)."""
        path = Path(path)
        stem = path.with_suffix("") if path.suffix in (".pt", ".json") else path
        weights, config_path = stem.with_suffix(".pt"), stem.with_suffix(".json")
        for p in (weights, config_path):
            if not p.exists():
                raise FileNotFoundError(f"Noise2Void model file missing: {p}")
        config = N2VConfig.from_json(config_path.read_text())
        network = n2v_network(config)
        network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        return cls(network.to(get_device(device)), config)


def _blind_spot_batch(
    image: torch.Tensor,
    *,
    patch: tuple[int, ...],
    batch: int,
    mask_fraction: float,
    radius: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random patches, a random pixel mask, and inputs whose masked pixels hold a random neighbour.

    Patches are flipped at random along each axis and, when square in the last two axes,
    transposed in them; a masked pixel's replacement is never the pixel itself.
    """
    ndim = image.ndim
    device = image.device
    starts = [torch.randint(0, n - p + 1, (batch,), generator=generator).tolist() for n, p in zip(image.shape, patch)]
    target = torch.stack(
        [image[tuple(slice(s[b], s[b] + p) for s, p in zip(starts, patch))] for b in range(batch)]
    )  # (B, *patch)
    upper = torch.as_tensor(patch) - 1
    for axis in range(1, ndim + 1):
        flip = torch.rand(batch, generator=generator) < 0.5
        if flip.any():
            target[flip.to(device)] = target[flip.to(device)].flip(axis)
    if patch[-1] == patch[-2]:
        swap = (torch.rand(batch, generator=generator) < 0.5).to(device)
        target[swap] = target[swap].transpose(-1, -2)
    mask = torch.rand(target.shape, generator=generator) < mask_fraction
    mask[(0,) * target.ndim] = True
    index = mask.nonzero()  # (M, 1 + ndim)
    offsets = torch.randint(-radius, radius + 1, (index.shape[0], ndim), generator=generator)
    zero = (offsets == 0).all(dim=1)
    offsets[zero, 0] = torch.where(torch.rand(int(zero.sum()), generator=generator) < 0.5, -1, 1)
    neighbour = index.clone()
    neighbour[:, 1:] = torch.minimum((index[:, 1:] + offsets).clamp(min=0), upper)
    # a clamped neighbour may land back on the pixel: mirror the offset instead
    same = (neighbour == index).all(dim=1)
    neighbour[same, 1:] = torch.minimum((index[same, 1:] - offsets[same]).clamp(min=0), upper)
    inputs = target.clone()
    inputs[tuple(index.T.to(device))] = target[tuple(neighbour.T.to(device))]
    return inputs[:, None], target[:, None], mask[:, None].to(device)


def n2v_patch_shape(shape, *, patch: int, channels=(32, 64, 128)) -> tuple[int, ...]:
    """Training patch per axis: ``patch``, or less along shorter axes (multiples of the UNet's factor).

    Raises
    ------
    ValueError
        If ``patch`` is not a multiple of the UNet's downsampling factor, or the image is
        smaller than that factor along some axis.
    """
    if len(channels) < 2:
        raise ValueError(f"the UNet needs at least 2 levels of channels, got {tuple(channels)}")
    multiple = n2v_multiple(channels)
    if patch < multiple or patch % multiple:
        raise ValueError(f"patch {patch} must be a multiple of {multiple} for a {len(channels)}-level UNet")
    if min(shape) < multiple:
        raise ValueError(
            f"image of shape {tuple(shape)} is smaller than the training patch minimum ({multiple} pixels per axis)"
        )
    return tuple(min(patch, n // multiple * multiple) for n in shape)


def n2v_train(
    image,
    *,
    steps: int | None = None,
    patch: int | None = None,
    batch: int | None = None,
    mask_fraction: float = 0.02,
    neighbour_radius: int = 2,
    learning_rate: float = 1e-3,
    channels: tuple[int, ...] | None = None,
    average_fraction: float = 0.25,
    seed: int = 0,
    device=None,
) -> Generator[TrainStep, None, N2VModel]:
    """Train Noise2Void on the noisy image itself; yield each step, return the model.

    Blind-spot training: random patches, a random ``mask_fraction`` of pixels replaced by a
    random neighbour within ``neighbour_radius`` (never themselves), MSE on the masked pixels
    only. The network is an :class:`N2V2UNet` (no checkerboard); the returned weights are the
    average of those after each of the last ``average_fraction`` of the steps, which smooths
    out the step-to-step noise of a small-batch, noisy-target optimisation. No clean data and
    no pretrained weights are used.

    Parameters
    ----------
    image : array-like, shape (Y, X) or (Z, Y, X)
    steps : int, optional
        Optimisation steps (Adam, cosine-decayed learning rate); default 400 (2D) or 800 (3D:
        smaller batches, and 400 steps underfit a 128^3 volume).
    patch : int, optional
        Patch edge; default 64 (2D) or 32 (3D); must be a multiple of :func:`n2v_multiple`
        (``2 ** (len(channels) - 1)``). Shorter image axes get shorter patches.
    batch : int, optional
        Patches per step; default 8 (2D) or 2 (3D).
    mask_fraction : float
        Fraction of patch pixels masked per step.
    neighbour_radius : int
    learning_rate : float
    channels : tuple of int, optional
        UNet features per level, full resolution first; default (32, 64, 128) in 2D and
        (16, 32, 64) in 3D (a 3D convolution costs 3 times a 2D one per voxel and channel).
    average_fraction : float
        Final fraction of the steps whose weights are averaged (0 keeps the last weights).
    seed : int
    device : str or torch.device, optional

    Yields
    ------
    TrainStep

    Returns
    -------
    N2VModel
    """
    ndim = np.ndim(image)
    steps = (400 if ndim == 2 else 800) if steps is None else steps
    if steps < 1 or (batch is not None and batch < 1) or not 0 < mask_fraction < 0.5 or not 0 <= average_fraction <= 1:
        raise ValueError(
            "need steps >= 1, batch >= 1, 0 < mask_fraction < 0.5, 0 <= average_fraction <= 1; "
            f"got {steps}, {batch}, {mask_fraction}, {average_fraction}"
        )
    patch = patch or (64 if ndim == 2 else 32)
    batch = batch or (8 if ndim == 2 else 2)
    channels = tuple(channels or ((32, 64, 128) if ndim == 2 else (16, 32, 64)))
    array = check_image(image, min_size=1)
    patch_shape = n2v_patch_shape(array.shape, patch=patch, channels=channels)
    device = get_device(device)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    mean, std = float(array.mean()), float(array.std())
    config = N2VConfig(ndim=ndim, channels=channels, patch=patch, mean=mean, std=std)
    layout = cpu_memory_format(ndim, device)
    network = n2v_network(config).to(device, memory_format=layout)
    optimiser = torch.optim.Adam(network.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps, eta_min=learning_rate * 0.05)
    data = torch.from_numpy((array - mean) / std).to(device)
    first_averaged = steps - max(1, round(average_fraction * steps)) + 1
    averaged = [torch.zeros_like(p) for p in network.parameters()]
    network.train()
    for step in range(1, steps + 1):
        inputs, target, mask = _blind_spot_batch(
            data, patch=patch_shape, batch=batch, mask_fraction=mask_fraction, radius=neighbour_radius, generator=generator
        )
        prediction = network(inputs.contiguous(memory_format=layout))
        loss = F.mse_loss(prediction[mask], target[mask])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        if step >= first_averaged:
            with torch.no_grad():
                for mean_weight, weight in zip(averaged, network.parameters()):
                    mean_weight += (weight - mean_weight) / (step - first_averaged + 1)
        value = float(loss.detach())
        config.loss.append(value)
        config.steps_trained = step
        yield TrainStep(step, value, steps)
    with torch.no_grad():
        for weight, mean_weight in zip(network.parameters(), averaged):
            weight.copy_(mean_weight)
    network.eval()
    return N2VModel(network, config)


def noise2void(image, *, device=None, **train_params) -> np.ndarray:
    """Train Noise2Void on ``image`` (see :func:`n2v_train`) and return its denoised version.

    Returns
    -------
    ndarray, float32, same shape
    """
    model = drive(n2v_train(image, device=device, **train_params))
    return model.predict(image, device=device)
