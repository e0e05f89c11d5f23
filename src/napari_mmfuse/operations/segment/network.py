"""Networks: a MONAI UNet (or BasicUNet, UNETR) trained on painted strokes, and applying a saved model.

Training is seeded (the seed sets the initial weights and the patches drawn), so on the
CPU the same inputs, parameters and seed give the same model and labels.
"""

from __future__ import annotations

import numpy as np

from .. import Operation, Param, Port, Progress

IMAGES = Port("images", "images", "one subject's modalities (the model's channels, in order), any grids; "
              "the outputs are on the first one's grid")
LABELS = Port("labels", "labels", "labels (the strokes' class values) on the first image's grid; "
              "0 outside the imaged object; a multi-label (sigmoid) model's: each voxel's smallest region")
PROBABILITIES = Port("probabilities", "map", "class probabilities, shape (classes, *grid), in the model's class order")
UNCERTAINTY = Port("uncertainty", "map", "normalised entropy of the class probabilities (0 certain, 1 uniform)")
MASKS = Port("masks", "map", "multi-label (sigmoid) models only: one 0/1 mask per output channel, "
             "shape (channels, *grid), in the model's order (its class_names)")


def _segmented(model, channels, first, device):
    """Predict with ``model``: the output ports shared by training and applying."""
    from ...core import segment

    labels, probabilities = segment.predict(model, channels, affine=first.affine, device=device)
    multilabel = model.config.activation == "sigmoid"
    outputs = {
        "labels": first.like(labels, kind="labels", name=f"{first.name} segmentation"),
        "probabilities": probabilities,
        "uncertainty": first.like(segment.uncertainty(probabilities, multilabel=multilabel), kind="map",
                                  name=f"{first.name} uncertainty"),
    }
    if multilabel:  # overlapping labels: each channel's own mask (0 outside the imaged object)
        outputs["masks"] = ((probabilities >= 0.5) & (labels != 0)).astype(np.uint8)
    return outputs


def run_train(images, strokes, model=None, *, architecture: str, fusion: str, combine: str, steps: int,
              patch: int | None, learning_rate: float, modality_dropout: float, device=None, seed=None):
    """Train on the strokes (or keep training ``model``), then segment the images with the network."""
    from ...core import segment

    yield Progress(0, steps + 1, "placing the modalities and strokes on the first image's grid")
    channels = segment.subject_channels(images, device=device)
    scribbles = segment.strokes_on_grid(strokes, images[0], device=device)
    options = {"steps": steps, "learning_rate": learning_rate, "seed": 0 if seed is None else seed, "device": device}
    if model is None:
        options |= {"architecture": architecture, "fusion": fusion, "combine": combine,
                    "channel_names": [image.name for image in images], "modality_dropout": modality_dropout}
        if patch is not None:
            options["patch_size"] = [patch] * (channels.ndim - 1)
    else:  # warm start: the network and fusion are the model's; combining is a prediction choice
        model.config.combine = combine
    trained = yield from segment.train_steps(channels, scribbles, model=model, **options)
    yield Progress(steps, steps + 1, "segmenting with the trained network")
    return {"model": trained} | _segmented(trained, channels, images[0], device)


def run_predict(images, model, *, device=None, seed=None):
    """Segment the images with a saved or session model (no training).

    Fewer images than the model's channels: the images are matched to the channels by
    name (:func:`~napari_mmfuse.core.bundle.match_channels`: the same modality, or the
    channel's name) and the others are missing (see
    :func:`~napari_mmfuse.core.segment.train.fill_missing`).
    """
    from ...core import segment
    from ...core.bundle import match_channels
    from ...core.segment.train import fill_missing

    yield Progress(0, 1, "segmenting with the model")
    channels = segment.subject_channels(images, device=device)
    names = model.config.channel_names
    if len(images) < len(names):
        order = match_channels(names, [image.name for image in images])
        unmatched = [image.name for index, image in enumerate(images) if index not in order]
        if unmatched:
            raise ValueError(f"with fewer images than the model's channels ({', '.join(names)}), name each image "
                             f"as its channel; {', '.join(unmatched)} matches none (or several)")
        channels, model = fill_missing(model, [None if index is None else channels[index] for index in order])
    return _segmented(model, channels, images[0], device)


OPERATIONS = (
    Operation(
        capability="segment",
        name="unet",
        label="Network trained on strokes",
        doc="a small network (UNet, BasicUNet or UNETR) trained on painted strokes, then applied to the images",
        params=(
            Param("architecture", str, "unet", "the network trained (unetr: a transformer whose attention "
                  "Explain can show)", choices=("unet", "basicunet", "unetr")),
            Param("fusion", str, "early", "one network on all modalities, or one per modality (decision fusion)",
                  choices=("early", "late")),
            Param("combine", str, "average", "late fusion: weighted average of probabilities or majority vote",
                  choices=("average", "vote")),
            Param("steps", int, 200, "training steps", minimum=1, maximum=1_000_000, label="training steps"),
            Param("patch", int, None, "training patch and window edge in voxels (estimated: 64 in 2D, 48 in 3D, "
                  "at most the image)", minimum=8, maximum=1024, unit="px"),
            Param("learning_rate", float, 2e-3, "Adam step size (1e-2 converges faster on small 2D images)",
                  minimum=0.0, maximum=1.0, open_minimum=True),
            # off by default: on the BraTS case (bench_explain.py --missing, 150 and 300 steps) dropout 0.15-0.3
            # cost 0.23-0.49 Dice with both modalities present; it pays only when modalities will be missing
            Param("modality_dropout", float, 0.0, "early fusion: probability of removing each modality of a "
                  "training patch, so the model still segments a case that lacks one (predict with its layers "
                  "left out, the others named as the model's channels); costs Dice when all are present",
                  minimum=0.0, maximum=0.9, label="modality dropout"),
        ),
        inputs=(IMAGES, Port("strokes", "labels", "painted strokes: 0 = unlabelled, any other value a class"),
                Port("model", "model", "warm start: keep training this model (same channels and classes)",
                     optional=True)),
        outputs=(LABELS, Port("model", "model", "the trained model"), PROBABILITIES, UNCERTAINTY),
        run=run_train,
        deterministic=False,
        core="napari_mmfuse.core.segment:train_steps",
    ),
    Operation(
        capability="segment",
        name="predict",
        label="Apply a model",
        doc="segment with a saved model (state dict + JSON, TorchScript or MONAI bundle) or the session's; a model "
            "trained with modality dropout (or late fusion) also takes fewer images, named as its channels",
        params=(),
        inputs=(IMAGES, Port("model", "model", "the model; its channels are the images, in order")),
        outputs=(LABELS, PROBABILITIES, UNCERTAINTY, MASKS),
        run=run_predict,
    ),
)
