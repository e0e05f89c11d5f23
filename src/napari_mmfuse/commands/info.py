"""``mmfuse info FILE``: what a file holds and where it sits in world space."""

from __future__ import annotations

import json

import numpy as np


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("info", help="shape, dtype, spacing, orientation and world bounding box of a file")
    parser.add_argument("path", help="image file or DICOM/OME-Zarr folder")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.set_defaults(func=run)


def describe(record) -> dict:
    """Summary of one image record as plain Python types."""
    from ..core import space

    level0 = record.level0
    spatial_shape = level0.shape[: level0.ndim - int(record.rgb)][-record.spatial_ndim :]
    low, high = space.world_bounds(spatial_shape, record.affine)
    info = {
        "name": record.name,
        "layer_type": record.layer_type,
        "shape": list(level0.shape),
        "dtype": str(level0.dtype),
        "rgb": record.rgb,
        "channel_axis": record.channel_axis,
        "channel_names": record.channel_names,
        "multiscale_levels": [list(level.shape) for level in record.data] if record.multiscale else None,
        "units": record.units,
        "frame": record.metadata.get("frame"),
        "spacing": [round(float(s), 6) for s in space.spacing_of(record.affine)],
        "orientation": space.orientation_code(record.affine) if record.spatial_ndim == 3 else None,
        "obliquity_deg": round(space.obliquity_deg(record.affine), 3),
        "world_bounds": {"low": np.round(low, 4).tolist(), "high": np.round(high, 4).tolist()},
        "axis_order": "napari (z, y, x) = reversed LPS (x, y, z)" if record.spatial_ndim == 3 else "(y, x)",
        "affine": np.round(record.affine, 6).tolist(),
        "modality": record.metadata.get("modality"),
    }
    return info


def run(args) -> int:
    from ..io import read

    described = [describe(record) for record in read(args.path)]
    if args.json:
        print(json.dumps(described, indent=2))
        return 0
    for info in described:
        print(f"{info['name']} ({info['layer_type']})")
        for key, value in info.items():
            if key not in ("name", "layer_type", "affine") and value is not None:
                print(f"  {key:18s} {value}")
    return 0
