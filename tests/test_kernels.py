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


def test_sobel_magnitude_matches_scipy_sobel(image):
    ours = kernels.sobel_magnitude(torch.from_numpy(image), 2).numpy()
    gy = ndimage.sobel(image, axis=0, mode="nearest") / 8
    gx = ndimage.sobel(image, axis=1, mode="nearest") / 8
    np.testing.assert_allclose(ours, np.hypot(gx, gy), atol=1e-12)


def test_gradient_magnitude_of_a_ramp_is_its_slope():
    ramp = torch.arange(10, dtype=torch.float64)[None, :].repeat(5, 1) * 0.5
    magnitude = kernels.gradient_magnitude(ramp, 2)
    np.testing.assert_allclose(magnitude[:, 1:-1].numpy(), 0.5)


def test_luminance_is_bt601_and_ignores_alpha():
    rgba = np.random.default_rng(1).random((4, 5, 4)).astype(np.float32)
    ours = kernels.luminance(rgba)
    expected = rgba[..., 0] * 0.299 + rgba[..., 1] * 0.587 + rgba[..., 2] * 0.114
    np.testing.assert_allclose(ours, expected, rtol=1e-6)
    with pytest.raises(ValueError, match="3 or 4 channels"):
        kernels.luminance(rgba[..., :2])
