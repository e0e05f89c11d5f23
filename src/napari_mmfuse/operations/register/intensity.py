"""Intensity-based registration of a moving image onto a fixed one: rigid, similarity, affine, deformable.

One run function serves the four models (:func:`napari_mmfuse.core.register.register_steps`):
RGB images register on their luminance, masks restrict the points that count, and the
moving image (RGB or labels kept, labels by nearest neighbour) is resampled onto the fixed
grid through the result. The result is a :class:`napari_mmfuse.io.transforms.Transform`
(fixed world -> moving world); deformable results add a displacement field and its
Jacobian determinant on the fixed grid.
"""

from __future__ import annotations

import itertools

from .. import Operation, Param, Port, Progress, relay

#: Similarity measures (``--metric`` choices), with their names for menus.
METRIC_NAMES = {"mi": "mutual information", "nmi": "normalised MI", "lncc": "local NCC", "mse": "mean squared error"}

_CORE = "napari_mmfuse.core.register:register_steps"
_COMMON = (
    Param("metric", str, "mi", "similarity measure: " + ", ".join(f"{k} ({v})" for k, v in METRIC_NAMES.items()),
          choices=tuple(METRIC_NAMES)),
    Param("levels", int, 3, "pyramid levels, each halving the grid (capped so the coarsest keeps 8 voxels a side)",
          minimum=1, label="pyramid levels"),
    Param("iterations", int, 100, "most iterations per level and stage", minimum=1, maximum=100_000,
          label="iterations / level"),
    Param("sampling", float, 0.1, "fraction of fixed voxels sampled per level for MI/NMI/MSE (LNCC is dense)",
          minimum=0.0, maximum=1.0, open_minimum=True, unit=""),
)
_DEFORMABLE = (
    Param("grid_spacing", float, 4.0, "control-node spacing on the finest level", minimum=1.0, unit="px"),
    Param("regularization", float, 3.0, "weight of the smoothness penalty against the metric", minimum=0.0),
)
_INPUTS = (
    Port("fixed", "image", "the reference; the result lies on its grid"),
    Port("moving", "image", "the image to align (RGB registers on its luminance; labels are resampled nearest)"),
    Port("fixed_mask", "labels", "nonzero = points that count, on the fixed grid", optional=True),
    Port("moving_mask", "labels", "nonzero = points that count, on the moving grid", optional=True),
    Port("init", "transform", "starting transform (fixed -> moving world)", optional=True),
)
_LINEAR_OUTPUTS = (
    Port("transform", "transform", "fixed world -> moving world"),
    Port("resampled", "image", "the moving image on the fixed grid"),
)
_DEFORMABLE_OUTPUTS = _LINEAR_OUTPUTS + (Port("jacobian", "map", "det(Jacobian) of the displacement, fixed grid"),)


def gray(image):
    """Registration pixels of an :class:`~napari_mmfuse.operations.Image`: float32, RGB as luminance."""
    import numpy as np

    from ...core.register import to_luminance

    data = np.asarray(image.data)
    return to_luminance(data) if image.rgb else data.astype(np.float32, copy=False)


def _mask(mask, image, name: str):
    if mask is None:
        return None
    values = gray(mask)
    if values.shape != gray(image).shape:
        raise ValueError(f"the {name} mask {mask.name} has shape {values.shape}, its image {gray(image).shape}")
    return values != 0


def as_progress(steps, total: int):
    """Each :class:`~napari_mmfuse.core.register.RegStep` of ``steps`` as a :class:`Progress`; returns the result."""
    done = itertools.count(1)
    return (yield from relay(steps, lambda step: Progress(
        min(next(done), total), total, f"{step.stage}, level {step.level + 1}",
        {"metric": step.metric, "level": step.level})))


def _run(fixed, moving, *, model, fixed_mask, moving_mask, init, device, seed, metric, levels, iterations, sampling,
         **deformable):
    import numpy as np

    from ...core.register import apply_transform, register_steps
    from ...core.register.driver import MIN_COARSEST_SIDE, max_levels
    from ...io.transforms import Transform
    from .. import Image

    fixed_gray, moving_gray = gray(fixed), gray(moving)
    notes = []
    most = max_levels(fixed_gray.shape, moving_gray.shape)
    if levels > most:
        side = min(min(fixed_gray.shape), min(moving_gray.shape))
        notes.append(f"--levels {levels} capped to {most}: the coarsest level keeps at least "
                     f"{MIN_COARSEST_SIDE} voxels per axis (smallest side {side})")
        levels = most
        yield Progress(0, 1, notes[-1])
    stages = 2 if model == "deformable" and init is None else 1
    steps = register_steps(
        fixed_gray, fixed.affine, moving_gray, moving.affine, model=model, metric=metric, levels=levels,
        iterations=iterations, init=None if init is None else init.matrix, sampling=sampling,
        fixed_mask=_mask(fixed_mask, fixed, "fixed"), moving_mask=_mask(moving_mask, moving, "moving"),
        seed=0 if seed is None else seed, device=device, **deformable,
    )
    result = yield from as_progress(steps, levels * iterations * stages)
    stats = {"model": result.model, "metric": result.metric, "metric_before": float(result.metric_before),
             "metric_after": float(result.metric_after), "notes": notes + list(result.notes)}
    if result.folding_fraction is not None:
        stats["folding_fraction"] = float(result.folding_fraction)
    transform = Transform(result.transform, result.displacement,
                          None if result.displacement is None else np.asarray(fixed.affine, np.float64),
                          name=f"{moving.name} -> {fixed.name}", metadata={"registration": stats})
    labels = moving.kind == "labels"
    resampled = apply_transform(
        np.asarray(moving.data), moving.affine, result.transform, fixed_gray.shape, fixed.affine,
        interpolation="nearest" if labels else "linear", displacement=result.displacement,
        channel_axis=-1 if moving.rgb else None, device=device,
    )
    kept = {"modality": moving.metadata["modality"]} if "modality" in moving.metadata else {}
    outputs = {
        "transform": transform,
        "resampled": Image(resampled, fixed.affine, name=f"{moving.name} registered", kind=moving.kind,
                           rgb=moving.rgb, units=fixed.units, metadata=kept),
    }
    if result.jacobian_det is not None:
        outputs["jacobian"] = fixed.like(np.asarray(result.jacobian_det, np.float32), name=f"{moving.name} det(Jacobian)",
                                         kind="map", rgb=False)
    return outputs


def _linear(name: str):
    """The run function of linear model ``name``."""

    def run(fixed, moving, *, metric, levels, iterations, sampling, fixed_mask=None, moving_mask=None, init=None,
            device=None, seed=None):
        return _run(fixed, moving, model=name, fixed_mask=fixed_mask, moving_mask=moving_mask, init=init, device=device,
                    seed=seed, metric=metric, levels=levels, iterations=iterations, sampling=sampling)

    return run


def _deformable(fixed, moving, *, metric, levels, iterations, sampling, grid_spacing, regularization, fixed_mask=None,
                moving_mask=None, init=None, device=None, seed=None):
    return _run(fixed, moving, model="deformable", fixed_mask=fixed_mask, moving_mask=moving_mask, init=init,
                device=device, seed=seed, metric=metric, levels=levels, iterations=iterations, sampling=sampling,
                grid_spacing=grid_spacing, regularization=regularization)


def _model(name: str, doc: str) -> Operation:
    deformable = name == "deformable"
    run = _deformable if deformable else _linear(name)
    return Operation(
        capability="register",
        name=name,
        doc=doc,
        params=_COMMON + (_DEFORMABLE if deformable else ()),
        inputs=_INPUTS,
        outputs=_DEFORMABLE_OUTPUTS if deformable else _LINEAR_OUTPUTS,
        run=run,
        core=_CORE,
    )


OPERATIONS = (
    _model("rigid", "rotation and translation"),
    _model("similarity", "rotation, translation and one scale"),
    _model("affine", "any linear map plus translation"),
    _model("deformable", "affine, then a smooth diffeomorphic displacement field (stationary velocity)"),
)
