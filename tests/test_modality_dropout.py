"""Modality dropout: a model trained with it still segments a case that lacks a modality."""

import numpy as np
import pytest
from scipy import ndimage

from napari_mmfuse import pipeline
from napari_mmfuse.core import segment
from napari_mmfuse.core.segment.train import fill_missing, sample_patches
from napari_mmfuse.operations import Image

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def redundant_phantom(size=64, seed=0):
    """Two modalities that both show the lesion (A: bright lesion and nucleus, B: bright lesion, dark nucleus)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    head = ((yy - 0.5) / 0.44) ** 2 + ((xx - 0.5) / 0.38) ** 2 < 1
    nucleus = ((yy - 0.5) / 0.22) ** 2 + ((xx - 0.4) / 0.16) ** 2 < 1
    lesion = (yy - 0.62) ** 2 + (xx - 0.66) ** 2 < 0.1**2
    a = 0.5 * head + 0.25 * nucleus + 0.6 * lesion + 0.05 * rng.standard_normal((size, size))
    b = 0.7 * head - 0.3 * nucleus + 0.6 * lesion + 0.05 * rng.standard_normal((size, size))
    scribbles = np.zeros((size, size), np.int32)
    scribbles[ndimage.binary_erosion(lesion, iterations=3) & (np.arange(size)[:, None] % 3 == 0)] = 2
    for row in (0.1, 0.3, 0.4, 0.5, 0.85):
        r = int(row * size)
        scribbles[r][~ndimage.binary_dilation(lesion, iterations=3)[r]] = 1
    return np.stack([a, b]).astype(np.float32), lesion, scribbles


def dice(a, b) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


@pytest.fixture(scope="module")
def trained():
    images, lesion, scribbles = redundant_phantom()
    options = {"steps": 300, "features": (8, 16, 32), "patch_size": (32, 32), "learning_rate": 5e-3,
               "channel_names": ["A", "B"], "device": "cpu"}
    plain, _ = segment.train(images, scribbles, **options)
    dropout, _ = segment.train(images, scribbles, modality_dropout=0.3, **options)
    return images, lesion, plain, dropout


def test_dropout_keeps_dice_with_a_modality_removed(trained):
    images, lesion, plain, dropout = trained
    assert dropout.config.modality_dropout == 0.3 and plain.config.modality_dropout == 0.0
    plain.config.modality_dropout = 1e-6  # let the plain model be filled the same way, to measure it
    table = {}
    try:
        for name, model in (("plain", plain), ("dropout", dropout)):
            for missing in (None, 0, 1):
                channels = [None if c == missing else images[c] for c in range(2)]
                x, filled = fill_missing(model, channels)
                labels, _ = segment.predict(filled, x, device="cpu")
                table[name, missing] = dice(labels == 2, lesion)
    finally:
        plain.config.modality_dropout = 0.0
    print("\n" + "\n".join(f"{k}: {v:.3f}" for k, v in table.items()))
    assert table["dropout", None] > table["plain", None] - 0.05  # full inputs: no loss
    for missing in (0, 1):
        assert table["dropout", missing] > 0.6
        assert table["dropout", missing] > table["plain", missing] + 0.3


def test_fill_is_the_training_removal(trained):
    """A missing channel is the training mean: 0 after normalisation, the value dropout gives a removed patch."""
    images, _, _, dropout = trained
    x, _ = fill_missing(dropout, [images[0], None])
    np.testing.assert_allclose(dropout.normalise(x)[1], 0.0, atol=1e-6)
    rng = np.random.default_rng(0)
    normalised = dropout.normalise(images)
    target = np.zeros(images.shape[1:], np.int64)
    patches, _ = sample_patches(normalised, target, [np.argwhere(target == 0)], [16, 16], 64, rng,
                                np.zeros((2, 1, 1), np.float32), intensity=0.0, dropout=0.5)
    removed = np.all(patches == 0, axis=(2, 3))
    assert removed.any() and not removed.all(axis=1).any()  # channels removed, never both


def test_predict_operation_takes_named_subsets(trained):
    images, lesion, plain, dropout = trained
    grid = np.eye(3)
    only_a = [Image(images[0], grid, name="a")]  # names match case-insensitively
    outputs, _ = pipeline.run("segment", "predict", {"images": only_a, "model": dropout}, device="cpu")
    assert dice(outputs["labels"].data == 2, lesion) > 0.6
    with pytest.raises(ValueError, match="trained without modality dropout"):
        pipeline.run("segment", "predict", {"images": only_a, "model": plain}, device="cpu")
    with pytest.raises(ValueError, match="name each image as its channel"):
        pipeline.run("segment", "predict", {"images": [Image(images[0], grid, name="T2")], "model": dropout},
                     device="cpu")


def test_late_fusion_leaves_the_missing_network_out():
    images, _, scribbles = redundant_phantom(size=48)
    model, _ = segment.train(images, scribbles, steps=2, features=(4, 8), patch_size=(48, 48), fusion="late",
                             device="cpu")
    x, subset = fill_missing(model, [None, images[1]])
    assert subset.config.fusion_weights == [0.0, 1.0] and model.config.fusion_weights == [1.0, 1.0]
    assert subset.networks is model.networks
    _, probabilities = segment.predict(subset, x, device="cpu")
    import torch

    with torch.no_grad():
        alone = torch.softmax(model.networks[1](torch.from_numpy(model.normalise(x))[None, 1:]), dim=1)[0]
    np.testing.assert_allclose(probabilities, alone.numpy(), atol=1e-4)
