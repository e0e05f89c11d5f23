"""``mmfuse register``, ``mmfuse register-landmarks`` and ``mmfuse transform``.

* ``register FIXED MOVING -o OUT``: register MOVING to FIXED and write MOVING resampled on
  FIXED's grid; ``--transform`` saves the linear part (.tfm/.txt ITK text, or .json),
  ``--displacement`` the deformable part (ITK displacement field, .nii.gz/.mha).
* ``register-landmarks FIXED.csv MOVING.csv --transform OUT.tfm``: least-squares fit of
  landmark pairs given in physical LPS (x, y[, z]) coordinates, one point per row.
* ``transform MOVING --transform T --reference FIXED -o OUT``: apply a saved transform.

Pyramids (slides) register on their finest level of at most ``--max-size`` pixels a side;
when FIXED, MOVING or REFERENCE is a pyramid, OUT is resampled onto the full-resolution
grid block by block (:func:`napari_mmfuse.core.lazy.lazy_apply_transform`) and streamed
to the writer, so memory does not grow with the slide; integer images then keep their
dtype (a uint8 slide stays uint8).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.lazy import (
    MAX_REGISTRATION_SIZE,
    coarse_level_index,
    lazy_apply_transform,
    level_affine,
    output_level_index,
)
from ..io import check_writable
from ._outputs import check_outputs


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
    register.add_argument(
        "--max-size",
        type=int,
        default=MAX_REGISTRATION_SIZE,
        help=f"pyramids register on their finest level of at most this many pixels a side (default {MAX_REGISTRATION_SIZE}); "
        "OUT is still written on FIXED's full-resolution grid, block by block",
    )
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


@dataclass
class SourceImage:
    """An input image of ``register``/``transform``, its pixels left where the reader put them.

    Attributes
    ----------
    levels : list of array-like
        Spatial (plus RGB) arrays, largest first; one for a single-level image. Pyramid
        levels are lazy dask arrays.
    affine : ndarray, shape (n + 1, n + 1)
        Index -> world affine of level 0.
    rgb, labels : bool
    units : str
        World units of the affine ("mm", "um" or "pixel").
    """

    levels: list
    affine: np.ndarray
    rgb: bool
    labels: bool
    units: str

    @property
    def multiscale(self) -> bool:
        return len(self.levels) > 1

    @property
    def ndim(self) -> int:
        return self.affine.shape[0] - 1

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape of level 0."""
        return tuple(self.levels[0].shape[: self.ndim])

    def level_shapes(self) -> list[tuple[int, ...]]:
        return [tuple(level.shape[: self.ndim]) for level in self.levels]

    def level_affine(self, index: int) -> np.ndarray:
        """Index -> world affine of level ``index``."""
        return self.affine if index == 0 else level_affine(self.affine, self.shape, self.level_shapes()[index])


def open_image(path) -> SourceImage:
    """The first image of a file, without reading its pixels; spatial axes (plus RGB) only."""
    from ..io import read

    record = read(path)[0]
    if record.channel_axis is not None:
        raise ValueError(f"{path} has {record.level0.shape[record.channel_axis]} channels; register one channel at a time")
    levels = list(record.data) if record.multiscale else [record.data]
    spatial = record.level0.ndim - int(record.rgb)
    if spatial != record.spatial_ndim:
        raise ValueError(f"{path} has shape {record.level0.shape}: only single 2D or 3D images can be registered")
    return SourceImage(levels, record.affine, record.rgb, record.layer_type == "labels", record.units)


def registration_level(source: SourceImage, max_size: int) -> int:
    """The pyramid level registration runs on: the finest of at most ``max_size`` px a side."""
    return coarse_level_index(source.level_shapes(), max_size)


def registration_image(source: SourceImage, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of one level (RGB reduced to luminance) and that level's affine."""
    data = np.asarray(source.levels[index])
    return _registration_input(data, source.rgb), source.level_affine(index)


def save_image(path, data, affine: np.ndarray, *, source: SourceImage, units: str, overwrite: bool) -> None:
    """Write ``source`` resampled (numpy, or dask that TIFF/Zarr writers stream) by suffix.

    RGB and labels stay what ``source`` is; PNG/JPEG get its integer dtype (rounded, clipped).
    """
    from ..io import as_picture, is_picture, write

    if is_picture(path):
        data = as_picture(np.asarray(data), source.levels[0].dtype)
    write(path, data, affine, overwrite=overwrite, rgb=source.rgb, units=units, labels=source.labels)


def _registration_input(data: np.ndarray, rgb: bool) -> np.ndarray:
    from ..core.register import to_luminance

    return to_luminance(data) if rgb else data


def _mask(path, image: SourceImage, index: int, name: str):
    """A mask on the grid of ``image`` (level 0 or level ``index``) as booleans on level ``index``."""
    if path is None:
        return None
    mask = open_image(path)
    target = image.level_shapes()[index]
    shapes = mask.level_shapes()
    if target in shapes:
        data = np.asarray(mask.levels[shapes.index(target)])
    elif mask.shape == image.shape:
        # on level 0 of its image: nearest neighbour onto the registration level, in index space
        identity = np.eye(image.ndim + 1)
        target_affine = level_affine(identity, image.shape, target)
        chosen = output_level_index(shapes, identity, identity, target_affine)
        data = lazy_apply_transform(
            mask.levels[chosen],
            level_affine(identity, mask.shape, shapes[chosen]),
            identity,
            target,
            target_affine,
            interpolation="nearest",
            channel_axis=-1 if mask.rgb else None,
        ).compute()
    else:
        raise ValueError(f"the {name} mask {path} has shape {mask.shape}, its image {image.shape}")
    return _registration_input(data, mask.rgb) != 0


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


def _lazy_output(moving: SourceImage, transform, reference: SourceImage, displacement, displacement_affine, interpolation=None):
    """MOVING on REFERENCE's level-0 grid as a dask array, read from the moving level that suffices.

    Integer images keep their dtype (rounded), so a uint8 slide stays a uint8 slide.
    """
    index = output_level_index(moving.level_shapes(), moving.affine, transform, reference.affine)
    dtype = moving.levels[0].dtype
    return lazy_apply_transform(
        moving.levels[index],
        moving.level_affine(index),
        transform,
        reference.shape,
        reference.affine,
        interpolation=interpolation or ("nearest" if moving.labels else "linear"),
        channel_axis=-1 if moving.rgb else None,
        displacement=displacement,
        displacement_affine=displacement_affine,
        dtype=dtype if np.issubdtype(dtype, np.integer) else np.float32,
    )


def _check_register_params(args) -> None:
    """``--levels``, ``--iterations`` and ``--max-size`` against their declared ranges."""
    from ..core.params import check_parameter
    from ..core.register.driver import PARAMETER_RANGES

    for key, spec in PARAMETER_RANGES.items():
        check_parameter(f"--{key.replace('_', '-')}", getattr(args, key), spec)


def _capped_levels(levels: int, *shapes) -> int:
    """``levels`` capped so the coarsest level keeps a few voxels per axis (with a note when capped)."""
    from ..core.register.driver import MIN_COARSEST_SIDE, max_levels

    most = max_levels(*shapes)
    if levels > most:
        side = min(min(shape) for shape in shapes)
        print(f"note: --levels {levels} capped to {most}: the coarsest level keeps at least "
              f"{MIN_COARSEST_SIDE} voxels per axis (smallest side {side})")
        return most
    return levels


def run_register(args) -> int:
    from ..core.register import register
    from ..io.transforms import read_transform, write_displacement_field, write_transform

    check_outputs(
        [("-o", args.output), ("--transform", args.transform), ("--displacement", args.displacement)],
        [args.fixed, args.moving, args.init, args.fixed_mask, args.moving_mask],
        args.overwrite,
    )
    check_writable(args.output, args.overwrite)
    _check_register_params(args)
    if args.displacement and args.model != "deformable":
        raise ValueError("--displacement needs --model deformable")
    fixed, moving = open_image(args.fixed), open_image(args.moving)
    fixed_index, moving_index = registration_level(fixed, args.max_size), registration_level(moving, args.max_size)
    for source, path, index in ((fixed, args.fixed, fixed_index), (moving, args.moving, moving_index)):
        if source.multiscale:
            print(f"registering {path} on pyramid level {index} of {len(source.levels)}, shape {source.level_shapes()[index]}")
    fixed_gray, fixed_affine = registration_image(fixed, fixed_index)
    moving_gray, moving_affine = registration_image(moving, moving_index)
    levels = _capped_levels(args.levels, fixed_gray.shape, moving_gray.shape)
    result = register(
        fixed_gray,
        fixed_affine,
        moving_gray,
        moving_affine,
        model=args.model,
        metric=args.metric,
        levels=levels,
        iterations=args.iterations,
        init=None if args.init is None else read_transform(args.init),
        fixed_mask=_mask(args.fixed_mask, fixed, fixed_index, "fixed"),
        moving_mask=_mask(args.moving_mask, moving, moving_index, "moving"),
    )
    for note in result.notes:
        print(f"note: {note}")
    print(f"{args.metric} before {result.metric_before:.5g}, after {result.metric_after:.5g}")
    if result.folding_fraction is not None:
        print(f"folding voxels (Jacobian <= 0): {100 * result.folding_fraction:.4f} %")
    if fixed.multiscale or moving.multiscale:
        out = _lazy_output(moving, result.transform, fixed, result.displacement, fixed_affine)
    else:
        moving_pixels = np.asarray(moving.levels[0])
        out = _resample_output(
            moving_pixels, moving.affine, moving.rgb, moving.labels,
            result.transform, fixed.shape, fixed.affine, result.displacement,
        )  # fmt: skip
    save_image(args.output, out, fixed.affine, source=moving, units=fixed.units, overwrite=args.overwrite)
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

    check_outputs([("--transform", args.transform)], [args.fixed, args.moving], args.overwrite)
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


def _check_transform_overlap(moving: SourceImage, transform, reference: SourceImage, args) -> None:
    """Refuse, as ``register`` does, a moving image that the transform places off the reference.

    With a displacement field the linear part alone does not say where voxels land; not checked.
    """
    from ..core.space import overlap_fraction

    if args.displacement or moving.ndim != reference.ndim:
        return
    placed = np.linalg.inv(transform) @ moving.affine
    if overlap_fraction(reference.shape, reference.affine, moving.shape, placed) == 0:
        raise ValueError(
            f"{args.moving} does not overlap the reference {args.reference} in world space under this transform "
            "(the output would be all zeros); check the images' placement (origin/units) and the transform"
        )


def run_transform(args) -> int:
    from ..core.space import resample
    from ..io.transforms import read_displacement_field, read_transform

    check_outputs(
        [("-o", args.output)], [args.moving, args.transform, args.displacement, args.reference], args.overwrite
    )
    check_writable(args.output, args.overwrite)
    transform = read_transform(args.transform)
    moving, reference = open_image(args.moving), open_image(args.reference)
    if transform.shape[0] - 1 != reference.ndim:
        raise ValueError(f"the transform is {transform.shape[0] - 1}D but the reference {reference.ndim}D")
    _check_transform_overlap(moving, transform, reference, args)
    field, field_affine = read_displacement_field(args.displacement) if args.displacement else (None, None)
    if moving.multiscale or reference.multiscale:
        out = _lazy_output(moving, transform, reference, field, field_affine, args.interpolation)
    else:
        displacement = None
        if field is not None:
            displacement = resample(field, field_affine, reference.shape, reference.affine, channel_axis=-1)
        out = _resample_output(
            np.asarray(moving.levels[0]), moving.affine, moving.rgb, moving.labels,
            transform, reference.shape, reference.affine, displacement, args.interpolation,
        )  # fmt: skip
    save_image(args.output, out, reference.affine, source=moving, units=reference.units, overwrite=args.overwrite)
    print(f"wrote {args.output}")
    return 0
