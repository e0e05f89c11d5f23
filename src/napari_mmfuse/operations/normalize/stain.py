"""H&E slides: Macenko and Reinhard stain normalisation, and the tissue mask."""

from __future__ import annotations

import numpy as np

from .. import Image, Operation, Param, Port, Progress
from ..inputs import rgb_input

SLIDE = Port("image", "image", "RGB uint8 H&E slide (a coarse pyramid level for the tissue mask)")
TARGET = Port("reference", "image", "RGB target slide; default the published H&E reference", optional=True)
RESULT = Port("image", "image", "normalised slide, RGB uint8")


def run_macenko(image: Image, reference: Image | None = None, *, device=None, seed=None):
    """Re-express ``image`` with the stain vectors and strengths of ``reference`` (or the published ones)."""
    from ...core.normalize import macenko

    slide = rgb_input(image, "Stain: Macenko")
    target = None if reference is None else rgb_input(reference, "Stain: Macenko (target)")
    yield Progress(0, 1, "estimating the stains")
    return {"image": image.like(macenko(slide, reference=target), name=f"{image.name} macenko")}


def run_reinhard(image: Image, reference: Image | None = None, *, device=None, seed=None):
    """Match each L*a*b* channel's mean and spread of ``image`` to ``reference``'s tissue."""
    from ...core.normalize import reinhard

    slide = rgb_input(image, "Stain: Reinhard")
    if reference is None:
        raise ValueError("reinhard needs a reference slide (its L*a*b* statistics are the target)")
    target = rgb_input(reference, "Stain: Reinhard (target)")
    yield Progress(0, 1, "matching colour statistics")
    return {"image": image.like(reinhard(slide, reference=target), name=f"{image.name} reinhard")}


def run_tissue(image: Image, *, closing_radius: int, device=None, seed=None):
    """Tissue vs background of a slide, as labels (1 = tissue) on the slide's grid."""
    from ...core.normalize import tissue_mask

    slide = rgb_input(image, "Tissue mask")
    yield Progress(0, 1, "thresholding saturation")
    mask = tissue_mask(slide, closing_radius=closing_radius).astype(np.uint8)
    return {"labels": image.like(mask, name=f"{image.name} tissue", kind="labels", rgb=False)}


OPERATIONS = (
    Operation(
        capability="normalize",
        name="macenko",
        label="Stain: Macenko",
        doc="Macenko stain normalisation: the slide's H&E vectors replaced by the target's",
        params=(),
        inputs=(SLIDE, TARGET),
        outputs=(RESULT,),
        run=run_macenko,
    ),
    Operation(
        capability="normalize",
        name="reinhard",
        label="Stain: Reinhard",
        doc="Reinhard colour transfer: L*a*b* means and spreads matched to a target slide",
        params=(),
        inputs=(SLIDE, Port("reference", "image", "RGB target slide (required: its tissue's statistics)",
                            optional=True)),
        outputs=(RESULT,),
        run=run_reinhard,
    ),
    Operation(
        capability="normalize",
        name="tissue",
        label="Tissue mask",
        doc="tissue vs glass of an H&E slide: Otsu on saturation with an optical-density floor",
        params=(Param("closing_radius", int, 2, "radius of the closing that bridges small gaps", minimum=0,
                      maximum=50, unit="px", label="closing radius"),),
        inputs=(SLIDE,),
        outputs=(Port("labels", "labels", "1 = tissue, 0 = background, on the slide's grid"),),
        run=run_tissue,
        core="napari_mmfuse.core.normalize:tissue_mask",
    ),
)
