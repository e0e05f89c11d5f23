"""Noise2Void: a network trained on the noisy image itself (self-supervised), or a saved one applied.

Training (:func:`napari_mmfuse.core.denoise.n2v_train`) is random: the result depends on
the seed, and on the CPU the same seed gives the same result. Each step's loss goes out as
``Progress.values["loss"]``.
"""

from __future__ import annotations

from .. import Image, Operation, Param, Port, Progress, relay
from ..inputs import grey_input


def run_n2v(image: Image, model=None, *, steps: int | None, patch: int | None, device=None, seed=None):
    """Train on ``image`` (or apply ``model``) and denoise it; returns ``{"image", "model"}``."""
    from ...core.denoise import n2v_train

    data, _, restore = grey_input(image, "Noise2Void")
    if model is None:
        training = n2v_train(data, steps=steps, patch=patch, seed=0 if seed is None else seed, device=device)
        model = yield from relay(training, lambda step: Progress(
            step.step, step.total + 1, f"training step {step.step}/{step.total}", values={"loss": step.loss}))
    total = model.config.steps_trained + 1
    yield Progress(total - 1, total, "predicting")
    result = model.predict(data, device=device)
    return {"image": image.like(restore(result), name=f"{image.name} n2v"), "model": model}


OPERATIONS = (
    Operation(
        capability="denoise",
        name="n2v",
        label="Noise2Void (self-supervised)",
        doc="Noise2Void: a UNet trained on the noisy image itself with blind-spot masking (seeded)",
        params=(
            Param("steps", int, None, "training steps; when unset, 400 (2D) or 800 (3D)", minimum=1, maximum=1_000_000,
                  label="training steps"),
            Param("patch", int, None, "training patch edge, a multiple of 4; when unset, 64 (2D) or 32 (3D)", minimum=8,
                  maximum=1024, unit="px"),
        ),
        inputs=(Port("image", "image", "grey 2D or 3D image"),
                Port("model", "model", "a saved Noise2Void model to apply instead of training", optional=True)),
        outputs=(Port("image", "image", "denoised image, float32, on the input's grid"),
                 Port("model", "model", "the trained model (save it to apply it to other images)")),
        run=run_n2v,
        deterministic=False,
        core="napari_mmfuse.core.denoise:n2v_train",
    ),
)
