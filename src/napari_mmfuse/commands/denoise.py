"""``mmfuse denoise`` and ``mmfuse normalize``: clean one image file, keep its world placement.

Methods, their flags and defaults come from the operation registry
(:mod:`napari_mmfuse.operations.denoise`, :mod:`napari_mmfuse.operations.normalize`); the
work runs through :func:`napari_mmfuse.pipeline.run`, and each output gets a provenance
sidecar (``OUT.provenance.json``) that ``mmfuse replay`` recomputes it from.

Examples::

    mmfuse denoise t1.nii.gz --method nlm -o t1_nlm.nii.gz
    mmfuse denoise cells.tif --method n2v --steps 800 --save-model cells_n2v -o cells_n2v.ome.tif
    mmfuse normalize t1.nii.gz --method poly-bias -o t1_bias.nii.gz
    mmfuse normalize slide.png --method macenko --reference target.png -o slide_norm.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ._options import add_method_options, params_from_args, write_sidecar
from ._outputs import check_outputs, model_files


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "denoise",
        help="denoise an image (tv, nlm, bilateral, median, gaussian, diffusion, n2v)",
        description="Denoise a 2D/3D grey image. Distances are in the file's world units (mm or µm); "
        "unset intensity parameters are estimated from the image's noise level.",
    )
    parser.add_argument("input", help="image file (NIfTI, TIFF, PNG, ...)")
    parser.add_argument("-o", "--output", required=True, help="output file: .nii/.nii.gz, .tif/.ome.tif or .png")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--series", type=int, default=0, help="which image of a multi-image file (default 0)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: best available)")
    parser.add_argument("--seed", type=int, default=None, help="n2v: random seed of the training (default 0)")
    parser.add_argument("--model", help="n2v: apply this saved model (.pt/.json stem) instead of training")
    parser.add_argument("--save-model", help="n2v: save the trained model to this stem (.pt + .json)")
    add_method_options(parser, "denoise")
    parser.set_defaults(func=run_denoise)

    parser = subparsers.add_parser(
        "normalize",
        help="normalise intensities (percentile, zscore, histogram), correct a bias field (poly-bias, n4) "
        "or normalise H&E stains (macenko, reinhard)",
    )
    parser.add_argument("input", help="image file")
    parser.add_argument("--reference", help="reference image (histogram: required; macenko/reinhard: target slide)")
    parser.add_argument("-o", "--output", required=True, help="output file: .nii/.nii.gz, .tif/.ome.tif or .png")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--series", type=int, default=0, help="which image of a multi-image file (default 0)")
    add_method_options(parser, "normalize")
    parser.set_defaults(func=run_normalize)


def _check_output(path, overwrite: bool) -> None:
    """Refuse, before computing, an output that exists or is lossy (JPEG)."""
    from ..io import check_writable, file_suffix

    check_writable(path, overwrite)
    if file_suffix(Path(path)) in (".jpg", ".jpeg"):
        raise ValueError(
            f"unsupported output suffix for {Path(path).name}: JPEG compression would add artefacts; "
            "write .png, .tif or .nii.gz"
        )


def _save(output: Path, outputs: dict, port: str, record, source, *, overwrite: bool) -> Path:
    """Write the output ``port`` (pictures keep the input's integer type) and its sidecar."""
    from ._outputs import save_output

    written = save_output(output, outputs[port], overwrite=overwrite, provenance=record.to_dict(),
                          picture_dtype=source.data.dtype, grid=source.metadata.get("grid"))
    record.outputs.setdefault(port, {})["path"] = str(output)
    write_sidecar(output, record, overwrite=overwrite)
    return written


def run_denoise(args) -> int:
    from ..core.device import get_device
    from ..operations import get
    from ..pipeline import read_image, run

    operation = get("denoise", args.method)
    output = Path(args.output)
    saved = model_files(args.save_model) if args.save_model else []
    check_outputs([("-o", output)] + [("--save-model", path) for path in saved],
                  [args.input] + (model_files(args.model) if args.model else []), args.overwrite)
    _check_output(output, args.overwrite)
    params = params_from_args(operation, args)
    if args.method != "n2v" and (args.model or args.save_model or args.seed is not None):
        raise ValueError("--model, --save-model and --seed apply to --method n2v only")
    get_device(args.device)
    image = read_image(args.input, series=args.series)
    inputs = {"image": image}
    if args.model:
        from ..core.denoise import N2VModel

        inputs["model"] = N2VModel.load(args.model, device=args.device)
    outputs, record = run("denoise", args.method, inputs, params, device=args.device, seed=args.seed,
                          on_progress=_print_loss)
    if args.save_model:
        print(f"model saved to {outputs['model'].save(args.save_model)}", file=sys.stderr)
    written = _save(output, outputs, "image", record, image, overwrite=args.overwrite)
    shown = {name: value for name, value in record.params.items() if value is not None}
    print(f"{written}: {args.method} {json.dumps(shown)}")
    return 0


def _print_loss(progress) -> None:
    """Noise2Void's loss every 100 training steps, on stderr."""
    loss = progress.values.get("loss")
    if loss is not None and progress.done % 100 == 0:
        print(f"step {int(progress.done)}: loss {loss:.4f}", file=sys.stderr)


def run_normalize(args) -> int:
    from ..operations import get
    from ..pipeline import read_image, run

    operation = get("normalize", args.method)
    output = Path(args.output)
    check_outputs([("-o", output)], [args.input, args.reference], args.overwrite)
    _check_output(output, args.overwrite)
    params = params_from_args(operation, args)
    if args.reference and "reference" not in {port.name for port in operation.inputs}:
        raise ValueError(f"--reference does not apply to --method {args.method}")
    image = read_image(args.input, series=args.series)
    inputs = {"image": image}
    if args.reference:
        inputs["reference"] = read_image(args.reference)
    elif any(port.name == "reference" and not port.optional for port in operation.inputs):
        raise ValueError(f"{args.method} needs a --reference image")
    outputs, record = run("normalize", args.method, inputs, params)
    port = operation.outputs[0].name
    written = _save(output, outputs, port, record, image, overwrite=args.overwrite)
    print(f"{written}: {args.method}")
    return 0
