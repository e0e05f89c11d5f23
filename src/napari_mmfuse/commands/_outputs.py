"""Outputs of a command: every location checked before the work starts, then written through one path."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np


def _same(a: Path, b: Path) -> bool:
    """Whether two paths name one file or folder (existing or not)."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def _writable_folder(folder: Path) -> bool:
    """Whether a file can be created in ``folder`` (tried, so read-only mounts count too)."""
    probe = folder / f".mmfuse-probe-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except OSError:
        return False
    try:
        os.close(fd)
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    return True


def check_outputs(outputs: Iterable, inputs: Iterable = (), overwrite: bool = False) -> list[Path]:
    """Refuse, before any work, outputs that cannot or must not be written.

    Parameters
    ----------
    outputs : iterable of (label, path) pairs or paths
        Every file or folder the command writes (``-o`` and each secondary output);
        ``None`` paths (options not given) are skipped. ``label`` names the option in
        messages (e.g. ``"--probabilities"``).
    inputs : iterable of paths
        The command's input files and folders (``None`` skipped).
    overwrite : bool
        Whether ``--overwrite`` was given.

    Returns
    -------
    list of Path
        The outputs checked.

    Raises
    ------
    ValueError
        If two outputs are the same path.
    FileNotFoundError
        If an output's folder does not exist.
    PermissionError
        If an output's folder is not writable.
    FileExistsError
        If an output exists (or is one of the inputs) and ``overwrite`` is False.
    IsADirectoryError
        If a file output names an existing folder (only ``.zarr`` outputs are folders).

    Notes
    -----
    An output that is also an input is allowed with ``--overwrite``: the writers build
    the result under a temporary name and rename it into place once it is complete
    (:mod:`napari_mmfuse.io.atomic`), so the input is read whole first.
    """
    labelled = []
    for item in outputs:
        label, path = item if isinstance(item, tuple) else ("-o", item)
        if path is not None:
            labelled.append((label, Path(path)))
    input_paths = [Path(p) for p in inputs if p is not None]
    for index, (label, path) in enumerate(labelled):
        for other_label, other in labelled[:index]:
            if _same(path, other):
                raise ValueError(f"{other_label} and {label} both name {path}; give each output its own file")
        folder = path.parent
        if not folder.is_dir():
            raise FileNotFoundError(f"cannot write {label} {path}: the folder {folder} does not exist")
        if not _writable_folder(folder):
            raise PermissionError(f"cannot write {label} {path}: the folder {folder} is not writable")
        if path.is_dir() and not path.name.lower().endswith(".zarr"):
            raise IsADirectoryError(f"cannot write {label} {path}: a folder of that name is there")
        if overwrite:
            continue
        for source in input_paths:
            if _same(path, source):
                raise FileExistsError(
                    f"{label} {path} is also an input; pass --overwrite to replace it "
                    "(the result is computed in full before it replaces the input)"
                )
        if os.path.lexists(path):
            raise FileExistsError(f"{path} already exists; pass --overwrite to replace it")
    return [path for _, path in labelled]


def model_files(stem) -> list[Path]:
    """The two files a saved model stem names: ``<stem>.pt`` and ``<stem>.json``."""
    path = Path(stem)
    stem = path.with_suffix("") if path.suffix in (".pt", ".json") else path
    return [stem.with_suffix(".pt"), stem.with_suffix(".json")]


def save_output(path, value, *, overwrite: bool = False, provenance: dict | None = None, picture_dtype=None,
                grid=None) -> Path:
    """Write one operation output: images, labels and maps by the file suffix, other values by ``value.save``.

    Parameters
    ----------
    path : str or Path
    value : napari_mmfuse.operations.Image or object with ``save(path, overwrite=)``
        A transform (a deformable one writes its field beside: ``<name>_field.nii.gz``), a trained model, ...
    overwrite : bool
    provenance : dict, optional
        Stored in the file's metadata where the format allows.
    picture_dtype : numpy dtype, optional
        The integer type a PNG/JPEG output takes (default: the input's, which the caller knows).
        Float images whose ``metadata["value_range"]`` is declared (fusion: 0..1) are spread over
        8 bits instead.
    grid : dict or sequence of dict, optional
        The reference file's voxel grid (its reader's ``metadata["grid"]``), or the grids of
        all inputs: an image (or a deformable transform's field) on one of them is written
        exactly on it, in that file's array order (see :func:`napari_mmfuse.io.write`).
    """
    from ..io import as_picture, is_picture, write
    from ..operations import Image

    path = Path(path)
    if getattr(value, "kind", None) == "transform" and getattr(value, "displacement", None) is not None:
        field = path.with_name(path.name.split(".")[0] + "_field.nii.gz")
        return value.save(path, overwrite=overwrite, displacement_path=field, grid=grid)
    if not isinstance(value, Image):
        return value.save(path, overwrite=overwrite)
    data = value.data
    if is_picture(path) and data.dtype not in ("uint8", "uint16"):
        value_range = value.metadata.get("value_range")
        if value_range is not None:  # e.g. fused images in [0, 1]: spread over the picture's 8 bits
            low, high = value_range
            data = np.round(np.clip((np.asarray(data, np.float64) - low) / (high - low), 0, 1) * 255).astype(np.uint8)
        else:
            data = as_picture(data, picture_dtype or "uint8")
    return write(path, data, value.affine, overwrite=overwrite, rgb=value.rgb, labels=value.kind == "labels",
                 units=value.units, provenance=provenance, grid=grid)
