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

import json
from pathlib import Path

import numpy as np

from ._outputs import check_outputs, model_files

NIFTI = (".nii", ".nii.gz")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment images of one subject (otsu, multiotsu, watershed, or a unet trained on scribbles)",
        description="Segment one subject; the images are its modalities (channels), on any grids. "
        "The labels are written on the first image's grid.",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files, one per modality")
    parser.add_argument("-o", "--output", required=True, metavar="LABELS", help="output label file (.nii/.nii.gz)")
    parser.add_argument("--method", choices=("otsu", "multiotsu", "watershed", "unet"), default="unet")
    parser.add_argument("--scribbles", metavar="S", help="painted strokes (0 = unlabelled, other values = classes)")
    parser.add_argument("--fusion", choices=("early", "late"), default="early",
                        help="unet: one network on all modalities, or one per modality (decision fusion)")
    parser.add_argument("--architecture", choices=("unet", "basicunet", "unetr"), default="unet",
                        help="unet: the network trained (unetr is a transformer whose attention "
                        "`mmfuse explain --method attention` can show)")
    parser.add_argument("--combine", choices=("average", "vote"), default="average",
                        help="late fusion: weighted average of probabilities or majority vote")
    parser.add_argument("--model", metavar="M", help="unet: saved model (.pt + .json stem, or TorchScript); "
                        "with --scribbles training warm-starts from it")
    parser.add_argument("--save-model", metavar="M", help="unet: save the trained model (M.pt + M.json)")
    parser.add_argument("--probabilities", metavar="P", help="unet: write class probabilities (classes first)")
    parser.add_argument("--steps", type=int, default=300, help="unet: training steps")
    parser.add_argument("--patch", type=int, help="unet: patch edge in voxels (default 64 in 2D, 48 in 3D)")
    parser.add_argument("--classes", type=int, default=3, help="multiotsu: number of classes")
    parser.add_argument("--min-size", type=int, default=0, help="otsu: drop components smaller than this")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: best available)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.set_defaults(func=run_segment)


def _nifti_output(path) -> Path:
    """The output path, which must be NIfTI (existence and folders are checked by ``check_outputs``)."""
    path = Path(path)
    if not path.name.lower().endswith(NIFTI):
        raise ValueError(f"{path}: write .nii or .nii.gz")
    return path


def _read_one(path):
    from ..io import materialize, read

    records = read(path)
    record = records[0]
    if record.multiscale or record.channel_axis is not None or record.rgb:
        raise ValueError(f"{path}: give one grey 2D or 3D image per file")
    data = materialize(record.data, path)
    if data.ndim != record.spatial_ndim:
        raise ValueError(f"{path} has {data.ndim} axes; give one 2D or 3D image per file")
    return data, record


def _subject(paths, device):
    """Channels on the first image's grid, that grid's affine, and the first record."""
    from ..core.segment import stack_modalities

    loaded = [_read_one(path) for path in paths]
    first = loaded[0]
    dims = {data.ndim for data, _ in loaded}
    if len(dims) > 1:
        raise ValueError("mix of 2D and 3D images; give images of one dimensionality")
    images = stack_modalities([d for d, _ in loaded], [r.affine for _, r in loaded], first[0].shape,
                              first[1].affine, device=device)
    return images, first[1]


def _on_grid(path, record, device) -> np.ndarray:
    """A label file resampled (nearest) onto ``record``'s grid."""
    from ..core.space import resample

    data, other = _read_one(path)
    if data.shape == record.data.shape and np.allclose(other.affine, record.affine, atol=1e-6):
        return data
    return resample(data, other.affine, record.data.shape, record.affine, interpolation="nearest", device=device)


def _scribbles_on_grid(path, record, device) -> np.ndarray:
    """The scribbles on the first image's grid; refused when none of their strokes lands on it."""
    from ..core.space import overlap_fraction

    data, other = _read_one(path)
    if np.any(data) and overlap_fraction(record.data.shape, record.affine, data.shape, other.affine) == 0:
        raise ValueError(f"the scribbles do not overlap the images' grid: {path} lies elsewhere in world space; "
                         "check its placement (origin/units)")
    scribbles = _on_grid(path, record, device)
    if np.any(data) and not np.any(scribbles):
        raise ValueError(f"the scribbles do not overlap the images' grid: none of the strokes in {path} "
                         "lands on the images; check its placement (origin/units)")
    return scribbles


def _check_segment_params(args) -> None:
    """Numeric options against their declared ranges, and the device, before any work."""
    from ..core.device import get_device
    from ..core.params import check_parameter
    from ..core.segment import PARAMETER_RANGES

    for key, spec in PARAMETER_RANGES.items():
        value = getattr(args, key)
        if value is not None:
            check_parameter(f"--{key.replace('_', '-')}", value, spec)
    get_device(args.device)


def _write_probabilities(path, probabilities, affine, overwrite):
    from ..io.nifti import write_nifti

    if probabilities.ndim == 3:  # 2D: classes x one slice
        probabilities = probabilities[:, np.newaxis]
        embedded = np.eye(4)
        embedded[1:, 1:] = affine
        affine = embedded
    write_nifti(path, probabilities, affine, overwrite=overwrite, metadata={"descrip": "mmfuse class probabilities"})


def run_segment(args) -> int:
    from ..core import segment
    from ..io.nifti import write_nifti

    saved = [("--save-model", path) for path in model_files(args.save_model)] if args.save_model else []
    check_outputs([("-o", args.output), ("--probabilities", args.probabilities)] + saved,
                  [*args.images, args.scribbles, args.model] + (model_files(args.model) if args.model else []), args.overwrite)
    output = _nifti_output(args.output)
    probabilities_path = _nifti_output(args.probabilities) if args.probabilities else None
    if args.method != "unet" and (args.model or args.save_model or args.probabilities):
        raise ValueError("--model, --save-model and --probabilities apply to --method unet only")
    _check_segment_params(args)
    images, record = _subject(args.images, args.device)
    scribbles = _scribbles_on_grid(args.scribbles, record, args.device) if args.scribbles else None
    provenance = {"step": "segment", "method": args.method, "inputs": [str(p) for p in args.images]}
    if args.method in ("otsu", "multiotsu"):
        labels = segment.threshold(images[0], method=args.method, classes=args.classes)
        if args.method == "otsu" and args.min_size:
            labels = (segment.connected_components(labels, min_size=args.min_size) > 0).astype(np.uint8)
    elif args.method == "watershed":
        if scribbles is None:
            raise ValueError("--method watershed needs --scribbles")
        labels = segment.watershed(images, scribbles)
    else:
        if scribbles is None and not args.model:
            raise ValueError("--method unet needs --scribbles to train on, or --model to apply")
        model = segment.load_model(args.model) if args.model else None
        if scribbles is not None:
            names = [Path(p).name for p in args.images]
            options = {"steps": args.steps, "device": args.device, "spacing": None}
            if model is None:
                options |= {"fusion": args.fusion, "combine": args.combine, "channel_names": names,
                            "architecture": args.architecture}
                if args.patch:
                    options["patch_size"] = [args.patch] * (images.ndim - 1)
            generator = segment.train_steps(images, scribbles, model=model, **options)
            while True:
                try:
                    step = next(generator)
                except StopIteration as stop:
                    model = stop.value
                    break
                if step.step % 50 == 0 or step.step == step.total:
                    print(f"step {step.step}/{step.total} loss {step.loss:.4f}", flush=True)
        labels, probabilities = segment.predict(model, images, affine=record.affine, device=args.device)
        if args.save_model:
            for written in segment.save_model(model, args.save_model, overwrite=args.overwrite):
                print(f"wrote {written}")
        if probabilities_path is not None:
            _write_probabilities(probabilities_path, probabilities, record.affine, args.overwrite)
            print(f"wrote {probabilities_path} (classes {model.config.label_values})")
        provenance["classes"] = model.config.label_values
    write_nifti(output, labels, record.affine, overwrite=args.overwrite, labels=True,
                metadata={"descrip": json.dumps(provenance)})
    print(f"wrote {output}: classes {sorted(int(v) for v in np.unique(labels))}")
    return 0
