"""Shared filters (core.kernels) against SciPy and scikit-image computed in the same test."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_mmfuse.core import kernels


@pytest.fixture
def image():
    return np.random.default_rng(0).random((17, 23)).astype(np.float64)


@pytest.mark.parametrize("padding, mode", [("replicate", "nearest"), ("reflect", "mirror"), ("symmetric", "reflect")])
def test_gaussian_blur_matches_scipy_for_each_border_rule(image, padding, mode):
    sigma = 1.7
    ours = kernels.gaussian_blur(torch.from_numpy(image), sigma, 2, truncate=3.0, padding=padding).numpy()
    radius = int(np.ceil(3 * sigma))
    reference = ndimage.gaussian_filter(image, sigma, mode=mode, radius=radius)
    np.testing.assert_allclose(ours, reference, atol=1e-12)


def test_box_mean_is_the_window_mean_clipped_to_the_image(image):
    ours = kernels.box_mean(torch.from_numpy(image), 2, 2).numpy()
    i, j = 0, 10  # a window clipped by the top border
    np.testing.assert_allclose(ours[i, j], image[0:3, 8:13].mean())
    np.testing.assert_allclose(ours[8, 8], image[6:11, 6:11].mean())


@pytest.mark.parametrize("shape, radius", [((9, 70, 64), 8), ((2, 5, 66, 64), 3), ((3, 4, 6), 5)])
def test_box_mean_matches_scipy_clipped_window_mean_in_volumes(shape, radius):
    """Every axis, the slice-wise cumulative sum of large planes (here 70 x 64 and 66 x 64), windows
    wider than the axis; against SciPy's window sums divided by the clipped window's size."""
    x = np.random.default_rng(2).random(shape).astype(np.float32)
    n_spatial = len(shape) - 1 if shape[0] == 2 else len(shape)
    size = (1,) * (len(shape) - n_spatial) + (2 * radius + 1,) * n_spatial
    sums = ndimage.uniform_filter(x.astype(np.float64), size, mode="constant")
    counts = ndimage.uniform_filter(np.ones(shape), size, mode="constant")
    tensor = torch.from_numpy(x)
    ours = kernels.box_mean(tensor, radius, n_spatial)
    np.testing.assert_allclose(ours.numpy(), sums / counts, atol=2e-6)
    assert np.array_equal(tensor.numpy(), x)  # the input is left alone
    # the slice-wise cumulative sum gives torch.cumsum's numbers exactly
    for dim in range(tensor.ndim):
        out = torch.empty_like(tensor)
        assert torch.equal(kernels._cumsum(tensor, dim, out=out), torch.cumsum(tensor, dim))


def test_sobel_magnitude_matches_scipy_sobel(image):
    ours = kernels.sobel_magnitude(torch.from_numpy(image), 2).numpy()
    gy = ndimage.sobel(image, axis=0, mode="nearest") / 8
    gx = ndimage.sobel(image, axis=1, mode="nearest") / 8
    np.testing.assert_allclose(ours, np.hypot(gx, gy), atol=1e-12)


def test_gradient_magnitude_of_a_ramp_is_its_slope():
    ramp = torch.arange(10, dtype=torch.float64)[None, :].repeat(5, 1) * 0.5
    magnitude = kernels.gradient_magnitude(ramp, 2)
    np.testing.assert_allclose(magnitude[:, 1:-1].numpy(), 0.5)


@pytest.mark.parametrize("shape", [(12, 1, 7, 2), (3, 16, 15, 14)])
def test_gradient_magnitude_matches_numpy_gradient_with_and_without_autograd(shape):
    """Inside, numpy.gradient's central differences; at the edges half the one-sided difference
    (the edge replicated); axes of length 1 and 2; the differentiable path gives the same numbers."""
    x = np.random.default_rng(3).random(shape)
    spatial = list(range(1, len(shape)))
    parts = []
    for axis in spatial:
        if shape[axis] == 1:
            parts.append(np.zeros(shape))
            continue
        g = np.gradient(x, axis=axis)
        edges = [slice(None)] * len(shape)
        for edge in (0, -1):
            edges[axis] = edge
            g[tuple(edges)] /= 2
        parts.append(g)
    expected = np.sqrt(sum(p**2 for p in parts) + 1e-8)
    tensor = torch.from_numpy(x)
    ours = kernels.gradient_magnitude(tensor, len(spatial), eps=1e-8)
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-12)
    differentiable = kernels.gradient_magnitude(tensor.clone().requires_grad_(), len(spatial), eps=1e-8)
    assert differentiable.requires_grad and torch.equal(differentiable.detach(), ours)


def test_luminance_is_bt601_and_ignores_alpha():
    rgba = np.random.default_rng(1).random((4, 5, 4)).astype(np.float32)
    ours = kernels.luminance(rgba)
    expected = rgba[..., 0] * 0.299 + rgba[..., 1] * 0.587 + rgba[..., 2] * 0.114
    np.testing.assert_allclose(ours, expected, rtol=1e-6)
    with pytest.raises(ValueError, match="3 or 4 channels"):
        kernels.luminance(rgba[..., :2])
