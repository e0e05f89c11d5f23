"""MONAI bundles as segmentation models: read without running their code, fetched from the zoo by name.

* :mod:`.reader`: a bundle folder -> :class:`~napari_mmfuse.core.segment.ModelConfig`
  (network, orientation, spacing, intensity transforms, window, head, names);
* :mod:`.zoo`: a zoo bundle by name, downloaded by MONAI into a cache folder;
* :mod:`.channels`: the bundle's input channels matched to the user's images by name.
"""

from __future__ import annotations

from pathlib import Path

from .channels import match_channels, modality_of
from .reader import bundle_network, bundle_of, is_bundle, read_bundle
from .zoo import CACHE_VARIABLE, bundle_cache, fetch_bundle

__all__ = ["CACHE_VARIABLE", "bundle_cache", "bundle_of", "fetch_bundle", "is_bundle", "load_bundle",
           "match_channels", "modality_of", "read_bundle"]


def load_bundle(folder, *, trust_code: bool = False):
    """A bundle folder (or its ``models/model.pt``) as a model, its weights read weights-only.

    Parameters
    ----------
    folder : str or Path
    trust_code : bool
        Let MONAI's ``ConfigParser`` evaluate the bundle's expressions and build a network
        from outside ``monai.networks.nets`` (see :func:`.reader.read_bundle`).

    Returns
    -------
    SegmentationNet
    """
    from ..segment.model import load_model

    bundle = bundle_of(folder)
    if bundle is None:
        raise ValueError(f"{folder} is not a MONAI bundle (expected configs/ and models/model.pt)")
    config, _ = read_bundle(bundle, trust_code=trust_code)
    name = config.network["name"]
    networks = [bundle_network(bundle)] if "." in name else None  # outside MONAI: only when trusted
    return load_model(Path(bundle), config=config, networks=networks)
