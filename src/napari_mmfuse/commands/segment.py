"""``mmfuse segment``: segment one subject's modalities.

The images given are the channels of one subject, on any grids: they are resampled onto
the first image's grid through their world affines, and outputs are written on that grid.

Examples::

    mmfuse segment flair.nii.gz --method otsu -o mask.nii.gz
    mmfuse segment flair.nii.gz t1c.nii.gz --method unet --scribbles strokes.nii.gz \\
        --save-model tumour -o tumour.nii.gz --probabilities tumour_prob.nii.gz
    mmfuse segment flair.nii.gz t1c.nii.gz --model tumour -o tumour_b.nii.gz
    mmfuse segment t1c.nii.gz t1.nii.gz t2.nii.gz flair.nii.gz --bundle brats_mri_segmentation -o brats.nii.gz

A MONAI bundle (``--model FOLDER`` or ``--bundle NAME`` from the model zoo) takes its
channels in the order of its ``metadata.json``; the images are matched to them by their
file names (T1, T1c/T1ce/T1Gd, T2, FLAIR), else taken in the order given.
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
    add_model_options(parser, "unet: saved model (.pt + .json stem, TorchScript, or a MONAI bundle folder), applied "
                      "without --scribbles; with --scribbles training warm-starts from it")
    parser.add_argument("--save-model", metavar="M", help="unet: save the trained model (M.pt + M.json)")
    parser.add_argument("--probabilities", metavar="P", help="unet: write class probabilities (classes first)")
    parser.add_argument("--seed", type=int, default=None, help="unet: random seed of the training (default 0)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: best available)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    add_method_options(parser, "segment", default="unet")
    parser.set_defaults(func=run_segment)


def add_model_options(parser, model_help: str, *, required: bool = False) -> None:
    """``--model`` (a file or bundle folder), ``--bundle`` (a zoo name) and ``--trust-bundle-code``.

    Shared by the commands that apply a segmentation model (``segment``, ``explain``);
    :func:`model_from_args` loads what they name.
    """
    source = parser.add_mutually_exclusive_group(required=required)
    source.add_argument("--model", metavar="M", help=model_help)
    source.add_argument("--bundle", metavar="NAME", help="a MONAI Model Zoo bundle by name (e.g. "
                        "brats_mri_segmentation), downloaded by MONAI on first use into the bundle cache "
                        "($MMFUSE_BUNDLE_CACHE, default the user cache folder)")  # core.bundle.CACHE_VARIABLE
    parser.add_argument("--trust-bundle-code", action="store_true", help="let MONAI's config parser evaluate the "
                        "bundle's expressions and build a network from outside MONAI (runs the bundle's code)")


def model_from_args(args):
    """The model ``--model`` or ``--bundle`` names (None when neither is given)."""
    from ..core import bundle, segment

    if getattr(args, "bundle", None):
        folder = bundle.fetch_bundle(args.bundle)
        print(f"bundle {args.bundle}: {folder}")
        return bundle.load_bundle(folder, trust_code=args.trust_bundle_code)
    if not args.model:
        return None
    if bundle.bundle_of(args.model) is not None:
        return bundle.load_bundle(args.model, trust_code=args.trust_bundle_code)
    return segment.load_model(args.model)


def in_model_order(model, paths: list) -> list:
    """``paths`` in the model's channel order when their file names name its channels, else as given."""
    from ..core.bundle import match_channels

    names = model.config.channel_names
    stems = [Path(path).name.split(".")[0] for path in paths]
    order = match_channels(names, stems) if len(paths) == len(names) else []
    if order and None not in order:
        paths = [paths[index] for index in order]
    print("channels: " + ", ".join(f"{name} = {path}" for name, path in zip(names, paths))
          + ("" if order and None not in order else " (in the order given)"))
    return paths


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
    given = args.model or args.bundle
    if args.method not in ("unet", "predict") and (given or args.save_model or args.probabilities):
        raise ValueError("--model, --bundle, --save-model and --probabilities apply to --method unet and predict only")
    params = params_from_args(get("segment", args.method), args)
    get_device(args.device)
    method = args.method
    if method == "unet" and args.scribbles is None:
        if not given:
            raise ValueError("--method unet needs --scribbles to train on, or --model/--bundle to apply")
        method, params = "predict", {}
    if method == "watershed" and args.scribbles is None:
        raise ValueError("--method watershed needs --scribbles")
    if method == "predict" and not given:
        raise ValueError("--method predict needs --model or --bundle")
    model = model_from_args(args) if given else None
    paths = in_model_order(model, list(args.images)) if model is not None and model.config.architecture == "monai" \
        else args.images
    inputs = {"images": [read_image(path) for path in paths]}
    if args.scribbles and method in ("unet", "watershed"):
        inputs["strokes"] = read_image(args.scribbles, kind="labels")
    if model is not None:
        inputs["model"] = model
    outputs, record = run("segment", method, inputs, params, device=args.device, seed=args.seed,
                          on_progress=_training_progress)
    labels, model = outputs["labels"], outputs.get("model", inputs.get("model"))
    record.outputs["labels"]["path"] = str(output)
    save_output(output, labels, overwrite=args.overwrite, provenance=record.to_dict(),
                grid=inputs["images"][0].metadata.get("grid"))
    if args.save_model:
        for written in save_output(args.save_model, model, overwrite=args.overwrite):
            print(f"wrote {written}")
    if probabilities_path is not None:
        _write_probabilities(probabilities_path, outputs["probabilities"], labels.affine, args.overwrite)
        print(f"wrote {probabilities_path} (classes {model.config.label_values})")
    write_sidecar(output, record, overwrite=args.overwrite)
    print(f"wrote {output}: classes {sorted(int(v) for v in np.unique(labels.data))}")
    if model is not None and model.config.class_names:
        config = model.config
        print("labels: " + ", ".join(f"{v} = {n}" for v, n in zip(config.label_values, config.class_names))
              + (" (overlapping: each voxel shows its smallest region; --probabilities has each one)"
                 if config.activation == "sigmoid" else ""))
    return 0
