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
CNN_METHODS = tuple(method for method in explain.METHODS if method != "attention")  # attention: transformers


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


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
    model, _ = segment.train(images, scribbles, steps=150, features=(8, 16, 32), patch_size=(32, 32),
                             learning_rate=5e-3, channel_names=["A (lesion)", "B (anatomy)"], device="cpu")
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
    for method in CNN_METHODS:
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
    for method in CNN_METHODS:
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


# ----------------------------------------------------------------------------- attention of transformers


@pytest.fixture(scope="module")
def transformer():
    """A small UNETR (16-pixel tokens: a 4 x 4 token grid) briefly trained on the phantom, and a re-drawn copy."""
    images, lesion, scribbles = two_modality_phantom()
    model, losses = segment.train(images, scribbles, architecture="unetr", features=(8, 32, 64), patch_size=(64, 64),
                                  steps=20, batch_size=2, channel_names=["A (lesion)", "B (anatomy)"], device="cpu")
    assert losses[-1] < losses[0]
    return images, lesion, model, explain.randomized_copy(model, seed=1)


def untrained_unetr(spatial_dims=2, size=64):
    config = segment.ModelConfig(spatial_dims=spatial_dims, in_channels=1, label_values=[0, 1], architecture="unetr",
                                 features=[4, 16, 32], patch_size=[size] * spatial_dims, attention_heads=2)
    torch.manual_seed(0)
    return segment.SegmentationNet(config).eval()


def set_attention(model, attention_of):
    """Replace every block's attention weights, as the model uses them, by ``attention_of(shape)``."""
    handles = []
    for name in explain.attention_blocks(model):
        dropout = model.get_submodule(name).drop_weights
        handles.append(dropout.register_forward_pre_hook(lambda _m, args: (attention_of(args[0].shape),)))
    return handles


def test_unetr_config_trains_saves_and_loads(transformer, tmp_path):
    images, _, model, _ = transformer
    assert model.config.architecture == "unetr" and model.config.fixed_input and model.config.size_divisor == 16
    weights, config = segment.save_model(model, tmp_path / "unetr")
    loaded = segment.load_model(weights)
    assert loaded.config == model.config and '"attention_heads": 4' in config.read_text()
    np.testing.assert_array_equal(segment.predict(loaded, images, device="cpu")[0],
                                  segment.predict(model, images, device="cpu")[0])
    with pytest.raises(ValueError, match="hidden_size divisible"):
        segment.ModelConfig(spatial_dims=2, in_channels=1, label_values=[0, 1], architecture="unetr",
                            features=[8, 30, 64])


def test_attention_maps_are_normalised_distributions(transformer):
    images, lesion, model, _ = transformer
    x = torch.from_numpy(model.normalise(images))[None]
    output, (record,) = explain.record_attention(model, x)
    assert output.shape == (1, 2, 64, 64) and record.grid == (4, 4) and record.patch == (16, 16)
    assert len(record.matrices) == 12 and record.blocks[-1] == "networks.0.vit.blocks.11.attn"
    for matrix in (*record.matrices, explain.attention_rollout(record.matrices)):
        assert matrix.shape == (16, 16) and matrix.min() >= 0
        torch.testing.assert_close(matrix.sum(dim=1), torch.ones(16))
    weights = torch.rand(16)
    assert float(explain.query_attention(record.matrices[-1], weights).sum()) == pytest.approx(1.0)
    for rollout in (False, True):
        for region in (None, lesion):
            result = explain.explain(model, images, method="attention", target=2, region=region, rollout=rollout)
            assert result.map.shape == lesion.shape and result.map.dtype == np.float32
            assert result.map.min() >= 0 and result.map.max() == pytest.approx(1.0)
            assert result.channel_maps is None
            assert result.layer == ("rollout to " if rollout else "") + "networks.0.vit.blocks.11.attn"
            blocks = result.map.reshape(4, 16, 4, 16)
            assert np.all(blocks == blocks[:, :1, :, :1])  # constant over each token's 16 x 16 pixels


def test_rollout_of_identity_and_uniform_attention():
    identity = torch.eye(5)
    torch.testing.assert_close(explain.attention_rollout([identity] * 4), identity)
    uniform = torch.full((5, 5), 0.2)
    torch.testing.assert_close(explain.attention_rollout([uniform]), 0.5 * uniform + 0.5 * identity)
    torch.testing.assert_close(explain.attention_rollout([uniform] * 30), uniform, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="no weight"):
        explain.query_attention(uniform, torch.zeros(5))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_attention_map_peaks_where_the_attention_is_put(spatial_dims):
    """Every query attends to one token: the map is 1 on its voxels only; identity attention stays in the region."""
    size = 64 if spatial_dims == 2 else 32
    model = untrained_unetr(spatial_dims, size)
    images = np.random.default_rng(0).normal(size=(1,) + (size,) * spatial_dims).astype(np.float32)
    grid = size // 16
    chosen = (grid - 1, 0) if spatial_dims == 2 else (1, 0, 1)
    index = int(np.ravel_multi_index(chosen, (grid,) * spatial_dims))

    def onto_chosen(shape):
        attention = torch.zeros(shape)
        attention[..., index] = 1
        return attention

    expected = np.zeros((size,) * spatial_dims, np.float32)
    expected[tuple(slice(16 * c, 16 * c + 16) for c in chosen)] = 1
    region = ((4,) * spatial_dims, (8,) * spatial_dims)  # inside the first token
    handles = set_attention(model, onto_chosen)
    try:
        for rollout in (False, True):
            result = explain.explain(model, images, method="attention", target=1, region=region, rollout=rollout)
            if rollout:  # the first token keeps a share through the skip connections
                assert np.unravel_index(result.map.argmax(), result.map.shape) == tuple(16 * c for c in chosen)
                assert result.map[expected == 1].min() == 1.0
            else:
                np.testing.assert_array_equal(result.map, expected)
    finally:
        for handle in handles:
            handle.remove()
    handles = set_attention(model, lambda shape: torch.eye(shape[-1]).expand(shape))
    first_token = np.zeros_like(expected)
    first_token[(slice(0, 16),) * spatial_dims] = 1
    try:
        for rollout in (False, True):
            result = explain.explain(model, images, method="attention", target=1, region=region, rollout=rollout)
            np.testing.assert_array_equal(result.map, first_token)
    finally:
        for handle in handles:
            handle.remove()


def test_attention_model_randomisation(transformer):
    """Sanity check: the last block's attention of the trained and of a re-initialised model differ.

    Rollout over 12 near-uniform blocks converges towards the same stationary mix for any
    weights, so its correlation is printed, not asserted.
    """
    images, lesion, model, random_model = transformer
    rows = []
    for rollout in (False, True):
        for region in (None, lesion):
            maps = [explain.explain(m, images, method="attention", target=2, region=region, rollout=rollout).map
                    for m in (model, random_model)]
            tokens = [m[::16, ::16].ravel() for m in maps]
            rows.append((rollout, region is None, stats.spearmanr(*tokens)[0]))
    print("\nSpearman trained vs randomised attention (rollout, whole image, rho): " + str(rows))
    assert rows[0][2] < 0.5


def test_attention_errors(setting, transformer):
    images, lesion, cnn, _, _ = setting
    with pytest.raises(ValueError, match="attention maps need a transformer model, e.g. architecture='unetr'"):
        explain.explain(cnn, images, method="attention", target=2, region=lesion)
    images, lesion, model, _ = transformer
    with pytest.raises(ValueError, match="no attention block"):
        explain.explain(model, images, method="attention", target=2, layer="networks.0.encoder1")
    wide = np.concatenate([images, images], axis=2)
    with pytest.raises(ValueError, match="windows of \\[64, 64\\] voxels"):
        explain.explain(model, wide, method="attention", target=2)
    with pytest.raises(ValueError, match="more than the unetr model's window"):
        explain.explain(model, wide, method="attention", target=2, region=((0, 0), (10, 100)))
    region = np.zeros(wide.shape[1:], bool)
    region[30:40, 90:100] = True  # the window is centred on the region, inside the image
    result = explain.explain(model, wide, method="attention", target=2, region=region)
    assert result.map[:, :63].max() == 0 and result.map[:, 63:127].min() > 0 and result.map[:, 127:].max() == 0


def test_cli_writes_an_attention_map(tmp_path):
    """3D: the map written by ``mmfuse explain --method attention`` sits on the input's grid."""
    from napari_mmfuse import cli
    from napari_mmfuse.io import read
    from napari_mmfuse.io.nifti import write_nifti

    model = untrained_unetr(spatial_dims=3, size=32)
    volume = np.random.default_rng(1).normal(size=(20, 32, 28)).astype(np.float32)
    roi = np.zeros(volume.shape, np.uint8)
    roi[8:12, 20:26, 4:10] = 1
    affine = np.diag([2.0, 0.8, 0.8, 1.0])
    affine[:3, 3] = (-30.0, -20.0, 12.0)
    write_nifti(tmp_path / "t1.nii.gz", volume, affine)
    write_nifti(tmp_path / "roi.nii.gz", roi, affine, labels=True)
    segment.save_model(model, tmp_path / "unetr")
    out = tmp_path / "attention.nii.gz"
    argv = ["explain", str(tmp_path / "t1.nii.gz"), "--model", str(tmp_path / "unetr"), "--target", "1",
            "--roi", str(tmp_path / "roi.nii.gz"), "--method", "attention", "--rollout"]
    assert cli.main(argv + ["-o", str(out)]) == 0
    written, = read(out)
    np.testing.assert_allclose(written.affine, read(tmp_path / "t1.nii.gz")[0].affine, atol=1e-5)
    expected = explain.explain(model, volume[None], method="attention", target=1, region=roi > 0, rollout=True).map
    np.testing.assert_allclose(np.asarray(written.data), expected, atol=1e-5)
    assert expected.max() == pytest.approx(1.0) and expected.min() >= 0
    assert cli.main(argv + ["--layer", "nope", "-o", str(tmp_path / "other.nii.gz")]) == 1


def test_explain_widget_attention_overlay(make_napari_viewer, qtbot, monkeypatch, transformer, setting, shots_dir):
    """Click through the Explain widget with the attention method: overlay placement, colormap, blending, legend."""
    from qtpy.QtCore import Qt

    from napari_mmfuse.widgets import explain as explain_widget
    from napari_mmfuse.widgets._layers import world_affine
    from napari_mmfuse.widgets._session import remember_model

    errors = []
    monkeypatch.setattr(explain_widget, "show_error", errors.append)
    images, lesion, model, _ = transformer
    viewer = make_napari_viewer(show=True)  # shown, so that the screenshot renders
    placement = {"scale": (0.8, 0.8), "translate": (12.0, -20.0), "units": ("mm", "mm")}
    first = viewer.add_image(images[0], name="A", colormap="gray", **placement)
    viewer.add_image(images[1], name="B", visible=False, **placement)
    region_layer = viewer.add_labels(lesion.astype(np.int32) * 2, name="lesion", visible=False, **placement)
    region_layer.selected_label = 2
    remember_model(viewer, setting[2], ["A", "B"])  # a CNN first: attention is refused up front
    widget = explain_widget.ExplainWidget(viewer)
    qtbot.addWidget(widget)
    widget.method.setCurrentIndex(widget.method.findData("attention"))
    qtbot.mouseClick(widget.run_button, Qt.LeftButton)
    assert widget.worker is None and errors == [f"Explain: {explain.NO_ATTENTION}"]

    remember_model(viewer, model, ["A", "B"])
    widget.refresh_model()
    assert widget.layer.itemData(widget.layer.count() - 1) == "networks.0.vit.blocks.11.attn"
    assert widget.rollout.isEnabled()
    widget.rollout.setChecked(True)
    assert widget.target.currentData() == min(v for v in model.config.label_values if v)  # first foreground
    widget.target.setCurrentIndex(widget.target.findData(2))
    widget.region.setCurrentIndex(1)
    widget.region_labels.set_layer(region_layer)
    qtbot.mouseClick(widget.run_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)  # cleared when the worker finished
    assert errors == [f"Explain: {explain.NO_ATTENTION}"]
    overlay = viewer.layers["attention rollout class 2"]
    np.testing.assert_allclose(world_affine(overlay), world_affine(first))
    assert overlay.colormap.name == "inferno" and overlay.blending == "additive" and overlay.opacity < 1
    assert overlay.data.shape == lesion.shape and overlay.data.max() == pytest.approx(1.0)
    assert tuple(overlay.contrast_limits) == (0.0, 1.0)
    assert overlay.metadata["mmfuse"]["layer"] == "rollout to networks.0.vit.blocks.11.attn"
    assert widget.legend.count() == 3 and "rollout to networks.0.vit.blocks.11.attn" in widget.legend.item(0).text()
    widget.legend.item(0).setCheckState(Qt.Unchecked)
    assert not overlay.visible
    widget.legend.item(0).setCheckState(Qt.Checked)
    viewer.reset_view()
    viewer.screenshot(str(shots_dir / "explain_attention.png"), canvas_only=True)
    widget.grab().save(str(shots_dir / "explain_attention_panel.png"))
    widget.method.setCurrentIndex(widget.method.findData("gradcam"))
    assert not widget.rollout.isEnabled() and widget.layer.itemData(1) in explain.conv_layers(model)


def test_explain_widget_attention_3d(make_napari_viewer, qtbot, shots_dir):
    """3D: the attention overlay of a (hand-set) volume transformer sits on the input layer's grid."""
    from qtpy.QtCore import Qt

    from napari_mmfuse.widgets._layers import world_affine
    from napari_mmfuse.widgets.explain import ExplainWidget
    from napari_mmfuse.widgets._session import remember_model

    model = untrained_unetr(spatial_dims=3, size=32)
    volume = np.random.default_rng(2).normal(size=(24, 32, 32)).astype(np.float32)
    index = int(np.ravel_multi_index((1, 1, 0), (2, 2, 2)))

    def onto_one_token(shape):
        attention = torch.zeros(shape)
        attention[..., index] = 1
        return attention

    set_attention(model, onto_one_token)
    viewer = make_napari_viewer(show=True)
    first = viewer.add_image(volume, name="T1", colormap="gray", opacity=0.4, scale=(2.0, 0.9, 0.9),
                             translate=(-10.0, 5.0, 0.0))
    remember_model(viewer, model, ["T1"])
    widget = ExplainWidget(viewer)
    qtbot.addWidget(widget)
    widget.method.setCurrentIndex(widget.method.findData("attention"))
    qtbot.mouseClick(widget.run_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)  # cleared when the worker finished
    overlay = viewer.layers["attention class 1"]
    np.testing.assert_allclose(world_affine(overlay), world_affine(first))
    expected = np.zeros(volume.shape, np.float32)
    expected[16:24, 16:32, 0:16] = 1  # the token's voxels that lie inside the 24-slice volume
    np.testing.assert_array_equal(overlay.data, expected)
    viewer.dims.ndisplay = 3
    viewer.reset_view()
    viewer.camera.angles = (-30, 35, 140)
    viewer.screenshot(str(shots_dir / "explain_attention_3d.png"), canvas_only=True)


def test_cli_trains_a_unetr_and_explains_its_attention(tmp_path):
    """``mmfuse segment --architecture unetr`` saves a transformer whose attention ``mmfuse explain`` maps."""
    import json

    from napari_mmfuse import cli
    from napari_mmfuse.io import read
    from napari_mmfuse.io.nifti import write_nifti

    rng = np.random.default_rng(3)
    image = rng.normal(0.0, 0.2, (48, 48)).astype(np.float32)
    image[16:32, 16:32] += 2.0
    scribbles = np.zeros(image.shape, np.uint8)
    scribbles[20:28, 24] = 2
    scribbles[4, 4:44] = 1
    write_nifti(tmp_path / "img.nii.gz", image, np.eye(3))
    write_nifti(tmp_path / "s.nii.gz", scribbles, np.eye(3), labels=True)
    assert cli.main(["segment", str(tmp_path / "img.nii.gz"), "--scribbles", str(tmp_path / "s.nii.gz"),
                     "--architecture", "unetr", "--patch", "32", "--steps", "3", "--device", "cpu",
                     "--save-model", str(tmp_path / "m"), "-o", str(tmp_path / "labels.nii.gz")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["architecture"] == "unetr"
    labels = np.asarray(read(tmp_path / "labels.nii.gz")[0].data)
    assert labels.shape == (1,) + image.shape and set(np.unique(labels)) <= {1, 2}  # NIfTI: one slice
    write_nifti(tmp_path / "roi.nii.gz", (scribbles == 2).astype(np.uint8), np.eye(3), labels=True)
    out = tmp_path / "attention.nii.gz"
    assert cli.main(["explain", str(tmp_path / "img.nii.gz"), "--model", str(tmp_path / "m"), "--target", "2",
                     "--roi", str(tmp_path / "roi.nii.gz"), "--method", "attention", "-o", str(out)]) == 0
    attention = np.asarray(read(out)[0].data)
    assert attention.shape == (1,) + image.shape and attention.min() >= 0 and attention.max() == pytest.approx(1.0)


@pytest.mark.parametrize("method", ["gradcam", "ig"])
def test_cli_output_replays_identically(setting, tmp_path, method):
    """``mmfuse explain`` writes a sidecar; ``mmfuse replay`` recomputes the identical map (deterministic methods)."""
    import json

    from napari_mmfuse import cli
    from napari_mmfuse.io import read, write
    from napari_mmfuse.provenance import sidecar_path

    images, lesion, model, _, _ = setting  # a 2D model: 2D inputs (TIFF; NIfTI would add a slice axis)
    affine = np.diag([0.9, 0.9, 1.0])
    for name, image in zip("ab", images):
        write(tmp_path / f"{name}.tif", image, affine)
    write(tmp_path / "roi.tif", lesion.astype(np.uint8), affine, labels=True)
    segment.save_model(model, tmp_path / "model")
    out = tmp_path / f"{method}.nii.gz"
    assert cli.main(["explain", str(tmp_path / "a.tif"), str(tmp_path / "b.tif"), "--model",
                     str(tmp_path / "model"), "--target", "2", "--roi", str(tmp_path / "roi.tif"),
                     "--method", method, "--steps" if method == "ig" else "--margin", "8",
                     "--device", "cpu", "-o", str(out)]) == 0
    record = json.loads(sidecar_path(out).read_text())
    assert record["operation"] == f"explain/{method}" and record["params"]["target"] == 2
    assert record["outputs"]["map"]["path"] == str(out) and record["inputs"]["model"][0]["kind"] == "model"
    again = tmp_path / "again.nii.gz"
    assert cli.main(["replay", str(sidecar_path(out)), "-o", str(again)]) == 0
    first, second = (np.asarray(read(path)[0].data) for path in (out, again))
    assert first.max() > 0
    np.testing.assert_array_equal(second, first)



def test_one_window_is_the_whole_input(setting):
    """An image that fits one window is explained exactly as by the functions on the whole input."""
    images, lesion, model, _, _ = setting
    small, region = images[:, 16:48, 16:48], lesion[16:48, 16:48]
    x = torch.from_numpy(model.normalise(small))[None]
    cut = torch.from_numpy(region)
    period = explain.stride_period(model)
    assert period == model.config.size_divisor == 4
    for method, expected in [
        ("saliency", explain.destripe(explain.saliency(model, x, class_index=1, region=cut), period)),
        ("ig", explain.destripe(explain.integrated_gradients(model, x, class_index=1, region=cut), period)),
    ]:
        result = explain.explain(model, small, method=method, target=2, region=region, margin=32, device="cpu")
        np.testing.assert_array_equal(result.channel_maps, expected)
    layer = explain.default_layer(model, x)
    cam = explain.explain(model, small, method="gradcam", target=2, region=region, margin=32, device="cpu")
    np.testing.assert_array_equal(cam.map, explain.gradcam(model, x, class_index=1, region=cut, layer=layer))
    occluded = explain.explain(model, small, method="occlusion", target=2, region=region, margin=32, device="cpu")
    np.testing.assert_array_equal(occluded.map, np.clip(explain.occlusion(model, x, class_index=1, region=cut), 0,
                                                        None))
