"""Apply a transform (a registration result or files) to an image or labels, onto a reference grid."""

from __future__ import annotations

from .. import Operation, Param, Port, Progress


def _run(image, transform, reference, *, device=None, seed=None, interpolation=None):
    import numpy as np

    from ...core.register import apply_transform
    from ...core.register.checks import check_placed_overlap
    from ...core.space import resample
    from .. import Image

    n = reference.spatial_ndim
    if transform.ndim != n:
        raise ValueError(f"the transform is {transform.ndim}D but the reference {n}D")
    shape = tuple(reference.data.shape[:n])
    moving_shape = tuple(image.data.shape[: image.spatial_ndim])
    if transform.displacement is None and image.spatial_ndim == n:  # with a field the matrix alone does not say
        check_placed_overlap(moving_shape, image.affine, transform.matrix, shape, reference.affine,
                             name=image.name, reference=reference.name)
    yield Progress(0, 1, f"resampling {image.name}")
    displacement = transform.displacement
    if displacement is not None and (displacement.shape[:-1] != shape
                                     or not np.allclose(transform.displacement_affine, reference.affine, atol=1e-6)):
        displacement = resample(displacement, transform.displacement_affine, shape, reference.affine, channel_axis=-1)
    labels = image.kind == "labels"
    data = apply_transform(
        np.asarray(image.data), image.affine, transform.matrix, shape, reference.affine,
        interpolation=interpolation or ("nearest" if labels else "linear"), displacement=displacement,
        channel_axis=-1 if image.rgb else None, device=device,
    )
    kept = {"modality": image.metadata["modality"]} if "modality" in image.metadata else {}
    return {"transformed": Image(data, reference.affine, name=f"{image.name} transformed", kind=image.kind,
                                 rgb=image.rgb, units=reference.units, metadata=kept)}


OPERATIONS = (
    Operation(
        capability="transform",
        name="apply",
        doc="resample an image or labels onto a reference grid through a transform (x -> T(x + u(x)))",
        params=(Param("interpolation", str, None, "linear or nearest; unset: nearest for labels, else linear",
                      choices=("linear", "nearest")),),
        inputs=(Port("image", "image", "the image or labels to resample (in the moving image's placement)"),
                Port("transform", "transform", "fixed (reference) world -> moving world"),
                Port("reference", "image", "the grid of the result")),
        outputs=(Port("transformed", "image", "the image on the reference grid"),),
        run=_run,
    ),
)
