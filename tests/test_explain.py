"""Explanations: faithfulness on a phantom where only modality A shows the lesion, sanity checks, errors.

Run with ``-s`` to print the faithfulness table (lesion mass and Spearman correlations).
"""

import numpy as np
import pytest
import torch
from scipy import ndimage, stats
from torch import nn

from napari_mmfuse.core import explain, segment

MASS_METHODS = ("saliency", "smoothgrad", "ig", "occlusion")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def two_modality_phantom(size=64, seed=0):
    """A: anatomy + lesion; B: the same anatomy without the lesion (different contrast)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    head = ((yy - 0.5) / 0.44) ** 2 + ((xx - 0.5) / 0.38) ** 2 < 1
    nucleus = ((yy - 0.5) / 0.22) ** 2 + ((xx - 0.4) / 0.16) ** 2 < 1
    lesion = (yy - 0.62) ** 2 + (xx - 0.66) ** 2 < 0.1**2
    a = 0.5 * head + 0.25 * nucleus + 0.8 * lesion + 0.05 * rng.standard_normal((size, size))
    b = 0.7 * head - 0.3 * nucleus + 0.05 * rng.standard_normal((size, size))
    scribbles = np.zeros((size, size), np.int32)
    ys, xs = np.nonzero(ndimage.binary_erosion(lesion, iterations=2))
    scribbles[int(ys.mean()), xs.min() : xs.max() + 1] = 2
    for row in (0.1, 0.3, 0.45, 0.85):
        r = int(row * size)
        scribbles[r][~ndimage.binary_dilation(lesion, iterations=3)[r]] = 1
    return np.stack([a, b]).astype(np.float32), lesion, scribbles


@pytest.fixture(scope="module")
def setting():
    images, lesion, scribbles = two_modality_phantom()
    model, _ = segment.train(images, scribbles, steps=100, features=(8, 16, 32), patch_size=(32, 32),
                             learning_rate=1e-2, channel_names=["A (lesion)", "B (anatomy)"], device="cpu")
    labels, _ = segment.predict(model, images, device="cpu")
    return images, lesion, model, explain.randomized_copy(model, seed=1), labels


def test_model_segments_the_lesion(setting):
    _, lesion, _, _, labels = setting
    predicted = labels == 2
    assert 2 * (predicted & lesion).sum() / (predicted.sum() + lesion.sum()) > 0.7


@pytest.mark.parametrize("method", explain.ATTRIBUTIONS)
def test_attribution_ranks_the_lesion_modality_first(setting, method):
    images, lesion, model, _, _ = setting
    result = explain.modality_attribution(model, images, target=2, region=lesion, method=method, device="cpu")
    print(f"\nattribution {method}: " + ", ".join(f"{n} {s:.3f}" for n, s in zip(result.names, result.scores)))
    assert result.names == ["A (lesion)", "B (anatomy)"]
    assert result.scores.sum() == pytest.approx(1.0)
    assert result.scores[0] > result.scores[1]
    assert result.maps.shape == images.shape and result.maps.dtype == np.float32


def test_saliency_mass_falls_inside_the_lesion(setting):
    images, lesion, model, _, _ = setting
    near = ndimage.binary_dilation(lesion, iterations=3)
    masses = {}
    for method in explain.METHODS:
        result = explain.explain(model, images, method=method, target=2, region=lesion, device="cpu")
        assert result.map.shape == lesion.shape and result.map.dtype == np.float32 and result.map.min() >= 0
        masses[method] = result.map[near].sum() / result.map.sum()
    print("\nmass inside the lesion dilated by 3 px: " + ", ".join(f"{m} {v:.3f}" for m, v in masses.items()))
    for method in MASS_METHODS:
        assert masses[method] > 0.5, method


def test_model_randomisation_changes_the_maps(setting):
    """Sanity check (Adebayo et al. 2018): maps of the trained and of a re-initialised model differ.

    The target is the lesion logit summed over the whole image: with the lesion as the
    region, every gradient map is dominated by the region's receptive-field envelope,
    which does not depend on the weights (those correlations are printed, not asserted).
    """
    images, lesion, model, random_model, _ = setting
    rows = []
    for method in explain.METHODS:
        correlations = []
        for region in (None, lesion):
            trained = explain.explain(model, images, method=method, target=2, region=region, device="cpu").map
            random = explain.explain(random_model, images, method=method, target=2, region=region, device="cpu").map
            correlations.append(stats.spearmanr(trained.ravel(), random.ravel())[0])
        rows.append((method, *correlations))
    print("\nSpearman trained vs randomised maps (target over the whole image / over the lesion):")
    for method, whole, local in rows:
        print(f"  {method:10s} {whole:6.3f} {local:6.3f}")
    for method, whole, _ in rows:
        if method in ("saliency", "smoothgrad", "ig"):
            assert whole < 0.5, method


def test_integrated_gradients_completeness(setting):
    images, lesion, model, _, _ = setting
    x = torch.from_numpy(model.normalise(images))[None]
    region = torch.from_numpy(lesion)
    baseline = x.mean(dim=(2, 3), keepdim=True)
    attribution = explain.integrated_gradients(model, x, class_index=1, region=region, steps=64)
    with torch.no_grad():
        gap = float(explain.target_score(model(x), 1, region) - explain.target_score(model(baseline.expand_as(x)), 1,
                                                                                    region))
    assert attribution.sum() == pytest.approx(gap, rel=0.1)


def test_gradcam_layers_and_box_region(setting):
    images, lesion, model, _, _ = setting
    layers = explain.conv_layers(model)
    assert layers and all(name.startswith("networks.0.") for name in layers)
    box = ((30, 34), (48, 52))
    for method in ("gradcam", "gradcampp"):
        result = explain.explain(model, images, method=method, target=2, region=box, layer=layers[-2], device="cpu")
        assert result.layer == layers[-2] and result.map.shape == lesion.shape and result.map.max() > 0
    default = explain.explain(model, images, method="gradcam", target=2, region=lesion, device="cpu")
    assert default.layer in layers


def test_channel_maps_and_late_fusion():
    images, lesion, scribbles = two_modality_phantom(size=32)
    model, _ = segment.train(images, scribbles, fusion="late", steps=2, features=(4, 8), patch_size=(16, 16),
                             device="cpu")
    result = explain.explain(model, images, method="ig", target=2, region=lesion, steps=8, device="cpu")
    assert result.channel_maps.shape == images.shape
    np.testing.assert_allclose(result.map, np.abs(result.channel_maps).sum(axis=0), rtol=1e-5, atol=1e-7)
    assert explain.explain(model, images, method="occlusion", target=2, device="cpu").map.shape == lesion.shape


def test_classification_model_target():
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 3))
    x = torch.randn(1, 2, 16, 16)
    assert explain.target_score(net(x), 2).shape == (1,)
    cam = explain.gradcam(net, x, class_index=2, layer="0")
    assert cam.shape == (16, 16) and cam.min() >= 0
    assert explain.saliency(net, x, class_index=0, samples=3).shape == (2, 16, 16)
    drops, maps = explain.channel_ablation(net, x, class_index=1)
    assert drops.shape == (2,) and not maps.any()


def test_errors(setting, tmp_path):
    images, lesion, model, _, _ = setting
    with pytest.raises(ValueError, match="not one of the model's classes"):
        explain.explain(model, images, method="saliency", target=9)
    with pytest.raises(ValueError, match="takes 2 channels"):
        explain.explain(model, images[:1], method="saliency", target=2)
    with pytest.raises(ValueError, match="region is empty"):
        explain.explain(model, images, method="saliency", target=2, region=np.zeros_like(lesion))
    with pytest.raises(ValueError, match="unknown method"):
        explain.explain(model, images, method="lime", target=2)
    with pytest.raises(ValueError, match="no layer"):
        explain.explain(model, images, method="gradcam", target=2, layer="nope")
    with pytest.raises(ValueError, match="empty inside"):
        explain.box_region((8, 8), ((5, 5), (5, 9)))
    scripted = torch.jit.trace(model.networks[0].eval(), torch.zeros(1, 2, 32, 32))
    scripted.save(str(tmp_path / "net.pt"))
    config = model.config.to_json()
    (tmp_path / "net.json").write_text(config)
    loaded = segment.load_model(tmp_path / "net.pt")
    with pytest.raises(ValueError, match="TorchScript"):
        explain.explain(loaded, images, method="gradcam", target=2, layer=explain.conv_layers(model)[0])
    assert explain.explain(loaded, images, method="saliency", target=2, region=lesion).map.max() > 0
