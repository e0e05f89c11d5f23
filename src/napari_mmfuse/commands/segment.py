"""``mmfuse segment``: segment one subject's modalities.

The images given are the channels of one subject, on any grids: they are resampled onto
the first image's grid through their world affines, and outputs are written on that grid.

Examples::

    mmfuse segment flair.nii.gz --method otsu -o mask.nii.gz
    mmfuse segment flair.nii.gz t1c.nii.gz --method unet --scribbles strokes.nii.gz \\
        --save-model tumour -o tumour.nii.gz --probabilities tumour_prob.nii.gz
    mmfuse segment flair.nii.gz t1c.nii.gz --model tumour -o tumour_b.nii.gz
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._outputs import check_outputs, model_files

NIFTI = (".nii", ".nii.gz")


def add_parser(subparsers) -> None:
    from ._options import add_method_options

    parser = subparsers.add_parser(
        "segment",
        help="segment images of one subject (otsu, multiotsu, watershed, or a unet trained on scribbles)",
        description="Segment one subject; the images are its modalities (channels), on any grids. "
        "The labels are written on the first image's grid, with their provenance beside them "
        "(LABELS.provenance.json, for `mmfuse replay`).",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files, one per modality")
    parser.add_argument("-o", "--output", required=True, metavar="LABELS", help="output label file (.nii/.nii.gz)")
    parser.add_argument("--scribbles", metavar="S", help="painted strokes (0 = unlabelled, other values = classes)")
    parser.add_argument("--model", metavar="M", help="unet: saved model (.pt + .json stem, TorchScript, or a MONAI "
                        "bundle folder), applied without --scribbles; with --scribbles training warm-starts from it")
    parser.add_argument("--save-model", metavar="M", help="unet: save the trained model (M.pt + M.json)")
    parser.add_argument("--probabilities", metavar="P", help="unet: write class probabilities (classes first)")
    parser.add_argument("--seed", type=int, default=None, help="unet: random seed of the training (default 0)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: best available)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    add_method_options(parser, "segment", default="unet")
    parser.set_defaults(func=run_segment)


def _nifti_output(path) -> Path:
    """The output path, which must be NIfTI (existence and folders are checked by ``check_outputs``)."""
    path = Path(path)
    if not path.name.lower().endswith(NIFTI):
        raise ValueError(f"{path}: write .nii or .nii.gz")
    return path


def _write_probabilities(path, probabilities, affine, overwrite):
    from ..io.nifti import write_nifti

    if probabilities.ndim == 3:  # 2D: classes x one slice
        probabilities = probabilities[:, np.newaxis]
        embedded = np.eye(4)
        embedded[1:, 1:] = affine
        affine = embedded
    write_nifti(path, probabilities, affine, overwrite=overwrite, metadata={"descrip": "mmfuse class probabilities"})


def _training_progress(progress) -> None:
    """Print the loss every 50 training steps and at the last one."""
    if "loss" in progress.values and (progress.done % 50 == 0 or progress.done == progress.total):
        print(f"step {int(progress.done)}/{int(progress.total)} loss {progress.values['loss']:.4f}", flush=True)


def run_segment(args) -> int:
    from ..core import segment
    from ..core.device import get_device
    from ..operations import get
    from ..pipeline import read_image, run
    from ..provenance import sidecar_path
    from ._options import params_from_args, write_sidecar
    from ._outputs import save_output

    saved = [("--save-model", path) for path in model_files(args.save_model)] if args.save_model else []
    check_outputs([("-o", args.output), ("-o", sidecar_path(args.output)), ("--probabilities", args.probabilities)]
                  + saved, [*args.images, args.scribbles, args.model] + (model_files(args.model) if args.model else []),
                  args.overwrite)
    output = _nifti_output(args.output)
    probabilities_path = _nifti_output(args.probabilities) if args.probabilities else None
    if args.method not in ("unet", "predict") and (args.model or args.save_model or args.probabilities):
        raise ValueError("--model, --save-model and --probabilities apply to --method unet and predict only")
    params = params_from_args(get("segment", args.method), args)
    get_device(args.device)
    method = args.method
    if method == "unet" and args.scribbles is None:
        if not args.model:
            raise ValueError("--method unet needs --scribbles to train on, or --model to apply")
        method, params = "predict", {}
    if method == "watershed" and args.scribbles is None:
        raise ValueError("--method watershed needs --scribbles")
    if method == "predict" and not args.model:
        raise ValueError("--method predict needs --model")
    inputs = {"images": [read_image(path) for path in args.images]}
    if args.scribbles and method in ("unet", "watershed"):
        inputs["strokes"] = read_image(args.scribbles, kind="labels")
    if args.model:
        inputs["model"] = segment.load_model(args.model)
    outputs, record = run("segment", method, inputs, params, device=args.device, seed=args.seed,
                          on_progress=_training_progress)
    labels, model = outputs["labels"], outputs.get("model", inputs.get("model"))
    record.outputs["labels"]["path"] = str(output)
    save_output(output, labels, overwrite=args.overwrite, provenance=record.to_dict())
    if args.save_model:
        for written in save_output(args.save_model, model, overwrite=args.overwrite):
            print(f"wrote {written}")
    if probabilities_path is not None:
        _write_probabilities(probabilities_path, outputs["probabilities"], labels.affine, args.overwrite)
        print(f"wrote {probabilities_path} (classes {model.config.label_values})")
    write_sidecar(output, record, overwrite=args.overwrite)
    print(f"wrote {output}: classes {sorted(int(v) for v in np.unique(labels.data))}")
    return 0
