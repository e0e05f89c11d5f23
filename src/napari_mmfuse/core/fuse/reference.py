"""Fusion in world space: images resampled onto a reference grid through their affines,
each modality's intensities normalised, then fused; and the metrics of a result."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .._names import FUSE_DEFAULT_METHOD as DEFAULT_METHOD
from .. import space
from ..kernels import luminance
from .colour import infer_rgb
from .fusion import FusionResult, fuse
from .intensity import intensity_window


def check_overlap(shapes, affines, *, reference_index: int = 0, min_overlap: float = 1e-3) -> None:
    """Raise a ValueError naming every image whose world box misses the reference's.

    Parameters
    ----------
    shapes : sequence of tuple of int
        Spatial shapes.
    affines : sequence of ndarray, each shape (n + 1, n + 1)
    reference_index : int
    min_overlap : float
        Smallest fraction of the reference's world box an image must cover.
    """
    ref_shape, ref_affine = shapes[reference_index], affines[reference_index]
    for i, (shape, affine) in enumerate(zip(shapes, affines)):
        if len(shape) != len(ref_shape):
            raise ValueError(
                f"image {i} is {len(shape)}D but the reference (image {reference_index}) is "
                f"{len(ref_shape)}D; choose images of one dimensionality"
            )
        overlap = space.overlap_fraction(ref_shape, ref_affine, shape, affine)
        if overlap < min_overlap:
            raise ValueError(
                f"image {i} does not overlap the reference (image {reference_index}) in world space "
                f"(it covers {100 * overlap:.2g}% of it): check where they are placed, or register them first"
            )


def resample_to_reference(
    images: Sequence[np.ndarray],
    affines: Sequence[np.ndarray],
    *,
    reference_index: int = 0,
    rgb: Sequence[bool] | None = None,
    modalities: Sequence[str | None] | None = None,
    low: float = 1.0,
    high: float = 99.0,
    plane: int | None = None,
    windows: Sequence[tuple[float, float] | None] | None = None,
    min_overlap: float = 1e-3,
    device=None,
) -> list[np.ndarray]:
    """Resample every image onto the reference grid and normalise its intensities.

    Parameters
    ----------
    images : sequence of ndarray, each shape (*spatial) or (*spatial, 3) for RGB
    affines : sequence of ndarray, each shape (n + 1, n + 1)
        Index -> world affines (napari order, see :mod:`napari_mmfuse.core.space`).
    reference_index : int
        The image whose grid the others are resampled onto.
    rgb, modalities : sequences, optional
        Per-image RGB flags (default: inferred as in :func:`fuse`) and modality names
        for :func:`normalise_intensity`.
    low, high : float
        Percentiles for :func:`normalise_intensity`.
    plane : int, optional
        For a 3D reference, resample only this index along its first axis (a live
        preview); the images come back 2D, shape (Y, X).
    windows : sequence of (float, float) or None, optional
        Intensity windows of the grey images (as :func:`intensity_window` returns, e.g.
        cached between previews); None entries are computed from the whole image.
    min_overlap : float
        Smallest fraction of the reference's world box an image must cover.

    Returns
    -------
    list of ndarray, float32 in [0, 1]; shape reference spatial shape (plus 3 for RGB)

    Raises
    ------
    ValueError
        Mismatched counts or dimensionality, an image that does not overlap the reference
        in world space, NaN/Inf, a constant image.
    """
    if len(images) < 2:
        raise ValueError(f"fusion needs at least two images, got {len(images)}")
    if len(affines) != len(images):
        raise ValueError(f"got {len(images)} images but {len(affines)} affines")
    if not 0 <= reference_index < len(images):
        raise ValueError(f"reference_index {reference_index} is not one of the {len(images)} images")
    arrays = [np.asarray(a) for a in images]
    flags = infer_rgb(arrays) if rgb is None else [bool(f) for f in rgb]
    modalities = list(modalities) if modalities is not None else [None] * len(arrays)
    ref = arrays[reference_index]
    ref_shape = ref.shape[:-1] if flags[reference_index] else ref.shape
    ref_affine = np.asarray(affines[reference_index], dtype=np.float64)
    n = len(ref_shape)
    grid_shape, grid_affine = ref_shape, ref_affine
    if plane is not None:
        if n != 3:
            raise ValueError("plane only applies to a 3D reference")
        if not 0 <= plane < ref_shape[0]:
            raise ValueError(f"plane {plane} is outside the reference's {ref_shape[0]} planes")
        shift = np.eye(4)
        shift[0, 3] = plane
        grid_shape, grid_affine = (1, *ref_shape[1:]), ref_affine @ shift
    shapes = [a.shape[:-1] if f else a.shape for a, f in zip(arrays, flags)]
    check_overlap(shapes, [np.asarray(a, dtype=np.float64) for a in affines], reference_index=reference_index,
                  min_overlap=min_overlap)
    out = []
    for i, (array, affine, flag) in enumerate(zip(arrays, affines, flags)):
        data = np.asarray(array, dtype=np.float32)
        bad = data.size - int(np.isfinite(data).sum())
        if bad:
            raise ValueError(f"image {i} has {bad} NaN/Inf pixels; fill them first (e.g. numpy.nan_to_num)")
        if flag:
            data = data[..., :3]
            lower, upper = 0.0, 255.0 if array.dtype == np.uint8 else max(float(data.max()), 1e-12)
        elif windows is not None and windows[i] is not None:
            lower, upper = (float(v) for v in windows[i])
        else:
            try:
                lower, upper = intensity_window(data, modality=modalities[i], low=low, high=high)
            except ValueError as error:
                raise ValueError(f"image {i}: {error}") from None
        shape = data.shape[:-1] if flag else data.shape
        if shape == tuple(ref_shape) and np.allclose(affine, ref_affine, atol=1e-9):
            resampled = data if plane is None else data[plane]  # already on the reference grid
        else:
            resampled = space.resample(
                data, affine, grid_shape, grid_affine, channel_axis=-1 if flag else None, fill_value=lower,
                device=device,
            )
            if plane is not None:
                resampled = resampled[0]
        out.append(np.clip((resampled - lower) / (upper - lower), 0, 1).astype(np.float32))
    return out


def fuse_on_reference(
    images: Sequence[np.ndarray],
    affines: Sequence[np.ndarray],
    *,
    reference_index: int = 0,
    method: str = DEFAULT_METHOD,
    rgb: Sequence[bool] | None = None,
    modalities: Sequence[str | None] | None = None,
    low: float = 1.0,
    high: float = 99.0,
    plane: int | None = None,
    device=None,
    **params,
) -> FusionResult:
    """Resample images onto a reference grid, normalise each modality, and fuse them.

    Parameters are those of :func:`resample_to_reference` and :func:`fuse`.

    Returns
    -------
    FusionResult
        On the reference grid (or its ``plane``, 2D); ``params`` also records
        ``reference_index``.
    """
    prepared = resample_to_reference(
        images,
        affines,
        reference_index=reference_index,
        rgb=rgb,
        modalities=modalities,
        low=low,
        high=high,
        plane=plane,
        device=device,
    )
    flags = infer_rgb([np.asarray(a) for a in images]) if rgb is None else [bool(f) for f in rgb]
    result = fuse(prepared, method=method, rgb=flags, normalise=False, device=device, **params)
    result.params = {**result.params, "reference_index": reference_index}
    return result


def result_metrics(
    fused: np.ndarray, inputs: Sequence[np.ndarray], rgb: Sequence[bool], *, mi_base: float = 2.0
) -> dict[str, float]:
    """Fusion metrics of a fused image or volume against the images it was fused from.

    Parameters
    ----------
    fused : ndarray, shape (*spatial) or (*spatial, 3)
        In [0, 1]; colour when it has one axis more than the inputs' spatial shape.
    inputs : sequence of ndarray
        The inputs in [0, 1] on the fused image's grid (as :func:`resample_to_reference`
        returns them).
    rgb : sequence of bool
        Which inputs are colour (measured on their luminance, as is a colour result).
    mi_base : float
        Logarithm base of MI (2: bits; ``math.e``: nats).

    Returns
    -------
    dict
        :func:`napari_mmfuse.core.quality.fusion_metrics` on the 0-255 scale the literature
        uses (VIF when the images, or the planes of a volume, are 136 pixels a side or more).
    """
    from ..quality import fusion_metrics

    grey = [luminance(image) if flag else np.asarray(image) for image, flag in zip(inputs, rgb)]
    fused = np.asarray(fused)
    fused_grey = luminance(fused) if fused.ndim > grey[0].ndim else fused
    return fusion_metrics(
        np.round(fused_grey * 255),
        [np.round(g * 255) for g in grey],
        mi_base=mi_base,
        vif=min(fused_grey.shape[-2:]) >= 136,
    )
