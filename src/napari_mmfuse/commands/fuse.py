"""``mmfuse fuse`` and ``mmfuse fuse-metrics``: fuse image files, measure a fusion.

Examples::

    mmfuse fuse t1.nii.gz ct.nii.gz pet.nii.gz --reference t1.nii.gz -o fused.nii.gz
    mmfuse fuse mri.png pet.png -o fused.png          # colour PET: colour fusion by default
    mmfuse fuse mri.png pet.png --method colour -o fused.png --weights-out weights
    mmfuse fuse a.png b.png --method laplacian --param levels=4 --param rule=maxabs -o f.png
    mmfuse fuse-metrics mri.png ct.png fused.png
    mmfuse fuse-metrics t1.nii.gz ct.nii.gz fused.nii.gz --modality MR CT
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

from ..io import check_writable, file_suffix
from ._outputs import check_outputs



def add_parser(subparsers) -> None:
    from ..core._names import FUSE_DEFAULT_METHOD as DEFAULT_METHOD
    from ..core._names import FUSE_METHODS

    parser = subparsers.add_parser(
        "fuse",
        help="fuse 2..N images of one subject into one (resampled onto a reference grid)",
        description="Fuse images placed in world space: every input is resampled onto the reference's "
        "grid through its affine and its intensities are normalised per modality.",
    )
    parser.add_argument("inputs", nargs="+", metavar="IMAGE", help="two or more image files")
    parser.add_argument(
        "--method",
        default=None,
        choices=list(FUSE_METHODS),
        help=f"fusion method (default: 'colour' with inner={DEFAULT_METHOD} when an input is a colour picture, "
        f"else {DEFAULT_METHOD})",
    )
    parser.add_argument("--reference", help="the input whose grid the result uses (default: the first)")
    parser.add_argument("-o", "--output", required=True, help="output file: .png/.jpg (2D), .nii/.nii.gz or .tif")
    parser.add_argument("--weights-out", metavar="PREFIX", help="also write each input's contribution map")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="method parameter")
    parser.add_argument("--modality", nargs="+", help="modality of each input (e.g. MR CT PET), for normalisation")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: best available)")
    parser.set_defaults(func=run_fuse)

    parser = subparsers.add_parser(
        "fuse-metrics",
        help="fusion quality metrics (EN, SD, SF, MI, Qabf, SSIM, SCD, VIF) of a fused image or volume, as JSON",
        description="2D pictures are compared pixel for pixel (same size, 8-bit as is, colour as luminance). "
        "Volumes: the sources are resampled onto the fused volume's grid through their affines and "
        "normalised as 'mmfuse fuse' normalises its inputs; Q^AB/F and VIF pool the planes along the first axis.",
    )
    parser.add_argument("inputs", nargs="+", metavar="IMAGE", help="the sources, then the fused image")
    parser.add_argument("--nats", action="store_true", help="MI in nats (scikit-learn's convention) instead of bits")
    parser.add_argument("--modality", nargs="+", help="modality of each source (e.g. MR CT), for normalising volumes")
    parser.set_defaults(func=run_metrics)


def _read(path):
    from ..io import materialize, read

    record = read(path)[0]
    if record.channel_axis is not None:
        raise ValueError(f"{path} has separate channels; write the channel to fuse to its own file first")
    return record, materialize(record.level0, path)


def write_image(
    path: Path, data: np.ndarray, affine: np.ndarray, *, rgb: bool, units: str, overwrite: bool, provenance: dict
) -> Path:
    """Write a [0, 1] float image by suffix: 8-bit picture, float32 NIfTI or OME-TIFF."""
    from ..io import is_picture, write

    if is_picture(path):
        data = np.round(np.clip(data, 0, 1) * 255).astype(np.uint8)
    return write(path, data, affine, overwrite=overwrite, rgb=rgb, units=units, provenance=provenance)


def _weight_paths(prefix, paths: list[Path], output: Path) -> list[Path]:
    """The contribution maps ``--weights-out PREFIX`` writes: ``PREFIX_<i>_<input stem><output suffix>``."""
    if not prefix:
        return []
    suffix = file_suffix(output)
    targets = []
    for i, path in enumerate(paths):
        stem = path.name[: -len(file_suffix(path))] if file_suffix(path) else path.name
        targets.append(Path(f"{prefix}_{i}_{stem}{suffix}"))
    return targets


def run_fuse(args) -> int:
    from ..core import fuse as fz
    from ..core.device import get_device

    paths = [Path(p) for p in args.inputs]
    if len(paths) < 2:
        raise ValueError(f"fuse needs at least two images, got {len(paths)}")
    output = Path(args.output)
    check_outputs([("-o", output)] + [("--weights-out", p) for p in _weight_paths(args.weights_out, paths, output)],
                  paths, args.overwrite)
    check_writable(output, args.overwrite)
    reference_index = 0
    if args.reference is not None:
        matches = [i for i, p in enumerate(paths) if p == Path(args.reference) or p.name == Path(args.reference).name]
        if len(matches) != 1:
            raise ValueError(f"--reference {args.reference} must name exactly one of the inputs")
        reference_index = matches[0]
    if args.modality is not None and len(args.modality) != len(paths):
        raise ValueError(f"--modality needs one value per input ({len(paths)}), got {len(args.modality)}")
    for name in args.modality or []:
        fz.check_modality(name)
    get_device(args.device)
    pairs = [item.split("=", 1) for item in args.param]
    if any(len(p) != 2 for p in pairs):
        raise ValueError("--param takes KEY=VALUE")
    raw = dict(pairs)
    if args.method is not None:
        params = {key: fz.parse_parameter(args.method, key, text, inner=raw.get("inner")) for key, text in raw.items()}

    records, images = zip(*(_read(p) for p in paths))
    colour = [fz.is_colour(image, r.rgb) for r, image in zip(records, images)]
    method = args.method or fz.auto_method(images, [r.rgb for r in records])
    if args.method is None:
        params = {key: fz.parse_parameter(method, key, text, inner=raw.get("inner")) for key, text in raw.items()}
        print(f"method: {method} (chosen by the inputs; --method overrides)", file=sys.stderr)
    elif method != fz.COLOUR_METHOD and any(colour):
        names = ", ".join(p.name for p, c in zip(paths, colour) if c)
        raise ValueError(
            f"{names}: colour picture; --method {method} fuses grey images: use --method colour "
            "(or leave --method out to choose by the inputs)"
        )
    modalities = args.modality or [r.metadata.get("modality") for r in records]
    reference = records[reference_index]
    steps = fz.fuse_steps(
        fz.resample_to_reference(
            images,
            [r.affine for r in records],
            reference_index=reference_index,
            rgb=[r.rgb for r in records],
            modalities=modalities,
            device=args.device,
        ),
        method=method,
        rgb=[r.rgb for r in records],
        normalise=False,
        device=args.device,
        **params,
    )
    while True:
        try:
            tick = next(steps)
        except StopIteration as done:
            result = done.value
            break
        if tick.step % 20 == 0 or tick.step == tick.total:
            print(f"{tick.step}/{tick.total} {tick.message}", file=sys.stderr)

    provenance = {
        "step": "fuse",
        "method": result.method,
        "params": result.params,
        "inputs": [str(p) for p in paths],
        "reference": str(paths[reference_index]),
    }
    rgb = result.fused.ndim == reference.spatial_ndim + 1
    written = [write_image(output, result.fused, reference.affine, rgb=rgb, units=reference.units,
                           overwrite=args.overwrite, provenance=provenance)]
    if args.weights_out:
        for i, (path, target) in enumerate(zip(paths, _weight_paths(args.weights_out, paths, output))):
            meta = dict(provenance, step="fuse contribution", input=str(path))
            written.append(write_image(target, result.weights[i], reference.affine, rgb=False,
                                       units=reference.units, overwrite=args.overwrite, provenance=meta))
    for path in written:
        print(path)
    return 0


def _grey_255(record, data: np.ndarray) -> np.ndarray:
    """A 2D image as grey on a 0-255 scale: 8-bit as is, RGB as luminance, others min-max scaled."""
    from ..core.fuse import luminance

    if record.rgb:
        values = np.round(luminance(data[..., :3].astype(np.float32)))
        return values.astype(np.float64) if data.dtype == np.uint8 else values / max(float(values.max()), 1e-12) * 255
    if data.dtype == np.uint8:
        return data.astype(np.float64)
    values = data.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros_like(values)
    return np.round((values - low) / (high - low) * 255)


def _volume_metrics(records, images, modalities, mi_base: float) -> dict[str, float]:
    """Metrics of a fused volume (last) against its sources, resampled onto its grid through their
    affines and normalised as ``mmfuse fuse`` normalises its inputs; the fused volume scaled from its range."""
    from ..core.fuse import resample_to_reference, result_metrics

    fused = images[-1]
    low, high = float(np.min(fused)), float(np.max(fused))
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError("the fused image holds NaN/Inf values; fill them first (e.g. numpy.nan_to_num)")
    if high == low:
        raise ValueError(
            f"the fused image is constant (all {'zeros' if low == 0 else f'{low:g}'}): there is nothing to measure; "
            "check that the fusion wrote its result"
        )
    rgb = [r.rgb for r in records]
    prepared = resample_to_reference(
        images,
        [r.affine for r in records],
        reference_index=len(images) - 1,
        rgb=rgb,
        modalities=list(modalities) + [None],
        windows=[None] * (len(images) - 1) + [(float(fused.min()), float(fused.max()))],
    )
    return result_metrics(prepared[-1], prepared[:-1], rgb[:-1], mi_base=mi_base)


def run_metrics(args) -> int:
    from ..core.fuse import check_modality
    from ..core.quality import fusion_metrics

    if len(args.inputs) < 3:
        raise ValueError("fuse-metrics needs at least two sources and the fused image: A B FUSED")
    if args.modality is not None and len(args.modality) != len(args.inputs) - 1:
        raise ValueError(f"--modality needs one value per source ({len(args.inputs) - 1}), got {len(args.modality)}")
    for name in args.modality or []:
        check_modality(name)
    records, images = zip(*(_read(path) for path in args.inputs))
    mi_base = math.e if args.nats else 2.0
    dimensions = {r.spatial_ndim for r in records}
    if dimensions == {2}:
        *sources, fused = [_grey_255(record, image) for record, image in zip(records, images)]
        metrics = fusion_metrics(fused, sources, mi_base=mi_base, vif=min(fused.shape) >= 136)
    elif dimensions == {3}:
        modalities = args.modality or [r.metadata.get("modality") for r in records[:-1]]
        metrics = _volume_metrics(records, images, modalities, mi_base)
    else:
        raise ValueError("fuse-metrics compares 2D images or 3D volumes, not a mix of the two")
    print(json.dumps({k: round(v, 6) for k, v in metrics.items()}, indent=2))
    return 0
