"""Read a MONAI bundle folder as a segmentation model configuration, without running its code.

A bundle (``configs/inference.json`` or ``.yaml``, ``configs/metadata.json``,
``models/model.pt``) describes its network, preprocessing and inferer in MONAI's config
language, which may hold Python expressions (``"$..."``) and references (``"@..."``).
By default only literal values are read, every ``_target_`` must name a class of MONAI or
torch, and anything else is refused with a message. With ``trust_code=True`` MONAI's own
``ConfigParser`` evaluates the expressions and references that are needed (running the
bundle's ``imports`` and expressions) and may build a network class from outside MONAI.
Read:

* ``network_def``: the network class and its keyword arguments;
* ``preprocessing``: ``Orientationd`` (the axis codes the network's input axes run along),
  ``Spacingd`` (the voxel spacing, along those axes) and the intensity transforms
  ``NormalizeIntensityd``, ``ScaleIntensityd``, ``ScaleIntensityRanged``,
  ``ScaleIntensityRangePercentilesd`` (applied by MONAI itself at prediction); loading,
  channel and type transforms are skipped; any other transform is refused, since leaving
  it out would change what the network sees;
* ``inferer``: ``SlidingWindowInferer``'s ``roi_size`` (the window, along the same axes);
* ``postprocessing``: the ``Activationsd`` head, sigmoid (one independent label per output
  channel) or softmax (exclusive classes);
* ``metadata.json``: input channel names and output class names from ``channel_def``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..segment.config import INTENSITY_TRANSFORMS, ModelConfig

#: preprocessing transforms that do not change intensities or geometry
SKIPPED = ("LoadImaged", "LoadImage", "EnsureChannelFirstd", "EnsureChannelFirst", "AddChanneld",
           "EnsureTyped", "EnsureType", "ToTensord", "ToTensor", "CastToTyped", "CastToType",
           "Identityd", "Identity")
#: dictionary intensity transforms of a bundle -> the array transform applied at prediction
INTENSITY = {f"{name}d": name for name in INTENSITY_TRANSFORMS}
DICTIONARY_ONLY = ("keys", "allow_missing_keys")
#: modules a bundle's ``_target_`` may name without ``trust_code`` (a bare name is MONAI's)
TRUSTED_MODULES = ("monai", "torch")
TRUST_HINT = "only evaluated when the bundle's code is trusted (--trust-bundle-code / the Segment widget's checkbox)"


def is_bundle(path) -> bool:
    """Whether ``path`` is a bundle folder (it has ``configs/`` and ``models/model.pt``)."""
    path = Path(path)
    return path.is_dir() and (path / "configs").is_dir() and (path / "models" / "model.pt").is_file()


def bundle_of(path) -> Path | None:
    """The bundle folder of ``path``: the folder itself, or the bundle ``models/model.pt`` is in."""
    path = Path(path)
    for candidate in (path, path.parent.parent if path.name == "model.pt" else None):
        if candidate is not None and is_bundle(candidate):
            return candidate
    return None


def _read(path: Path) -> dict:
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(path.read_text())
        else:
            values = json.loads(path.read_text())
    except Exception as error:  # noqa: BLE001 - any parse error becomes one clear message
        raise ValueError(f"cannot read {path}: {error}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping")
    return values


class _Values:
    """Literal values of a bundle config; expressions only through MONAI's parser when trusted."""

    def __init__(self, config_file: Path, folder: Path, trust_code: bool):
        self.config_file, self.folder, self.trust_code = config_file, folder, trust_code
        self._parser = None

    def parser(self):
        """MONAI's ConfigParser on the bundle (its ``imports`` run at the first evaluation)."""
        if self._parser is None:
            from monai.bundle import ConfigParser

            self._parser = ConfigParser()
            self._parser.read_config(str(self.config_file))
            self._parser["bundle_root"] = str(self.folder)
        return self._parser

    def parsed(self, where: str, *, instantiate: bool = False):
        """MONAI's evaluation of the config item ``where`` (bundle folder importable meanwhile)."""
        sys.path.insert(0, str(self.folder))
        try:
            return self.parser().get_parsed_content(where, instantiate=instantiate)
        except Exception as error:  # noqa: BLE001 - the bundle's own code failed: one clear message
            raise ValueError(f"evaluating the bundle's {where} failed: {str(error).splitlines()[0]}") from None
        finally:
            sys.path.remove(str(self.folder))

    def literal(self, value, where: str):
        """``value`` with expressions and references evaluated (trusted) or refused."""
        if isinstance(value, str) and value[:1] in ("$", "@", "%"):
            if self.trust_code:
                return self.parsed(where)
            raise ValueError(f"{where} is {value!r}: an expression or reference, {TRUST_HINT}; "
                             "or write the literal value into the bundle's config")
        if isinstance(value, dict):
            return {k: self.literal(v, f"{where}::{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [self.literal(v, f"{where}::{i}") for i, v in enumerate(value)]
        return value

    def target(self, node, where: str) -> tuple[str, str]:
        """(module, class name) of a ``{"_target_": ...}`` node; modules outside MONAI/torch need trust."""
        if not isinstance(node, dict) or "_target_" not in node:
            raise ValueError(f"{where} must be a mapping with a '_target_', got {node!r}")
        module, _, name = str(self.literal(node["_target_"], f"{where}::_target_")).rpartition(".")
        if module and module.split(".")[0] not in TRUSTED_MODULES and not self.trust_code:
            raise ValueError(f"{where} is {module}.{name}, outside torch and MONAI: its code is {TRUST_HINT}")
        return module, name

    def arguments(self, node: dict, where: str) -> dict:
        """Keyword arguments of a ``{"_target_": ...}`` node (a dictionary transform's ``keys`` left out)."""
        return {k: self.literal(v, f"{where}::{k}") for k, v in node.items()
                if not k.startswith("_") and k not in DICTIONARY_ONLY}

    def transforms(self, node, where: str) -> list[tuple[dict, str]]:
        """(node, id) of the transforms of a ``Compose`` node (or of a list, or of one transform)."""
        if node is None:
            return []
        if isinstance(node, dict) and self.target(node, where)[1] == "Compose":
            where = f"{where}::transforms"
            node = node.get("transforms", [])
            if not isinstance(node, list):
                self.literal(node, where)
                raise ValueError(f"{where} must be a list")
        if not isinstance(node, list):
            return [(node, where)]
        return [(item, f"{where}::{index}") for index, item in enumerate(node)]


def _network(values: _Values, inference: dict) -> tuple[str, dict]:
    if "network_def" not in inference:
        raise ValueError(f"{values.config_file} has no 'network_def'")
    network = inference["network_def"]
    module, name = values.target(network, "network_def")
    in_monai = module in ("", "monai.networks.nets") or module.startswith("monai.networks.nets.")
    if not in_monai and not values.trust_code:
        raise ValueError(f"network_def is {module}.{name}; only networks of monai.networks.nets are built "
                         f"unless the bundle's code is trusted (--trust-bundle-code / the Segment widget's checkbox)")
    return (name if in_monai else f"{module}.{name}"), values.arguments(network, "network_def")


def _preprocessing(values: _Values, inference: dict) -> tuple[str, list | None, list]:
    orientation, spacing, intensity = "", None, []
    for node, where in values.transforms(inference.get("preprocessing"), "preprocessing"):
        transform = values.target(node, where)[1]
        if transform in SKIPPED:
            continue
        arguments = values.arguments(node, where)
        if transform in ("Orientationd", "Orientation"):
            orientation = "RAS" if arguments.get("as_closest_canonical") else str(arguments.get("axcodes") or "")
        elif transform in ("Spacingd", "Spacing"):
            spacing = arguments.get("pixdim")
        elif transform in INTENSITY:
            intensity.append({"name": INTENSITY[transform], "args": arguments})
        else:
            raise ValueError(f"the bundle's preprocessing uses {transform}, which this reader does not apply; "
                             "the network would see other inputs than it was trained on")
    return orientation, spacing, intensity


def _activation(values: _Values, inference: dict) -> str:
    """The head: "sigmoid" when the postprocessing's activation is a sigmoid, else "softmax"."""
    for node, where in values.transforms(inference.get("postprocessing"), "postprocessing"):
        if isinstance(node, dict) and values.target(node, where)[1] in ("Activationsd", "Activations"):
            if values.literal(node.get("sigmoid", False), f"{where}::sigmoid"):
                return "sigmoid"
    return "softmax"


def read_bundle(folder, *, trust_code: bool = False) -> tuple[ModelConfig, Path]:
    """Model configuration and weights file of a MONAI bundle.

    Parameters
    ----------
    folder : str or Path
        The bundle folder.
    trust_code : bool
        Let MONAI's ``ConfigParser`` evaluate expressions and references (running the
        bundle's ``imports`` and expressions) and accept targets outside torch and MONAI.

    Returns
    -------
    config : ModelConfig
        Architecture "monai" with the bundle's network, orientation, spacing, intensity
        transforms, window, head (softmax or sigmoid), class values and names.
    weights : Path
        ``models/model.pt`` (a state dict, to be loaded with ``weights_only=True``).

    Raises
    ------
    ValueError
        No inference config, a target outside torch/MONAI or an expression (untrusted),
        or preprocessing this reader cannot apply.
    """
    folder = Path(folder)
    if not is_bundle(folder):
        raise ValueError(f"{folder} is not a MONAI bundle (expected configs/ and models/model.pt)")
    configs = folder / "configs"
    found = [path for path in (configs / f"inference.{suffix}" for suffix in ("json", "yaml", "yml")) if path.is_file()]
    if not found:
        raise ValueError(f"{configs} has no inference.json or inference.yaml")
    inference = _read(found[0])
    metadata = _read(configs / "metadata.json") if (configs / "metadata.json").is_file() else {}
    values = _Values(found[0], folder, trust_code)

    name, arguments = _network(values, inference)
    orientation, spacing, intensity = _preprocessing(values, inference)
    activation = _activation(values, inference)
    inferer = inference.get("inferer")
    patch = values.literal(inferer.get("roi_size"), "inferer::roi_size") if isinstance(inferer, dict) else None

    data_format = metadata.get("network_data_format", {})
    image = data_format.get("inputs", {}).get("image", {})
    prediction = data_format.get("outputs", {}).get("pred", {})
    in_channels = int(arguments.get("in_channels", image.get("num_channels", 1)))
    out_channels = int(arguments.get("out_channels", prediction.get("num_channels", 2)))
    spatial_dims = int(arguments.get("spatial_dims", len(patch) if isinstance(patch, list) else 3))
    class_def = prediction.get("channel_def") or {}
    known = len(class_def) == out_channels
    if activation == "sigmoid":  # channel i is the mask of label i + 1
        label_values = list(range(1, out_channels + 1))
    else:
        label_values = sorted(int(k) for k in class_def) if known else list(range(out_channels))
    class_names = [str(class_def[k]) for k in sorted(class_def, key=int)] if known else []
    channel_def = image.get("channel_def") or {}
    channel_names = [str(channel_def[k]) for k in sorted(channel_def, key=int)] if len(channel_def) == in_channels else []
    if spacing is not None:
        spacing = [float(v) for v in (spacing if isinstance(spacing, list) else [spacing] * spatial_dims)]
        if min(spacing) <= 0:
            raise ValueError(f"Spacingd pixdim {spacing} keeps some axes' spacing; give every axis a positive spacing")
    if isinstance(patch, int):
        patch = [patch] * spatial_dims
    config = ModelConfig(
        spatial_dims=spatial_dims, in_channels=in_channels, label_values=label_values, architecture="monai",
        patch_size=[int(v) for v in patch] if patch else [], channel_names=channel_names, spacing=spacing,
        network={"name": name, "args": arguments}, intensity=intensity, activation=activation,
        class_names=class_names, orientation=orientation,
    )
    return config, folder / "models" / "model.pt"


def bundle_network(folder):
    """The bundle's ``network_def`` built by MONAI's ``ConfigParser`` (runs the bundle's code).

    For networks outside ``monai.networks.nets``, which only a trusted bundle may use.
    """
    folder = Path(folder)
    configs = folder / "configs"
    config_file = next(path for path in (configs / f"inference.{s}" for s in ("json", "yaml", "yml")) if path.is_file())
    return _Values(config_file, folder, True).parsed("network_def", instantiate=True)
