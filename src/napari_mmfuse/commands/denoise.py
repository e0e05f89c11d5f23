"""``mmfuse denoise`` and ``mmfuse normalize``: clean one image file, keep its world placement.

Examples::

    mmfuse denoise t1.nii.gz --method nlm -o t1_nlm.nii.gz
    mmfuse denoise cells.tif --method n2v --steps 800 --save-model cells_n2v -o cells_n2v.ome.tif
    mmfuse normalize t1.nii.gz --method n4 -o t1_n4.nii.gz
    mmfuse normalize slide.png --method macenko --reference target.png -o slide_norm.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ..io import check_writable, file_suffix
from ._outputs import check_outputs, model_files

# CLI flag -> (core keyword, methods that take it)
_DENOISE_FLAGS = {
    "sigma": ("sigma", ("gaussian", "nlm")),
    "radius": ("radius", ("median",)),
    "sigma_spatial": ("sigma_spatial", ("bilateral",)),
    "sigma_range": ("sigma_range", ("bilateral",)),
    "weight": ("weight", ("tv",)),
    "h": ("h", ("nlm",)),
    "patch_radius": ("patch_radius", ("nlm",)),
    "search_radius": ("search_radius", ("nlm",)),
    "kappa": ("kappa", ("diffusion",)),
    "iterations": ("n_iter", ("diffusion",)),
    "steps": ("steps", ("n2v",)),
    "patch": ("patch", ("n2v",)),
}


def add_parser(subparsers) -> None:
    from ..core._names import DENOISE_METHODS as METHODS
    from ..core._names import NORMALIZE_METHODS

    parser = subparsers.add_parser(
        "denoise",
        help="denoise an image (tv, nlm, bilateral, median, gaussian, diffusion, n2v)",
        description="Denoise a 2D/3D grey image. Distances are in the file's world units (mm or µm); "
        "unset parameters are proposed from the estimated noise level.",
    )
    parser.add_argument("input", help="image file (NIfTI, TIFF, PNG, ...)")
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument("-o", "--output", required=True, help="output file: .nii/.nii.gz, .tif/.ome.tif or .png")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--series", type=int, default=0, help="which image of a multi-image file (default 0)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: best available)")
    parser.add_argument("--sigma", type=float, help="gaussian: std (world units); nlm: noise std (intensity)")
    parser.add_argument("--radius", type=float, help="median: half-width (world units)")
    parser.add_argument("--sigma-spatial", type=float, help="bilateral: spatial std (world units)")
    parser.add_argument("--sigma-range", type=float, help="bilateral: intensity std")
    parser.add_argument("--weight", type=float, help="tv: regularisation weight (intensity units)")
    parser.add_argument("--h", type=float, help="nlm: cut-off (intensity units)")
    parser.add_argument("--patch-radius", type=float, help="nlm: patch half-width (world units)")
    parser.add_argument("--search-radius", type=float, help="nlm: search half-width (world units)")
    parser.add_argument("--kappa", type=float, help="diffusion: edge threshold (intensity units)")
    parser.add_argument("--iterations", type=int, help="diffusion: number of iterations")
    parser.add_argument("--steps", type=int, help="n2v: training steps")
    parser.add_argument("--patch", type=int, help="n2v: training patch edge (pixels)")
    parser.add_argument("--model", help="n2v: apply this saved model (.pt/.json stem) instead of training")
    parser.add_argument("--save-model", help="n2v: save the trained model to this stem (.pt + .json)")
    parser.set_defaults(func=run_denoise)

    parser = subparsers.add_parser(
        "normalize",
        help="normalise intensities (percentile, zscore, histogram, n4) or H&E stains (macenko, reinhard)",
    )
    parser.add_argument("input", help="image file")
    parser.add_argument("--method", required=True, choices=NORMALIZE_METHODS)
    parser.add_argument("--reference", help="reference image (histogram: required; macenko/reinhard: target slide)")
    parser.add_argument("-o", "--output", required=True, help="output file: .nii/.nii.gz, .tif/.ome.tif or .png")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--series", type=int, default=0, help="which image of a multi-image file (default 0)")
    parser.add_argument("--low", type=float, default=1.0, help="percentile: low percentile")
    parser.add_argument("--high", type=float, default=99.8, help="percentile: high percentile")
    parser.add_argument("--degree", type=int, default=3, help="n4: polynomial degree of the bias field")
    parser.set_defaults(func=run_normalize)


def _read_one(path, series: int):
    from ..io import materialize, read

    records = read(path)
    if not 0 <= series < len(records):
        raise ValueError(f"{path} holds {len(records)} image(s); --series {series} is out of range")
    record = records[series]
    if record.channel_axis is not None:
        raise ValueError(f"{path} has a channel axis; write one channel to its own file first")
    return record, materialize(record.level0, path)


def _check_output(path, overwrite: bool) -> None:
    """Refuse, before computing, an output that exists or is lossy (JPEG)."""
    check_writable(path, overwrite)
    if file_suffix(Path(path)) in (".jpg", ".jpeg"):
        raise ValueError(
            f"unsupported output suffix for {Path(path).name}: JPEG compression would add artefacts; "
            "write .png, .tif or .nii.gz"
        )


def write_result(path, data: np.ndarray, record, *, overwrite: bool, provenance: dict) -> Path:
    """Write ``data`` with ``record``'s affine, choosing the writer by the file suffix.

    Pictures (PNG/JPEG) keep the input's integer type (values rounded and clipped);
    float results need a TIFF or NIfTI file.
    """
    from ..io import as_picture, is_picture, write

    _check_output(path, overwrite)
    rgb = bool(record.rgb) and data.ndim == record.level0.ndim
    if is_picture(path):
        data = as_picture(data, record.level0.dtype)
    return write(path, data, record.affine, overwrite=overwrite, rgb=rgb, units=record.units, provenance=provenance)


def _denoise_params(args) -> dict:
    """The method's keywords from the flags given, each checked against its declared range."""
    from ..core.denoise import PARAMETER_RANGES
    from ..core.params import check_parameter

    params = {}
    for flag, (keyword, methods) in _DENOISE_FLAGS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        name = f"--{flag.replace('_', '-')}"
        if args.method not in methods:
            raise ValueError(f"{name} does not apply to --method {args.method}")
        params[keyword] = check_parameter(name, value, PARAMETER_RANGES[keyword])
    return params


def _spacing(record, data: np.ndarray):
    """World spacing of ``data``'s axes (the last ones of the record's grid), or None."""
    from ..core.space import spacing_of

    if record.spatial_ndim < data.ndim:
        return None
    spacing = spacing_of(record.affine)
    if record.spatial_ndim == data.ndim + 1:  # a single slice: drop the flat axis
        flat = record.level0.shape.index(1)
        return np.delete(spacing, flat)
    return spacing[-data.ndim :]


def run_denoise(args) -> int:
    from ..core import denoise as core
    from ..core.device import get_device

    output = Path(args.output)
    saved = model_files(args.save_model) if args.save_model else []
    check_outputs([("-o", output)] + [("--save-model", path) for path in saved],
                  [args.input] + (model_files(args.model) if args.model else []), args.overwrite)
    _check_output(output, args.overwrite)
    params = _denoise_params(args)
    if args.method != "n2v" and (args.model or args.save_model):
        raise ValueError("--model and --save-model apply to --method n2v only")
    get_device(args.device)
    record, data = _read_one(args.input, args.series)
    if record.rgb:
        raise ValueError(f"{args.input} is RGB; denoising works on grey images (convert or split the channels)")
    shape = data.shape
    planar = data.ndim == 3 and 1 in shape and max(shape) > 1  # a single slice: denoised as 2D, written back
    if planar:
        flat = shape.index(1)
        data = np.take(data, 0, axis=flat)
    if args.method != "n2v":
        spacing = _spacing(record, data)
        core.check_distances(data.shape, spacing, args.method, params)
    if args.method == "n2v":
        if args.model:
            model = core.N2VModel.load(args.model, device=args.device)
        else:
            training = core.n2v_train(data, device=args.device, **params)
            while True:
                try:
                    step = next(training)
                except StopIteration as done:
                    model = done.value
                    break
                if step.step % 100 == 0:
                    print(f"step {step.step}: loss {step.loss:.4f}", file=sys.stderr)
            if args.save_model:
                print(f"model saved to {model.save(args.save_model)}", file=sys.stderr)
        result = model.predict(data, device=args.device)
    else:
        result = core.denoise(data, args.method, spacing=spacing, device=args.device, **params)
    if planar:
        result = np.expand_dims(result, flat)
    provenance = {"step": "denoise", "method": args.method, "params": params, "input": str(args.input)}
    written = write_result(output, result, record, overwrite=args.overwrite, provenance=provenance)
    print(f"{written}: {args.method} {json.dumps(params)}")
    return 0


def _check_normalize_params(args) -> None:
    from ..core.normalize import PARAMETER_RANGES
    from ..core.params import check_parameter

    for key, spec in PARAMETER_RANGES.items():
        check_parameter(f"--{key}", getattr(args, key), spec)
    if args.low >= args.high:
        raise ValueError(f"--low must be below --high, got --low {args.low:g} --high {args.high:g}")


def run_normalize(args) -> int:
    from ..core import normalize as core
    from ..core.space import spacing_of

    output = Path(args.output)
    check_outputs([("-o", output)], [args.input, args.reference], args.overwrite)
    _check_output(output, args.overwrite)
    _check_normalize_params(args)
    record, data = _read_one(args.input, args.series)
    reference = _read_one(args.reference, 0)[1] if args.reference else None
    params: dict = {}
    if args.method == "percentile":
        params = {"low": args.low, "high": args.high}
    elif args.method == "n4":
        params = {"degree": args.degree, "spacing": spacing_of(record.affine).tolist()}
    if args.method in core.RGB_METHODS and not record.rgb:
        raise ValueError(f"{args.method} normalises RGB H&E slides; {args.input} is not RGB")
    if args.method in core.GREY_METHODS and record.rgb:
        raise ValueError(f"{args.method} works on grey images; {args.input} is RGB")
    result = core.normalize(data, args.method, reference=reference, **params)
    provenance = {"step": "normalize", "method": args.method, "params": params, "input": str(args.input)}
    if args.reference:
        provenance["reference"] = str(args.reference)
    written = write_result(output, result, record, overwrite=args.overwrite, provenance=provenance)
    print(f"{written}: {args.method}")
    return 0
