"""Colour for fusion: BT.601 YCbCr, functional-imaging colormaps, which inputs carry colour."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

_RGB_TO_YCBCR_CB = 0.564
_RGB_TO_YCBCR_CR = 0.713


def infer_rgb(images: Sequence[np.ndarray]) -> list[bool]:
    """Whether each image is RGB(A) by its shape: 2D or 3D with a last axis of length 3 or 4."""
    return [a.ndim in (3, 4) and a.shape[-1] in (3, 4) for a in images]


def is_colour(image, rgb: bool | None = None) -> bool:
    """Whether an image carries colour: RGB(A) (``rgb``, by default a last axis of 3 or 4)
    whose R, G and B differ somewhere. Grey stored as RGB is not colour (fusion treats it as grey).
    """
    array = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image)
    if not (infer_rgb([array])[0] if rgb is None else rgb):
        return False
    return not (np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 0], array[..., 2]))


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 full-range YCbCr of an RGB image in [0, 1].

    Parameters
    ----------
    rgb : ndarray, shape (..., 3)

    Returns
    -------
    ndarray, shape (..., 3), float32
        Y in [0, 1]; Cb, Cr in [-0.5, 0.5].
    """
    rgb = np.asarray(rgb, dtype=np.float32)
    y = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    cb = _RGB_TO_YCBCR_CB * (rgb[..., 2] - y)
    cr = _RGB_TO_YCBCR_CR * (rgb[..., 0] - y)
    return np.stack([y, cb, cr], axis=-1).astype(np.float32)


def ycbcr_to_rgb(ycbcr: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_ycbcr`; shape (..., 3), float32 in [0, 1].

    Y is clipped to [0, 1]; a colour that would then leave the RGB cube (a bright fused
    luminance under a saturated chroma) is desaturated, Cb and Cr scaled down together
    until it fits, instead of clipping each channel: the luminance (BT.601) stays Y.
    """
    ycbcr = np.asarray(ycbcr, dtype=np.float32)
    y = np.clip(ycbcr[..., 0], 0, 1)
    cb, cr = ycbcr[..., 1] / _RGB_TO_YCBCR_CB, ycbcr[..., 2] / _RGB_TO_YCBCR_CR
    chroma = np.stack([cr, -(0.299 * cr + 0.114 * cb) / 0.587, cb], axis=-1)  # RGB minus Y
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # a tiny chroma: room enough
        room = np.where(chroma > 0, (1 - y[..., None]) / chroma, np.where(chroma < 0, -y[..., None] / chroma, np.inf))
    scale = np.clip(room.min(axis=-1), 0, 1)[..., None]
    return np.clip(y[..., None] + scale * chroma, 0, 1).astype(np.float32)


def apply_colormap(image: np.ndarray, name: str = "hot") -> np.ndarray:
    """Colour a grey image in [0, 1] with a standard functional-imaging colormap.

    Parameters
    ----------
    image : ndarray, shape (*spatial)
    name : {"hot", "jet"}
        "hot": black - red - yellow - white (the usual PET map); "jet": blue - cyan -
        yellow - red.

    Returns
    -------
    ndarray, shape (*spatial, 3), float32 in [0, 1]
    """
    x = np.clip(np.asarray(image, dtype=np.float32), 0, 1)
    if name == "hot":
        channels = [np.clip(3 * x, 0, 1), np.clip(3 * x - 1, 0, 1), np.clip(3 * x - 2, 0, 1)]
    elif name == "jet":
        channels = [np.clip(1.5 - np.abs(4 * x - c), 0, 1) for c in (3.0, 2.0, 1.0)]
    else:
        raise ValueError(f"colormap must be 'hot' or 'jet', not {name!r}")
    return np.stack(channels, axis=-1).astype(np.float32)

