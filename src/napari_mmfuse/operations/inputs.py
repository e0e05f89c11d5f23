"""What the denoise and normalize operations accept: grey images or RGB slides, and single slices.

Both capabilities' run functions check their input here before any work, and the widget
calls :func:`check_input` before it starts a job, so a wrong layer is refused at once with
the same message the command line prints.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from . import Image, Progress, relay

#: Normalize methods that take RGB H&E slides; every other denoise/normalize method takes grey images.
RGB_METHODS = ("macenko", "reinhard", "tissue")


def grey_input(image: Image, title: str, *, slice_as_2d: bool = True
               ) -> tuple[np.ndarray, np.ndarray | None, Callable[[np.ndarray], np.ndarray]]:
    """A grey image's array, its voxel spacing, and the function that puts a result back in its shape.

    With ``slice_as_2d``, a 3D image one voxel thick along some axis (a single slice) is
    given as 2D, its spacing without that axis; ``restore`` adds the axis back to a result.

    Raises
    ------
    ValueError
        The image is RGB.
    """
    name = repr(image.name) if image.name else "the image"
    if image.rgb:
        raise ValueError(f"{name} is RGB; {title} works on grey images (convert or split the channels)")
    data = np.asarray(image.data)
    affine = np.asarray(image.affine)
    spacing = image.spacing if affine.shape == (data.ndim + 1, data.ndim + 1) else None
    if slice_as_2d and data.ndim == 3 and 1 in data.shape and max(data.shape) > 1:
        flat = data.shape.index(1)
        spacing = None if spacing is None else np.delete(spacing, flat)
        return np.take(data, 0, axis=flat), spacing, lambda result: np.expand_dims(result, flat)
    return data, spacing, lambda result: result


def rgb_input(image: Image, title: str) -> np.ndarray:
    """An RGB slide's array (checked further by the stain functions).

    Raises
    ------
    ValueError
        The image is not RGB.
    """
    if not image.rgb:
        name = repr(image.name) if image.name else "the image"
        raise ValueError(f"{title} works on RGB H&E slides; {name} is not RGB")
    return np.asarray(image.data)


def check_input(capability: str, method: str, image: Image, title: str | None = None) -> None:
    """Refuse, before any work, an image the method cannot take (RGB vs grey, denoise's own checks).

    Raises
    ------
    ValueError
    """
    title = title or method
    if method in RGB_METHODS:
        rgb_input(image, title)
        return
    data, _, _ = grey_input(image, title)
    if capability == "denoise":
        from ..core.denoise import check_image

        check_image(data)


def fractions(steps, message: str):
    """Turn a core generator that yields fractions done into one that yields :class:`Progress`."""
    return (yield from relay(steps, lambda fraction: Progress(fraction, 1.0, message)))
