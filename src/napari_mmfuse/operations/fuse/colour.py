"""Colour fusion: the luminance fused by a grey method, the colour of the functional image kept.

Its parameters are its own (``inner``, ``colormap``, ``functional``) plus every grey
method's, unset by default: the inner method then uses its own default.
"""

from __future__ import annotations

from dataclasses import replace

from .. import Param
from ...core._names import FUSE_DEFAULT_METHOD as DEFAULT_METHOD
from . import ORDER, blend, fusion_operation, learned, multiscale, network, spatial

#: The grey methods, in menu order: the choices of ``inner``.
GREY_OPERATIONS = tuple(sorted(blend.OPERATIONS + multiscale.OPERATIONS + spatial.OPERATIONS + learned.OPERATIONS
                               + network.OPERATIONS, key=lambda op: ORDER.index(op.name)))


def _inner_params() -> tuple:
    """Every grey method's parameters once, unset (the inner method's own default applies)."""
    found: dict[str, Param] = {}
    for operation in GREY_OPERATIONS:
        for param in operation.params:
            doc = f"inner method's {param.doc}"
            found.setdefault(param.name, replace(param, default=None, doc=doc, auto="the inner method's own default"))
    return tuple(found.values())


#: The names of the inner method's parameters colour fusion passes on.
INNER_PARAMETERS = tuple(param.name for param in _inner_params())

OPERATIONS = (
    fusion_operation(
        "colour", "Colour (functional over anatomy)",
        "Colour of the functional image (RGB, or the colormap on a grey image) over the anatomical detail; "
        "the luminance is fused by the inner method.",
        (
            Param("inner", str, DEFAULT_METHOD, "the grey method that fuses the luminance",
                  choices=tuple(op.name for op in GREY_OPERATIONS)),
            Param("colormap", str, "hot", "colours a grey functional image (hot: the usual PET map)",
                  choices=("hot", "jet")),
            Param("functional", int, None, "index of the functional image", minimum=0,
                  auto="the colour image, else the last"),
            *_inner_params(),
        ),
        core="napari_mmfuse.core.fuse.fusion:colour_steps",
    ),
)
