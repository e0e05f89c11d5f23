"""``mmfuse fuse`` and ``mmfuse fuse-metrics``: fuse image files, measure a fusion.

Examples::

    mmfuse fuse t1.nii.gz ct.nii.gz pet.nii.gz --reference t1.nii.gz -o fused.nii.gz
    mmfuse fuse mri.png pet.png -o fused.png          # colour PET: colour fusion by default
    mmfuse fuse mri.png pet.png --method colour -o fused.png --weights-out weights
    mmfuse fuse a.png b.png --method laplacian --param levels=4 --param rule=maxabs -o f.png
    mmfuse fuse a.png b.png --method laplacian --levels 4 --rule maxabs -o f.png   # the same
    mmfuse fuse-metrics mri.png ct.png fused.png
    mmfuse fuse-metrics t1.nii.gz ct.nii.gz fused.nii.gz --modality MR CT
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

from ..core.params import ParameterRange, check_parameter
from ..io import check_writable, file_suffix
from ..provenance import sidecar_path
from ._outputs import check_outputs


def add_parser(subparsers) -> None:
    from ..operations import operations
    from ..core._names import FUSE_DEFAULT_METHOD as DEFAULT_METHOD
    from ._options import add_method_options

    parser = subparsers.add_parser(
        "fuse",
        help="fuse 2..N images of one subject into one (resampled onto a reference grid)",
        description="Fuse images placed in world space: every input is resampled onto the reference's "
        "grid through its affine and its intensities are normalised per modality. Method parameters are "
        "given as flags (--levels 4) or as --param KEY=VALUE.",
        conflict_handler="resolve",  # the --method below replaces the registry's (which has no "auto")
    )
    parser.add_argument("inputs", nargs="+", metavar="IMAGE", help="two or more image files")
    add_method_options(parser, "fuse")
    parser.add_argument(
        "--method",
        default=None,
        choices=list(operations("fuse")),
        help=f"fusion method (default: 'colour' with inner={DEFAULT_METHOD} when an input is a colour picture, "
        f"else {DEFAULT_METHOD})",
    )
    parser.add_argument("--reference", help="the input whose grid the result uses (default: the first)")
    parser.add_argument("-o", "--output", required=True, help="output file: .png/.jpg (2D), .nii/.nii.gz or .tif")
    parser.add_argument("--weights-out", metavar="PREFIX", help="also write each input's contribution map")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="method parameter by its name (seed=N seeds learned fusion)")
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


#: Range of ``--param seed=N`` (learned fusion's seed, which the pipeline records).
_SEED = ParameterRange(int, 0, 2**32 - 1)


def _parameters(operation, args, given: dict) -> dict:
    """The operation's parameters from its flags and ``--param KEY=VALUE`` (named by keyword), checked.

    Raises
    ------
    ValueError
        A parameter the method does not take, given twice, or out of its range.
    """
    from ._options import params_from_args

    flagged = params_from_args(operation, args)
    from_param = operation.check(given)
    twice = [name for name in given if getattr(args, operation.param(name).cli_flag[2:].replace("-", "_")) is not None]
    if twice:
        raise ValueError(f"{twice[0]} is given twice: as --param and as {operation.param(twice[0]).cli_flag}")
    return {**flagged, **{name: from_param[name] for name in given}}


def run_fuse(args) -> int:
    from .. import pipeline
    from ..core import fuse as fz
    from ..core.device import get_device
    from ..operations import get
    from ._options import write_sidecar
    from ._outputs import save_output

    paths = [Path(p) for p in args.inputs]
    if len(paths) < 2:
        raise ValueError(f"fuse needs at least two images, got {len(paths)}")
    output = Path(args.output)
    weight_paths = _weight_paths(args.weights_out, paths, output)
    check_outputs([("-o", output), ("-o", sidecar_path(output))] + [("--weights-out", p) for p in weight_paths],
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
    given = dict(pairs)
    seed = check_parameter("seed", given.pop("seed"), _SEED) if "seed" in given else None
    if args.method is not None:
        operation = get("fuse", args.method)
        params = _parameters(operation, args, given)

    images = [pipeline.read_image(path) for path in paths]
    for image, name in zip(images, args.modality or []):
        image.metadata["modality"] = name
        image.metadata["source"]["modality"] = name  # recorded with the input, for replay
    colour = [fz.is_colour(image.data, image.rgb) for image in images]
    method = args.method or fz.auto_method([image.data for image in images], [image.rgb for image in images])
    if args.method is None:
        operation = get("fuse", method)
        params = _parameters(operation, args, given)
        print(f"method: {method} (chosen by the inputs; --method overrides)", file=sys.stderr)
    elif method != fz.COLOUR_METHOD and any(colour):
        names = ", ".join(p.name for p, c in zip(paths, colour) if c)
        raise ValueError(
            f"{names}: colour picture; --method {method} fuses grey images: use --method colour "
            "(or leave --method out to choose by the inputs)"
        )
    order = [reference_index] + [i for i in range(len(paths)) if i != reference_index]

    def report(progress) -> None:
        if progress.total > 1 and (int(progress.done) % 20 == 0 or progress.done == progress.total):
            print(f"{int(progress.done)}/{int(progress.total)} {progress.message}", file=sys.stderr)

    outputs, record = pipeline.run("fuse", method, {"images": [images[i] for i in order]}, params,
                                   device=args.device, seed=seed, on_progress=report)
    record.outputs["image"]["path"] = str(output)
    grid = images[reference_index].metadata.get("grid")  # OUT in the reference file's array order
    written = [save_output(output, outputs["image"], overwrite=args.overwrite,
                           provenance=record.to_dict(), grid=grid)]
    write_sidecar(output, record, overwrite=args.overwrite)
    for i, target in enumerate(weight_paths):
        contribution = outputs["contributions"][order.index(i)]
        written.append(save_output(target, contribution, overwrite=args.overwrite,
                                   provenance=record.to_dict(), grid=grid))
    for path in written:
        print(path)
    return 0


def _grey_255(record, data: np.ndarray) -> np.ndarray:
    """A 2D image as grey on a 0-255 scale: 8-bit as is, RGB as luminance, others min-max scaled.

    ``record`` is the :class:`~napari_mmfuse.operations.Image` read, ``data`` its array.
    """
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
    from ..pipeline import read_image

    records = [read_image(path) for path in args.inputs]
    images = [record.data for record in records]
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
