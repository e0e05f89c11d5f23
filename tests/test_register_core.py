"""core.register against known transforms on small synthetic multimodal volumes."""

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial.transform import Rotation

from napari_mmfuse.core import space
from napari_mmfuse.core.register import (
    RegResult,
    RegStep,
    apply_transform,
    fit_landmarks,
    local_similarity_map,
    metric_value,
    parameters_from_transform,
    register,
    register_steps,
    run_to_end,
    to_luminance,
    transform_from_parameters,
)

FIXED_TABLE = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
MOVING_TABLE = np.array([0.5, 3.0, 1.0, 4.0, 2.0])  # non-monotonic: MSE cannot align these


@pytest.fixture(autouse=True)
def one_thread():
    """The CI machine is shared: one torch thread is faster than two contending ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _content(ndim, *, body_radius=22.0, seed=0):
    """Tissue classes 0..4 on a fine grid (0.75 mm) over 90 mm, with its affine.

    Outside an ellipsoid with semi-axes (1, 0.8, 0.65) * ``body_radius`` is background.
    """
    rng = np.random.default_rng(seed)
    shape = (120,) * ndim
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), 4)
    classes = np.digitize(noise / noise.std(), [-0.6, 0.0, 0.6]) + 1
    affine = np.diag([0.75] * ndim + [1.0])
    affine[:ndim, ndim] = -0.75 * (np.asarray(shape) - 1) / 2
    if body_radius is not None:
        semi_axes = np.array([1.0, 0.8, 0.65][:ndim]) * body_radius
        radius = np.linalg.norm(space.voxel_to_world(affine, np.indices(shape).reshape(ndim, -1).T) / semi_axes, axis=1)
        classes.reshape(-1)[radius > 1.0] = 0
    return classes, affine


def _grid(shape, spacing, angles=None):
    """Affine of a grid centred on the world origin, optionally oblique."""
    ndim = len(shape)
    direction = np.eye(ndim) if angles is None else Rotation.from_euler("xyz", angles, degrees=True).as_matrix()[:ndim, :ndim]
    affine = np.eye(ndim + 1)
    affine[:ndim, :ndim] = direction @ np.diag(spacing)
    affine[:ndim, ndim] = -affine[:ndim, :ndim] @ ((np.asarray(shape) - 1) / 2)
    return affine


def _pair(truth, *, shape=(40, 40, 40), spacing=(1.3, 1.2, 1.1), noise=0.05, body_radius=22.0):
    """Fixed and multimodal moving image with ``moving(T(p)) == fixed(p)``.

    The moving grid is the fixed-like grid carried by ``T`` (so it is oblique) with a
    different spacing.
    """
    ndim = len(shape)
    classes, content_affine = _content(ndim, body_radius=body_radius)
    fixed_affine = _grid(shape, spacing)
    moving_affine = truth @ _grid(shape, spacing[::-1], angles=(5, -4, 3))
    fixed = space.resample(FIXED_TABLE[classes].astype(np.float32), content_affine, shape, fixed_affine)
    moving = space.resample(MOVING_TABLE[classes].astype(np.float32), truth @ content_affine, shape, moving_affine)
    rng = np.random.default_rng(1)
    fixed += noise * rng.standard_normal(shape).astype(np.float32)
    moving += noise * rng.standard_normal(shape).astype(np.float32)
    return fixed, fixed_affine, moving, moving_affine


def _mean_error_voxels(estimate, truth, shape, affine):
    ndim = len(shape)
    points = space.voxel_to_world(affine, np.indices(shape).reshape(ndim, -1).T)
    difference = estimate - truth
    error = np.linalg.norm(points @ difference[:ndim, :ndim].T + difference[:ndim, ndim], axis=1)
    return float(error.mean() / space.spacing_of(affine).mean())


def _rigid_truth(ndim):
    """15 degrees about an oblique axis (3D) or in-plane (2D), 20 mm translation."""
    if ndim == 2:
        return transform_from_parameters(ndim=2, rotation_deg=15.0, translation=(12.0, -16.0))
    axis = np.array([1.0, -2.0, 1.5]) / np.linalg.norm([1.0, -2.0, 1.5])
    truth = np.eye(4)
    truth[:3, :3] = Rotation.from_rotvec(np.deg2rad(15.0) * axis).as_matrix()
    truth[:3, 3] = np.array([12.0, -11.0, 12.0]) * 20.0 / np.linalg.norm([12.0, -11.0, 12.0])
    return truth


def test_rigid_mi_recovers_multimodal_3d_where_mse_fails():
    truth = _rigid_truth(3)
    fixed, fixed_affine, moving, moving_affine = _pair(truth)
    steps = register_steps(fixed, fixed_affine, moving, moving_affine, model="rigid", metric="mi", device="cpu")
    ticks = []
    while True:
        try:
            ticks.append(next(steps))
        except StopIteration as stop:
            result = stop.value
            break
    assert isinstance(result, RegResult) and result.model == "rigid" and result.metric == "mi"
    assert all(isinstance(t, RegStep) for t in ticks) and {t.level for t in ticks} == {0, 1, 2}
    assert _mean_error_voxels(result.transform, truth, fixed.shape, fixed_affine) < 0.5
    assert result.metric_after > result.metric_before + 0.3
    assert np.allclose(result.transform[:3, :3] @ result.transform[:3, :3].T, np.eye(3), atol=1e-6)

    mse = register(fixed, fixed_affine, moving, moving_affine, model="rigid", metric="mse", iterations=40, device="cpu")
    assert _mean_error_voxels(mse.transform, truth, fixed.shape, fixed_affine) > 0.5


@pytest.mark.parametrize("metric", ["nmi", "lncc"])
def test_rigid_other_multimodal_metrics(metric):
    truth = transform_from_parameters(ndim=2, rotation_deg=12.0, translation=(8.0, -9.0))
    fixed, fixed_affine, moving, moving_affine = _pair(truth, shape=(80, 80), spacing=(0.7, 0.65))
    result = register(fixed, fixed_affine, moving, moving_affine, model="rigid", metric=metric, device="cpu")
    assert _mean_error_voxels(result.transform, truth, fixed.shape, fixed_affine) < 0.5
    assert result.metric_after > result.metric_before


def test_affine_mi_recovers_scale_and_shear():
    """15 degrees and 20 mm off, plus anisotropic scaling and shear."""
    axis = np.array([1.0, -2.0, 1.5]) / np.linalg.norm([1.0, -2.0, 1.5])
    linear = Rotation.from_rotvec(np.deg2rad(15.0) * axis).as_matrix() @ np.array(
        [[1.08, 0.05, 0.0], [0.0, 0.95, 0.0], [0.0, 0.0, 1.03]]
    )
    truth = np.eye(4)
    truth[:3, :3] = linear
    truth[:3, 3] = np.array([12.0, -11.0, 12.0]) * 20.0 / np.linalg.norm([12.0, -11.0, 12.0])
    fixed, fixed_affine, moving, moving_affine = _pair(truth)
    result = register(fixed, fixed_affine, moving, moving_affine, model="affine", metric="mi", device="cpu")
    assert _mean_error_voxels(result.transform, truth, fixed.shape, fixed_affine) < 0.5


@pytest.mark.parametrize("model", ["rigid", "similarity"])
def test_2d_recovery(model):
    truth = _rigid_truth(2)
    if model == "similarity":
        truth = truth @ transform_from_parameters(ndim=2, scale=1.1)
    fixed, fixed_affine, moving, moving_affine = _pair(truth, shape=(96, 96), spacing=(0.6, 0.55))
    result = register(fixed, fixed_affine, moving, moving_affine, model=model, metric="mi", device="cpu")
    assert _mean_error_voxels(result.transform, truth, fixed.shape, fixed_affine) < 0.5


def test_deformable_recovers_smooth_field():
    shape = (40, 40, 40)
    classes, content_affine = _content(3, body_radius=None, seed=3)
    affine = _grid(shape, (1.0, 1.0, 1.0))
    points = space.voxel_to_world(affine, np.indices(shape).reshape(3, -1).T).reshape(shape + (3,))
    rng = np.random.default_rng(5)
    truth = np.zeros(shape + (3,), np.float32)
    for _ in range(4):
        centre, vector = rng.uniform(-8, 8, 3), rng.uniform(-3.5, 3.5, 3)
        truth += (np.exp(-((points - centre) ** 2).sum(-1) / (2 * 9.0**2))[..., None] * vector).astype(np.float32)
    moving = space.resample(MOVING_TABLE[classes].astype(np.float32), content_affine, shape, affine)
    on_fixed_grid = space.resample(FIXED_TABLE[classes].astype(np.float32), content_affine, shape, affine)
    fixed = apply_transform(on_fixed_grid, affine, np.eye(4), shape, affine, displacement=truth)
    result = register(
        fixed, affine, moving, affine, model="deformable", metric="mi", init=np.eye(4), levels=2, iterations=80, device="cpu"
    )
    magnitude = np.linalg.norm(truth, axis=-1)
    error = np.linalg.norm(result.displacement - truth, axis=-1)
    assert result.displacement.shape == shape + (3,) and result.jacobian_det.shape == shape
    assert error.mean() < 1.0 and error.mean() < 0.5 * magnitude.mean()
    assert result.folding_fraction < 0.001
    assert result.metric_after > result.metric_before
    assert np.allclose(result.transform, np.eye(4))


def test_deformable_runs_affine_first():
    truth = transform_from_parameters(ndim=2, rotation_deg=8.0, translation=(4.0, -5.0))
    fixed, fixed_affine, moving, moving_affine = _pair(truth, shape=(64, 64), spacing=(0.8, 0.8))
    result = register(fixed, fixed_affine, moving, moving_affine, model="deformable", iterations=50, device="cpu")
    assert _mean_error_voxels(result.transform, truth, fixed.shape, fixed_affine) < 1.0
    assert result.folding_fraction < 0.001
    total = np.linalg.norm(result.displacement, axis=-1)
    assert total.mean() < 1.0  # the linear stage did the bulk of the work


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("model", ["rigid", "similarity", "affine"])
def test_landmarks_exact(ndim, model):
    rng = np.random.default_rng(ndim)
    fixed = rng.uniform(-50, 50, size=(7, ndim))
    if model == "affine":
        truth = np.eye(ndim + 1)
        truth[:ndim, :] = np.hstack([np.eye(ndim) + rng.uniform(-0.2, 0.2, (ndim, ndim)), rng.uniform(-9, 9, (ndim, 1))])
    else:
        truth = transform_from_parameters(
            ndim=ndim,
            rotation_deg=(20.0 if ndim == 2 else (20.0, -30.0, 45.0)),
            translation=rng.uniform(-9, 9, ndim),
            scale=1.3 if model == "similarity" else 1.0,
            center=rng.uniform(-5, 5, ndim),
        )
    moving = fixed @ truth[:ndim, :ndim].T + truth[:ndim, ndim]
    estimate, residuals = fit_landmarks(fixed, moving, model=model)
    np.testing.assert_allclose(estimate, truth, atol=1e-9)
    assert residuals.shape == (7,) and residuals.max() < 1e-9


def test_landmarks_minimal_and_bad():
    rotation = transform_from_parameters(ndim=2, rotation_deg=30.0, translation=(1.0, 2.0))
    two = np.array([[0.0, 0.0], [10.0, 5.0]])
    estimate, _ = fit_landmarks(two, two @ rotation[:2, :2].T + rotation[:2, 2], model="rigid")
    np.testing.assert_allclose(estimate, rotation, atol=1e-9)
    with pytest.raises(ValueError, match="at least 3"):
        fit_landmarks(np.zeros((2, 3)), np.zeros((2, 3)), model="rigid")
    with pytest.raises(ValueError, match="at least 4"):
        fit_landmarks(np.zeros((3, 3)), np.zeros((3, 3)), model="affine")
    line = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [5.0, 5.0, 5.0]])
    with pytest.raises(ValueError, match="collinear"):
        fit_landmarks(line, line + 1.0, model="rigid")
    plane = np.array([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match="coplanar"):
        fit_landmarks(plane, plane, model="affine")
    with pytest.raises(ValueError, match="same shape"):
        fit_landmarks(np.zeros((4, 3)), np.zeros((4, 2)))


@pytest.mark.parametrize("ndim", [2, 3])
def test_parameters_round_trip(ndim):
    rotation = 17.0 if ndim == 2 else [12.0, -25.0, 33.0]
    center = np.arange(ndim) * 3.0 + 1.0
    transform = transform_from_parameters(ndim=ndim, translation=np.arange(ndim) + 0.5, rotation_deg=rotation, scale=1.2, center=center)
    params = parameters_from_transform(transform, center=center)
    np.testing.assert_allclose(params["rotation_deg"], rotation, atol=1e-9)
    np.testing.assert_allclose(params["translation"], np.arange(ndim) + 0.5, atol=1e-9)
    np.testing.assert_allclose(params["scale"], [1.2] * ndim, atol=1e-12)
    assert params["shear"] < 1e-12
    again = transform_from_parameters(ndim=ndim, **{k: params[k] for k in ("translation", "rotation_deg", "scale", "center")})
    np.testing.assert_allclose(again, transform, atol=1e-12)
    # the centre is a fixed point of a pure rotation about it
    pure = transform_from_parameters(ndim=ndim, rotation_deg=rotation, center=center)
    np.testing.assert_allclose(pure[:ndim, :ndim] @ center + pure[:ndim, ndim], center, atol=1e-12)


def test_2d_rotation_sign():
    """2D angle turns +y towards +x: (y, x) = (1, 0) goes to (cos, sin)."""
    transform = transform_from_parameters(ndim=2, rotation_deg=90.0)
    np.testing.assert_allclose(transform[:2, :2] @ [1.0, 0.0], [0.0, 1.0], atol=1e-12)


def test_identical_inputs_return_identity_with_note():
    fixed, affine, _, _ = _pair(np.eye(4), shape=(16, 16, 16))
    steps = register_steps(fixed, affine, fixed.copy(), affine.copy(), model="deformable", device="cpu")
    result = run_to_end(steps)
    np.testing.assert_array_equal(result.transform, np.eye(4))
    assert "identical" in result.notes[0]
    assert result.metric_before == result.metric_after and result.folding_fraction == 0.0


def test_bad_inputs_raise_clear_errors():
    image = np.random.default_rng(0).random((16, 16, 16)).astype(np.float32)
    eye = np.eye(4)
    with pytest.raises(ValueError, match="constant"):
        register(image, eye, np.ones_like(image), eye, device="cpu")
    with pytest.raises(ValueError, match="empty"):
        register(image, eye, np.zeros((0, 16, 16), np.float32), eye, device="cpu")
    nan = image.copy()
    nan[3, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        register(image, eye, nan, eye, device="cpu")
    with pytest.raises(ValueError, match="3D and the moving image 2D"):
        register(image, eye, image[0], np.eye(3), device="cpu")
    far = eye.copy()
    far[:3, 3] = 1000.0
    with pytest.raises(ValueError, match="do not overlap"):
        register(image, eye, image * 2, far, device="cpu")
    with pytest.raises(ValueError, match="model must be"):
        register(image, eye, image * 2, eye, model="bspline", device="cpu")
    with pytest.raises(ValueError, match="metric must be"):
        register(image, eye, image * 2, eye, metric="cc", device="cpu")
    with pytest.raises(ValueError, match="mask"):
        register(image, eye, image * 2, eye, fixed_mask=np.zeros_like(image, bool), device="cpu")
    with pytest.raises(ValueError, match="luminance"):
        register(image[0], np.eye(3), np.zeros((16, 16, 3)), np.eye(3), device="cpu")


def test_masks_restrict_the_metric():
    truth = transform_from_parameters(ndim=2, rotation_deg=5.0, translation=(3.0, -2.0))
    fixed, fixed_affine, moving, moving_affine = _pair(truth, shape=(64, 64), spacing=(0.8, 0.8))
    mask = np.zeros(fixed.shape, bool)
    mask[8:56, 8:56] = True
    result = register(fixed, fixed_affine, moving, moving_affine, fixed_mask=mask, moving_mask=np.ones(moving.shape, bool), device="cpu")
    assert _mean_error_voxels(result.transform, truth, fixed.shape, fixed_affine) < 0.5


def test_metric_value_and_similarity_map_prefer_alignment():
    truth = _rigid_truth(2)
    fixed, fixed_affine, moving, moving_affine = _pair(truth, shape=(64, 64), spacing=(0.8, 0.8))
    wrong = truth @ transform_from_parameters(ndim=2, translation=(3.0, 2.0))
    for metric in ("mi", "nmi", "lncc"):
        good = metric_value(fixed, fixed_affine, moving, moving_affine, metric=metric, transform=truth, device="cpu")
        bad = metric_value(fixed, fixed_affine, moving, moving_affine, metric=metric, transform=wrong, device="cpu")
        assert good > bad, metric
    good_map = local_similarity_map(fixed, fixed_affine, moving, moving_affine, transform=truth, device="cpu")
    bad_map = local_similarity_map(fixed, fixed_affine, moving, moving_affine, transform=wrong, device="cpu")
    assert good_map.shape == fixed.shape and good_map.dtype == np.float32
    assert 0.0 <= good_map.min() and good_map.max() <= 1.0
    assert good_map.mean() > bad_map.mean() + 0.1


def test_apply_transform_matches_layer_placement_and_displacement():
    truth = _rigid_truth(3)
    fixed, fixed_affine, moving, moving_affine = _pair(truth, shape=(24, 24, 24), spacing=(2.0, 2.0, 2.0), noise=0.0)
    out = apply_transform(moving, moving_affine, truth, fixed.shape, fixed_affine, device="cpu")
    # placing the moving layer at inv(T) @ affine is the same resampling
    placed = space.resample(moving, np.linalg.inv(truth) @ moving_affine, fixed.shape, fixed_affine)
    np.testing.assert_allclose(out, placed, atol=1e-5)
    zero = np.zeros(fixed.shape + (3,), np.float32)
    with_field = apply_transform(moving, moving_affine, truth, fixed.shape, fixed_affine, displacement=zero, device="cpu")
    np.testing.assert_allclose(with_field, out, atol=1e-4)
    # a uniform displacement d equals composing T with a translation by d
    shift = np.full(fixed.shape + (3,), (1.5, -2.0, 0.5), np.float32)
    translation = transform_from_parameters(ndim=3, translation=(1.5, -2.0, 0.5))
    shifted = apply_transform(moving, moving_affine, truth, fixed.shape, fixed_affine, displacement=shift, device="cpu")
    composed = apply_transform(moving, moving_affine, truth @ translation, fixed.shape, fixed_affine, device="cpu")
    np.testing.assert_allclose(shifted, composed, atol=1e-4)
    labels = (moving > 1.5).astype(np.uint8)
    nearest = apply_transform(labels, moving_affine, truth, fixed.shape, fixed_affine, interpolation="nearest", displacement=shift)
    assert nearest.dtype == np.uint8 and set(np.unique(nearest)) <= {0, 1}


def test_to_luminance():
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 1] = 200
    np.testing.assert_allclose(to_luminance(rgb), 0.587 * 200, rtol=1e-6)
    with pytest.raises(ValueError, match="3 or 4 channels"):
        to_luminance(np.zeros((4, 5, 2)))


def test_rigid_mi_on_the_phantom_is_accurate_to_a_few_hundredths_of_a_voxel():
    """The averaged refinement removes most of the error of a fixed point sample (0.04 voxel)."""
    from napari_mmfuse.sample_data import misaligned_phantom

    fixed, moving = misaligned_phantom("rigid")[:2]
    truth = np.asarray(moving.metadata["ground_truth"]["fixed_to_moving"])
    result = register(np.asarray(fixed.data), fixed.affine, np.asarray(moving.data), moving.affine, model="rigid", metric="mi", device="cpu")
    assert _mean_error_voxels(result.transform, truth, fixed.data.shape, fixed.affine) < 0.03


@pytest.mark.parametrize("shape", [(7, 9, 11), (1, 9, 11), (6, 8), (9, 1, 4)])
def test_interpolate_matches_grid_sample_and_its_gradient(shape):
    """The optimisers' corner-gather interpolation against torch's grid_sample (border padding), in and outside."""
    from napari_mmfuse.core.register.pyramid import interpolate, sample

    generator = torch.Generator().manual_seed(1)
    image = torch.rand(shape, generator=generator)
    coords = (torch.rand(500, len(shape), generator=generator) * 2.6 - 1.3).requires_grad_(True)
    weights = torch.arange(500, dtype=torch.float32)
    reference = sample(image, coords)
    (expected,) = torch.autograd.grad((reference * weights).sum(), coords)
    ours = interpolate(image, coords)
    (gradient,) = torch.autograd.grad((ours * weights).sum(), coords)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=0)
    torch.testing.assert_close(gradient, expected, atol=1e-4 * float(expected.abs().max()), rtol=0)


def test_joint_histogram_gradient_and_dense_reference():
    """The index_add Parzen histogram equals the dense (N, bins) product, and its written-out gradient checks."""
    from napari_mmfuse.core.register.metrics import JointHistogram, fixed_window, histogram_similarity

    rng = np.random.default_rng(0)
    fixed = torch.from_numpy(rng.random(400))
    moving = torch.from_numpy(rng.random(400) * 1.2 - 0.1).requires_grad_(True)  # some outside the range
    weight = torch.from_numpy((rng.random(400) > 0.1).astype(np.float64))
    bins = 16
    first, window = fixed_window(fixed, 0.0, 1.0, bins)
    joint = JointHistogram.apply(moving, weight, first, window, 0.0, 1.0, bins)

    def dense(values):
        f, w = fixed_window(values, 0.0, 1.0, bins)  # the same cubic window, spread over all bins
        return torch.zeros((values.numel(), bins), dtype=w.dtype).scatter(1, f[:, None] + torch.arange(4), w)

    expected = (dense(fixed) * weight[:, None]).T @ dense(moving.detach())
    torch.testing.assert_close(joint, expected)
    assert float(joint.detach().sum()) == pytest.approx(float(weight.sum()))
    torch.autograd.gradcheck(
        lambda m: histogram_similarity(JointHistogram.apply(m, weight, first, window, 0.0, 1.0, bins)), (moving,), eps=1e-6, atol=1e-5
    )


def test_pyramid_halving_equals_smoothing_then_slicing():
    """Strided smoothing computes only the kept voxels: the same as SciPy's Gaussian (mirror borders) sliced."""
    from napari_mmfuse.core.register.pyramid import gaussian_blur

    image = np.random.default_rng(2).random((17, 9, 20)).astype(np.float32)
    sigma, stride = [1.0, 0.0, 1.5], [2, 1, 2]
    smooth = ndimage.gaussian_filter(image, sigma, mode="mirror", truncate=3.0)
    ours = gaussian_blur(torch.from_numpy(image), sigma, stride).numpy()
    np.testing.assert_allclose(ours, smooth[::2, :, ::2], atol=1e-6)
    np.testing.assert_allclose(gaussian_blur(torch.from_numpy(image), sigma).numpy(), smooth, atol=1e-6)
