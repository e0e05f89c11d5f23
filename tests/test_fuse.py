"""Core fusion (napari_mmfuse.core.fuse) and the ``mmfuse fuse`` / ``fuse-metrics`` commands."""

import json
import math
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from napari_mmfuse.cli import main
from napari_mmfuse.core import fuse as fz
from napari_mmfuse.core.fuse import methods, primitives, wavelets
from napari_mmfuse.core.kernels import box_mean
from napari_mmfuse.operations import get, operations

GREY_METHODS = [m for m in fz.METHODS if m != "learned"]
FAST = {"learned": {"n_iter": 5, "crop": 32}}


def _pair(shape=(48, 56), seed=0):
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in shape], indexing="ij")
    radius = np.sqrt(sum(g**2 for g in grids))
    a = (radius < 0.6).astype(np.float32) + 0.05 * rng.standard_normal(shape).astype(np.float32)
    b = (np.sin(8 * grids[-1]) > 0).astype(np.float32) * 0.7 + 0.1 * grids[0]
    return a, b


def test_core_imports_no_qt():
    code = (
        "import sys, napari_mmfuse.core.fuse, napari_mmfuse.core.quality; "
        "print('qtpy' in sys.modules or 'napari' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("method", list(fz.METHODS))
@pytest.mark.parametrize("shape", [(40, 52), (12, 20, 18)])
def test_every_method_shapes_weights_and_inputs_untouched(method, shape):
    a, b = _pair(shape)
    c = np.flip(a, axis=-1).copy()
    copies = [a.copy(), b.copy(), c.copy()]
    result = fz.fuse([a, b, c], method=method, device="cpu", **FAST.get(method, {}))
    assert result.fused.shape == shape and result.fused.dtype == np.float32
    assert result.weights.shape == (3, *shape) and result.weights.dtype == np.float32
    np.testing.assert_allclose(result.weights.sum(0), 1, atol=1e-5)
    assert result.weights.min() >= -1e-6
    assert 0 <= result.fused.min() and result.fused.max() <= 1
    assert result.method == method and set(get("fuse", method).defaults()) <= set(result.params)
    for original, kept in zip((a, b, c), copies):
        np.testing.assert_array_equal(original, kept)


@pytest.mark.parametrize("method", [m for m in fz.METHODS if m not in ("modulated", "network")])  # these brighten
def test_identical_inputs_give_the_input(method):
    a, _ = _pair()
    scaled = (a - a.min()) / (a.max() - a.min())
    result = fz.fuse([a, a.copy()], method=method, **FAST.get(method, {}))
    np.testing.assert_allclose(result.fused, scaled, atol=1e-5)


def test_selection_methods_by_hand():
    a = np.array([[0.0, 0.5], [1.0, 0.2]], np.float32)
    b = np.array([[1.0, 0.1], [0.0, 0.9]], np.float32)
    maximum = fz.fuse([a, b], method="maximum", normalise=False)
    np.testing.assert_array_equal(maximum.fused, np.maximum(a, b))
    np.testing.assert_array_equal(maximum.weights[0], (a >= b).astype(np.float32))
    minimum = fz.fuse([a, b], method="minimum", normalise=False)
    np.testing.assert_array_equal(minimum.fused, np.minimum(a, b))
    average = fz.fuse([a, b], method="average", normalise=False, weights=[3, 1])
    np.testing.assert_allclose(average.fused, 0.75 * a + 0.25 * b, atol=1e-6)
    np.testing.assert_allclose(average.weights[0], 0.75)


def test_pca_weights_follow_the_principal_component():
    rng = np.random.default_rng(3)
    a = rng.random((30, 30)).astype(np.float32)
    b = (0.2 * a + 0.8 * rng.random((30, 30))).astype(np.float32)
    result = fz.fuse([a, b], method="pca", normalise=False)
    values, vectors = np.linalg.eigh(np.cov(np.stack([a.ravel(), b.ravel()]).astype(np.float64)))
    expected = np.abs(vectors[:, -1]) / np.abs(vectors[:, -1]).sum()
    np.testing.assert_allclose(result.weights[:, 0, 0], expected, atol=1e-5)


def test_laplacian_keeps_the_stronger_detail():
    a = np.zeros((64, 64), np.float32)
    a[:, 32:] = 1.0  # an edge only in a
    b = np.full((64, 64), 0.5, np.float32)
    b[10, 10] = 0.6  # almost flat
    result = fz.fuse([a, b], method="laplacian", normalise=False, base="mean")
    step = result.fused[:, 40].mean() - result.fused[:, 24].mean()
    assert step > 0.45  # the full edge contrast of a survives (averaging would give 0.5 * 1)
    assert result.weights[0, :, 30:34].mean() > 0.6


def test_activity_copies_the_pixels_of_the_more_detailed_input():
    rng = np.random.default_rng(5)
    texture = rng.random((48, 48)).astype(np.float32)
    flat = np.full((48, 48), 0.4, np.float32)
    a = np.where(np.arange(48) < 24, texture, flat)  # detail on the left
    b = np.where(np.arange(48) < 24, flat, texture * 0.5 + 0.3)  # detail on the right
    b[10, 10] = 0.9  # one bright speck in b's flat half: outvoted by its neighbourhood
    result = fz.fuse([a, b], method="activity", normalise=False)
    np.testing.assert_array_equal(result.fused[:, :20], a[:, :20])  # copied, not blended
    np.testing.assert_array_equal(result.fused[:, 28:], b[:, 28:])
    np.testing.assert_array_equal(result.weights[0][:, :20], 1)
    np.testing.assert_array_equal(result.weights[1][:, 28:], 1)


def test_activity_decision_matches_scipy_sobel_and_box_mean():
    from scipy import ndimage

    rng = np.random.default_rng(6)
    a = ndimage.gaussian_filter(rng.random((40, 50)), 1.5).astype(np.float32)
    b = ndimage.gaussian_filter(rng.random((40, 50)), 0.7).astype(np.float32) * 0.6
    result = fz.fuse([a, b], method="activity", normalise=False, radius=2, consistency=0)

    def activity(x):
        return ndimage.uniform_filter(np.hypot(ndimage.sobel(x, 0), ndimage.sobel(x, 1)), 5)

    expected = activity(a.astype(np.float64)) >= activity(b.astype(np.float64))
    interior = (slice(3, -3), slice(3, -3))  # scipy pads at the border, we clip the window
    np.testing.assert_array_equal(result.weights[0][interior].astype(bool), expected[interior])


def _clamped_reduce_1d(x: np.ndarray) -> np.ndarray:
    """Burt-Adelson reduction of a 1D signal with indices clamped to the signal, written out."""
    taps = np.array([1, 4, 6, 4, 1]) / 16
    size = (len(x) + 1) // 2
    clamped = [[x[np.clip(2 * n + k - 2, 0, len(x) - 1)] for k in range(5)] for n in range(size)]
    return np.array(clamped) @ taps


@pytest.mark.parametrize("length", [4, 5, 9, 16])
def test_burt_reduce_matches_the_clamped_kernel(length):
    x = np.random.default_rng(length).random(length)
    out = primitives.burt_reduce(torch.from_numpy(x)[None], 1)[0].numpy()
    np.testing.assert_allclose(out, _clamped_reduce_1d(x), atol=1e-12)
    ramp = primitives.burt_reduce(torch.arange(12, dtype=torch.float64)[None], 1)[0]
    np.testing.assert_allclose(ramp[1:-1].numpy(), [2, 4, 6, 8])  # the symmetric kernel keeps a ramp


@pytest.mark.parametrize("size", [(16, 18, 14), (17, 19, 9)])
def test_expand_is_trilinear_interpolation(size):
    x = torch.rand(2, 8, 9, 7, dtype=torch.float64)
    expected = torch.nn.functional.interpolate(x[:, None], size=size, mode="trilinear", align_corners=False)[:, 0]
    np.testing.assert_allclose(primitives.expand(x, size).numpy(), expected.numpy(), atol=1e-12)


def test_box_sum_counts_the_clipped_window():
    ones = torch.ones(1, 4, 5, dtype=torch.float64)
    counts = primitives.box_sum3(ones.clone(), 2)[0].numpy()
    np.testing.assert_array_equal(counts, np.outer([2, 3, 3, 2], [2, 3, 3, 3, 2]))


def test_first_argmax_takes_the_first_on_ties():
    a = torch.tensor([1.0, 2.0, 3.0, 0.0])
    b = torch.tensor([1.0, 5.0, 3.0, -1.0])
    assert primitives.first_argmax([a, b, b]).tolist() == [0, 1, 0, 0]
    assert primitives.first_argmax([0.0, b]).tolist() == [1, 1, 1, 0]


def test_consistency_verification_takes_the_neighbourhood_majority():
    winner = torch.zeros(7, 7, dtype=torch.uint8)
    winner[3, 3] = 1  # an isolated choice: outvoted 8 to 1
    winner[:, 5:] = 1  # a straight boundary: every pixel keeps its own side
    out = primitives.consistent(winner, 2, 2)
    expected = torch.zeros(7, 7, dtype=torch.uint8)
    expected[:, 5:] = 1
    np.testing.assert_array_equal(out.numpy(), expected.numpy())
    three = torch.tensor([[0, 1, 2], [2, 2, 2], [0, 1, 2]], dtype=torch.uint8)
    assert primitives.consistent(three, 3, 2)[1, 1] == 2


def _textbook_laplacian(stack: torch.Tensor, levels: int) -> torch.Tensor:
    """Laplacian pyramid fusion written plainly (maximum base, local mean energy, no consistency check)."""
    n = stack.ndim - 1
    mode = "bilinear" if n == 2 else "trilinear"
    pool = torch.nn.functional.avg_pool2d if n == 2 else torch.nn.functional.avg_pool3d

    def expand(x, size):
        return torch.nn.functional.interpolate(x[:, None], size=size, mode=mode, align_corners=False)[:, 0]

    def reduce(x):
        for dim in range(1, x.ndim):
            moved = x.movedim(dim, -1).numpy()
            x = torch.from_numpy(np.apply_along_axis(_clamped_reduce_1d, -1, moved)).movedim(-1, dim)
        return x

    gaussians = [stack]
    for _ in range(levels):
        gaussians.append(reduce(gaussians[-1]))
    top = gaussians[-1]
    fused = top.gather(0, top.argmax(0, keepdim=True))[0]
    for fine, coarse in zip(reversed(gaussians[:-1]), reversed(gaussians[1:])):
        detail = fine - expand(coarse, fine.shape[1:])
        energy = pool(detail**2, 3, 1, 1, count_include_pad=False)  # inputs as channels
        chosen = detail.gather(0, energy.argmax(0, keepdim=True))[0]
        fused = expand(fused[None], fine.shape[1:])[0] + chosen
    return fused


@pytest.mark.parametrize("shape", [(2, 37, 30), (3, 21, 18, 25)])
def test_laplacian_equals_the_textbook_pyramid(shape):
    stack = torch.rand(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    fused, weights = methods.laplacian(stack, levels=2, consistency=0)
    np.testing.assert_allclose(fused.numpy(), _textbook_laplacian(stack, 2).numpy(), atol=1e-10)
    np.testing.assert_allclose(weights.sum(0).numpy(), 1, atol=1e-12)


def _noisy_anatomy_and_smooth_hot_spot(size=64):
    """A sharp, noisy 'T1' (bright disc) and a smooth 'PET' whose only signal is a hot spot."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:size, :size] / size - 0.5
    t1 = 0.5 * (np.hypot(x, y) < 0.4) + 0.05 * rng.standard_normal((size, size))
    pet = np.exp(-((x - 0.1) ** 2 + y**2) / 0.01)
    hot = pet > 0.5
    return np.clip(t1, 0, 1).astype(np.float32), pet.astype(np.float32), hot


@pytest.mark.parametrize("method, params", [("guided", {}), ("modulated", {}), ("learned", {"n_iter": 40, "crop": 48})])
def test_smooth_hot_spot_survives_fusion_with_noisy_anatomy(method, params):
    t1, pet, hot = _noisy_anatomy_and_smooth_hot_spot()
    result = fz.fuse([t1, pet], method=method, normalise=False, **params)
    assert result.weights[1][hot].mean() > 0.25  # the collapse gave the PET weight 0 everywhere
    assert result.fused[hot].mean() > t1[hot].mean() + 0.1  # and the hot spot shows brighter


@pytest.mark.parametrize("wavelet", ["haar", "db2"])
@pytest.mark.parametrize("shape", [(2, 30, 22), (2, 8, 12, 10)])
def test_dwt_is_orthogonal_and_inverts(wavelet, shape):
    x = torch.rand(shape, dtype=torch.float64)
    bank = wavelets.filter_bank(wavelet, "cpu").double()
    n = len(shape) - 1
    approximation, details = fz.dwt(x, bank, n)
    assert len(details) == 2**n - 1
    energy = float((approximation**2).sum() + sum((d**2).sum() for d in details))
    assert energy == pytest.approx(float((x**2).sum()), rel=1e-6)  # float32 filter taps
    np.testing.assert_allclose(fz.idwt(approximation, details, bank, n).numpy(), x.numpy(), atol=1e-6)
    low = bank[0].numpy()
    assert low.sum() == pytest.approx(np.sqrt(2)) and (low**2).sum() == pytest.approx(1.0)


def test_guided_filter_reduces_to_box_mean_for_flat_guide():
    source = torch.rand(1, 20, 24)
    guide = torch.full_like(source, 0.3)
    out = primitives.guided_filter(guide, source, 2, 0.1, 2)
    expected = torch.nn.functional.avg_pool2d(source[None], 5, 1, 2, count_include_pad=False)[0]
    box_of_box = box_mean(expected, 2, 2)
    np.testing.assert_allclose(out.numpy(), box_of_box.numpy(), atol=1e-5)


def test_learned_is_seeded_and_yields_progress():
    a, b = _pair((40, 40))
    steps = fz.fuse_steps([a, b], method="learned", n_iter=6, crop=24, seed=1)
    ticks = []
    while True:
        try:
            ticks.append(next(steps))
        except StopIteration as done:
            result = done.value
            break
    assert [t.done for t in ticks] == list(range(1, 7)) and all(t.total == 6 for t in ticks)
    again = fz.fuse([a, b], method="learned", n_iter=6, crop=24, seed=1)
    np.testing.assert_allclose(result.fused, again.fused, atol=1e-6)
    assert result.weights.std() > 0  # weights vary per pixel


def test_colour_fusion_keeps_functional_chroma():
    a, b = _pair((32, 32))
    pet_rgb = fz.apply_colormap((b - b.min()) / (b.max() - b.min()), "hot")
    result = fz.fuse([a, (pet_rgb * 255).astype(np.uint8)], method="colour")
    assert result.fused.shape == (32, 32, 3) and result.weights.shape == (2, 32, 32)
    assert result.params["functional"] == 1 and result.params["inner"] == fz.DEFAULT_METHOD
    fused_ycc = fz.rgb_to_ycbcr(result.fused)
    pet_ycc = fz.rgb_to_ycbcr(pet_rgb)
    in_gamut = (result.fused > 0.01).all(-1) & (result.fused < 0.99).all(-1)
    np.testing.assert_allclose(fused_ycc[in_gamut][:, 1:], pet_ycc[in_gamut][:, 1:], atol=0.02)
    grey = fz.fuse([a, b], method="colour", colormap="jet", inner="average")
    assert grey.fused.shape == (32, 32, 3) and grey.params["functional"] == 1


def test_ycbcr_round_trip_and_colormap():
    rgb = np.random.default_rng(0).random((10, 10, 3)).astype(np.float32)
    np.testing.assert_allclose(fz.ycbcr_to_rgb(fz.rgb_to_ycbcr(rgb)), rgb, atol=1e-5)
    np.testing.assert_allclose(fz.luminance(np.ones((2, 2, 3))), 1.0, atol=1e-6)
    hot = fz.apply_colormap(np.array([0.0, 1 / 3, 2 / 3, 1.0]), "hot")
    np.testing.assert_allclose(hot, [[0, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1]], atol=1e-6)


def test_normalise_intensity_windows():
    ct = np.linspace(-1000, 2000, 1000, dtype=np.float32)
    out = fz.normalise_intensity(ct, modality="CT")
    assert out[np.argmin(np.abs(ct - 300))] == pytest.approx(0.5, abs=0.01)
    assert out.min() == 0 and out.max() == 1 and out.dtype == np.float32
    pet = np.linspace(0, 10, 1001, dtype=np.float32)
    assert fz.normalise_intensity(pet, modality="PET", high=90)[0] == 0
    assert fz.normalise_intensity(pet, modality="PET", high=90)[500] == pytest.approx(5 / 9, abs=1e-3)
    mri = np.arange(101, dtype=np.float32)
    np.testing.assert_allclose(fz.normalise_intensity(mri, low=10, high=90)[[10, 50, 90]], [0, 0.5, 1], atol=1e-6)
    np.testing.assert_allclose(fz.normalise_intensity(mri, window=(0, 200))[100], 0.5)


def test_fuse_on_reference_resamples_through_affines():
    fine = np.zeros((40, 40), np.float32)
    fine[10:30, 10:30] = 1
    coarse = np.zeros((20, 20), np.float32)
    coarse[5:15, 5:15] = 1
    affine_fine = np.diag([0.5, 0.5, 1.0])
    affine_coarse = np.diag([1.0, 1.0, 1.0])
    affine_coarse[:2, 2] = 0.25  # pixel centres of the coarse grid sit between fine ones
    result = fz.fuse_on_reference(
        [fine, coarse], [affine_fine, affine_coarse], method="minimum", low=0, high=100
    )
    assert result.fused.shape == (40, 40) and result.params["reference_index"] == 0
    assert result.fused[20, 20] == pytest.approx(1) and result.fused[2, 2] == 0
    volume = np.random.default_rng(0).random((6, 20, 20)).astype(np.float32)
    plane = fz.fuse_on_reference([volume, volume * 2], [np.eye(4)] * 2, method="average", plane=3)
    full = fz.fuse_on_reference([volume, volume * 2], [np.eye(4)] * 2, method="average")
    np.testing.assert_allclose(plane.fused, full.fused[3], atol=1e-5)


@pytest.mark.parametrize(
    "images, kwargs, message",
    [
        ([np.ones((8, 8))], {}, "at least two"),
        ([np.random.rand(8, 8), np.random.rand(4, 8, 8)], {}, "one dimensionality"),
        ([np.random.rand(8, 8), np.random.rand(9, 8)], {}, "one grid"),
        ([np.random.rand(8, 8), np.random.rand(8, 8, 3)], {"method": "laplacian"}, "method='colour'"),
        ([np.random.rand(8, 8), np.zeros((8, 8))], {}, "constant"),
        ([np.random.rand(8, 8), np.full((8, 8), np.nan)], {}, "NaN"),
        ([np.random.rand(8, 8), np.random.rand(8, 8)], {"method": "nope"}, "unknown fusion method"),
        ([np.random.rand(8, 8), np.random.rand(8, 8)], {"method": "laplacian", "sigma": 2}, "no parameter"),
        ([np.random.rand(8, 8, 3), np.random.rand(8, 8, 3)], {"method": "colour"}, "one functional"),
    ],
)
def test_bad_input_raises_actionable_errors(images, kwargs, message):
    with pytest.raises(ValueError, match=message):
        fz.fuse(images, **kwargs)


def test_non_overlapping_images_raise():
    a, b = _pair((16, 16))
    far = np.eye(3)
    far[:2, 2] = 1000
    with pytest.raises(ValueError, match="does not overlap"):
        fz.fuse_on_reference([a, b], [np.eye(3), far])


def test_registry_checks_parameter_types():
    assert get("fuse", "laplacian").check({"levels": "5"})["levels"] == 5
    assert get("fuse", "laplacian").check({"consistency": "0"})["consistency"] == 0
    assert get("fuse", "guided").check({"eps1": "0.1"})["eps1"] == pytest.approx(0.1)
    assert get("fuse", "colour").check({"inner": "wavelet", "wavelet": "haar"})["wavelet"] == "haar"
    assert get("fuse", "average").check({"weights": "1,2"})["weights"] == "1,2"
    from napari_mmfuse.operations.fuse import parse_weights

    assert parse_weights("1,2") == [1.0, 2.0]
    with pytest.raises(ValueError, match="one of"):
        get("fuse", "laplacian").check({"rule": "median"})
    with pytest.raises(ValueError, match="no parameter"):
        get("fuse", "maximum").check({"levels": "3"})


def test_registry_defaults_are_the_core_defaults():
    for name, operation in operations("fuse").items():
        if name == "colour":
            continue
        core = fz.method_defaults(name)
        assert operation.defaults() == {k: core[k] for k in operation.defaults()}
    assert fz.method_names() == list(operations("fuse"))


# ----------------------------------------------------------------------------- CLI


@pytest.fixture
def pngs(tmp_path):
    a, b = _pair((40, 48))
    grey = np.round((a - a.min()) / (a.max() - a.min()) * 255).astype(np.uint8)
    other = np.round((b - b.min()) / (b.max() - b.min()) * 255).astype(np.uint8)
    colour = (fz.apply_colormap(other / 255.0) * 255).astype(np.uint8)
    paths = {"a": tmp_path / "a.png", "b": tmp_path / "b.png", "pet": tmp_path / "pet.png"}
    iio.imwrite(paths["a"], grey)
    iio.imwrite(paths["b"], other)
    iio.imwrite(paths["pet"], colour)
    return paths


def test_cli_fuse_png_with_weights(pngs, tmp_path, capsys):
    out = tmp_path / "fused.png"
    code = main(["fuse", str(pngs["a"]), str(pngs["b"]), "--method", "laplacian", "--param", "levels=2",
                 "-o", str(out), "--weights-out", str(tmp_path / "w")])
    assert code == 0
    fused = iio.imread(out)
    assert fused.shape == (40, 48) and fused.dtype == np.uint8 and fused.max() > 200
    w0, w1 = iio.imread(tmp_path / "w_0_a.png"), iio.imread(tmp_path / "w_1_b.png")
    assert np.abs(w0.astype(int) + w1.astype(int) - 255).max() <= 1
    assert main(["fuse", str(pngs["a"]), str(pngs["b"]), "-o", str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main(["fuse", str(pngs["a"]), str(pngs["b"]), "-o", str(out), "--overwrite"]) == 0


def test_cli_colour_and_errors(pngs, tmp_path, capsys):
    out = tmp_path / "colour.png"
    assert main(["fuse", str(pngs["a"]), str(pngs["pet"]), "--method", "colour", "--reference", str(pngs["a"]),
                 "-o", str(out)]) == 0
    assert iio.imread(out).shape == (40, 48, 3)
    capsys.readouterr()
    assert main(["fuse", str(pngs["a"]), str(pngs["pet"]), "--method", "maximum", "-o", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err
    assert "pet.png: colour picture; --method maximum" in err and "--method colour" in err
    assert len(err.strip().splitlines()) == 1
    assert main(["fuse", str(pngs["a"]), "-o", str(tmp_path / "y.png")]) == 1
    assert "at least two" in capsys.readouterr().err
    assert main(["fuse", str(pngs["a"]), str(pngs["b"]), "-o", str(tmp_path / "z.bmp")]) == 1


def test_cli_default_method_follows_the_inputs(pngs, tmp_path, capsys):
    out = tmp_path / "auto.png"
    assert main(["fuse", str(pngs["a"]), str(pngs["pet"]), "-o", str(out)]) == 0
    assert "method: colour" in capsys.readouterr().err
    explicit = tmp_path / "explicit.png"
    assert main(["fuse", str(pngs["a"]), str(pngs["pet"]), "--method", "colour", "-o", str(explicit)]) == 0
    np.testing.assert_array_equal(iio.imread(out), iio.imread(explicit))
    assert iio.imread(out).shape == (40, 48, 3)
    # grey inputs: the default grey method
    assert main(["fuse", str(pngs["a"]), str(pngs["b"]), "-o", str(out), "--overwrite"]) == 0
    assert f"method: {fz.DEFAULT_METHOD}" in capsys.readouterr().err
    assert main(["fuse", str(pngs["a"]), str(pngs["b"]), "--method", fz.DEFAULT_METHOD,
                 "-o", str(explicit), "--overwrite"]) == 0
    np.testing.assert_array_equal(iio.imread(out), iio.imread(explicit))
    # colour fusion's parameters and its inner method's pass without --method too
    assert main(["fuse", str(pngs["a"]), str(pngs["pet"]), "--param", "inner=modulated", "--param", "radius=3",
                 "--param", "colormap=jet",
                 "-o", str(out), "--overwrite"]) == 0


HARVARD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fusion" / "harvard"


@pytest.mark.skipif(not HARVARD.is_dir(), reason="shared Harvard fusion pairs absent")
@pytest.mark.parametrize(("pair", "functional", "channels"), [("MRI_PET", "PET", 3), ("MRI_CT", "CT", None)])
def test_cli_fuse_harvard_pair_with_defaults(tmp_path, capsys, pair, functional, channels):
    name = sorted((HARVARD / pair / "MRI").glob("*.png"))[0].name
    mri, other = HARVARD / pair / "MRI" / name, HARVARD / pair / functional / name
    out = tmp_path / "fused.png"
    assert main(["fuse", str(mri), str(other), "-o", str(out)]) == 0
    fused = iio.imread(out)
    assert fused.shape == ((256, 256, 3) if channels else (256, 256)) and fused.dtype == np.uint8
    expected = fz.COLOUR_METHOD if channels else fz.DEFAULT_METHOD
    assert f"method: {expected}" in capsys.readouterr().err
    if channels:  # the PET's chroma is kept: the fused picture is coloured where the PET is
        pet = iio.imread(other)[..., :3].astype(int)
        hot = np.ptp(pet, axis=-1) > 60
        assert np.ptp(fused.astype(int), axis=-1)[hot].mean() > 30


def test_cli_fuse_nifti_output(pngs, tmp_path):
    pytest.importorskip("nibabel")
    out = tmp_path / "fused.nii.gz"
    assert main(["fuse", str(pngs["a"]), str(pngs["b"]), "--method", "average", "-o", str(out)]) == 0
    from napari_mmfuse.io import read

    record = read(out)[0]
    assert np.asarray(record.level0).squeeze().shape == (40, 48)


def test_cli_fuse_sidecar_replays_identically(pngs, tmp_path, capsys):
    pytest.importorskip("nibabel")
    from napari_mmfuse.io import read

    out = tmp_path / "fused.nii.gz"
    assert main(["fuse", str(pngs["a"]), str(pngs["b"]), "--method", "laplacian", "--levels", "2",
                 "--param", "rule=maxabs", "-o", str(out)]) == 0
    sidecar = tmp_path / "fused.nii.gz.provenance.json"
    record = json.loads(sidecar.read_text())
    assert record["operation"] == "fuse/laplacian" and record["params"]["levels"] == 2
    assert record["params"]["rule"] == "maxabs" and record["outputs"]["image"]["path"] == str(out)
    assert [entry["source"]["path"] for entry in record["inputs"]["images"]] == [str(pngs["a"]), str(pngs["b"])]
    again = tmp_path / "again.nii.gz"
    assert main(["replay", str(sidecar), "-o", str(again)]) == 0
    np.testing.assert_array_equal(np.asarray(read(again)[0].level0), np.asarray(read(out)[0].level0))
    capsys.readouterr()
    assert main(["fuse", str(pngs["a"]), str(pngs["b"]), "--method", "laplacian", "--levels", "2",
                 "--param", "levels=3", "-o", str(tmp_path / "twice.png")]) == 1
    assert "given twice" in capsys.readouterr().err
    assert main(["fuse", str(pngs["a"]), str(pngs["b"]), "--method", "maximum", "--levels", "2",
                 "-o", str(tmp_path / "other.png")]) == 1
    assert "--levels does not apply to --method maximum" in capsys.readouterr().err


def test_cli_learned_seed_is_recorded(pngs, tmp_path):
    out = tmp_path / "learned.png"
    assert main(["fuse", str(pngs["a"]), str(pngs["b"]), "--method", "learned", "--n-iter", "3", "--crop", "16",
                 "--param", "seed=4", "-o", str(out)]) == 0
    record = json.loads((tmp_path / "learned.png.provenance.json").read_text())
    assert record["seed"] == 4 and record["params"]["n_iter"] == 3


def test_cli_fuse_metrics_json(pngs, tmp_path, capsys):
    out = tmp_path / "fused.png"
    main(["fuse", str(pngs["a"]), str(pngs["b"]), "--method", "maximum", "-o", str(out)])
    capsys.readouterr()
    assert main(["fuse-metrics", str(pngs["a"]), str(pngs["b"]), str(out)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics) == {"EN", "SD", "SF", "MI", "Qabf", "SSIM", "SCD"}
    assert 0 < metrics["Qabf"] < 1 and metrics["MI"] > 0
    assert main(["fuse-metrics", str(pngs["a"]), str(out)]) == 1


def test_cli_fuse_metrics_of_volumes_resamples_sources_through_their_affines(tmp_path, capsys):
    pytest.importorskip("nibabel")
    from napari_mmfuse.core.fuse import normalise_intensity
    from napari_mmfuse.core.quality import fusion_metrics
    from napari_mmfuse.io import read, write

    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[:8, :40, :48].astype(np.float32)
    t1 = (100 + 50 * np.sin(x / 5) * np.cos(y / 6) + 5 * z + rng.normal(0, 3, z.shape)).astype(np.float32)
    ct = np.where((y - 20) ** 2 + (x - 12) ** 2 < 80, 1200.0, -800.0 + 20 * z).astype(np.float32)
    t1_affine = np.diag([2.0, 1.0, 1.0, 1.0])
    flipped_affine = t1_affine @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, 47], [0, 0, 0, 1.0]])
    write(tmp_path / "t1.nii.gz", t1, t1_affine)
    # the CT stored mirrored along x, its affine mirrors it back: the same world image
    write(tmp_path / "ct.nii.gz", ct[..., ::-1].copy(), flipped_affine)
    paths = [str(tmp_path / name) for name in ("t1.nii.gz", "ct.nii.gz", "fused.nii.gz")]
    assert main(["fuse", *paths[:2], "--method", "maximum", "--modality", "MR", "CT", "-o", paths[2]]) == 0
    capsys.readouterr()
    assert main(["fuse-metrics", *paths, "--modality", "MR", "CT", "--nats"]) == 0
    metrics = json.loads(capsys.readouterr().out)

    fused = np.asarray(read(paths[2])[0].level0, dtype=np.float64)
    fused = np.round((fused - fused.min()) / (fused.max() - fused.min()) * 255)
    sources = [
        np.round(normalise_intensity(t1, modality="MR") * 255),
        np.round(normalise_intensity(ct, modality="CT") * 255),
    ]
    expected = fusion_metrics(fused, sources, mi_base=math.e, vif=False)
    assert metrics == pytest.approx({k: round(v, 6) for k, v in expected.items()}, abs=2e-6)
    mirrored = np.round(normalise_intensity(ct[..., ::-1], modality="CT") * 255)  # the CT's stored array
    misaligned = fusion_metrics(fused, [sources[0], mirrored], mi_base=math.e, vif=False)
    assert metrics["Qabf"] > misaligned["Qabf"] + 0.1 and metrics["MI"] > misaligned["MI"] + 0.1

    assert main(["fuse-metrics", *paths, "--modality", "MR"]) == 1
    assert "one value per source" in capsys.readouterr().err
    picture = tmp_path / "slice.png"
    iio.imwrite(picture, np.zeros((40, 48), np.uint8))
    assert main(["fuse-metrics", paths[0], str(picture), paths[2]]) == 1
    assert "not a mix" in capsys.readouterr().err


ZERO_LEARNING = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fusion" / "zerolearning"


@pytest.mark.skipif(not ZERO_LEARNING.is_dir(), reason="shared Zero-Learning fusion examples absent")
@pytest.mark.parametrize(
    "anatomical, functional, published",
    [
        ("MRI-PET/MRI-001.png", "MRI-PET/PET-001.png", "MRI-PET/FUSED-001.png"),
        ("MRI-PET/MRI-012.png", "MRI-PET/PET-012.png", "MRI-PET/FUSED-012.png"),
        ("MRI-PET/MRI-060.png", "MRI-PET/PET-060.png", "MRI-PET/FUSED-060.png"),
        ("MRI-SPECT/mr.png", "MRI-SPECT/tc.png", "MRI-SPECT/fusion_mr_tc.png"),
    ],
)
def test_default_fusion_keeps_more_edges_than_a_published_method_on_its_own_examples(anatomical, functional, published):
    from napari_mmfuse.core.quality import fusion_qabf

    def grey(path):  # luminance 0-255 of a grey, RGB or palette PNG
        return np.round(fz.luminance(np.asarray(iio.imread(path, mode="RGB"), dtype=np.float64)))

    a, b = grey(ZERO_LEARNING / "images" / anatomical), grey(ZERO_LEARNING / "images" / functional)
    theirs = grey(ZERO_LEARNING / "results" / published)
    ours = np.round(np.clip(fz.fuse([a / 255, b / 255], normalise=False).fused * 255, 0, 255))
    assert fusion_qabf(ours, [a, b]) > fusion_qabf(theirs, [a, b]) + 0.03


def test_auto_method_colour_only_for_real_colour():
    grey = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    colour = fz.apply_colormap(grey)
    assert fz.auto_method([grey, colour]) == fz.COLOUR_METHOD
    assert fz.auto_method([grey, np.dstack([grey] * 3)]) == fz.DEFAULT_METHOD  # grey stored as RGB
    assert fz.auto_method([grey, grey * 0.5]) == fz.DEFAULT_METHOD
    assert fz.auto_method([grey, colour], rgb=[False, False]) == fz.DEFAULT_METHOD
    assert fz.auto_method([grey, grey], grey_method="maximum") == "maximum"
    assert not fz.is_colour(np.zeros((4, 4, 3))) and fz.is_colour(colour)
