"""Registration from landmark pairs: a least-squares rigid, similarity or affine fit."""

from __future__ import annotations

from .. import Operation, Param, Port, Progress


def _run(fixed, moving, *, device=None, seed=None, model):
    import numpy as np

    from ...core.register import fit_landmarks
    from ...io.transforms import Transform

    fixed, moving = np.asarray(fixed, np.float64), np.asarray(moving, np.float64)
    if fixed.shape != moving.shape:
        raise ValueError(f"{fixed.shape[0]} fixed {fixed.shape[-1]}D points but {moving.shape[0]} moving "
                         f"{moving.shape[-1]}D points; give one moving point per fixed point")
    yield Progress(0, 1, f"fitting {len(fixed)} pairs")
    matrix, residuals = fit_landmarks(fixed, moving, model=model)
    rms = float(np.sqrt(np.mean(residuals**2)))
    stats = {"model": model, "pairs": int(len(fixed)), "rms_residual": rms, "max_residual": float(residuals.max())}
    return {"transform": Transform(matrix, name=f"{model} landmark fit", metadata={"registration": stats}),
            "residuals": residuals}


OPERATIONS = (
    Operation(
        capability="register",
        name="landmarks",
        doc="least-squares fit of landmark pairs (world points, napari order)",
        params=(Param("model", str, "rigid", "the transform fitted: rigid, similarity (one scale) or affine",
                      choices=("rigid", "similarity", "affine")),),
        inputs=(Port("fixed", "table", "fixed world points, shape (K, n)"),
                Port("moving", "table", "the matching moving world points, same order")),
        outputs=(Port("transform", "transform", "fixed world -> moving world"),
                 Port("residuals", "table", "distance of each pair after the fit, world units")),
        run=_run,
        core="napari_mmfuse.core.register:fit_landmarks",
    ),
)
