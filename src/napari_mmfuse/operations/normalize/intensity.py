"""Intensity normalisation of grey images: percentiles to [0, 1], z-score, histogram matching."""

from __future__ import annotations

from .. import Image, Operation, Param, Port, Progress
from ..inputs import grey_input

IMAGE = Port("image", "image", "grey 2D or 3D image")
RESULT = Port("image", "image", "normalised image, float32, on the input's grid")


def run_percentile(image: Image, *, low: float, high: float, device=None, seed=None):
    """Map the ``low`` and ``high`` percentiles of ``image`` to 0 and 1."""
    from ...core.normalize import percentile

    data, _, _ = grey_input(image, "Percentile normalisation", slice_as_2d=False)
    yield Progress(0, 1, "percentiles")
    return {"image": image.like(percentile(data, low=low, high=high), name=f"{image.name} percentile")}


def run_zscore(image: Image, *, device=None, seed=None):
    """Subtract the mean of ``image`` and divide by its standard deviation."""
    from ...core.normalize import zscore

    data, _, _ = grey_input(image, "Z-score", slice_as_2d=False)
    yield Progress(0, 1, "z-score")
    return {"image": image.like(zscore(data), name=f"{image.name} zscore")}


def run_histogram(image: Image, reference: Image, *, device=None, seed=None):
    """Map the intensities of ``image`` so that its cumulative histogram follows ``reference``'s."""
    from ...core.normalize import match_histogram

    data, _, _ = grey_input(image, "Histogram matching", slice_as_2d=False)
    target, _, _ = grey_input(reference, "Histogram matching", slice_as_2d=False)
    yield Progress(0, 1, "matching the histogram")
    return {"image": image.like(match_histogram(data, target), name=f"{image.name} histogram")}


OPERATIONS = (
    Operation(
        capability="normalize",
        name="percentile",
        label="Percentile normalisation",
        doc="map the low and high percentiles to 0 and 1",
        params=(
            Param("low", float, 1.0, "percentile mapped to 0 (below high)", minimum=0.0, maximum=100.0, unit="%",
                  label="low percentile"),
            Param("high", float, 99.8, "percentile mapped to 1", minimum=0.0, maximum=100.0, unit="%",
                  label="high percentile"),
        ),
        inputs=(IMAGE,),
        outputs=(RESULT,),
        run=run_percentile,
        core="napari_mmfuse.core.normalize:percentile",
    ),
    Operation(
        capability="normalize",
        name="zscore",
        label="Z-score",
        doc="subtract the mean and divide by the standard deviation",
        params=(),
        inputs=(IMAGE,),
        outputs=(RESULT,),
        run=run_zscore,
    ),
    Operation(
        capability="normalize",
        name="histogram",
        label="Histogram matching",
        doc="match the cumulative histogram of a reference image",
        params=(),
        inputs=(IMAGE, Port("reference", "image", "grey image whose histogram is the target (any grid)")),
        outputs=(RESULT,),
        run=run_histogram,
    ),
)
