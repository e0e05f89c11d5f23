"""Segmentation of one or several co-registered modalities: classical methods and small networks.

Arrays are channel-first: ``images`` has shape ``(C, *S)`` with ``S`` = ``(Y, X)`` or
``(Z, Y, X)``, one channel per modality, all on one grid (use :func:`stack_modalities`
to resample layers of any grids onto a reference grid through their world affines).

Three ways to segment:

* **classical** (:func:`threshold`, :func:`connected_components`, :func:`watershed`):
  Otsu, multi-Otsu and percentile thresholds, a size filter on connected components,
  and a seeded watershed that grows the painted classes over the multimodal gradient;
* **trainable** (:func:`train_steps`, :func:`predict`): a small MONAI UNet or BasicUNet
  learns from a few painted strokes (``0`` = unlabelled, any other value a class) with a
  cross-entropy restricted to the painted voxels, on patches sampled around them. The
  modalities are either the input channels of one network (early fusion) or each feed a
  network of its own whose class probabilities are combined by a weighted average or a
  majority vote (late, decision-level fusion);
* **bring your own model** (:func:`load_model`): a TorchScript file or a state dict of
  this module's networks, with the JSON configuration that says which label value each
  output class has, how each input channel is normalised, and the voxel spacing; or a
  MONAI bundle folder (:mod:`.bundle`: its network from ``monai.networks.nets``, its
  weights, spacing, intensity preprocessing and sliding-window size).
"""

from __future__ import annotations

import json
import math
import pickle
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import space
from .device import get_device, with_oom_retry
from .params import ParameterRange

#: Allowed values of the training/segmentation options (checked by callers before any work).
PARAMETER_RANGES = {
    "steps": ParameterRange(int, 1, 1_000_000),
    "patch": ParameterRange(int, 8, 1024),
    "classes": ParameterRange(int, 2, 5),
    "min_size": ParameterRange(int, 0, None),
}
ARCHITECTURES = ("unet", "basicunet", "unetr", "torchscript", "monai")
TRAINABLE = ("unet", "basicunet", "unetr")
#: MONAI intensity transforms a model configuration may apply to its input (see ModelConfig.intensity)
INTENSITY_TRANSFORMS = ("NormalizeIntensity", "ScaleIntensity", "ScaleIntensityRange", "ScaleIntensityRangePercentiles")
FUSIONS = ("early", "late")
LATE_COMBINE = ("average", "vote")
CONFIG_SUFFIX = ".json"
WEIGHTS_SUFFIX = ".pt"


# ----------------------------------------------------------------------------- grids and inputs


def stack_modalities(images: Sequence, affines: Sequence, reference_shape, reference_affine, *, device=None):
    """Resample several images onto one grid and stack them as channels.

    Parameters
    ----------
    images : sequence of array, each shape (*S_i)
        One 2D or 3D image per modality, each on its own grid.
    affines : sequence of ndarray, each shape (n + 1, n + 1)
        Index -> world affine of each image.
    reference_shape : sequence of int, length n
    reference_affine : ndarray, shape (n + 1, n + 1)
    device : str or torch.device, optional

    Returns
    -------
    ndarray, shape (C, *reference_shape), float32
    """
    if len(images) != len(affines):
        raise ValueError(f"{len(images)} images but {len(affines)} affines")
    if not images:
        raise ValueError("no images given; choose at least one modality")
    reference_shape = tuple(int(s) for s in reference_shape)
    channels = []
    for image, affine in zip(images, affines):
        image = np.asarray(image, dtype=np.float32)
        if image.shape == reference_shape and np.allclose(affine, reference_affine, atol=1e-6):
            channels.append(image)
        else:
            channels.append(space.resample(image, affine, reference_shape, reference_affine, device=device))
    return np.stack(channels).astype(np.float32, copy=False)


def check_images(images) -> np.ndarray:
    """Validate (C, *S) images (2D or 3D, finite); returns them as float32."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim not in (3, 4):
        raise ValueError(f"images must be (C, Y, X) or (C, Z, Y, X), got shape {images.shape}")
    if not np.all(np.isfinite(images)):
        raise ValueError("images contain NaN or Inf; fill them before segmenting")
    return images


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation used to normalise network inputs.

    Voxels at the channel's minimum are left out when they are a constant background
    (skull-stripped MRI, padding, the outside of a field of view), as in "non-zero"
    normalisation: otherwise a background filling most of the volume sets the scale and
    squeezes the tissue into a narrow range. A channel with fewer than 1 % of its voxels
    above its minimum uses every voxel.

    Parameters
    ----------
    images : ndarray, shape (C, *S)

    Returns
    -------
    mean, std : list of float, length C
        ``std`` is at least 1e-6 so that constant channels stay finite.
    """
    images = check_images(images)
    means, stds = [], []
    for channel in images.reshape(images.shape[0], -1):
        foreground = channel[channel > channel.min()]
        values = (foreground if foreground.size >= 0.01 * channel.size else channel).astype(np.float64)
        means.append(float(values.mean()))
        stds.append(float(max(values.std(), 1e-6)))
    return means, stds


# ----------------------------------------------------------------------------- classical


def threshold(image, *, method: str = "otsu", classes: int = 3, percentiles: Sequence[float] = (95.0,),
              mask=None) -> np.ndarray:
    """Label an image by intensity thresholds.

    Parameters
    ----------
    image : ndarray, shape (*S)
        One 2D or 3D image (for several modalities pass the one showing the target).
    method : {"otsu", "multiotsu", "percentile"}
        "otsu": 1 above Otsu's threshold; "multiotsu": ``classes`` intensity classes
        labelled 1..classes (darkest 1); "percentile": 1 + the number of
        ``percentiles`` each voxel is above (so one percentile gives labels 1 and 2).
    classes : int
        Number of classes for "multiotsu" (2 to 5).
    percentiles : sequence of float
        Percentiles (0-100) of the intensities inside ``mask`` for "percentile".
    mask : ndarray of bool, shape (*S), optional
        Thresholds are computed from these voxels only and voxels outside are 0.

    Returns
    -------
    ndarray, shape (*S), uint8
    """
    from skimage.filters import threshold_multiotsu, threshold_otsu

    image = np.asarray(image, dtype=np.float32)
    inside = np.ones(image.shape, bool) if mask is None else np.asarray(mask, bool)
    if inside.shape != image.shape:
        raise ValueError(f"mask has shape {inside.shape} but the image {image.shape}")
    values = image[inside]
    if values.size == 0 or values.min() == values.max():
        raise ValueError("the image is constant (inside the mask); there is nothing to threshold")
    if method == "otsu":
        labels = (image > threshold_otsu(values)).astype(np.uint8)
    elif method == "multiotsu":
        if not 2 <= classes <= 5:
            raise ValueError(f"multiotsu takes 2 to 5 classes, got {classes}")
        labels = (np.digitize(image, threshold_multiotsu(values, classes=classes)) + 1).astype(np.uint8)
    elif method == "percentile":
        cuts = np.percentile(values, sorted(float(p) for p in percentiles))
        labels = (np.digitize(image, cuts) + 1).astype(np.uint8)
    else:
        raise ValueError(f"unknown threshold method {method!r}; use 'otsu', 'multiotsu' or 'percentile'")
    labels[~inside] = 0
    return labels


def connected_components(mask, *, min_size: int = 0, keep: str = "all") -> np.ndarray:
    """Label the connected components of a binary mask and drop the small ones.

    Parameters
    ----------
    mask : ndarray, shape (*S)
        Non-zero voxels are foreground.
    min_size : int
        Components with fewer voxels are removed.
    keep : {"all", "largest"}
        Keep every remaining component (numbered 1..N by decreasing size) or the largest.

    Returns
    -------
    ndarray, shape (*S), int32
    """
    from scipy import ndimage

    if keep not in ("all", "largest"):
        raise ValueError(f"keep must be 'all' or 'largest', not {keep!r}")
    mask = np.asarray(mask) != 0
    labels, count = ndimage.label(mask)
    if count == 0:
        return labels.astype(np.int32)
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(-sizes, kind="stable")
    order = order[sizes[order] >= min_size]
    if keep == "largest":
        order = order[:1]
    lookup = np.zeros(count + 1, np.int32)
    lookup[order + 1] = np.arange(1, order.size + 1, dtype=np.int32)
    return lookup[labels]


def watershed(images, seeds, *, mask=None, compactness: float = 0.0) -> np.ndarray:
    """Grow painted seeds over the multimodal gradient (seeded watershed).

    Parameters
    ----------
    images : ndarray, shape (C, *S) or (*S)
        One or several modalities on one grid; their gradient magnitudes (each scaled
        by the channel's standard deviation) are summed.
    seeds : ndarray, shape (*S), int
        Painted strokes: 0 = unlabelled, any other value a class (kept in the output).
    mask : ndarray of bool, shape (*S), optional
        Voxels outside stay 0.
    compactness : float
        skimage's compact-watershed parameter (0 = classical watershed).

    Returns
    -------
    ndarray, shape (*S), the dtype of ``seeds``
    """
    from skimage.filters import sobel
    from skimage.segmentation import watershed as sk_watershed

    seeds = np.asarray(seeds)
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == seeds.ndim:
        images = images[np.newaxis]
    images = check_images(images)
    if images.shape[1:] != seeds.shape:
        raise ValueError(f"seeds have shape {seeds.shape} but the images {images.shape[1:]}")
    if np.unique(seeds[seeds != 0]).size < 2:
        raise ValueError("watershed needs strokes of at least two classes (0 is unlabelled)")
    _, std = channel_stats(images)
    gradient = sum(sobel(channel / s) for channel, s in zip(images, std))
    return sk_watershed(gradient, markers=seeds, mask=mask, compactness=compactness).astype(seeds.dtype)


# ----------------------------------------------------------------------------- networks


@dataclass
class ModelConfig:
    """Everything needed to rebuild a network and feed it (saved as JSON beside the weights).

    Attributes
    ----------
    spatial_dims : int
        2 or 3.
    in_channels : int
        Number of modalities (input channels).
    label_values : list of int
        Label value of each output class, in output order (the first is usually 0).
    architecture : {"unet", "basicunet", "unetr", "torchscript", "monai"}
        "unetr" is MONAI's UNETR: a 12-block vision transformer on 16-voxel tokens with a
        convolutional decoder; it takes inputs of exactly ``patch_size``. "monai" is any
        class of ``monai.networks.nets`` named by ``network`` (a MONAI bundle's network).
    features : list of int
        Channels per level ("unet", any length >= 2), BasicUNet's 6 feature sizes, or
        UNETR's ``[feature_size, hidden_size, mlp_dim]``.
    patch_size : list of int
        Training patch and sliding-window size (voxels), divisible by ``size_divisor``.
    attention_heads : int
        Attention heads of each transformer block ("unetr"; divides ``hidden_size``).
    channel_mean, channel_std : list of float
        Per-channel normalisation: ``(x - mean) / std``.
    channel_names : list of str
        Which modality each channel was (for mapping layers on load).
    fusion : {"early", "late"}
        One network on all channels, or one network per channel.
    combine : {"average", "vote"}
        How late fusion combines the per-modality networks.
    fusion_weights : list of float
        Weight of each modality in late fusion (normalised to sum 1).
    spacing : list of float, optional
        Voxel spacing (world units) the model works at; inputs are resampled to it.
    network : dict
        For "monai": ``{"name": <class in monai.networks.nets>, "args": {<keyword arguments>}}``.
    intensity : list of dict
        MONAI intensity transforms ``{"name": ..., "args": {...}}`` (one of
        :data:`INTENSITY_TRANSFORMS`) applied in order to the (C, *S) input instead of
        ``channel_mean`` / ``channel_std``, e.g. a bundle's per-image ``NormalizeIntensity``.
    """

    spatial_dims: int
    in_channels: int
    label_values: list[int]
    architecture: str = "unet"
    features: list[int] = field(default_factory=lambda: [16, 32, 64])
    patch_size: list[int] = field(default_factory=list)
    channel_mean: list[float] = field(default_factory=list)
    channel_std: list[float] = field(default_factory=list)
    channel_names: list[str] = field(default_factory=list)
    fusion: str = "early"
    combine: str = "average"
    fusion_weights: list[float] = field(default_factory=list)
    spacing: list[float] | None = None
    attention_heads: int = 4
    network: dict = field(default_factory=dict)
    intensity: list[dict] = field(default_factory=list)

    def __post_init__(self):
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {self.spatial_dims}")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be 'early' or 'late', got {self.fusion!r}")
        if self.combine not in LATE_COMBINE:
            raise ValueError(f"combine must be 'average' or 'vote', got {self.combine!r}")
        if len(self.label_values) < 2 or len(set(self.label_values)) != len(self.label_values):
            raise ValueError(f"label_values must hold at least two distinct values, got {self.label_values}")
        if self.architecture == "basicunet" and len(self.features) != 6:
            raise ValueError(f"basicunet needs 6 feature sizes, got {self.features}")
        if self.architecture == "unet" and len(self.features) < 2:
            raise ValueError(f"unet needs at least 2 levels of features, got {self.features}")
        if self.architecture == "monai" and not isinstance(self.network.get("name"), str):
            raise ValueError(f"architecture 'monai' needs network={{'name': ..., 'args': {{...}}}}, got {self.network}")
        for transform in self.intensity:
            if transform.get("name") not in INTENSITY_TRANSFORMS:
                raise ValueError(f"intensity transforms must be among {INTENSITY_TRANSFORMS}, got {transform}")
        if self.architecture == "unetr" and (len(self.features) != 3 or self.features[1] % self.attention_heads):
            raise ValueError(f"unetr needs features [feature_size, hidden_size, mlp_dim] with hidden_size divisible "
                             f"by attention_heads={self.attention_heads}, got {self.features}")
        self.label_values = [int(v) for v in self.label_values]
        n = self.in_channels
        self.channel_mean = [float(v) for v in self.channel_mean] or [0.0] * n
        self.channel_std = [float(v) for v in self.channel_std] or [1.0] * n
        self.channel_names = [str(v) for v in self.channel_names] or [f"channel {i}" for i in range(n)]
        self.fusion_weights = [float(v) for v in self.fusion_weights] or [1.0] * n
        for name in ("channel_mean", "channel_std", "channel_names", "fusion_weights"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries for {n} input channels")
        divisor = self.size_divisor
        patch = list(self.patch_size) or [64 if self.spatial_dims == 2 else 48] * self.spatial_dims
        if len(patch) != self.spatial_dims:
            raise ValueError(f"patch_size {patch} does not have {self.spatial_dims} entries")
        self.patch_size = [max(divisor, int(p) // divisor * divisor) for p in patch]
        if self.spacing is not None:
            self.spacing = [float(s) for s in self.spacing]
            if len(self.spacing) != self.spatial_dims or min(self.spacing) <= 0:
                raise ValueError(f"spacing must be {self.spatial_dims} positive numbers, got {self.spacing}")

    @property
    def n_classes(self) -> int:
        return len(self.label_values)

    @property
    def size_divisor(self) -> int:
        """Input sizes must be multiples of this (the network downsamples by it).

        Unknown for TorchScript and MONAI bundle networks: the largest power of two
        dividing every ``patch_size`` entry (a size the model is known to accept).
        """
        if self.architecture in ("basicunet", "unetr"):
            return 16
        if self.architecture == "unet":
            return 2 ** (len(self.features) - 1)
        return min(p & -p for p in self.patch_size) if self.patch_size else 1

    @property
    def fixed_input(self) -> bool:
        """Whether the network takes inputs of exactly ``patch_size`` only (learned position embeddings)."""
        return self.architecture == "unetr"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        """Build from a dict, refusing unknown keys (a typo would otherwise be ignored)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown model configuration keys {unknown}; known keys are {sorted(known)}")
        try:
            return cls(**values)
        except TypeError as error:
            raise ValueError(f"incomplete model configuration: {error}") from None


def _build_network(config: ModelConfig, in_channels: int) -> nn.Module:
    from monai.networks import nets
    from monai.networks.nets import UNETR, BasicUNet, UNet

    if config.architecture == "monai":
        name = config.network["name"]
        network_class = getattr(nets, name, None)
        if not isinstance(network_class, type) or not issubclass(network_class, nn.Module):
            raise ValueError(f"{name!r} is not a network class of monai.networks.nets")
        try:
            return network_class(**config.network.get("args", {}))
        except TypeError as error:
            raise ValueError(f"the arguments of network {name} do not fit it: {error}") from None
    if config.architecture == "basicunet":
        return BasicUNet(spatial_dims=config.spatial_dims, in_channels=in_channels,
                         out_channels=config.n_classes, features=tuple(config.features))
    if config.architecture == "unetr":
        feature_size, hidden_size, mlp_dim = config.features
        return UNETR(in_channels=in_channels, out_channels=config.n_classes, img_size=tuple(config.patch_size),
                     feature_size=feature_size, hidden_size=hidden_size, mlp_dim=mlp_dim,
                     num_heads=config.attention_heads, proj_type="conv", spatial_dims=config.spatial_dims)
    return UNet(spatial_dims=config.spatial_dims, in_channels=in_channels, out_channels=config.n_classes,
                channels=tuple(config.features), strides=(2,) * (len(config.features) - 1), num_res_units=1,
                norm="batch")


class SegmentationNet(nn.Module):
    """The network(s) of one model; ``forward`` returns class logits for normalised input.

    For late fusion each modality has its own network and the logits returned are the
    log of the weighted average of their class probabilities, so explanation methods
    see one differentiable model either way.

    Parameters
    ----------
    config : ModelConfig
    networks : list of nn.Module, optional
        Prebuilt networks (a TorchScript module); built from ``config`` if omitted.
    """

    def __init__(self, config: ModelConfig, networks: list[nn.Module] | None = None):
        super().__init__()
        self.config = config
        if networks is None:
            if config.fusion == "early":
                networks = [_build_network(config, config.in_channels)]
            else:
                networks = [_build_network(config, 1) for _ in range(config.in_channels)]
        self.networks = nn.ModuleList(networks)

    @property
    def weights(self) -> torch.Tensor:
        w = torch.as_tensor(self.config.fusion_weights, dtype=torch.float32)
        return w / w.sum()

    def member_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of each network (one for early fusion), each (B, K, *S)."""
        if self.config.fusion == "early":
            return [self.networks[0](x)]
        return [net(x[:, i : i + 1]) for i, net in enumerate(self.networks)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits, shape (B, K, *S), for normalised input of shape (B, C, *S)."""
        members = self.member_logits(x)
        if len(members) == 1:
            return members[0]
        weights = self.weights.to(x.device)
        probabilities = sum(w * torch.softmax(m, dim=1) for w, m in zip(weights, members))
        return torch.log(probabilities.clamp_min(1e-8))

    def normalise(self, images: np.ndarray) -> np.ndarray:
        """Apply the normalisation of the configuration to (C, *S) images."""
        if self.config.intensity:
            import monai.transforms

            x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
            for transform in self.config.intensity:
                x = getattr(monai.transforms, transform["name"])(**transform.get("args", {}))(x)
            return np.asarray(x, dtype=np.float32)
        mean = np.asarray(self.config.channel_mean, np.float32).reshape((-1,) + (1,) * self.config.spatial_dims)
        std = np.asarray(self.config.channel_std, np.float32).reshape(mean.shape)
        return ((images - mean) / std).astype(np.float32)


@dataclass
class TrainStep:
    """One training step: its index (from 1), the partial cross-entropy and the total."""

    step: int
    loss: float
    total: int


def _class_indices(scribbles: np.ndarray, label_values: list[int]) -> np.ndarray:
    target = np.full(scribbles.shape, -1, np.int64)
    for index, value in enumerate(label_values):
        target[scribbles == value] = index
    return target


def check_scribbles(images: np.ndarray, scribbles) -> np.ndarray:
    """Validate painted strokes against images (C, *S); returns them as integers.

    Raises
    ------
    ValueError
        Wrong shape, non-integer values, no strokes, or strokes of a single class.
    """
    scribbles = np.asarray(scribbles)
    if scribbles.shape != images.shape[1:]:
        raise ValueError(f"scribbles have shape {scribbles.shape} but the images {images.shape[1:]}; "
                         "paint them on the grid of the first image")
    if not np.issubdtype(scribbles.dtype, np.integer):
        if np.any(np.modf(scribbles)[0]):
            raise ValueError("scribbles must hold integer class values")
        scribbles = scribbles.astype(np.int64)
    values = np.unique(scribbles[scribbles != 0])
    if values.size == 0:
        raise ValueError("the scribble layer is empty; paint a few strokes of at least two classes")
    if values.size < 2:
        raise ValueError(f"the scribbles hold one class only ({int(values[0])}); "
                         "paint at least one other class, e.g. background")
    return scribbles


def _crop(array: np.ndarray, start, size, fill=0) -> np.ndarray:
    """Crop ``array[..., start:start+size]`` over the last len(size) axes, ``fill`` outside.

    ``fill`` is a scalar or broadcasts against the cropped shape (e.g. one value per channel).
    """
    n = len(size)
    spatial = array.shape[-n:]
    out = np.empty(array.shape[:-n] + tuple(size), array.dtype)
    out[...] = fill
    src, dst = [], []
    for s, length, extent in zip(start, size, spatial):
        lo, hi = max(s, 0), min(s + length, extent)
        src.append(slice(lo, max(hi, lo)))
        dst.append(slice(lo - s, lo - s + max(hi - lo, 0)))
    out[(Ellipsis, *dst)] = array[(Ellipsis, *src)]
    return out


def _sample_patches(normalised, target, by_class, patch, batch, rng, fill, *, intensity=0.1):
    """A batch of augmented training patches around painted voxels.

    Parameters
    ----------
    normalised : ndarray, shape (C, *S)
        Normalised images.
    target : ndarray, shape (*S), int64
        Class index of each voxel, -1 where unpainted.
    by_class : list of ndarray
        Painted voxel coordinates of each painted class; patch centres are drawn from a
        random class first, so every class is seen equally often.
    patch : sequence of int
    batch : int
    rng : numpy.random.Generator
    fill : ndarray, shape (C, 1, ...)
        Value of each channel outside the image.
    intensity : float
        Each channel of each patch is scaled by a gain in ``1 ± intensity`` and shifted
        by up to ``± intensity`` (normalised units).

    Returns
    -------
    x : ndarray, shape (B, C, *patch), float32
    y : ndarray, shape (B, *patch), int64
        Flipped together with ``x``.
    """
    n = len(patch)
    xs, ys = [], []
    for _ in range(batch):
        voxels = by_class[rng.integers(len(by_class))]
        centre = voxels[rng.integers(len(voxels))]
        jitter = rng.integers(-(np.array(patch) // 2) + 1, np.array(patch) // 2)
        start = centre + jitter - np.array(patch) // 2
        x = _crop(normalised, start, patch, fill)
        y = _crop(target, start, patch, -1)  # outside the image: unlabelled
        for axis in range(n):
            if rng.random() < 0.5:
                x, y = np.flip(x, axis + 1), np.flip(y, axis)
        gain = rng.uniform(1 - intensity, 1 + intensity, size=(x.shape[0],) + (1,) * n).astype(np.float32)
        shift = rng.uniform(-intensity, intensity, size=gain.shape).astype(np.float32)
        xs.append(x * gain + shift)
        ys.append(y)
    return np.stack(xs).astype(np.float32), np.stack(ys)


def train_steps(
    images,
    scribbles,
    *,
    model: SegmentationNet | None = None,
    architecture: str = "unet",
    features: Sequence[int] | None = None,
    fusion: str = "early",
    combine: str = "average",
    fusion_weights: Sequence[float] | None = None,
    patch_size: Sequence[int] | None = None,
    channel_names: Sequence[str] | None = None,
    spacing: Sequence[float] | None = None,
    steps: int = 200,
    batch_size: int = 4,
    learning_rate: float = 2e-3,
    seed: int = 0,
    device=None,
) -> Generator[TrainStep, None, SegmentationNet]:
    """Train (or keep training) a network on painted strokes; a generator of progress.

    Each step samples ``batch_size`` patches centred near painted voxels (every class
    equally often, random flips and a small intensity jitter) and minimises the
    cross-entropy over the painted voxels only (partial cross-entropy, classes weighted
    by the inverse square root of their painted volume).

    Parameters
    ----------
    images : ndarray, shape (C, *S)
        Modalities on one grid (see :func:`stack_modalities`).
    scribbles : ndarray, shape (*S), int
        0 = unlabelled; every other value is a class, kept as the label value.
    model : SegmentationNet, optional
        Warm start: continue training these weights (same channels and classes); the
        architecture options are then taken from it. The model is trained in place.
    architecture : {"unet", "basicunet", "unetr"}
    features : sequence of int, optional
        Channels per level; default (16, 32, 64) for "unet" and "unetr" (feature size,
        hidden size, MLP size), (16, 16, 32, 64, 128, 16) for "basicunet".
    fusion : {"early", "late"}
    combine : {"average", "vote"}
        Late fusion only: how :func:`predict` combines the per-modality networks.
    fusion_weights : sequence of float, optional
        Late fusion weight of each modality (equal by default).
    patch_size : sequence of int, optional
        Patch edge per axis; default 64 (2D) or 48 (3D), at most the image size rounded
        up to the network's size divisor.
    channel_names : sequence of str, optional
    spacing : sequence of float, optional
        Voxel spacing of ``images``; recorded so that :func:`predict` resamples other
        inputs to it.
    steps, batch_size, learning_rate, seed
        Optimisation settings (Adam).
    device : str or torch.device, optional

    Yields
    ------
    TrainStep
        After every optimisation step; closing the generator stops training.

    Returns
    -------
    SegmentationNet
        The trained model (``generator.send``/``StopIteration.value``), in eval mode.

    Raises
    ------
    ValueError
        Empty scribbles, a single class, shapes that do not match, or a warm-start model
        with other channels or classes.
    """
    images = check_images(images)
    scribbles = check_scribbles(images, scribbles)
    values = [int(v) for v in np.unique(scribbles[scribbles != 0])]
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if model is None and architecture not in TRAINABLE:
        raise ValueError(f"architecture must be one of {TRAINABLE} for training, not {architecture!r}")
    device = get_device(device)
    if model is None:
        mean, std = channel_stats(images)
        n = images.ndim - 1
        if features is None:
            features = (16, 16, 32, 64, 128, 16) if architecture == "basicunet" else (16, 32, 64)
        config = ModelConfig(
            spatial_dims=n, in_channels=images.shape[0], label_values=values, architecture=architecture,
            features=list(features), patch_size=list(patch_size or []), channel_mean=mean, channel_std=std,
            channel_names=list(channel_names or []), fusion=fusion, combine=combine,
            fusion_weights=list(fusion_weights or []), spacing=list(spacing) if spacing is not None else None,
        )
        divisor = config.size_divisor
        config.patch_size = [
            min(p, math.ceil(s / divisor) * divisor) for p, s in zip(config.patch_size, images.shape[1:])
        ]
        torch.manual_seed(seed)
        model = SegmentationNet(config)
    else:
        config = model.config
        if config.in_channels != images.shape[0]:
            raise ValueError(f"the model takes {config.in_channels} channels but {images.shape[0]} images were given")
        missing = sorted(set(values) - set(config.label_values))
        if missing:
            raise ValueError(f"scribble classes {missing} are not among the model's classes {config.label_values}; "
                             "train a new model instead of warm-starting")
        if config.architecture == "torchscript":
            raise ValueError("a TorchScript model cannot be retrained here; train a new model")
    model = model.to(device).train()
    normalised = model.normalise(images)
    target = _class_indices(scribbles, config.label_values)
    by_class = [np.argwhere(target == k) for k in range(config.n_classes) if np.any(target == k)]
    counts = np.bincount(target[target >= 0], minlength=config.n_classes).astype(np.float64)
    # patches are centred on every class equally often; the square root tempers the rest
    weight = np.where(counts > 0, np.sqrt(counts.sum() / np.maximum(counts, 1)), 0.0)
    weight = torch.as_tensor(weight / weight[counts > 0].mean(), dtype=torch.float32, device=device)
    loss_fn = nn.CrossEntropyLoss(weight=weight, ignore_index=-1)
    optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate)
    rng = np.random.default_rng(seed)
    fill = normalised.reshape(normalised.shape[0], -1).min(axis=1).reshape((-1,) + (1,) * (images.ndim - 1))
    try:
        for step in range(1, steps + 1):
            x, y = _sample_patches(normalised, target, by_class, config.patch_size, batch_size, rng, fill)
            x = torch.from_numpy(x).to(device)
            y = torch.from_numpy(np.ascontiguousarray(y)).to(device)
            optimiser.zero_grad(set_to_none=True)
            members = model.member_logits(x)
            loss = sum(loss_fn(m, y) for m in members) / len(members)
            loss.backward()
            optimiser.step()
            yield TrainStep(step, float(loss.detach()), steps)
    finally:
        model.eval()
    return model


def train(images, scribbles, **options) -> tuple[SegmentationNet, list[float]]:
    """Run :func:`train_steps` to the end; returns the model and the loss of each step."""
    generator = train_steps(images, scribbles, **options)
    losses = []
    while True:
        try:
            losses.append(next(generator).loss)
        except StopIteration as stop:
            return stop.value, losses


# ----------------------------------------------------------------------------- inference


def _spacing_grid(shape, affine, spacing) -> tuple[tuple[int, ...], np.ndarray]:
    current = space.spacing_of(affine)
    factor = np.asarray(spacing, np.float64) / current
    new_shape = tuple(max(1, int(round(s / f))) for s, f in zip(shape, factor))
    scale = np.diag(list(factor) + [1.0])
    new_affine = affine @ scale
    # keep the world extent centred: shift so that the first voxel edge matches
    new_affine[:-1, -1] = space.voxel_to_world(affine, (factor - 1) / 2)
    return new_shape, new_affine


def predict(
    model: SegmentationNet,
    images,
    *,
    affine: np.ndarray | None = None,
    overlap: float = 0.25,
    batch_size: int = 4,
    test_time_flips: bool = False,
    device=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Segment a whole image with sliding-window inference.

    Parameters
    ----------
    model : SegmentationNet
    images : ndarray, shape (C, *S)
        Modalities in the model's channel order, on one grid.
    affine : ndarray, shape (n + 1, n + 1), optional
        Index -> world affine of ``images``; when given and the model has a ``spacing``,
        the input is resampled to that spacing and the result back to ``images``' grid.
    overlap : float
        Sliding-window overlap (0 to < 1).
    batch_size : int
        Windows per forward pass (halved on out-of-memory errors).
    test_time_flips : bool
        Also run each window flipped along each spatial axis (1 + n passes) and average
        the class probabilities, which evens out the errors of a network trained on few strokes.
    device : str or torch.device, optional

    Returns
    -------
    labels : ndarray, shape (*S)
        Label values of the model's classes (int32); 0 (unlabelled) outside the field of
        view, where every modality sits at its constant background (see :func:`outside_view`).
    probabilities : ndarray, shape (K, *S), float32
        Class probabilities in the order of ``model.config.label_values`` (late fusion:
        the weighted average of the networks'; with "vote" the labels are the weighted
        majority of the networks' decisions, ties broken by the averaged probabilities).
    """
    from monai.inferers import sliding_window_inference

    config = model.config
    images = check_images(images)
    if images.shape[0] != config.in_channels:
        raise ValueError(f"the model takes {config.in_channels} channels ({', '.join(config.channel_names)}) "
                         f"but {images.shape[0]} images were given")
    if images.ndim - 1 != config.spatial_dims:
        raise ValueError(f"the model is {config.spatial_dims}D but the images are {images.ndim - 1}D")
    shape = images.shape[1:]
    outside = outside_view(images)
    regrid = config.spacing is not None and affine is not None
    if regrid:
        work_shape, work_affine = _spacing_grid(shape, affine, config.spacing)
        images = space.resample(images, affine, work_shape, work_affine, channel_axis=0, device=device)
    device = get_device(device)
    model = model.to(device).eval()
    x = torch.from_numpy(model.normalise(images))[None]
    n_members = 1 if config.fusion == "early" else len(model.networks)

    flip_axes = [()] + ([(axis,) for axis in range(2, 2 + config.spatial_dims)] if test_time_flips else [])

    def members(window: torch.Tensor) -> torch.Tensor:
        total = 0.0
        for axes in flip_axes:
            logits = model.member_logits(torch.flip(window, axes) if axes else window)
            probabilities = torch.cat([torch.softmax(m, dim=1) for m in logits], dim=1)
            total = total + (torch.flip(probabilities, axes) if axes else probabilities)
        return total / len(flip_axes)

    def run(tile: int) -> torch.Tensor:
        with torch.inference_mode():
            return sliding_window_inference(
                x, roi_size=config.patch_size, sw_batch_size=tile, predictor=members, overlap=overlap,
                mode="gaussian", sw_device=device, device=torch.device("cpu"),
            )[0]

    stacked = with_oom_retry(run, tile=batch_size, min_tile=1).numpy()
    k = config.n_classes
    per_member = stacked.reshape((n_members, k) + stacked.shape[1:])
    weights = model.weights.numpy().reshape((-1,) + (1,) * (per_member.ndim - 1))
    probabilities = per_member[0] if n_members == 1 else (per_member * weights).sum(axis=0)
    values = np.asarray(config.label_values, np.int32)
    if config.combine == "vote" and n_members > 1:
        votes = np.zeros_like(per_member[0])
        for member, w in zip(per_member.argmax(axis=1), weights.ravel()):
            for index in range(k):
                votes[index] += w * (member == index)
        # ties (e.g. two modalities that disagree) go to the class of highest averaged probability
        labels = values[(votes + 1e-3 * probabilities).argmax(axis=0)]
    else:
        labels = values[probabilities.argmax(axis=0)]
    if regrid:
        probabilities = space.resample(probabilities, work_affine, shape, affine, channel_axis=0, device=device)
        labels = space.resample(labels, work_affine, shape, affine, interpolation="nearest", device=device)
    probabilities /= np.maximum(probabilities.sum(axis=0, keepdims=True), 1e-8)
    labels[outside] = 0
    return labels, probabilities.astype(np.float32, copy=False)


def outside_view(images: np.ndarray, *, share: float = 0.05) -> np.ndarray:
    """Voxels outside the imaged object: every modality at its minimum, where that minimum is a background.

    A channel's minimum counts as a constant background (air of a skull-stripped MRI,
    padding, the outside of a field of view) when at least ``share`` of its voxels hold it;
    a channel without one marks nothing outside.

    Parameters
    ----------
    images : ndarray, shape (C, *S)
    share : float
        Smallest fraction of voxels at the minimum that makes it a background.

    Returns
    -------
    ndarray of bool, shape (*S)
    """
    outside = np.ones(images.shape[1:], bool)
    for channel in images:
        at_minimum = channel == channel.min()
        if at_minimum.mean() < share:
            return np.zeros(images.shape[1:], bool)
        outside &= at_minimum
    return outside


def uncertainty(probabilities, *, kind: str = "entropy") -> np.ndarray:
    """Per-voxel uncertainty of class probabilities.

    Parameters
    ----------
    probabilities : ndarray, shape (K, *S)
    kind : {"entropy", "margin"}
        "entropy": normalised Shannon entropy (0 certain .. 1 uniform);
        "margin": 1 - the largest probability.

    Returns
    -------
    ndarray, shape (*S), float32
    """
    p = np.asarray(probabilities, dtype=np.float32)
    if kind == "margin":
        return (1.0 - p.max(axis=0)).astype(np.float32)
    if kind != "entropy":
        raise ValueError(f"kind must be 'entropy' or 'margin', not {kind!r}")
    entropy = -(p * np.log(np.clip(p, 1e-8, 1.0))).sum(axis=0)
    return (entropy / math.log(max(p.shape[0], 2))).astype(np.float32)


# ----------------------------------------------------------------------------- saving and loading


def _paths(path) -> tuple[Path, Path]:
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (WEIGHTS_SUFFIX, CONFIG_SUFFIX) else path
    return stem.with_suffix(WEIGHTS_SUFFIX), stem.with_suffix(CONFIG_SUFFIX)


def save_model(model: SegmentationNet, path, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Save a model as ``<stem>.pt`` (state dict) and ``<stem>.json`` (its configuration).

    Parameters
    ----------
    model : SegmentationNet
    path : str or Path
        The stem, or either file name.
    overwrite : bool
        Replace existing files.

    Returns
    -------
    weights, config : Path
    """
    weights, config = _paths(path)
    for target in (weights, config):
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} already exists; pass overwrite=True to replace it")
    if model.config.architecture == "torchscript":
        raise ValueError("a TorchScript model is already a file; keep using that file")
    weights.parent.mkdir(parents=True, exist_ok=True)
    from ..io.atomic import atomic_output, write_text

    with atomic_output(weights, overwrite=overwrite) as temporary:  # each file renamed into place whole
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, temporary)
    write_text(config, model.config.to_json(), overwrite=overwrite)
    return weights, config


def _read_config(path: Path) -> ModelConfig:
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return ModelConfig.from_dict(values)


def load_model(path, *, config: ModelConfig | dict | None = None) -> SegmentationNet:
    """Load a model saved by :func:`save_model`, a TorchScript file or a MONAI bundle.

    Parameters
    ----------
    path : str or Path
        ``<stem>.pt`` (or the stem) of a state dict with ``<stem>.json`` beside it, a
        TorchScript file (its JSON, if any, beside it with the same stem), or a MONAI
        bundle folder (or its ``models/model.pt``), read by :func:`.bundle.read_bundle`.
    config : ModelConfig or dict, optional
        Configuration to use instead of the JSON file. A TorchScript model without one
        needs at least ``spatial_dims``, ``in_channels`` and ``label_values``.

    Returns
    -------
    SegmentationNet
        In eval mode, on the CPU.

    Raises
    ------
    ValueError
        Missing configuration, weights that do not fit it, or a file that is not safe
        to load with ``weights_only=True`` (it would run arbitrary code).
    FileNotFoundError
    """
    from .bundle import bundle_of, read_bundle

    weights, config_path = _paths(path)
    bundle = bundle_of(path)
    if bundle is not None:
        bundle_config, weights = read_bundle(bundle)
        config = config or bundle_config
        config_path = bundle / "configs"
    if not weights.exists():
        weights = Path(path)
    if not weights.exists():
        raise FileNotFoundError(f"no model file {weights}")
    if isinstance(config, dict):
        config = ModelConfig.from_dict(config)
    elif config is None and config_path.exists():
        config = _read_config(config_path)
    import zipfile

    scripted = False
    if zipfile.is_zipfile(weights):
        with zipfile.ZipFile(weights) as archive:
            scripted = any(name.endswith("/code/") or "/code/" in name for name in archive.namelist())
    if scripted:
        if config is None:
            raise ValueError(f"{weights} is a TorchScript model without {config_path.name}; "
                             "write one with spatial_dims, in_channels and label_values")
        config.architecture = "torchscript"
        try:
            module = torch.jit.load(str(weights), map_location="cpu")
        except (RuntimeError, ValueError, OSError, zipfile.BadZipFile):
            raise ValueError(f"{weights} is not a TorchScript model (or is corrupt)") from None
        networks = [module] if config.fusion == "early" else None
        if networks is None:
            raise ValueError("a TorchScript model is one network; use fusion 'early' in its configuration")
        return SegmentationNet(config, networks).eval()
    if config is None:
        raise ValueError(f"no configuration for {weights}: expected {config_path}")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(f"{weights} is not a weights-only file and was not loaded (it could run code): "
                         f"{str(error).splitlines()[0]}") from None
    except (RuntimeError, EOFError) as error:
        raise ValueError(f"cannot read {weights}: {error}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a checkpoint that keeps the network's weights under "model"
    if not isinstance(state, dict):
        raise ValueError(f"{weights} does not hold a state dict")
    model = SegmentationNet(config)
    try:
        if bundle is not None:  # a bundle's weights are the bare network's
            model.networks[0].load_state_dict(state)
        else:
            model.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"the weights in {weights} do not fit {config_path.name}: "
                         f"{str(error).splitlines()[0]}") from None
    return model.eval()
