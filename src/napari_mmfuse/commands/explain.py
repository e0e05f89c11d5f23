"""``mmfuse explain``: explain one class of a saved segmentation model.

Examples::

    mmfuse explain flair.nii.gz t1c.nii.gz --model tumour --target 2 --roi tumour.nii.gz \\
        --method ig -o ig.nii.gz --attribution-json modalities.json
    mmfuse explain flair.nii.gz t1c.nii.gz --model tumour_unetr --target 2 --roi tumour.nii.gz \\
        --method attention --rollout -o attention.nii.gz
"""

from __future__ import annotations

import json
from pathlib import Path

from ._outputs import check_outputs, model_files
from .segment import _nifti_output, _on_grid, _subject


def add_parser(subparsers) -> None:
    from ..core._names import EXPLAIN_METHODS as METHODS

    parser = subparsers.add_parser(
        "explain",
        help="explanation map and per-modality attribution of a segmentation model",
        description="Explain one class of a saved model on one subject's modalities (in the model's channel order).",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files, one per model input channel")
    parser.add_argument("--model", required=True, metavar="M", help="saved model (.pt + .json stem, or TorchScript)")
    parser.add_argument("--target", required=True, type=int, metavar="CLASS", help="label value explained")
    parser.add_argument("--roi", metavar="MASK", help="region: voxels > 0 of this label file (default: whole image)")
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument("--layer", help="gradcam: convolution layer name (default: the deepest); "
                        "attention: attention block name (default: the last)")
    parser.add_argument("--rollout", action="store_true",
                        help="attention: roll the attention out across blocks (with the skip connections)")
    parser.add_argument("-o", "--output", required=True, metavar="MAP", help="output map (.nii/.nii.gz)")
    parser.add_argument("--attribution-json", metavar="A.json",
                        help="write the per-modality attribution (channel ablation), one number per image")
    parser.add_argument("--device", default=None)
    parser.add_argument("--overwrite", action="store_true")
    parser.set_defaults(func=run_explain)


def run_explain(args) -> int:
    from ..core import explain, segment
    from ..core.device import get_device
    from ..io.atomic import write_text
    from ..io.nifti import write_nifti

    check_outputs([("-o", args.output), ("--attribution-json", args.attribution_json)],
                  [*args.images, args.roi, *model_files(args.model)], args.overwrite)
    output = _nifti_output(args.output)
    get_device(args.device)
    model = segment.load_model(args.model)
    images, record = _subject(args.images, args.device)
    region = _on_grid(args.roi, record, args.device) > 0 if args.roi else None
    if args.rollout and args.method != "attention":
        raise ValueError("--rollout applies to --method attention only")
    result = explain.explain(model, images, method=args.method, target=args.target, region=region,
                             layer=args.layer, rollout=args.rollout, device=args.device)
    write_nifti(output, result.map, record.affine, overwrite=args.overwrite,
                metadata={"descrip": f"mmfuse explain {args.method}{' rollout' if args.rollout else ''} "
                                     f"class {args.target}"})
    print(f"wrote {output}")
    if args.attribution_json:
        attribution = explain.modality_attribution(model, images, target=args.target, region=region,
                                                   device=args.device)
        summary = {
            "method": attribution.method,
            "target": args.target,
            "images": [str(p) for p in args.images],
            "attribution": [float(v) for v in attribution.scores],
            "raw": [float(v) for v in attribution.raw],
        }
        attribution_path = Path(args.attribution_json)
        write_text(attribution_path, json.dumps(summary, indent=2), overwrite=args.overwrite)
        for path, score in zip(args.images, attribution.scores):
            print(f"  {path}: {score:.3f}")
        print(f"wrote {attribution_path}")
    return 0
