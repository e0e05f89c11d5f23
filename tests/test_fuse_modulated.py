"""Modulated selection (the best untrained fusion): its numbers against SciPy, volumes; and the
command line's default on grey, grey-stored-as-RGB and colour pictures."""

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from scipy import ndimage

from napari_mmfuse.cli import main
from napari_mmfuse.core import fuse as fz
from napari_mmfuse.operations import get

HARVARD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fusion" / "harvard"


def _smooth_pair(shape, seed=0):
    rng = np.random.default_rng(seed)
    a = ndimage.gaussian_filter(rng.random(shape), 1.5).astype(np.float32)
    b = ndimage.gaussian_filter(rng.random(shape), 1.2).astype(np.float32)
    scale = lambda x: ((x - x.min()) / (x.max() - x.min())).astype(np.float32)  # noqa: E731
    return scale(a), scale(b)


def _reference(a, b, *, gain, radius, brightness):
    """Modulated selection without majority filter or softening, written with NumPy/SciPy (float64)."""
    a, b = a.astype(np.float64), b.astype(np.float64)

    def activity(x):  # central differences inside the image, as numpy.gradient
        magnitude = np.sqrt(sum(g**2 for g in np.gradient(x)))
        return ndimage.uniform_filter(magnitude, 2 * radius + 1)

    shaded = a * (1 + gain * b)
    b_wins = activity(b) + brightness * b > activity(a) + brightness * shaded
    return np.where(b_wins, b, shaded), b_wins, shaded


@pytest.mark.parametrize("shape", [(40, 50), (14, 24, 20)])
def test_modulated_matches_a_scipy_reimplementation(shape):
    a, b = _smooth_pair(shape)
    params = {"gain": 0.6, "radius": 2, "brightness": 0.3}
    result = fz.fuse([a, b], method="modulated", normalise=False, consistency=0, softness=0, **params)
    expected, b_wins, shaded = _reference(a, b, **params)
    interior = tuple(slice(3, -3) for _ in shape)  # SciPy pads at the border, the box window is clipped
    assert 0.05 < b_wins[interior].mean() < 0.95  # both inputs win somewhere
    np.testing.assert_allclose(result.fused[interior], np.clip(expected, 0, 1)[interior], atol=1e-5)
    # contributions: b where it won; where the shaded a won, a's share of a (1 + gain b) is 1 / (1 + gain b)
    share = np.where(b_wins, 0.0, 1 / (1 + 0.6 * b))
    np.testing.assert_allclose(result.weights[0][interior], share[interior], atol=1e-5)
    np.testing.assert_allclose(result.weights.sum(0), 1, atol=1e-5)


def test_modulated_three_inputs_match_a_scipy_reimplementation():
    """N = 3: the first shaded by the mean of the others, the first highest score wins (the first on
    ties), and the shaded first's contribution split between the others in proportion to their values."""
    shape, gain, radius, brightness = (36, 40), 0.6, 2, 0.3
    a, b = _smooth_pair(shape, seed=5)
    c, _ = _smooth_pair(shape, seed=6)
    result = fz.fuse([a, b, c], method="modulated", normalise=False, consistency=0, softness=0,
                     gain=gain, radius=radius, brightness=brightness)
    stack = np.stack([a, b, c]).astype(np.float64)
    mean_others = stack[1:].mean(0)
    candidates = np.stack([a * (1 + gain * mean_others), b, c])
    activity = [ndimage.uniform_filter(np.sqrt(sum(g**2 for g in np.gradient(x))), 2 * radius + 1) for x in stack]
    scores = np.stack([activity[i] + brightness * candidates[i] for i in range(3)])
    winner = scores.argmax(0)
    interior = (slice(3, -3),) * 2
    assert all(0.05 < (winner[interior] == i).mean() for i in range(3))  # every input wins somewhere
    fused = np.take_along_axis(candidates, winner[None], 0)[0]
    np.testing.assert_allclose(result.fused[interior], np.clip(fused, 0, 1)[interior], atol=1e-5)
    first = (winner == 0) / (1 + gain * mean_others)
    rest = (winner == 0) - first
    expected = np.stack([first, (winner == 1) + rest * b / (b + c), (winner == 2) + rest * c / (b + c)])
    np.testing.assert_allclose(result.weights[(slice(None), *interior)], expected[(slice(None), *interior)], atol=1e-5)
    np.testing.assert_allclose(result.weights.sum(0), 1, atol=1e-5)


def test_modulated_shades_an_image_fused_with_itself():
    a, _ = _smooth_pair((32, 36))
    result = fz.fuse([a, a.copy()], method="modulated", normalise=False)
    np.testing.assert_allclose(result.fused, np.clip(a * (1 + 0.6 * a), 0, 1), atol=1e-5)


def test_modulated_keeps_ct_bone_solid_and_brightens_uptake():
    """The first image's edges stay; a flat bright structure of the second (bone) is taken whole;
    where the second is a smooth uptake, the first is brightened, not replaced."""
    y, x = np.mgrid[-1:1:96j, -1:1:96j].astype(np.float32)
    rng = np.random.default_rng(3)
    mri = np.clip(0.45 * (np.hypot(x, y) < 0.7) + 0.08 * rng.standard_normal(x.shape), 0, 1).astype(np.float32)
    ring = (np.hypot(x, y) > 0.75) & (np.hypot(x, y) < 0.9)
    ct = ring.astype(np.float32)
    bone = (np.hypot(x, y) > 0.79) & (np.hypot(x, y) < 0.86)
    fused_ct = fz.fuse([mri, ct], method="modulated", normalise=False).fused
    assert fused_ct[bone].min() > 0.9  # solid, not hollow
    uptake = np.exp(-((x - 0.2) ** 2 + y**2) / 0.02).astype(np.float32)
    hot = uptake > 0.7
    fused_pet = fz.fuse([mri, uptake], method="modulated", normalise=False).fused
    assert fused_pet[hot].mean() > 1.3 * mri[hot].mean()
    outside = (np.hypot(x, y) < 0.6) & (uptake < 0.01)
    np.testing.assert_allclose(fused_pet[outside], mri[outside], atol=0.02)  # anatomy as it was


def test_modulated_fuses_a_volume_whole_and_matches_its_planes_inside():
    """Volumes are fused with 3D windows (not plane by plane): a volume that does not change along
    its first axis gives, away from the ends, the 2D fusion of one plane."""
    a, b = _smooth_pair((40, 44))
    va, vb = np.repeat(a[None], 30, 0), np.repeat(b[None], 30, 0)
    volume = fz.fuse([va, vb], method="modulated", normalise=False, device="cpu")
    plane = fz.fuse([a, b], method="modulated", normalise=False, device="cpu")
    assert volume.fused.shape == (30, 40, 44) and volume.weights.shape == (2, 30, 40, 44)
    np.testing.assert_allclose(volume.fused[15], plane.fused, atol=1e-4)


def test_modulated_registry_entry_documents_the_order():
    operation = get("fuse", "modulated")
    assert "first" in operation.doc and operation.defaults() == fz.method_defaults("modulated")


def test_cli_equal_channel_rgb_is_a_grey_image(tmp_path, capsys):
    a, b = _smooth_pair((40, 48), seed=4)
    grey_a, grey_b = (np.round(x * 255).astype(np.uint8) for x in (a, b))
    iio.imwrite(tmp_path / "a.png", grey_a)
    iio.imwrite(tmp_path / "b.png", grey_b)
    iio.imwrite(tmp_path / "b_rgb.png", np.dstack([grey_b] * 3))  # grey stored as RGB (Harvard MRI/CT)
    assert main(["fuse", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(tmp_path / "grey.png")]) == 0
    assert main(["fuse", str(tmp_path / "a.png"), str(tmp_path / "b_rgb.png"), "-o", str(tmp_path / "rgb.png")]) == 0
    assert capsys.readouterr().err.count(f"method: {fz.DEFAULT_METHOD}") == 2
    from_rgb = iio.imread(tmp_path / "rgb.png")
    assert from_rgb.shape == (40, 48)
    np.testing.assert_array_equal(from_rgb, iio.imread(tmp_path / "grey.png"))


@pytest.mark.skipif(not HARVARD.is_dir(), reason="shared Harvard fusion pairs absent")
@pytest.mark.parametrize("pair, functional", [("MRI_PET", "PET"), ("MRI_SPECT", "SPECT")])
def test_cli_colour_default_on_staged_pairs_is_colour_fusion_with_the_default_inside(tmp_path, capsys, pair,
                                                                                       functional):
    name = sorted((HARVARD / pair / "MRI").glob("*.png"))[-1].name  # a held-out pair
    mri, colour = HARVARD / pair / "MRI" / name, HARVARD / pair / functional / name
    out = tmp_path / "fused.png"
    assert main(["fuse", str(mri), str(colour), "-o", str(out)]) == 0
    assert "method: colour" in capsys.readouterr().err
    fused = iio.imread(out).astype(np.float32) / 255
    rgb, grey = iio.imread(colour)[..., :3], iio.imread(mri)[..., 0]
    prepared = fz.resample_to_reference([grey, rgb], [np.eye(3)] * 2, rgb=[False, True])  # as the command does
    expected = fz.fuse(prepared, method="colour", inner=fz.DEFAULT_METHOD, rgb=[False, True], normalise=False).fused
    np.testing.assert_allclose(fused, expected, atol=1 / 255 + 1e-6)
