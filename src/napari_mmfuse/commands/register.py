"""``mmfuse register``, ``mmfuse register-landmarks`` and ``mmfuse transform``.

* ``register FIXED MOVING -o OUT``: register MOVING to FIXED and write MOVING resampled on
  FIXED's grid; ``--transform`` saves the linear part (.tfm/.txt ITK text, or .json),
  ``--displacement`` the deformable part (ITK displacement field, .nii.gz/.mha).
* ``register-landmarks FIXED.csv MOVING.csv --transform OUT.tfm``: least-squares fit of
  landmark pairs given in physical LPS (x, y[, z]) coordinates, one point per row.
* ``transform MOVING --transform T --reference FIXED -o OUT``: apply a saved transform.

Methods, their parameters and defaults come from the operation registry (``register`` and
``transform`` capabilities; ``--model`` is ``register``'s name for ``--method``); the work runs
through :func:`napari_mmfuse.pipeline.run`, and each output file gets a provenance sidecar
(``OUT.provenance.json``) that ``mmfuse replay`` recomputes it from.

Pyramids (slides) register on their finest level of at most ``--max-size`` pixels a side;
when FIXED, MOVING or REFERENCE is a pyramid, OUT is resampled onto the full-resolution
grid block by block (:func:`napari_mmfuse.core.lazy.lazy_apply_transform`) and streamed
to the writer, so memory does not grow with the slide; integer images then keep their
dtype (a uint8 slide stays uint8). Such an OUT has no sidecar (the operation saw the
registration level, not the slide); the transform's sidecar records that level.
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
from ..core.params import ParameterRange, check_parameter
from ..io import check_writable
from ._options import add_method_options, params_from_args, write_sidecar
from ._outputs import check_outputs, save_output


_IMAGE_MODELS = ("rigid", "similarity", "affine", "deformable")
#: ``--max-size``: pyramids register on their finest level of at most this many pixels a side.
MAX_SIZE_RANGE = ParameterRange(int, 16, None)


def add_parser(subparsers) -> None:
    register = subparsers.add_parser("register", help="register MOVING to FIXED and resample it onto FIXED's grid")
    register.add_argument("fixed", help="fixed (reference) image")
    register.add_argument("moving", help="moving image")
    register.add_argument("-o", "--output", required=True, help="moving resampled on the fixed grid (.nii.gz, .mha, .png, ...)")
    register.add_argument("--model", dest="method", default="rigid", choices=_IMAGE_MODELS,
                          help="the transform model (same as --method; default rigid)")
    add_method_options(register, "register", methods=_IMAGE_MODELS, default="rigid")
    register.add_argument("--transform", help="write the linear transform here (.tfm, .txt or .json)")
    register.add_argument("--displacement", help="write the deformable displacement field here (.nii.gz, .mha)")
    register.add_argument("--init", help="initial transform (.tfm, .txt, .mat or .json)")
    register.add_argument("--fixed-mask", help="mask image on the fixed grid (nonzero = use)")
    register.add_argument("--moving-mask", help="mask image on the moving grid (nonzero = use)")
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
    add_method_options(landmarks, "register", methods=("landmarks",), default="landmarks")
    landmarks.add_argument("--transform", required=True, help="output transform (.tfm, .txt or .json)")
    landmarks.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    landmarks.set_defaults(func=run_landmarks)

    transform = subparsers.add_parser("transform", help="resample MOVING onto REFERENCE's grid through a saved transform")
    transform.add_argument("moving", help="image to resample")
    transform.add_argument("--transform", required=True, help="linear transform (.tfm, .txt, .mat or .json), fixed -> moving")
    transform.add_argument("--displacement", help="displacement field (applied before the linear transform)")
    transform.add_argument("--reference", required=True, help="image whose grid the output takes")
    transform.add_argument("-o", "--output", required=True, help="output image (.nii.gz, .mha, .png, ...)")
    add_method_options(transform, "transform", default="apply")
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
    grid : dict, optional
        The file's own voxel grid (its reader's ``metadata["grid"]``): outputs resampled
        onto this image are written on it, in the file's array order.
    """

    levels: list
    affine: np.ndarray
    rgb: bool
    labels: bool
    units: str
    grid: dict | None = None

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
    return SourceImage(levels, record.affine, record.rgb, record.layer_type == "labels", record.units,
                       record.metadata.get("grid"))


def registration_level(source: SourceImage, max_size: int) -> int:
    """The pyramid level registration runs on: the finest of at most ``max_size`` px a side."""
    return coarse_level_index(source.level_shapes(), max_size)


def level_image(source: SourceImage, index: int, name: str):
    """One pyramid level of ``source`` as a grey :class:`~napari_mmfuse.operations.Image` (RGB as luminance).

    Registration sees only the luminance; keeping the colours would only make the operation's
    (discarded) resampled output of that level three times larger.
    """
    from ..operations import Image
    from ..operations.register.intensity import gray

    level = Image(np.asarray(source.levels[index]), source.level_affine(index), name=name, rgb=source.rgb,
                  units=source.units)
    return level.like(gray(level), rgb=False)


def save_image(path, data, reference: SourceImage, *, source: SourceImage, overwrite: bool) -> None:
    """Write ``source`` resampled onto ``reference``'s grid (numpy, or dask that TIFF/Zarr writers stream) by suffix.

    RGB and labels stay what ``source`` is; PNG/JPEG get its integer dtype (rounded, clipped);
    the file takes the reference file's own grid and array order.
    """
    from ..io import as_picture, is_picture, write

    if is_picture(path):
        data = as_picture(np.asarray(data), source.levels[0].dtype)
    write(path, data, reference.affine, overwrite=overwrite, rgb=source.rgb, units=reference.units,
          labels=source.labels, grid=reference.grid)


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


def _sidecar(output, record, port: str, *, overwrite: bool) -> None:
    """Write ``record`` beside ``output``, the file that holds output ``port``."""
    import copy

    own = copy.deepcopy(record)
    own.outputs.setdefault(port, {})["path"] = str(output)
    write_sidecar(output, own, overwrite=overwrite)


def _sidecars(*paths) -> list:
    from ..provenance import sidecar_path

    return [("sidecar", sidecar_path(path)) for path in paths if path is not None]


def _pyramid_inputs(args, fixed: SourceImage, moving: SourceImage) -> dict:
    """The registration levels of pyramid inputs (and masks on them) as images."""
    from ..operations import Image

    inputs = {}
    for port, source, path, mask_path in (("fixed", fixed, args.fixed, args.fixed_mask), ("moving", moving, args.moving, args.moving_mask)):
        index = registration_level(source, args.max_size)
        if source.multiscale:
            print(f"registering {path} on pyramid level {index} of {len(source.levels)}, shape {source.level_shapes()[index]}")
        inputs[port] = level_image(source, index, Path(path).name)
        mask = _mask(mask_path, source, index, port)
        if mask is not None:
            inputs[f"{port}_mask"] = Image(mask.astype(np.uint8), source.level_affine(index), name=Path(mask_path).name, kind="labels")
    return inputs


def run_register(args) -> int:
    from ..io.transforms import Transform, write_displacement_field
    from ..operations import get
    from ..pipeline import read_image, run

    check_outputs(
        [("-o", args.output), ("--transform", args.transform), ("--displacement", args.displacement),
         *_sidecars(args.output, args.transform)],
        [args.fixed, args.moving, args.init, args.fixed_mask, args.moving_mask],
        args.overwrite,
    )
    check_writable(args.output, args.overwrite)
    check_parameter("--max-size", args.max_size, MAX_SIZE_RANGE)
    params = params_from_args(get("register", args.method), args)
    if args.displacement and args.method != "deformable":
        raise ValueError("--displacement needs --model deformable")
    fixed, moving = open_image(args.fixed), open_image(args.moving)
    pyramid = fixed.multiscale or moving.multiscale
    if pyramid:
        inputs = _pyramid_inputs(args, fixed, moving)
    else:
        inputs = {"fixed": read_image(args.fixed), "moving": read_image(args.moving)}
        for port, path in (("fixed_mask", args.fixed_mask), ("moving_mask", args.moving_mask)):
            if path is not None:
                inputs[port] = read_image(path, kind="labels")
    if args.init is not None:
        inputs["init"] = Transform.read(args.init)
    outputs, record = run("register", args.method, inputs, params)
    del inputs  # a pyramid's OUT is written block by block: hold nothing the size of an image meanwhile
    transform = outputs["transform"]
    stats = transform.metadata["registration"]
    for note in stats["notes"]:
        print(f"note: {note}")
    print(f"{stats['metric']} before {stats['metric_before']:.5g}, after {stats['metric_after']:.5g}")
    if "folding_fraction" in stats:
        print(f"folding voxels (Jacobian <= 0): {100 * stats['folding_fraction']:.4f} %")
    if pyramid:
        del outputs
        out = _lazy_output(moving, transform.matrix, fixed, transform.displacement, transform.displacement_affine)
        save_image(args.output, out, fixed, source=moving, overwrite=args.overwrite)
    else:
        save_output(args.output, outputs["resampled"], overwrite=args.overwrite, provenance=record.to_dict(),
                    picture_dtype=moving.levels[0].dtype, grid=fixed.grid)
        _sidecar(args.output, record, "resampled", overwrite=args.overwrite)
    print(f"wrote {args.output}")
    if args.transform:
        transform.save(args.transform, overwrite=args.overwrite)
        _sidecar(args.transform, record, "transform", overwrite=args.overwrite)
        print(f"wrote {args.transform}")
    if args.displacement:
        write_displacement_field(args.displacement, transform.displacement, transform.displacement_affine,
                                 overwrite=args.overwrite, grid=fixed.grid)
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
    from ..operations import get
    from ..pipeline import run

    check_outputs([("--transform", args.transform), *_sidecars(args.transform)], [args.fixed, args.moving], args.overwrite)
    params = params_from_args(get("register", "landmarks"), args)
    fixed = read_points_csv(args.fixed)
    moving = read_points_csv(args.moving)
    if fixed.shape != moving.shape:
        raise ValueError(f"{args.fixed} has {fixed.shape[0]} {fixed.shape[1]}D points, {args.moving} {moving.shape[0]} {moving.shape[1]}D")
    outputs, record = run("register", "landmarks", {"fixed": fixed, "moving": moving}, params)
    residuals = outputs["residuals"]
    for index, residual in enumerate(residuals, start=1):
        print(f"pair {index}: residual {residual:.4f}")
    print(f"RMS residual {np.sqrt(np.mean(residuals**2)):.4f}, max {residuals.max():.4f} (world units)")
    outputs["transform"].save(args.transform, overwrite=args.overwrite)
    _sidecar(args.transform, record, "transform", overwrite=args.overwrite)
    print(f"wrote {args.transform}")
    return 0


def run_transform(args) -> int:
    from ..core.register.checks import check_placed_overlap
    from ..io.transforms import Transform
    from ..operations import get
    from ..pipeline import read_image, run

    check_outputs(
        [("-o", args.output), *_sidecars(args.output)], [args.moving, args.transform, args.displacement, args.reference],
        args.overwrite,
    )
    check_writable(args.output, args.overwrite)
    params = params_from_args(get("transform", "apply"), args)
    transform = Transform.read(args.transform, args.displacement)
    moving, reference = open_image(args.moving), open_image(args.reference)
    if transform.ndim != reference.ndim:
        raise ValueError(f"the transform is {transform.ndim}D but the reference {reference.ndim}D")
    if moving.multiscale or reference.multiscale:
        if transform.displacement is None and moving.ndim == reference.ndim:
            check_placed_overlap(moving.shape, moving.affine, transform.matrix, reference.shape, reference.affine,
                                 name=args.moving, reference=args.reference)
        out = _lazy_output(moving, transform.matrix, reference, transform.displacement, transform.displacement_affine,
                           params["interpolation"])
        save_image(args.output, out, reference, source=moving, overwrite=args.overwrite)
    else:
        image, grid = read_image(args.moving), read_image(args.reference)
        image.name, grid.name = str(args.moving), str(args.reference)
        outputs, record = run("transform", "apply", {"image": image, "transform": transform, "reference": grid}, params)
        save_output(args.output, outputs["transformed"], overwrite=args.overwrite, provenance=record.to_dict(),
                    picture_dtype=moving.levels[0].dtype, grid=reference.grid)
        _sidecar(args.output, record, "transformed", overwrite=args.overwrite)
    print(f"wrote {args.output}")
    return 0
