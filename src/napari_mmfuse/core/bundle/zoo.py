"""Named bundles of the MONAI Model Zoo: downloaded on request by MONAI, kept in a cache folder."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .reader import is_bundle

#: environment variable naming the bundle cache folder
CACHE_VARIABLE = "MMFUSE_BUNDLE_CACHE"


def bundle_cache() -> Path:
    """The folder bundles are downloaded into: ``$MMFUSE_BUNDLE_CACHE``, else the user cache's ``bundles``."""
    if os.environ.get(CACHE_VARIABLE):
        return Path(os.environ[CACHE_VARIABLE]).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("napari-mmfuse")) / "bundles"


def fetch_bundle(name: str, *, cache=None, version: str | None = None) -> Path:
    """The folder of the zoo bundle ``name``: the cached copy, else downloaded by MONAI.

    Parameters
    ----------
    name : str
        A bundle name of the MONAI Model Zoo, e.g. ``"brats_mri_segmentation"``.
    cache : str or Path, optional
        Download folder (default :func:`bundle_cache`); the bundle lands in ``cache / name``.
    version : str, optional
        The bundle version (default: MONAI's choice, the latest).

    Returns
    -------
    Path

    Raises
    ------
    ValueError
        Not a bundle name, the machine is offline or the zoo unreachable, or the download
        is not a bundle.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name or ""):
        raise ValueError(f"{name!r} is not a bundle name (letters, digits, '_', '.', '-'), e.g. brats_mri_segmentation")
    cache = Path(cache) if cache is not None else bundle_cache()
    folder = cache / name
    if is_bundle(folder):
        return folder
    from monai.bundle import download

    cache.mkdir(parents=True, exist_ok=True)
    try:
        download(name=name, version=version, bundle_dir=str(cache), progress=False)
    except OSError as error:  # requests' and urllib's network errors are OSErrors
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"cannot download bundle {name!r}: this machine is offline or the MONAI model zoo is "
                         f"unreachable ({reason[:160]}); put the bundle folder at {folder} or give its path") from None
    if not is_bundle(folder):
        raise ValueError(f"the download of {name!r} into {cache} holds no bundle (configs/ and models/model.pt)")
    return folder
