"""The segmentation network(s) of one model, and saving and loading models."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..kernels import cpu_memory_format
from .config import CONFIG_SUFFIX, WEIGHTS_SUFFIX, ModelConfig, read_config


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

    #: The kind of value this is for operations (an output or input port of kind "model").
    kind = "model"

    def __init__(self, config: ModelConfig, networks: list[nn.Module] | None = None):
        super().__init__()
        self.config = config
        #: The file or bundle folder the model was loaded from (None when trained here).
        self.source: str | None = None
        if networks is None:
            if config.fusion == "early":
                networks = [_build_network(config, config.in_channels)]
            else:
                networks = [_build_network(config, 1) for _ in range(config.in_channels)]
        self.networks = nn.ModuleList(networks)
        #: Memory format of the inputs (channels-last after :meth:`prepare` on the CPU).
        self.layout = torch.contiguous_format

    def prepare(self, device) -> SegmentationNet:
        """Move to ``device`` in the layout its convolutions run fastest in there; returns self.

        Channels-last on the CPU for the convolutional architectures (see
        :func:`~napari_mmfuse.core.kernels.cpu_memory_format`; about 30 % less time per
        training step of the default 3D UNet), contiguous elsewhere.
        """
        convolutional = self.config.architecture in ("unet", "basicunet")
        self.layout = cpu_memory_format(self.config.spatial_dims, device) if convolutional else torch.contiguous_format
        return self.to(device, memory_format=self.layout)

    @property
    def weights(self) -> torch.Tensor:
        w = torch.as_tensor(self.config.fusion_weights, dtype=torch.float32)
        return w / w.sum()

    def member_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of each network (one for early fusion), each (B, K, *S)."""
        x = x.contiguous(memory_format=self.layout)
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

    def save(self, path, *, overwrite: bool = False) -> tuple[Path, Path]:
        """Save as ``<stem>.pt`` + ``<stem>.json`` (see :func:`save_model`)."""
        return save_model(self, path, overwrite=overwrite)

    def weights_hash(self) -> str:
        """SHA-256 of the weights (names, dtypes, shapes and values), ``sha256:<hex>``."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.state_dict().items()):
            values = tensor.detach().cpu().contiguous()
            digest.update(f"{name}{values.dtype}{tuple(values.shape)}".encode())
            digest.update(values.reshape(-1).view(torch.uint8).numpy().tobytes())
        return "sha256:" + digest.hexdigest()

    def describe(self) -> dict:
        """The model's provenance entry: architecture, fusion, classes, inputs, weights hash and source."""
        config = self.config
        entry = {"name": "segmentation model", "kind": self.kind, "architecture": config.architecture,
                 "fusion": config.fusion, "combine": config.combine, "label_values": list(config.label_values),
                 "channel_names": list(config.channel_names), "weights_hash": self.weights_hash()}
        if self.source is not None:
            entry["source"] = {"path": self.source, "kind": self.kind}
        return entry

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
    from ...io.atomic import atomic_output, write_text

    with atomic_output(weights, overwrite=overwrite) as temporary:  # each file renamed into place whole
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, temporary)
    write_text(config, model.config.to_json(), overwrite=overwrite)
    return weights, config


def load_model(path, *, config: ModelConfig | dict | None = None,
               networks: list[nn.Module] | None = None) -> SegmentationNet:
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
    networks : list of nn.Module, optional
        Prebuilt networks the weights are loaded into (a trusted bundle's own network).

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
    from ..bundle.reader import bundle_of, read_bundle

    weights, config_path = _paths(path)
    bundle = bundle_of(path)
    if bundle is not None:
        weights = bundle / "models" / "model.pt"
        config = config or read_bundle(bundle)[0]
        config_path = bundle / "configs"
    if not weights.exists():
        weights = Path(path)
    if not weights.exists():
        raise FileNotFoundError(f"no model file {weights}")
    if isinstance(config, dict):
        config = ModelConfig.from_dict(config)
    elif config is None and config_path.exists():
        config = read_config(config_path)
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
        model = SegmentationNet(config, networks)
        model.source = str(Path(path).resolve())
        return model.eval()
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
    model = SegmentationNet(config, networks)
    try:
        if bundle is not None:  # a bundle's weights are the bare network's
            model.networks[0].load_state_dict(state)
        else:
            model.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"the weights in {weights} do not fit {config_path.name}: "
                         f"{str(error).splitlines()[0]}") from None
    model.source = str(Path(path).resolve())
    return model.eval()
