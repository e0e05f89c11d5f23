"""npe2 writer contributions: NIfTI, OME-TIFF and OME-Zarr for image and labels layers.

The layer's full world placement (affine composed with scale/translate/rotate/shear) is
written. Existing files are never replaced: choose a new name. A layer computed by
napari-mmfuse (its provenance in ``metadata["mmfuse"]``) also gets the provenance sidecar
the command line writes (``OUT.provenance.json``), so ``mmfuse replay`` can recompute it.
The formats and suffixes are declared in :mod:`napari_mmfuse.io.formats`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _world_affine(attributes: dict, ndim: int) -> np.ndarray:
    from .widgets._layers import compose_world_affine

    return compose_world_affine(
        affine=attributes.get("affine", np.eye(ndim + 1)),
        scale=attributes.get("scale", np.ones(ndim)),
        translate=attributes.get("translate", np.zeros(ndim)),
        rotate=attributes.get("rotate", np.eye(ndim)),
        shear=attributes.get("shear", np.zeros(ndim * (ndim - 1) // 2)),
        ndim=ndim,
    )


def _spatial(data, attributes: dict):
    """Split a layer into (array, spatial affine, channel/RGB flags) for the file writers.

    A layer shown resliced in 2D (its data a ``ReslicedVolume``) writes its own data and placement.
    """
    from .core.reslice import ReslicedVolume

    data = data[0] if attributes.get("multiscale") else data
    resliced = isinstance(data, ReslicedVolume)
    full = data.source_affine if resliced else None
    data = np.asarray(data.source if resliced else data)
    rgb = bool(attributes.get("rgb", False))
    ndim = data.ndim - int(rgb)
    full = _world_affine(attributes, ndim) if full is None else full
    n = 3 if ndim >= 3 else 2
    affine = np.eye(n + 1)
    affine[:n, :n] = full[ndim - n : ndim, ndim - n : ndim]
    affine[:n, n] = full[ndim - n : ndim, ndim]
    return data, affine, rgb


def _units(attributes: dict) -> str:
    units = attributes.get("units") or ("pixel",)
    text = str(units[-1])
    return {"millimeter": "mm", "micrometer": "um", "pixel": "pixel"}.get(text, text)


def _with_provenance(path, attributes: dict) -> list[str]:
    """``[path]``, plus the provenance sidecar written beside it when the layer has a provenance record."""
    record = (attributes.get("metadata") or {}).get("mmfuse")
    if not isinstance(record, dict):
        return [str(path)]
    from .provenance import Provenance, sidecar_path

    try:
        provenance = Provenance.from_dict(record)
    except (TypeError, ValueError):  # not a pipeline record (older layers): nothing to replay
        return [str(path)]
    if provenance.output in provenance.outputs:
        provenance.outputs[provenance.output]["path"] = str(path)
    # the image is new (writers never replace one), so a sidecar already beside it is stale
    return [str(path), str(provenance.save(sidecar_path(path), overwrite=True))]


def _write_nifti(path, data, attributes, labels: bool) -> list[str]:
    from .io.nifti import write_nifti

    array, affine, rgb = _spatial(data, attributes)
    if rgb:
        raise ValueError("NIfTI does not hold RGB slides here; save as OME-TIFF (.ome.tif)")
    written = write_nifti(Path(path), array, affine, metadata=attributes.get("metadata"), labels=labels)
    return _with_provenance(written, attributes)


def _write_ome_tiff(path, data, attributes, layer_type: str) -> list[str]:
    from .io.tiff import write_ome_tiff

    array, affine, rgb = _spatial(data, attributes)
    written = write_ome_tiff(
        Path(path), array, affine, rgb=rgb, units=_units(attributes), metadata=attributes.get("metadata"),
        layer_type=layer_type,
    )
    return _with_provenance(written, attributes)


def _write_ome_zarr(path, data, attributes, layer_type: str) -> list[str]:
    from .io.omezarr import write_ome_zarr

    array, affine, rgb = _spatial(data, attributes)
    if rgb:
        array = np.moveaxis(array, -1, 0)
    written = write_ome_zarr(
        Path(path), array, affine, channel_axis=0 if rgb else None, units=_units(attributes), layer_type=layer_type
    )
    return _with_provenance(written, attributes)


def write_nifti_image(path: str, data, attributes: dict) -> list[str]:
    """Write an image layer as NIfTI (.nii / .nii.gz) with its world affine."""
    return _write_nifti(path, data, attributes, labels=False)


def write_nifti_labels(path: str, data, attributes: dict) -> list[str]:
    """Write a labels layer as NIfTI with an integer type and its world affine."""
    return _write_nifti(path, data, attributes, labels=True)


def write_ome_tiff_image(path: str, data, attributes: dict) -> list[str]:
    """Write an image layer as OME-TIFF with its physical pixel size and affine."""
    return _write_ome_tiff(path, data, attributes, "image")


def write_ome_tiff_labels(path: str, data, attributes: dict) -> list[str]:
    """Write a labels layer as OME-TIFF."""
    return _write_ome_tiff(path, data, attributes, "labels")


def write_ome_zarr_image(path: str, data, attributes: dict) -> list[str]:
    """Write an image layer as an OME-Zarr pyramid (for large data)."""
    return _write_ome_zarr(path, data, attributes, "image")


def write_ome_zarr_labels(path: str, data, attributes: dict) -> list[str]:
    """Write a labels layer as an OME-Zarr pyramid (nearest-neighbour downsampling)."""
    return _write_ome_zarr(path, data, attributes, "labels")
