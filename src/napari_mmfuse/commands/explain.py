"""``mmfuse explain``: explain one class of a saved segmentation model.

The method choices and their parameter flags come from the explain operations
(:mod:`napari_mmfuse.operations.explain`); the images are resampled onto the first one's
grid, and the map is written on that grid, with its provenance sidecar beside it.

Examples::

    mmfuse explain flair.nii.gz t1c.nii.gz --model tumour --target 2 --roi tumour.nii.gz \\
        --method ig -o ig.nii.gz --attribution-json modalities.json
    mmfuse explain flair.nii.gz t1c.nii.gz --model tumour_unetr --target 2 --roi tumour.nii.gz \\
        --method attention --rollout -o attention.nii.gz
"""

from __future__ import annotations

import json
from pathlib import Path

from ._options import add_method_options, params_from_args, write_sidecar
from ._outputs import check_outputs, model_files
from .segment import add_model_options, in_model_order, model_from_args

NIFTI = (".nii", ".nii.gz")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="explanation map and per-modality attribution of a segmentation model",
        description="Explain one class of a saved model on one subject's modalities (in the model's channel order).",
        conflict_handler="resolve",  # --target and --rollout below replace the registry's flags
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files, one per model input channel")
    add_model_options(parser, "saved model (.pt + .json stem, TorchScript, or a MONAI bundle folder)", required=True)
    parser.add_argument("--roi", metavar="MASK", help="region: voxels > 0 of this label file (default: whole image)")
    add_method_options(parser, "explain")
    parser.add_argument("--target", required=True, type=int, metavar="CLASS", help="label value explained")
    parser.add_argument("--rollout", action="store_const", const=True, default=None,
                        help="attention: roll the attention out across blocks (with the skip connections)")
    parser.add_argument("-o", "--output", required=True, metavar="MAP", help="output map (.nii/.nii.gz)")
    parser.add_argument("--attribution-json", metavar="A.json",
                        help="write the per-modality answers: each image's attribution (integrated gradients) and "
                             "the Dice and probability change when it is removed, both ranked")
    parser.add_argument("--device", default=None)
    parser.add_argument("--overwrite", action="store_true")
    parser.set_defaults(func=run_explain)


def run_explain(args) -> int:
    from ..core.device import get_device
    from ..io.atomic import write_text
    from ..operations import get
    from ..pipeline import read_image, run
    from ._outputs import save_output

    check_outputs([("-o", args.output), ("--attribution-json", args.attribution_json)],
                  [*args.images, args.roi, *(model_files(args.model) if args.model else [])], args.overwrite)
    output = Path(args.output)
    if not output.name.lower().endswith(NIFTI):
        raise ValueError(f"{output}: write .nii or .nii.gz")
    if args.rollout and args.method != "attention":
        raise ValueError("--rollout applies to --method attention only")
    operation = get("explain", args.method)
    params = params_from_args(operation, args)
    params["attribution"] = params["attribution"] or bool(args.attribution_json)
    get_device(args.device)
    model = model_from_args(args)  # --model or --bundle (see commands.segment)
    paths = in_model_order(model, list(args.images)) if model.config.architecture == "monai" else args.images
    inputs = {"images": [read_image(path) for path in paths], "model": model,
              "region": read_image(args.roi, kind="labels") if args.roi else None}
    outputs, record = run("explain", args.method, inputs, params, device=args.device)
    save_output(output, outputs["map"], overwrite=args.overwrite, provenance=record.to_dict())
    record.outputs["map"]["path"] = str(output)
    write_sidecar(output, record, overwrite=args.overwrite)
    print(f"wrote {output}")
    if args.attribution_json:
        attribution, removal = outputs["attribution"], outputs["removal"]
        summary = {
            "method": attribution.method,
            "target": args.target,
            "images": [str(p) for p in args.images],
            "attribution": [float(v) for v in attribution.scores],
            "raw": [float(v) for v in attribution.raw],
            "attribution_ranking": attribution.ranking(),
            "removal": removal.describe(),
        }
        attribution_path = Path(args.attribution_json)
        write_text(attribution_path, json.dumps(summary, indent=2), overwrite=args.overwrite)
        for path, score, dice in zip(args.images, attribution.scores, removal.dice):
            print(f"  {path}: attribution {score:.3f}, Dice without it {dice:.3f}")
        print(f"wrote {attribution_path}")
    return 0
