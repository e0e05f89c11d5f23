"""The configuration of a segmentation model: what rebuilds its network and feeds it.

Saved as JSON beside the weights (``<stem>.json``); importable without torch, so that
:mod:`napari_mmfuse.core.bundle` can describe a MONAI bundle without loading a network.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

ARCHITECTURES = ("unet", "basicunet", "unetr", "torchscript", "monai")
TRAINABLE = ("unet", "basicunet", "unetr")
#: MONAI intensity transforms a model configuration may apply to its input (see ModelConfig.intensity)
INTENSITY_TRANSFORMS = ("NormalizeIntensity", "ScaleIntensity", "ScaleIntensityRange", "ScaleIntensityRangePercentiles")
FUSIONS = ("early", "late")
LATE_COMBINE = ("average", "vote")
#: output heads: one softmax over exclusive classes, or one sigmoid per (possibly overlapping) label
ACTIVATIONS = ("softmax", "sigmoid")
_AXIS = {"L": 0, "R": 0, "P": 1, "A": 1, "S": 2, "I": 2}
CONFIG_SUFFIX = ".json"
WEIGHTS_SUFFIX = ".pt"


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
        Label value of each output class, in output order (the first is usually 0); for a
        "sigmoid" head the value each output channel's mask is given (1, 2, ...).
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
    activation : {"softmax", "sigmoid"}
        The output head: exclusive classes, or one independent (overlapping) label per channel.
    class_names : list of str
        Name of each output channel (a bundle's ``channel_def``), or empty.
    orientation : str
        Axis codes the network's input axes run along (a bundle's ``Orientationd``, e.g.
        "RAS": axis 0 towards the patient's right), "" to use the input's own axes; the
        ``spacing`` and ``patch_size`` entries follow these axes.
    modality_dropout : float
        Probability with which training removed each modality of a patch (early fusion;
        removed = the channel's mean, 0 after normalisation). A model trained with it
        (> 0) accepts cases that lack modalities (see :func:`.train.fill_missing`).
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
    activation: str = "softmax"
    class_names: list[str] = field(default_factory=list)
    orientation: str = ""
    modality_dropout: float = 0.0

    def __post_init__(self):
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {self.spatial_dims}")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be 'early' or 'late', got {self.fusion!r}")
        if self.combine not in LATE_COMBINE:
            raise ValueError(f"combine must be 'average' or 'vote', got {self.combine!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        least = 2 if self.activation == "softmax" else 1
        if len(self.label_values) < least or len(set(self.label_values)) != len(self.label_values):
            raise ValueError(f"label_values must hold at least {least} distinct values, got {self.label_values}")
        if self.class_names and len(self.class_names) != len(self.label_values):
            raise ValueError(f"class_names has {len(self.class_names)} entries for {len(self.label_values)} outputs")
        if self.orientation and (self.spatial_dims != 3
                                 or sorted(_AXIS.get(c, -1) for c in self.orientation.upper()) != [0, 1, 2]):
            raise ValueError(f"orientation must be 3 axis codes like 'RAS' of a 3D model, got {self.orientation!r}")
        self.orientation = self.orientation.upper()
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
        self.modality_dropout = float(self.modality_dropout)
        if not 0.0 <= self.modality_dropout < 1.0:
            raise ValueError(f"modality_dropout must be in [0, 1), got {self.modality_dropout}")
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


def read_config(path: Path) -> ModelConfig:
    """The configuration in a JSON file; a clear ``ValueError`` when it is not one."""
    try:
        values = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return ModelConfig.from_dict(values)
