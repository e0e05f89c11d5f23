"""Zoo bundles by name (cache, download by MONAI, offline message), channel names, trusting a bundle's code."""

import json

import numpy as np
import pytest
from test_bundle_geometry import BRATS_WIRING, OBJECTS, dice, grid, make_brats_bundle, midpoints, monai_grid, phantom

from napari_mmfuse.cli import main
from napari_mmfuse.core import bundle, segment
from napari_mmfuse.io.nifti import read_nifti, write_nifti

FILES = {"T1c": "case_t1ce", "T1": "case_t1", "T2": "case_t2", "FLAIR": "case_flair"}


@pytest.mark.parametrize("wanted, names, expected", [
    (["T1c", "T1", "T2", "FLAIR"], ["BraTS_flair", "BraTS_t1", "BraTS_t1ce", "BraTS_t2"], [2, 1, 3, 0]),
    (["T1c", "T1", "T2", "FLAIR"], ["T1-Gd", "t1w", "T2w", "T2-FLAIR"], [0, 1, 2, 3]),
    (["FLAIR", "T1c"], ["t2f", "t1c"], [0, 1]),  # BraTS 2023 names
    (["T1", "T2"], ["t1", "t1 copy"], [None, None]),  # two T1s, no T2: the user picks
    (["image"], ["ct_abdomen"], [0]),  # one channel, one image
    (["CT", "PET"], ["pet_ac", "ct"], [1, 0]),
])
def test_channels_are_matched_by_modality_name(wanted, names, expected):
    assert bundle.match_channels(wanted, names) == expected


def offline(*args, **kwargs):
    import requests

    raise requests.exceptions.ConnectionError("HTTPSConnectionPool(host='raw.githubusercontent.com', port=443): "
                                              "Max retries exceeded\nFailed to resolve")


def cached_brats_case(tmp_path, monkeypatch, pixdim=(0.8, 0.8, 3.0)):
    """An axial LPS phantom and a brats-like bundle already in the bundle cache (MONAI's download refuses).

    Returns ``affine, shape, images, points, centre`` as :func:`test_bundle_geometry.phantom` gives them.
    """
    import monai.bundle

    affine, shape = grid("axial-lps")
    images, points, centre = phantom(shape, affine)
    make_brats_bundle(tmp_path / "cache" / "brats_mri_segmentation", pixdim=pixdim, thresholds=midpoints(images))
    monkeypatch.setenv(bundle.CACHE_VARIABLE, str(tmp_path / "cache"))
    monkeypatch.setattr(monai.bundle, "download", offline)  # in the cache already: no download
    return affine, shape, images, points, centre


def write_case(folder, affine, images):
    """The four channels as NIfTI files named like a BraTS case; their paths in another order than the bundle's."""
    for (name, stem), image in zip(FILES.items(), images):
        write_nifti(folder / f"{stem}.nii.gz", image, affine)
    return [folder / f"{FILES[name]}.nii.gz" for name in ("FLAIR", "T2", "T1", "T1c")]  # not the bundle's order


def test_offline_download_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    import monai.bundle

    monkeypatch.setenv(bundle.CACHE_VARIABLE, str(tmp_path / "cache"))
    monkeypatch.setattr(monai.bundle, "download", offline)
    write_nifti(tmp_path / "t1.nii.gz", np.ones((8, 8, 8), np.float32), np.eye(4))
    code = main(["segment", str(tmp_path / "t1.nii.gz"), "--bundle", "brats_mri_segmentation",
                 "-o", str(tmp_path / "out.nii.gz")])
    error = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in error and "offline" in error and "brats_mri_segmentation" in error
    assert not (tmp_path / "out.nii.gz").exists()
    code = main(["explain", str(tmp_path / "t1.nii.gz"), "--bundle", "brats_mri_segmentation", "--method", "saliency",
                 "--target", "1", "-o", str(tmp_path / "map.nii.gz")])  # explain takes the same --bundle
    error = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in error and "offline" in error
    with pytest.raises(ValueError, match="not a bundle name"):
        bundle.fetch_bundle("../../etc")
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    assert bundle.CACHE_VARIABLE in capsys.readouterr().out  # the help names the cache variable


def test_download_goes_through_monai_into_the_cache(tmp_path, monkeypatch):
    import monai.bundle

    calls = []

    def download(name, version=None, bundle_dir=None, progress=True):
        calls.append((name, bundle_dir))
        make_brats_bundle(tmp_path / "cache" / name)

    monkeypatch.setattr(monai.bundle, "download", download)
    monkeypatch.setenv(bundle.CACHE_VARIABLE, str(tmp_path / "cache"))
    assert bundle.bundle_cache() == tmp_path / "cache"
    folder = bundle.fetch_bundle("brats_mri_segmentation")
    assert folder == tmp_path / "cache" / "brats_mri_segmentation" and bundle.is_bundle(folder)
    assert calls == [("brats_mri_segmentation", str(tmp_path / "cache"))]
    assert bundle.fetch_bundle("brats_mri_segmentation") == folder and len(calls) == 1  # cached: no second download


def test_cli_uses_the_cached_zoo_bundle_and_orders_channels_by_name(tmp_path, monkeypatch, capsys):
    import monai.bundle

    affine, shape = grid("axial-lps")
    images, points, centre = phantom(shape, affine)
    make_brats_bundle(tmp_path / "cache" / "brats_mri_segmentation", pixdim=(0.8, 0.8, 3.0),
                      thresholds=midpoints(images))
    monkeypatch.setenv(bundle.CACHE_VARIABLE, str(tmp_path / "cache"))
    monkeypatch.setattr(monai.bundle, "download", offline)  # a download would fail: the cache must be used
    paths = write_case(tmp_path, affine, images)
    out = tmp_path / "brats.nii.gz"
    assert main(["segment", *map(str, paths), "--bundle", "brats_mri_segmentation", "-o", str(out),
                 "--probabilities", str(tmp_path / "p.nii.gz")]) == 0
    printed = capsys.readouterr().out
    assert "T1c = " + str(tmp_path / "case_t1ce.nii.gz") in printed and "1 = Tumor core" in printed
    probabilities = read_nifti(tmp_path / "p.nii.gz")[0].data
    _, work = monai_grid(shape, affine, "RAS", (0.8, 0.8, 3.0))
    for output, (channel, axis) in BRATS_WIRING.items():
        offset, radius = OBJECTS[channel]
        truth = np.linalg.norm(points - centre - offset - (work[:3, axis] if axis is not None else 0), axis=-1) < radius
        assert dice(probabilities[output] >= 0.5, truth) > 0.9
    labels = read_nifti(out)[0].data
    assert labels.shape == shape and set(np.unique(labels)) == {0, 1, 2, 3}


SCRIPT = '''
from monai.networks.nets import UNet


def Net(**kwargs):
    """The bundle's own network factory: code that only a trusted bundle may run."""
    return UNet(**kwargs)
'''


def test_bundle_code_runs_only_when_trusted(tmp_path):
    folder = make_brats_bundle(tmp_path / "b")
    config_file = folder / "configs" / "inference.json"
    inference = json.loads(config_file.read_text())
    inference["network_def"]["channels"] = "$[4, 4]"  # an expression: evaluated by MONAI's parser
    config_file.write_text(json.dumps(inference))
    with pytest.raises(ValueError, match="expression or reference.*trust"):
        bundle.load_bundle(folder)
    trusted = bundle.load_bundle(folder, trust_code=True)
    assert trusted.config.network["args"]["channels"] == [4, 4]

    (folder / "mmfuse_bundle_scripts_test").mkdir()
    (folder / "mmfuse_bundle_scripts_test" / "__init__.py").write_text(SCRIPT)
    inference["network_def"]["_target_"] = "mmfuse_bundle_scripts_test.Net"
    config_file.write_text(json.dumps(inference))
    with pytest.raises(ValueError, match="outside torch and MONAI"):
        bundle.load_bundle(folder)
    own = bundle.load_bundle(folder, trust_code=True)
    affine, shape = grid("nifti-ras")
    images = phantom(shape, affine)[0][:, 8:40, 8:40, 8:24]
    np.testing.assert_allclose(segment.predict(own, images, device="cpu")[1],
                               segment.predict(trusted, images, device="cpu")[1], atol=1e-6)
