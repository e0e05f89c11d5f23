"""The trained fusion network: its shipped weights, shapes, determinism, 3D, and the
differentiable metrics it was trained with against the evaluators."""

import pickle
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_mmfuse.core import fuse as fz
from napari_mmfuse.core import quality
from napari_mmfuse.core.fuse import network, objectives
from napari_mmfuse.operations import get

HARVARD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fusion" / "harvard"


def _pair(shape, seed=0):
    rng = np.random.default_rng(seed)
    a = ndimage.gaussian_filter(rng.random(shape), 1.5)
    b = ndimage.gaussian_filter(rng.random(shape), 4.0)
    scale = lambda x: ((x - x.min()) / (x.max() - x.min())).astype(np.float32)  # noqa: E731
    return scale(a), scale(b)


def test_shipped_weights_load_weights_only_and_are_small():
    assert network.WEIGHTS.is_file()
    assert network.WEIGHTS.stat().st_size < 1_000_000
    checkpoint = torch.load(network.WEIGHTS, weights_only=True)
    assert set(checkpoint) >= {"width", "state_dict", "trained"}
    net = network.load()
    assert not net.training
    assert sum(p.numel() for p in net.parameters()) == sum(v.numel() for v in checkpoint["state_dict"].values())


def test_load_refuses_a_pickled_object_and_a_foreign_checkpoint(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    pickled = tmp_path / "object.pt"
    torch.save({"width": 12, "state_dict": Payload()}, pickled)
    with pytest.raises(pickle.UnpicklingError):
        network.load(pickled)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ValueError, match="not a fusion-network checkpoint"):
        network.load(foreign)


@pytest.mark.parametrize("count", [2, 3])
def test_shapes_and_contributions(count):
    images = [_pair((48, 40), seed=s)[s % 2] for s in range(count)]
    result = fz.fuse(images, method="network", normalise=False)
    assert result.fused.shape == (48, 40) and result.weights.shape == (count, 48, 40)
    assert result.fused.dtype == np.float32 and 0 <= result.fused.min() and result.fused.max() <= 1
    np.testing.assert_allclose(result.weights.sum(0), 1, atol=1e-5)
    assert (result.weights >= 0).all()


def test_fused_image_is_the_sum_of_the_inputs_terms_and_contributions_are_their_shares():
    """The contribution maps are exact: the fused image is the sum of one term per input, and
    an input's contribution is its term's share."""
    a, b = _pair((40, 44), seed=2)
    stack = torch.from_numpy(np.stack([a, b]))[None]
    with torch.no_grad():
        fused, terms = network.load()(stack)
    assert terms.shape == (1, 2, 40, 44)
    np.testing.assert_allclose(fused[0, 0], terms.sum(1)[0].clamp(0, 1), atol=1e-6)
    result = fz.fuse([a, b], method="network", normalise=False)
    assert (terms >= 0).all()
    np.testing.assert_allclose(result.weights, (terms[0] / terms[0].sum(0)).numpy(), atol=1e-5)
    np.testing.assert_allclose(result.fused, fused[0, 0], atol=1e-6)


def test_deterministic():
    a, b = _pair((64, 64), seed=3)
    first = fz.fuse([a, b], method="network", normalise=False)
    second = fz.fuse([a, b], method="network", normalise=False)
    np.testing.assert_array_equal(first.fused, second.fused)
    np.testing.assert_array_equal(first.weights, second.weights)


def test_volume_is_fused_plane_by_plane_in_bounded_passes():
    a, b = _pair((19, 36, 30), seed=4)  # more planes than one pass, not a multiple of it
    assert a.shape[0] > network.PLANES_PER_PASS and a.shape[0] % network.PLANES_PER_PASS
    volume = fz.fuse([a, b], method="network", normalise=False, device="cpu")
    assert volume.fused.shape == a.shape and volume.weights.shape == (2, *a.shape)
    for z in (0, 8, 18):
        plane = fz.fuse([a[z], b[z]], method="network", normalise=False, device="cpu")
        np.testing.assert_allclose(volume.fused[z], plane.fused, atol=1e-5)
        np.testing.assert_allclose(volume.weights[:, z], plane.weights, atol=1e-5)


def test_registry_entry_and_colour_inner_method():
    operation = get("fuse", "network")
    assert operation.params == () and operation.deterministic
    assert "network" in get("fuse", "colour").param("inner").choices


def _real_or_synthetic_pairs():
    if HARVARD.is_dir():
        for name, functional in (("MRI_CT", "CT"), ("MRI_PET", "PET")):
            stem = sorted((HARVARD / name / "MRI").glob("*.png"))[0].name
            mri = iio.imread(HARVARD / name / "MRI" / stem)[..., 0].astype(np.float64)
            other = np.asarray(iio.imread(HARVARD / name / functional / stem), dtype=np.float64)[..., :3]
            yield mri, np.round(fz.luminance(other))
    a, b = _pair((160, 150), seed=5)
    yield np.round(a * 255).astype(np.float64), np.round(b * 255).astype(np.float64)


@pytest.mark.parametrize("metric", ["Qabf", "SCD", "SSIM", "VIF"])
def test_differentiable_metrics_equal_the_evaluators(metric):
    evaluators = {"Qabf": quality.fusion_qabf, "SCD": quality.fusion_scd, "SSIM": quality.fusion_ssim,
                  "VIF": quality.fusion_vif}
    for a, b in _real_or_synthetic_pairs():
        fused = np.round(np.clip(0.6 * a + 0.5 * b, 0, 255))
        expected = evaluators[metric](fused, [a, b])
        fused_t = torch.tensor(fused)[None, None].requires_grad_(True)
        value = objectives.OBJECTIVES[metric](fused_t, torch.tensor(np.stack([a, b]))[None])
        assert float(value[0].detach()) == pytest.approx(expected, rel=1e-6, abs=1e-6)
        value.sum().backward()
        assert torch.isfinite(fused_t.grad).all() and fused_t.grad.abs().sum() > 0
