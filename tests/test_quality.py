"""Fusion metrics against hand-computed values and scikit-image."""

import math

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from napari_mmfuse.core import quality as q


def _image(seed=0, shape=(64, 72)):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[: shape[0], : shape[1]]
    smooth = 120 + 80 * np.sin(x / 7) * np.cos(y / 9)
    return np.clip(np.round(smooth + rng.normal(0, 10, shape)), 0, 255)


def test_entropy_of_known_histograms():
    assert q.fusion_entropy(np.zeros((8, 8))) == 0
    half = np.zeros((8, 8))
    half[:, 4:] = 200
    assert q.fusion_entropy(half) == pytest.approx(1.0)
    four = np.repeat(np.array([0, 64, 128, 192]), 16).reshape(8, 8)
    assert q.fusion_entropy(four) == pytest.approx(2.0)
    uniform = np.arange(256).reshape(16, 16)
    assert q.fusion_entropy(uniform) == pytest.approx(8.0)


def test_sd_and_sf_by_hand():
    ramp = np.tile(np.arange(10, dtype=float) * 3, (5, 1))  # columns step by 3, rows equal
    assert q.fusion_sf(ramp) == pytest.approx(3.0)  # RF = 3, CF = 0
    both = ramp + np.arange(5)[:, None] * 4.0
    assert q.fusion_sf(both) == pytest.approx(5.0)  # sqrt(3^2 + 4^2)
    assert q.fusion_sd(np.array([[0.0, 2.0], [0.0, 2.0]])) == pytest.approx(1.0)


def test_mutual_information_identical_is_entropy_and_independent_is_zero():
    a = _image()
    assert q.mutual_information(a, a) == pytest.approx(q.fusion_entropy(a))
    assert q.mutual_information(a, a, base=math.e) == pytest.approx(q.fusion_entropy(a) * math.log(2))
    checker = (np.indices((16, 16)).sum(0) % 2) * 255.0
    stripes = np.tile(np.repeat([0.0, 255.0], 2), (16, 4))  # independent of the checkerboard
    assert q.mutual_information(checker, stripes) == pytest.approx(0.0, abs=1e-12)
    assert q.fusion_mi(a, [a, a]) == pytest.approx(2 * q.fusion_entropy(a))


@pytest.mark.parametrize("gaussian", [False, True])
@pytest.mark.parametrize("dimensions", [2, 3])
def test_ssim_matches_skimage_in_2d_and_3d(gaussian, dimensions):
    a = _image(1) if dimensions == 2 else _volume(1)
    b = np.clip(a + np.random.default_rng(2).normal(0, 25, a.shape), 0, 255)
    expected = structural_similarity(a, b, data_range=255, gaussian_weights=gaussian)
    assert q.ssim(a, b, gaussian=gaussian) == pytest.approx(expected, rel=1e-9)
    assert q.ssim(a, a) == pytest.approx(1.0)
    assert q.fusion_ssim(a, [a, b]) == pytest.approx(1.0 + structural_similarity(a, b, data_range=255))


def test_qabf_identity_and_loss_of_edges():
    a = _image(3)
    c = q.QABF_CONSTANTS
    best = c["gamma_g"] / (1 + math.exp(c["kappa_g"] * (1 - c["sigma_g"]))) * (
        c["gamma_a"] / (1 + math.exp(c["kappa_a"] * (1 - c["sigma_a"])))
    )
    assert best == pytest.approx(0.9748, abs=1e-4)
    assert q.fusion_qabf(a, [a]) == pytest.approx(best)
    assert q.fusion_qabf(a, [a, a]) == pytest.approx(best)
    flat = np.full_like(a, a.mean())  # keeps only the zero-padding border edges
    blurred = (a + np.roll(a, 1, 0) + np.roll(a, 1, 1) + np.roll(a, 1, (0, 1))) / 4
    assert q.fusion_qabf(flat, [a]) < 0.25 < q.fusion_qabf(blurred, [a]) < best


def test_qabf_edge_by_hand():
    step = np.zeros((9, 9))
    step[:, 5:] = 100.0
    half = step / 2  # same orientation, half the edge strength everywhere it has an edge
    c = q.QABF_CONSTANTS
    q_g = c["gamma_g"] / (1 + math.exp(c["kappa_g"] * (0.5 - c["sigma_g"])))
    q_a = c["gamma_a"] / (1 + math.exp(c["kappa_a"] * (1 - c["sigma_a"])))
    assert q.fusion_qabf(half, [step]) == pytest.approx(q_g * q_a, rel=1e-9)


def test_scd_by_hand():
    a, b = _image(4), _image(5)[:, ::-1]
    assert q.fusion_scd(a + b, [a, b]) == pytest.approx(2.0)
    # F = a: corr(F - b, a) + corr(F - a, b), the second term of a zero image counts 0
    assert q.fusion_scd(a, [a, b]) == pytest.approx(np.corrcoef((a - b).ravel(), a.ravel())[0, 1], abs=1e-9)


def test_vif_identity_and_noise():
    a = _image(6, (160, 160))
    assert q.vif_pixel(a, a) == pytest.approx(1.0, abs=1e-9)
    noisy = a + np.random.default_rng(7).normal(0, 20, a.shape)
    assert 0 < q.vif_pixel(a, noisy) < 1
    assert q.fusion_vif(a, [a, a]) == pytest.approx(2.0, abs=1e-9)
    with pytest.raises(ValueError, match="too small"):
        q.vif_pixel(a[:40, :40], a[:40, :40])


def test_fusion_metrics_keys_and_errors():
    a, b = _image(8, (140, 140)), _image(9, (140, 140))
    metrics = q.fusion_metrics((a + b) / 2, [a, b])
    assert set(metrics) == {"EN", "SD", "SF", "MI", "Qabf", "SSIM", "SCD", "VIF"}
    assert all(np.isfinite(v) for v in metrics.values())
    with pytest.raises(ValueError, match="colour image"):
        q.fusion_metrics(np.zeros((40, 40, 3)), [a])
    with pytest.raises(ValueError, match="2D grey image or a 3D volume"):
        q.fusion_metrics(np.zeros((2, 8, 8, 8)), [a])
    with pytest.raises(ValueError, match="shape"):
        q.fusion_metrics(a, [b[:-1]])
    with pytest.raises(ValueError, match="NaN"):
        q.fusion_sd(np.full((4, 4), np.nan))


def _volume(seed=0, shape=(12, 40, 44)):
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
    smooth = 120 + 60 * np.sin(x / 6) * np.cos(y / 8) + 40 * np.cos(z / 3)
    return np.clip(np.round(smooth + rng.normal(0, 10, shape)), 0, 255)


def test_ssim_of_volumes_refuses_fewer_planes_than_the_window():
    a = _volume(1)
    with pytest.raises(ValueError, match="smaller than the SSIM window"):
        q.ssim(a[:5], a[:5])


def test_volume_sf_en_mi_scd_by_hand():
    z, y, x = np.mgrid[:6, :7, :8].astype(float)
    assert q.fusion_sf(2 * z + 3 * y + 6 * x) == pytest.approx(7.0)  # sqrt(2^2 + 3^2 + 6^2)
    halves = np.zeros((4, 8, 8))
    halves[2:] = 200
    assert q.fusion_entropy(halves) == pytest.approx(1.0)
    a, b = _volume(3), _volume(4)[:, ::-1]
    assert q.mutual_information(a, a) == pytest.approx(q.fusion_entropy(a))
    assert q.fusion_scd(a + b, [a, b]) == pytest.approx(2.0)


def test_qabf_and_vif_of_a_volume_pool_its_planes():
    from scipy import ndimage

    step = np.zeros((40, 40))
    step[:, 25:] = 100.0
    texture = _image(5, (40, 40))
    source = np.stack([step, texture])
    fused = np.stack([step / 2, texture])  # plane 0 keeps half its edge strength, plane 1 all of it
    c = q.QABF_CONSTANTS
    q_g = c["gamma_g"] / (1 + math.exp(c["kappa_g"] * (0.5 - c["sigma_g"])))
    q_a = c["gamma_a"] / (1 + math.exp(c["kappa_a"] * (1 - c["sigma_a"])))
    best = c["gamma_g"] / (1 + math.exp(c["kappa_g"] * (1 - c["sigma_g"]))) * q_a

    def strength(plane):  # edge strength summed over a plane, with scipy's Sobel (zero padding)
        return np.hypot(ndimage.sobel(plane, 0, mode="constant"), ndimage.sobel(plane, 1, mode="constant")).sum()

    expected = (q_g * q_a * strength(step) + best * strength(texture)) / (strength(step) + strength(texture))
    assert q.fusion_qabf(fused, [source]) == pytest.approx(expected, rel=1e-9)
    assert q.fusion_qabf(fused[:1], [source[:1]]) == pytest.approx(q_g * q_a, rel=1e-9)

    big = _image(6, (160, 160))
    noisy = big + np.random.default_rng(7).normal(0, 20, big.shape)
    assert q.vif_pixel(np.stack([big, big, big]), np.stack([noisy] * 3)) == pytest.approx(q.vif_pixel(big, noisy))
    mixed = q.vif_pixel(np.stack([big, big]), np.stack([big, noisy]))
    assert q.vif_pixel(big, noisy) < mixed < 1.0


def test_fusion_metrics_of_a_volume():
    a, b = _volume(8), _volume(9)[:, :, ::-1]
    metrics = q.fusion_metrics(np.maximum(a, b), [a, b], vif=False)
    assert set(metrics) == {"EN", "SD", "SF", "MI", "Qabf", "SSIM", "SCD"}
    assert all(np.isfinite(v) for v in metrics.values())
    assert q.fusion_metrics(a, [a, a], vif=False)["SSIM"] == pytest.approx(2.0)
