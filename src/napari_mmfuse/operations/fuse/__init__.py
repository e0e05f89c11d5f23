"""fuse operations: one module per method family, each defining ``OPERATIONS``.

Every fusion operation takes ``images`` (two or more, placed in world space; the first is
the reference) and returns the fused ``image`` on the reference's voxel grid, one
``contributions`` map per input, and the inputs ``resampled`` onto that grid with their
intensities scaled to [0, 1] as they were fused (what fusion metrics compare against).
:func:`run_fusion` is the one run function: resampling through the world affines,
per-modality normalisation and the fusion itself (:mod:`napari_mmfuse.core.fuse`);
:func:`fusion_operation` declares a method with it.
"""

from __future__ import annotations

import inspect

from .. import Image, Operation, Port, Progress

#: Menu order (methods not listed follow by name).
ORDER: tuple = (
    "network", "modulated", "average", "maximum", "minimum", "pca", "laplacian", "wavelet", "activity", "guided", "saliency", "learned",
    "colour",
)

#: The input port of every fusion operation.
INPUTS = (Port("images", "images", "two or more images placed in world space; the first is the reference"),)
#: The output ports of every fusion operation.
OUTPUTS = (
    Port("image", "image", "the fused image on the reference's voxel grid, in [0, 1] (RGB for colour fusion)"),
    Port("contributions", "images", "each input's contribution (weight) map; they sum to 1 at every voxel"),
    Port("resampled", "images", "the inputs on the reference grid, scaled to [0, 1] as fused"),
)


def parse_weights(text: str) -> list[float]:
    """``"3,1"`` -> ``[3.0, 1.0]``: the comma-separated non-negative weights of ``average``.

    Raises
    ------
    ValueError
        A weight that is not a finite number >= 0, or weights that are all 0.
    """
    from ...core.params import ParameterRange, check_parameter

    weights = [check_parameter("weights", value.strip(), ParameterRange(float, 0.0, None)) for value in text.split(",")]
    if not sum(weights) > 0:
        raise ValueError(f"weights must not all be 0, got {text}")
    return weights


def core_parameters(method: str, params: dict, *, seed=None) -> dict:
    """The keywords :func:`napari_mmfuse.core.fuse.fuse` takes for an operation's checked parameters.

    Unset (``None``) parameters are left out, so the method's own default applies;
    ``weights`` text becomes numbers; ``seed`` goes to learned fusion (also as colour's inner method).
    """
    given = {name: value for name, value in params.items() if value is not None}
    if "weights" in given:
        given["weights"] = parse_weights(given["weights"])
    if seed is not None and "learned" in (method, given.get("inner")):
        given["seed"] = int(seed)
    return given


def run_fusion(images, *, method: str, device=None, seed=None, **params):
    """Fuse ``images`` on the first one's grid; yields :class:`Progress`, returns the output ports.

    Each image is resampled onto the reference grid through its world affine and its
    intensities scaled to [0, 1] by its modality (``metadata["modality"]``); then ``method``
    fuses them. Parameters left ``None`` take the method's own default; ``seed`` seeds
    learned fusion (also as colour fusion's inner method).
    """
    from ...core import fuse as core

    images = list(images)
    if len(images) < 2:
        raise ValueError(f"fusion needs at least two images, got {len(images)}")
    reference = images[0]
    rgb = [image.rgb for image in images]
    yield Progress(0, 1, "resampling onto the reference grid")
    prepared = core.resample_to_reference(
        [image.data for image in images],
        [image.affine for image in images],
        rgb=rgb,
        modalities=[image.metadata.get("modality") for image in images],
        device=device,
    )
    given = core_parameters(method, params, seed=seed)
    result = yield from core.fuse_steps(prepared, method=method, rgb=rgb, normalise=False, device=device, **given)
    yield Progress(1, 1, "fused")
    fused = reference.like(result.fused, name=f"fused ({method})", kind="image",
                           rgb=result.fused.ndim == reference.spatial_ndim + 1, metadata={"value_range": (0.0, 1.0)})
    contributions = [reference.like(weights, name=f"contribution: {image.name}", kind="map", rgb=False,
                                    metadata={"value_range": (0.0, 1.0)})
                     for weights, image in zip(result.weights, images)]
    resampled = [Image(data, reference.affine, name=image.name, rgb=flag, units=reference.units)
                 for data, image, flag in zip(prepared, images, rgb)]
    return {"image": fused, "contributions": contributions, "resampled": resampled}


def fusion_operation(name: str, label: str, doc: str, params: tuple = (), *, core: str = "",
                     deterministic: bool = True) -> Operation:
    """A fusion method's entry: :func:`run_fusion` for ``name``, taking exactly ``params`` as keywords.

    ``core`` (``"module:function"``) names the core function whose keyword defaults are these
    parameters' defaults (none for methods without parameters).
    """

    def run(images, *, device=None, seed=None, **values):
        return run_fusion(images, method=name, device=device, seed=seed, **values)

    keyword = inspect.Parameter.KEYWORD_ONLY
    run.__name__ = run.__qualname__ = f"run_{name}"
    run.__signature__ = inspect.Signature(
        [inspect.Parameter("images", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        + [inspect.Parameter(param.name, keyword) for param in params]
        + [inspect.Parameter("device", keyword, default=None), inspect.Parameter("seed", keyword, default=None)]
    )
    return Operation(capability="fuse", name=name, label=label, doc=doc, params=tuple(params), inputs=INPUTS,
                     outputs=OUTPUTS, run=run, deterministic=deterministic, core=core)
