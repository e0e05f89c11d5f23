"""Intensity normalisation, bias field, stain normalisation and tissue masks, against analytic results."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import color, data, exposure

from napari_mmfuse.cli import main
from napari_mmfuse.core import normalize as nm

H = np.array([0.65, 0.70, 0.29])
E = np.array([0.07, 0.99, 0.11])


def angle(a, b) -> float:
    return float(np.degrees(np.arccos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1))))


def he_slide(n=128, seed=1, stains=(H, E)):
    """Synthetic Beer-Lambert H&E image: nuclei (H), stroma (E), mixtures, and some glass."""
    rng = np.random.default_rng(seed)
    vectors = np.stack([v / np.linalg.norm(v) for v in stains])
    kind = rng.random((n, n))
    c = np.zeros((n, n, 2))
    c[..., 0] = np.where(kind < 0.4, rng.gamma(4, 0.3, (n, n)), np.where(kind < 0.7, rng.gamma(2, 0.2, (n, n)), 0))
    c[..., 1] = np.where((kind >= 0.4) & (kind < 0.9), rng.gamma(4, 0.25, (n, n)), 0.02)
    return np.clip(np.rint(240 * np.exp(-c @ vectors)), 0, 255).astype(np.uint8)


def test_percentile_and_zscore_are_analytic():
    image = np.random.default_rng(0).normal(50, 10, (64, 80)).astype(np.float32)
    out = nm.percentile(image, low=2, high=98)
    lo, hi = np.percentile(image, [2, 98])
    np.testing.assert_allclose(out, (image - lo) / (hi - lo), rtol=1e-5, atol=1e-6)
    assert nm.percentile(image, clip=True).min() == 0 and nm.percentile(image, clip=True).max() == 1
    z = nm.zscore(image)
    assert z.dtype == np.float32 and abs(z.mean()) < 1e-5 and abs(z.std() - 1) < 1e-5
    mask = np.zeros(image.shape, bool)
    mask[10:30, 10:40] = True
    zm = nm.zscore(image, mask=mask)
    assert abs(zm[mask].mean()) < 1e-5 and abs(zm[mask].std() - 1) < 1e-5


def test_histogram_matching_equals_skimage():
    image, reference = data.camera(), data.moon()
    ours = nm.match_histogram(image, reference)
    np.testing.assert_allclose(ours, exposure.match_histograms(image, reference), atol=1e-4)
    volume = np.random.default_rng(1).gamma(2, 3, (6, 20, 20))
    reference3 = np.random.default_rng(2).normal(100, 20, (5, 30, 30))
    np.testing.assert_allclose(nm.match_histogram(volume, reference3), exposure.match_histograms(volume, reference3), atol=1e-3)


def test_bias_field_correction_on_synthetic_multiplicative_bias():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[-1:1:128j, -1:1:128j]
    truth = np.where(xx**2 + yy**2 < 0.8, 100.0, 0.0)
    truth[(xx - 0.2) ** 2 + (yy + 0.1) ** 2 < 0.1] = 160.0  # a second tissue class
    truth += np.where(truth > 0, rng.normal(0, 3, truth.shape), 0)
    bias = np.exp(0.35 * xx - 0.25 * yy**2 + 0.2 * xx * yy)
    observed = (truth * bias + 1).astype(np.float32)
    corrected = nm.correct_bias_field(observed)
    tissue = truth > 50
    for cls in (100.0, 160.0):
        inside = np.abs(truth - cls) < 15
        cv_before = observed[inside].std() / observed[inside].mean()
        cv_after = corrected[inside].std() / corrected[inside].mean()
        assert cv_after < 0.4 * cv_before, (cls, cv_before, cv_after)
    r_before = np.corrcoef(observed[tissue], truth[tissue])[0, 1]
    r_after = np.corrcoef(corrected[tissue], truth[tissue])[0, 1]
    assert r_after > r_before + 0.1 and r_after > 0.99
    field = nm.estimate_bias_field(observed)
    assert abs(np.exp(np.log(field[tissue]).mean()) - 1) < 1e-3
    log_bias = np.log(bias[tissue])
    np.testing.assert_allclose(np.log(field[tissue]), log_bias - log_bias.mean(), atol=0.05)


def test_bias_field_3d_with_spacing():
    zz, yy, xx = np.meshgrid(np.linspace(-1, 1, 12), np.linspace(-1, 1, 40), np.linspace(-1, 1, 40), indexing="ij")
    truth = 100 + np.random.default_rng(2).normal(0, 2, zz.shape)
    observed = (truth * np.exp(0.3 * yy + 0.2 * zz)).astype(np.float32)
    corrected = nm.correct_bias_field(observed, mask=np.ones(observed.shape, bool), spacing=(3.0, 1.0, 1.0), degree=2)
    assert corrected.std() / corrected.mean() < 0.4 * observed.std() / observed.mean()


def test_lab_conversion_matches_skimage():
    rgb = data.astronaut()
    np.testing.assert_allclose(nm.rgb_to_lab(rgb), color.rgb2lab(rgb), atol=1e-3)
    np.testing.assert_allclose(nm.lab_to_rgb(color.rgb2lab(rgb)), rgb / 255.0, atol=1e-4)


def test_macenko_recovers_stain_vectors():
    stains = nm.macenko_stains(he_slide())
    assert stains.shape == (2, 3)
    assert angle(stains[0], H) < 3 and angle(stains[1], E) < 3


def test_macenko_normalises_to_a_reference_slide():
    source = he_slide(seed=3, stains=(np.array([0.55, 0.78, 0.30]), np.array([0.12, 0.95, 0.28])))
    target = he_slide(seed=4)
    out = nm.macenko(source, reference=target)
    assert out.dtype == np.uint8 and out.shape == source.shape
    recovered = nm.macenko_stains(out)
    assert angle(recovered[0], H) < 4 and angle(recovered[1], E) < 4
    assert np.abs(out.mean(axis=(0, 1)) - target.mean(axis=(0, 1))).max() < np.abs(
        source.mean(axis=(0, 1)) - target.mean(axis=(0, 1))
    ).max()
    default = nm.macenko(source)
    assert angle(nm.macenko_stains(default)[0], nm.REFERENCE_STAINS[0]) < 4


def test_reinhard_matches_target_lab_statistics():
    target_means, target_stds = np.array([65.0, 25.0, -10.0]), np.array([12.0, 8.0, 6.0])
    out = nm.reinhard(he_slide(), target_means=target_means, target_stds=target_stds)
    means, stds = nm.lab_statistics(out)
    np.testing.assert_allclose(means, target_means, atol=0.3)
    np.testing.assert_allclose(stds, target_stds, rtol=0.03)
    reference = he_slide(seed=5, stains=(np.array([0.5, 0.8, 0.3]), E))
    matched = nm.reinhard(he_slide(), reference=reference)
    ref_means, _ = nm.lab_statistics(reference, mask=nm.tissue_mask(reference))
    assert np.abs(nm.lab_statistics(matched)[0] - ref_means).max() < 1.0


def test_tissue_mask_on_synthetic_slide():
    slide = np.full((160, 200, 3), 242, np.uint8)  # glass
    yy, xx = np.mgrid[:160, :200]
    blob = (yy - 80) ** 2 / 50**2 + (xx - 90) ** 2 / 60**2 < 1
    slide[blob] = he_slide(n=200)[:160][blob]
    slide[blob & ((yy - 80) ** 2 + (xx - 90) ** 2 < 36)] = 242  # a small hole (lumen) to be filled
    slide[5:8, 180:183] = (60, 60, 60)  # grey dust: dark but not stained
    mask = nm.tissue_mask(slide)
    assert mask.dtype == bool
    iou = (mask & blob).sum() / (mask | blob).sum()
    assert iou > 0.95 and not mask[6, 181]


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: nm.zscore(np.full((8, 8), 3.0)), "constant"),
        (lambda: nm.zscore(np.zeros((2, 2, 4, 4))), "2D or 3D"),
        (lambda: nm.percentile(np.random.default_rng(0).random((32, 32, 3))), "RGB"),
        (lambda: nm.percentile(np.array([[1.0, np.nan], [2.0, 3.0]])), "NaN"),
        (lambda: nm.normalize(np.ones((8, 8)), "histogram"), "reference"),
        (lambda: nm.macenko(np.ones((8, 8, 3), np.float32)), "uint8"),
        (lambda: nm.macenko(np.full((32, 32, 3), 240, np.uint8)), "stained pixels"),
        (lambda: nm.tissue_mask(np.zeros((8, 8))), "RGB"),
        (lambda: nm.normalize(np.ones((8, 8)), "clahe"), "unknown"),
    ],
)
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_cli_normalize(tmp_path, capsys):
    import imageio.v3 as iio

    from napari_mmfuse.io import read

    slide, target = tmp_path / "slide.png", tmp_path / "target.png"
    iio.imwrite(slide, he_slide(seed=3, stains=(np.array([0.55, 0.78, 0.30]), np.array([0.12, 0.95, 0.28]))))
    iio.imwrite(target, he_slide(seed=4))
    out = tmp_path / "norm.png"
    assert main(["normalize", str(slide), "--method", "macenko", "--reference", str(target), "-o", str(out)]) == 0
    recovered = nm.macenko_stains(iio.imread(out))
    assert angle(recovered[0], H) < 4
    assert main(["normalize", str(slide), "--method", "macenko", "-o", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["normalize", str(slide), "--method", "zscore", "-o", str(tmp_path / "z.tif")]) == 1
    assert "RGB" in capsys.readouterr().err

    grey = tmp_path / "grey.png"
    iio.imwrite(grey, data.camera())
    ztif = tmp_path / "z.tif"
    assert main(["normalize", str(grey), "--method", "zscore", "-o", str(ztif)]) == 0
    z = np.asarray(read(ztif)[0].level0)
    assert abs(z.mean()) < 1e-4 and abs(z.std() - 1) < 1e-4
    assert main(["normalize", str(grey), "--method", "histogram", "-o", str(tmp_path / "h.tif")]) == 1
    assert "reference" in capsys.readouterr().err
    moon = tmp_path / "moon.png"
    iio.imwrite(moon, data.moon())
    matched = tmp_path / "matched.png"
    assert main(["normalize", str(grey), "--method", "histogram", "--reference", str(moon), "-o", str(matched)]) == 0
    np.testing.assert_allclose(iio.imread(matched), np.rint(exposure.match_histograms(data.camera(), data.moon())), atol=1)


def test_cli_normalize_writes_a_sidecar_that_replays_identically(tmp_path):
    from napari_mmfuse.io import read
    from napari_mmfuse.io.nifti import write_nifti
    from napari_mmfuse.provenance import Provenance, sidecar_path

    volume = np.random.default_rng(7).gamma(3, 20, (6, 20, 24)).astype(np.float32)
    source = write_nifti(tmp_path / "t1.nii.gz", volume, np.diag([2.0, 1.0, 0.5, 1.0]))
    out = tmp_path / "pct.nii.gz"
    assert main(["normalize", str(source), "--method", "percentile", "--low", "2", "-o", str(out)]) == 0
    record = Provenance.load(sidecar_path(out))
    assert record.operation == "normalize/percentile" and record.params == {"low": 2.0, "high": 99.8}
    again = tmp_path / "again.nii.gz"
    assert main(["replay", str(sidecar_path(out)), "-o", str(again)]) == 0
    np.testing.assert_array_equal(np.asarray(read(again)[0].level0), np.asarray(read(out)[0].level0))


def test_poly_bias_is_the_polynomial_correction_with_its_field(tmp_path):
    """``poly-bias`` (formerly ``n4``) gives correct_bias_field's image, and its field as a map."""
    from napari_mmfuse.operations import Image
    from napari_mmfuse.pipeline import run

    yy, xx = np.mgrid[-1:1:64j, -1:1:64j]
    observed = ((100 + np.random.default_rng(3).normal(0, 2, yy.shape)) * np.exp(0.3 * xx)).astype(np.float32)
    outputs, record = run("normalize", "poly-bias", {"image": Image(observed, np.diag([0.5, 0.5, 1.0]))}, {"degree": 2})
    expected = nm.correct_bias_field(observed, spacing=(0.5, 0.5), degree=2)
    np.testing.assert_array_equal(outputs["image"].data, expected)
    assert outputs["field"].kind == "map" and record.params == {"degree": 2}
    assert "poly-bias" in nm.METHODS and "n4" not in nm.METHODS
    assert main(["normalize", "x.nii.gz", "--method", "poly-bias", "--degree", "9", "-o", str(tmp_path / "o.nii.gz")]) == 1


def test_tissue_mask_is_a_normalize_operation_giving_labels():
    from napari_mmfuse.operations import Image
    from napari_mmfuse.pipeline import run

    slide = he_slide(64, seed=2)
    outputs, _ = run("normalize", "tissue", {"image": Image(slide, np.eye(3), rgb=True)})
    labels = outputs["labels"]
    assert labels.kind == "labels" and not labels.rgb and labels.data.dtype == np.uint8
    np.testing.assert_array_equal(labels.data, nm.tissue_mask(slide).astype(np.uint8))
    with pytest.raises(ValueError, match="not RGB"):
        run("normalize", "tissue", {"image": Image(np.ones((8, 8)), np.eye(3))})
