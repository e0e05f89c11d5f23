"""``mmfuse register``, ``mmfuse register-landmarks`` and ``mmfuse transform``.

* ``register FIXED MOVING -o OUT``: register MOVING to FIXED and write MOVING resampled on
  FIXED's grid; ``--transform`` saves the linear part (.tfm/.txt ITK text, or .json),
  ``--displacement`` the deformable part (ITK displacement field, .nii.gz/.mha).
* ``register-landmarks FIXED.csv MOVING.csv --transform OUT.tfm``: least-squares fit of
  landmark pairs given in physical LPS (x, y[, z]) coordinates, one point per row.
* ``transform MOVING --transform T --reference FIXED -o OUT``: apply a saved transform.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..io import check_writable



def add_parser(subparsers) -> None:
    register = subparsers.add_parser("register", help="register MOVING to FIXED and resample it onto FIXED's grid")
    register.add_argument("fixed", help="fixed (reference) image")
    register.add_argument("moving", help="moving image")
    register.add_argument("-o", "--output", required=True, help="moving resampled on the fixed grid (.nii.gz, .mha, .png, ...)")
    register.add_argument("--model", default="rigid", choices=("rigid", "similarity", "affine", "deformable"))
    register.add_argument("--metric", default="mi", choices=("mi", "nmi", "lncc", "mse"))
    register.add_argument("--transform", help="write the linear transform here (.tfm, .txt or .json)")
    register.add_argument("--displacement", help="write the deformable displacement field here (.nii.gz, .mha)")
    register.add_argument("--init", help="initial transform (.tfm, .txt, .mat or .json)")
    register.add_argument("--fixed-mask", help="mask image on the fixed grid (nonzero = use)")
    register.add_argument("--moving-mask", help="mask image on the moving grid (nonzero = use)")
    register.add_argument("--levels", type=int, default=3, help="pyramid levels (default 3)")
    register.add_argument("--iterations", type=int, default=100, help="most iterations per level (default 100)")
    register.add_argument("--overwrite", action="store_true", help="replace existing output files")
    register.set_defaults(func=run_register)

    landmarks = subparsers.add_parser("register-landmarks", help="fit a transform to landmark pairs (CSV, physical x,y[,z])")
    landmarks.add_argument("fixed", help="CSV of fixed points, physical LPS x,y[,z] per row (optional header)")
    landmarks.add_argument("moving", help="CSV of the corresponding moving points, same order")
    landmarks.add_argument("--model", default="rigid", choices=("rigid", "similarity", "affine"))
    landmarks.add_argument("--transform", required=True, help="output transform (.tfm, .txt or .json)")
    landmarks.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    landmarks.set_defaults(func=run_landmarks)

    transform = subparsers.add_parser("transform", help="resample MOVING onto REFERENCE's grid through a saved transform")
    transform.add_argument("moving", help="image to resample")
    transform.add_argument("--transform", required=True, help="linear transform (.tfm, .txt, .mat or .json), fixed -> moving")
    transform.add_argument("--displacement", help="displacement field (applied before the linear transform)")
    transform.add_argument("--reference", required=True, help="image whose grid the output takes")
    transform.add_argument("-o", "--output", required=True, help="output image (.nii.gz, .mha, .png, ...)")
    transform.add_argument("--interpolation", choices=("linear", "nearest"), help="default: nearest for labels, else linear")
    transform.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    transform.set_defaults(func=run_transform)


def _check_outputs(paths, overwrite: bool) -> None:
    from ..io._common import refuse_overwrite

    for path in paths:
        if path is not None:
            refuse_overwrite(Path(path), overwrite)


def load_image(path) -> tuple[np.ndarray, np.ndarray, bool, bool]:
    """Read the first image of a file as (data, affine, rgb, labels); spatial axes only."""
    from ..io import read

    record = read(path)[0]
    if record.channel_axis is not None:
        raise ValueError(f"{path} has {record.level0.shape[record.channel_axis]} channels; register one channel at a time")
    data = np.asarray(record.level0)
    spatial = data.ndim - int(record.rgb)
    if spatial != record.spatial_ndim:
        raise ValueError(f"{path} has shape {data.shape}: only single 2D or 3D images can be registered")
    return data, record.affine, record.rgb, record.layer_type == "labels"


def save_image(path, data: np.ndarray, affine: np.ndarray, *, like: np.dtype, overwrite: bool) -> None:
    """Write an image by suffix; PNG/JPEG get the input's integer dtype (rounded, clipped)."""
    from ..io import as_picture, is_picture, write

    rgb = is_picture(path) and data.ndim == 3 and data.shape[-1] in (3, 4)
    if is_picture(path):
        data = as_picture(data, like)
    write(path, data, affine, overwrite=overwrite, rgb=rgb)


def _registration_input(data: np.ndarray, rgb: bool) -> np.ndarray:
    from ..core.register import to_luminance

    return to_luminance(data) if rgb else data


def _mask(path, shape, name: str):
    if path is None:
        return None
    data, _, rgb, _ = load_image(path)
    data = _registration_input(data, rgb)
    if data.shape != tuple(shape):
        raise ValueError(f"the {name} mask {path} has shape {data.shape}, its image {tuple(shape)}")
    return data != 0


def _resample_output(moving, moving_affine, rgb, labels, transform, fixed_shape, fixed_affine, displacement, interpolation=None):
    from ..core.register import apply_transform

    return apply_transform(
        moving,
        moving_affine,
        transform,
        fixed_shape,
        fixed_affine,
        interpolation=interpolation or ("nearest" if labels else "linear"),
        displacement=displacement,
        channel_axis=-1 if rgb else None,
    )


def run_register(args) -> int:
    from ..core.register import register
    from ..io.transforms import read_transform, write_displacement_field, write_transform

    check_writable(args.output, args.overwrite)
    if args.displacement and args.model != "deformable":
        raise ValueError("--displacement needs --model deformable")
    _check_outputs([args.output, args.transform, args.displacement], args.overwrite)
    fixed, fixed_affine, fixed_rgb, _ = load_image(args.fixed)
    moving, moving_affine, moving_rgb, moving_labels = load_image(args.moving)
    fixed_gray = _registration_input(fixed, fixed_rgb)
    moving_gray = _registration_input(moving, moving_rgb)
    result = register(
        fixed_gray,
        fixed_affine,
        moving_gray,
        moving_affine,
        model=args.model,
        metric=args.metric,
        levels=args.levels,
        iterations=args.iterations,
        init=None if args.init is None else read_transform(args.init),
        fixed_mask=_mask(args.fixed_mask, fixed_gray.shape, "fixed"),
        moving_mask=_mask(args.moving_mask, moving_gray.shape, "moving"),
    )
    for note in result.notes:
        print(f"note: {note}")
    print(f"{args.metric} before {result.metric_before:.5g}, after {result.metric_after:.5g}")
    if result.folding_fraction is not None:
        print(f"folding voxels (Jacobian <= 0): {100 * result.folding_fraction:.4f} %")
    out = _resample_output(moving, moving_affine, moving_rgb, moving_labels, result.transform, fixed_gray.shape, fixed_affine, result.displacement)
    save_image(args.output, out, fixed_affine, like=moving.dtype, overwrite=args.overwrite)
    print(f"wrote {args.output}")
    if args.transform:
        write_transform(args.transform, result.transform, overwrite=args.overwrite)
        print(f"wrote {args.transform}")
    if args.displacement:
        write_displacement_field(args.displacement, result.displacement, fixed_affine, overwrite=args.overwrite)
        print(f"wrote {args.displacement}")
    return 0


def read_points_csv(path) -> np.ndarray:
    """Points from a CSV of physical LPS x,y[,z] rows (optional header) in napari order, shape (K, n)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such landmark file: {path}")
    rows = [row for row in csv.reader(path.read_text().splitlines()) if row and any(cell.strip() for cell in row)]
    points = []
    for number, row in enumerate(rows):
        try:
            points.append([float(cell) for cell in row])
        except ValueError:
            if number == 0:
                continue
            raise ValueError(f"{path.name} row {number + 1} is not numeric: {row}") from None
    if not points:
        raise ValueError(f"{path.name} holds no points")
    width = {len(p) for p in points}
    if len(width) != 1 or width.pop() not in (2, 3):
        raise ValueError(f"{path.name}: every row needs 2 (x,y) or 3 (x,y,z) coordinates")
    return np.asarray(points, np.float64)[:, ::-1]


def run_landmarks(args) -> int:
    from ..core.register import fit_landmarks
    from ..io.transforms import write_transform

    _check_outputs([args.transform], args.overwrite)
    fixed = read_points_csv(args.fixed)
    moving = read_points_csv(args.moving)
    if fixed.shape != moving.shape:
        raise ValueError(f"{args.fixed} has {fixed.shape[0]} {fixed.shape[1]}D points, {args.moving} {moving.shape[0]} {moving.shape[1]}D")
    transform, residuals = fit_landmarks(fixed, moving, model=args.model)
    for index, residual in enumerate(residuals, start=1):
        print(f"pair {index}: residual {residual:.4f}")
    print(f"RMS residual {np.sqrt(np.mean(residuals**2)):.4f}, max {residuals.max():.4f} (world units)")
    write_transform(args.transform, transform, overwrite=args.overwrite)
    print(f"wrote {args.transform}")
    return 0


def run_transform(args) -> int:
    from ..core.space import resample
    from ..io.transforms import read_displacement_field, read_transform

    check_writable(args.output, args.overwrite)
    _check_outputs([args.output], args.overwrite)
    transform = read_transform(args.transform)
    moving, moving_affine, rgb, labels = load_image(args.moving)
    reference, reference_affine, reference_rgb, _ = load_image(args.reference)
    shape = reference.shape[: reference.ndim - int(reference_rgb)]
    if transform.shape[0] - 1 != len(shape):
        raise ValueError(f"the transform is {transform.shape[0] - 1}D but the reference {len(shape)}D")
    displacement = None
    if args.displacement:
        field, field_affine = read_displacement_field(args.displacement)
        displacement = resample(field, field_affine, shape, reference_affine, channel_axis=-1)
    out = _resample_output(moving, moving_affine, rgb, labels, transform, shape, reference_affine, displacement, args.interpolation)
    save_image(args.output, out, reference_affine, like=moving.dtype, overwrite=args.overwrite)
    print(f"wrote {args.output}")
    return 0
