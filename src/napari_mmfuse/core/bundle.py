"""Read a MONAI bundle folder as a segmentation model configuration, without running its code.

A bundle (``configs/inference.json`` or ``.yaml``, ``configs/metadata.json``,
``models/model.pt``) describes its network, preprocessing and inferer in MONAI's config
language, which may hold Python expressions (``"$..."``) and references (``"@..."``).
MONAI's ``ConfigParser`` would evaluate them; here only literal values are read and anything
that needs evaluating is refused with a message. Read:

* ``network_def``: a class of ``monai.networks.nets`` and its literal keyword arguments;
* ``preprocessing``: ``Spacingd`` (the model's voxel spacing) and the intensity transforms
  ``NormalizeIntensityd``, ``ScaleIntensityd``, ``ScaleIntensityRanged``,
  ``ScaleIntensityRangePercentilesd`` (applied by MONAI itself at prediction); loading,
  channel, type and orientation transforms are skipped (inputs are used on their own grid);
  any other transform is refused, since leaving it out would change what the network sees;
* ``inferer``: ``SlidingWindowInferer``'s ``roi_size`` (the window);
* ``postprocessing``: a sigmoid activation (multi-label outputs) is refused — models are
  read as one softmax over classes;
* ``metadata.json``: input channel names and output class values from ``channel_def``.
"""

from __future__ import annotations

import json
from pathlib import Path

from .segment.config import INTENSITY_TRANSFORMS, ModelConfig

#: preprocessing transforms that do not change intensities or are handled by placement
SKIPPED = ("LoadImaged", "LoadImage", "EnsureChannelFirstd", "EnsureChannelFirst", "AddChanneld",
           "EnsureTyped", "EnsureType", "ToTensord", "ToTensor", "CastToTyped", "CastToType",
           "Orientationd", "Orientation", "Identityd", "Identity")
#: dictionary intensity transforms of a bundle -> the array transform applied at prediction
INTENSITY = {f"{name}d": name for name in INTENSITY_TRANSFORMS}
DICTIONARY_ONLY = ("keys", "allow_missing_keys")


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


def _literal(value, where: str):
    """``value`` if it holds no expression or reference, else a ValueError naming ``where``."""
    if isinstance(value, str) and value[:1] in ("$", "@", "%"):
        raise ValueError(f"{where} is {value!r}: an expression or reference, which this reader does not "
                         "evaluate (it could run code); write the literal value into the bundle's config")
    if isinstance(value, dict):
        return {k: _literal(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_literal(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _name(node, where: str) -> str:
    """Class name (without its module) of a ``{"_target_": ...}`` node."""
    if not isinstance(node, dict) or "_target_" not in node:
        raise ValueError(f"{where} must be a mapping with a '_target_', got {node!r}")
    return str(_literal(node["_target_"], f"{where}._target_")).rsplit(".", 1)[-1]


def _arguments(node: dict, where: str) -> dict:
    """Literal keyword arguments of a ``{"_target_": ...}`` node."""
    return {k: _literal(v, f"{where}.{k}") for k, v in node.items() if not k.startswith("_")}


def _transforms(node, where: str) -> list:
    """The transforms of a ``Compose`` node (or of a list, or one transform)."""
    if node is None:
        return []
    if isinstance(node, list):
        return node
    if _name(node, where) != "Compose":
        return [node]
    transforms = node.get("transforms", [])
    if not isinstance(transforms, list):
        _literal(transforms, f"{where}.transforms")
        raise ValueError(f"{where}.transforms must be a list")
    return transforms


def read_bundle(folder) -> tuple[ModelConfig, Path]:
    """Model configuration and weights file of a MONAI bundle.

    Parameters
    ----------
    folder : str or Path
        The bundle folder.

    Returns
    -------
    config : ModelConfig
        Architecture "monai" with the bundle's network, spacing, intensity transforms,
        window and class values.
    weights : Path
        ``models/model.pt`` (a state dict, to be loaded with ``weights_only=True``).

    Raises
    ------
    ValueError
        No inference config, a network outside ``monai.networks.nets``, expressions where
        literal values are needed, preprocessing this reader cannot apply, or sigmoid outputs.
    """
    folder = Path(folder)
    if not is_bundle(folder):
        raise ValueError(f"{folder} is not a MONAI bundle (expected configs/ and models/model.pt)")
    configs = folder / "configs"
    found = [configs / f"inference.{suffix}" for suffix in ("json", "yaml", "yml")]
    found = [path for path in found if path.is_file()]
    if not found:
        raise ValueError(f"{configs} has no inference.json or inference.yaml")
    inference = _read(found[0])
    metadata = _read(configs / "metadata.json") if (configs / "metadata.json").is_file() else {}

    if "network_def" not in inference:
        raise ValueError(f"{found[0]} has no 'network_def'")
    network = inference["network_def"]
    name = _name(network, "network_def")
    module = str(network["_target_"]).rpartition(".")[0]
    if module not in ("", "monai.networks.nets") and not module.startswith("monai.networks.nets."):
        raise ValueError(f"network_def is {module}.{name}; only networks of monai.networks.nets are built here")
    arguments = _arguments(network, "network_def")

    spacing, intensity = None, []
    for index, node in enumerate(_transforms(inference.get("preprocessing"), "preprocessing")):
        where = f"preprocessing.transforms[{index}]"
        transform = _name(node, where)
        if transform in SKIPPED:
            continue
        if transform in ("Spacingd", "Spacing"):
            spacing = _literal(node.get("pixdim"), f"{where}.pixdim")
        elif transform in INTENSITY:
            kept = {k: v for k, v in _arguments(node, where).items() if k not in DICTIONARY_ONLY}
            intensity.append({"name": INTENSITY[transform], "args": kept})
        else:
            raise ValueError(f"the bundle's preprocessing uses {transform}, which this reader does not apply; "
                             "the network would see other inputs than it was trained on")

    for index, node in enumerate(_transforms(inference.get("postprocessing"), "postprocessing")):
        if isinstance(node, dict) and str(node.get("_target_", "")).endswith(("Activationsd", "Activations")) \
                and node.get("sigmoid"):
            raise ValueError("the bundle's outputs are sigmoid (multi-label) channels; "
                             "only models with one softmax over classes are supported")

    inferer = inference.get("inferer")
    patch = _literal(inferer.get("roi_size"), "inferer.roi_size") if isinstance(inferer, dict) else None

    data_format = metadata.get("network_data_format", {})
    image = data_format.get("inputs", {}).get("image", {})
    prediction = data_format.get("outputs", {}).get("pred", {})
    in_channels = int(arguments.get("in_channels", image.get("num_channels", 1)))
    out_channels = int(arguments.get("out_channels", prediction.get("num_channels", 2)))
    spatial_dims = int(arguments.get("spatial_dims", len(patch) if patch else 3))
    class_names = prediction.get("channel_def") or {}
    label_values = sorted(int(k) for k in class_names) if len(class_names) == out_channels else list(range(out_channels))
    channel_def = image.get("channel_def") or {}
    channel_names = [str(channel_def[k]) for k in sorted(channel_def, key=int)] if len(channel_def) == in_channels else []
    if spacing is not None:
        spacing = [float(v) for v in (spacing if isinstance(spacing, list) else [spacing] * spatial_dims)]
    config = ModelConfig(
        spatial_dims=spatial_dims, in_channels=in_channels, label_values=label_values, architecture="monai",
        patch_size=[int(v) for v in patch] if patch else [], channel_names=channel_names, spacing=spacing,
        network={"name": name, "args": arguments}, intensity=intensity,
    )
    return config, folder / "models" / "model.pt"
