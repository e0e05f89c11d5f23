"""The explain operations' body: images placed in world space in, a map on the first image's grid out.

What the Explain widget and ``mmfuse explain`` both did before they ran a method: the
modalities resampled onto the first image's grid through their world affines, the region
(a label image, voxels > 0) resampled (nearest) onto that grid, for a model with its own
grid (a bundle's orientation and spacing) both resampled onto that grid as it segments and
the maps brought back (:class:`~..segment.predict.ModelGrid`), and, when asked for, the
per-modality answers after the map: the attribution (integrated gradients summed per
modality) and, beside it, the check of what removing each modality does to the
segmentation (:func:`~.run.modality_removal_steps`).
"""

from __future__ import annotations

import numpy as np

from ...operations import Image, Progress, relay
from ..segment.predict import ModelGrid
from .run import explain_steps, maps_attribution, modality_attribution_steps, modality_removal_steps

#: Shares of the progress taken by the map and the per-modality attribution when the per-modality
#: answers follow the map (the removal check takes the rest).
MAP_SHARE, ATTRIBUTION_SHARE = 0.7, 0.2
#: Integrated-gradients path points of the per-modality attribution (one network pass of 8 copies per
#: 48^3 window): enough to rank a few modalities, cheap beside a full-size map.
ATTRIBUTION_STEPS = 8


def modalities_on_grid(images, device=None) -> np.ndarray:
    """The images as channels ``(C, *S)`` on the first one's grid.

    Raises
    ------
    ValueError
        No image, an RGB image, or a mix of 2D and 3D images.
    """
    from ..segment import stack_modalities

    if not images:
        raise ValueError("no images given; give the model's input modalities")
    for image in images:
        if image.rgb or image.data.ndim not in (2, 3):
            raise ValueError(f"{image.name or 'an image'}: give one grey 2D or 3D image per modality")
    if len({image.data.ndim for image in images}) > 1:
        raise ValueError("mix of 2D and 3D images; give images of one dimensionality")
    first = images[0]
    return stack_modalities([np.asarray(image.data) for image in images], [image.affine for image in images],
                            first.data.shape, first.affine, device=device)


def region_on_grid(region: Image, reference: Image, device=None) -> np.ndarray:
    """The voxels > 0 of a label image, resampled (nearest) onto ``reference``'s grid, as a mask."""
    from ..space import resample

    data = np.asarray(region.data)
    shape = tuple(reference.data.shape)
    if data.ndim != len(shape):
        raise ValueError(f"the region {region.name} is {data.ndim}D but the images are {len(shape)}D")
    if data.shape != shape or not np.allclose(region.affine, reference.affine, atol=1e-6):
        data = resample(data, region.affine, shape, reference.affine, interpolation="nearest", device=device)
    return data > 0


def explain_images(images, model, region: Image | None = None, *, method: str, attribution: bool = False,
                   device=None, **options):
    """Explain one class of ``model`` on images: the run function of every explain operation.

    Parameters
    ----------
    images : list of Image
        The model's input modalities in its channel order, on any grids.
    model : SegmentationNet
    region : Image, optional
        Labels whose voxels > 0 are the region (see :func:`~.run.explain_steps`).
    method : str
    attribution : bool
        Also measure each modality's share (the "ig" map's channels for "ig", else
        integrated gradients with :data:`ATTRIBUTION_STEPS` points) and what removing it
        does (:func:`~.run.modality_removal_steps`).
    device : str, optional
    **options
        Parameters of :func:`~.run.explain_steps` (``target``, ``layer``, ...).

    Yields
    ------
    Progress

    Returns
    -------
    dict
        ``map``: Image on the first image's grid (its metadata's ``layer``: the layer or
        attention blocks explained); ``channel_maps``: one Image per modality (gradient
        methods); with ``attribution``: ``attribution``, the :class:`~.windows.Attribution`,
        and ``removal``, the :class:`~.windows.Removal`.
    """
    images = list(images)
    stack = modalities_on_grid(images, device)
    first = images[0]
    mask = region_on_grid(region, first, device) if region is not None else None
    grid = ModelGrid(model.config, first.data.shape, first.affine, device)
    stack, mask = grid.forward(stack), grid.forward(mask)
    steps = explain_steps(model, stack, method=method, region=mask, device=device, **options)
    share = MAP_SHARE if attribution else 1.0
    result = yield from _rescaled(steps, 0.0, share, method)
    channel_maps = grid.back(result.channel_maps)
    name = f"{method} class {result.target}"
    outputs = {"map": first.like(grid.back(result.map), kind="map", name=name, metadata={"layer": result.layer})}
    if channel_maps is not None:
        outputs["channel_maps"] = [first.like(values, kind="map", name=f"{name} of {image.name}")
                                   for values, image in zip(channel_maps, images)]
    if attribution:
        names = model.config.channel_names
        if method == "ig":
            outputs["attribution"] = maps_attribution(result.channel_maps, names, method)
        else:
            steps = modality_attribution_steps(model, stack, target=result.target, region=mask, method="ig",
                                               steps=ATTRIBUTION_STEPS, device=device)
            outputs["attribution"] = yield from _rescaled(steps, share, ATTRIBUTION_SHARE, "per-modality attribution")
        outputs["attribution"].maps = grid.back(outputs["attribution"].maps)
        steps = modality_removal_steps(model, stack, target=result.target, region=mask, device=device)
        outputs["removal"] = yield from _rescaled(steps, share + ATTRIBUTION_SHARE, 1.0 - share - ATTRIBUTION_SHARE,
                                                  "removing each modality")
    return outputs


def _rescaled(steps, start: float, share: float, message: str):
    """Run ``steps`` to its end, its progress mapped onto ``start .. start + share`` of the whole."""
    return (yield from relay(steps, lambda progress: Progress(
        start + share * progress.fraction, 1.0, f"{message}: {progress.done:g} of {progress.total:g}")))
