"""``mmfuse``: parameters checked against their declared ranges, silent wrongs refused (issue #17).

Every refusal is one line on stderr naming the parameter and the allowed range, exit code 1,
no traceback, and no output file.
"""

import json
import zipfile

import imageio.v3 as iio
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from napari_mmfuse.cli import main
from napari_mmfuse.core.params import ParameterRange, check_parameter
from napari_mmfuse.core.register.driver import max_levels
from napari_mmfuse.io import read
from napari_mmfuse.io.transforms import read_transform

AFFINE_TEXT = """#Insight Transform File V1.0
#Transform 0
Transform: AffineTransform_double_3_3
Parameters: {}
FixedParameters: 0 0 0
"""


pytestmark = pytest.mark.usefixtures("one_thread")


def _volume(shape=(16, 16, 16), seed=0):
    z, y, x = np.indices(shape)
    centre = np.asarray(shape) / 2
    ball = ((z - centre[0]) ** 2 + (y - centre[1]) ** 2 / 2 + (x - centre[2]) ** 2) < (min(shape) / 3) ** 2
    noise = np.random.default_rng(seed).standard_normal(shape) * 0.1
    return (ball + 0.02 * x + noise).astype(np.float32)


def _nifti(path, data, offset=0.0):
    affine = np.eye(4)
    affine[:3, 3] = offset
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return str(path)


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(1)
    volume = _volume()
    paths = {
        "vol": _nifti(tmp_path / "vol.nii.gz", volume),
        "vol2": _nifti(tmp_path / "vol2.nii.gz", _volume(seed=2)),
        "far": _nifti(tmp_path / "far.nii.gz", volume, offset=1000.0),
        "zeros": _nifti(tmp_path / "zeros.nii.gz", np.zeros((16, 16, 16), np.float32)),
        "a": str(tmp_path / "a.png"),
        "b": str(tmp_path / "b.png"),
    }
    iio.imwrite(paths["a"], (rng.random((32, 32)) * 255).astype(np.uint8))
    iio.imwrite(paths["b"], (rng.random((32, 32)) * 255).astype(np.uint8))
    return paths


def _refused(capsys, argv, output, *needles):
    """Run ``mmfuse argv``: exit 1, one line naming every needle, no traceback, no ``output``."""
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not output.exists()
    return lines[0]


# ----------------------------------------------------------------------------- 7: declared ranges

REFUSED = {
    "denoise --sigma 1e9": (["denoise", "{vol}", "--method", "gaussian", "--sigma", "1e9"], ("sigma", "<= 16")),
    "denoise --sigma -1": (["denoise", "{vol}", "--method", "gaussian", "--sigma", "-1"], ("--sigma", ">= 0")),
    "denoise --device bogus": (["denoise", "{vol}", "--method", "gaussian", "--device", "bogus"], ("'bogus'", "cpu")),
    "denoise tv --weight inf": (["denoise", "{vol}", "--method", "tv", "--weight", "inf"], ("--weight", "finite", "> 0")),
    "denoise --iterations 0": (["denoise", "{vol}", "--method", "diffusion", "--iterations", "0"], ("--iterations", "[1, 10000]")),
    "normalize --low 120": (["normalize", "{vol}", "--method", "percentile", "--low", "120"], ("--low", "[0, 100]")),
    "fuse guided r1=-5": (["fuse", "{a}", "{b}", "--method", "guided", "--param", "r1=-5"], ("r1", "[1, 500]")),
    "fuse learned crop=0": (["fuse", "{a}", "{b}", "--method", "learned", "--param", "crop=0"], ("crop", "[8, 1024]")),
    "fuse saliency sigma=-1": (["fuse", "{a}", "{b}", "--method", "saliency", "--param", "sigma=-1"], ("sigma", "(0, 1000]")),
    "fuse levels=-1": (["fuse", "{a}", "{b}", "--method", "laplacian", "--param", "levels=-1"], ("levels", "[1, 10]")),
    "fuse levels=0": (["fuse", "{a}", "{b}", "--method", "laplacian", "--param", "levels=0"], ("levels", "[1, 10]")),
    "fuse levels=1000": (["fuse", "{a}", "{b}", "--method", "wavelet", "--param", "levels=1000"], ("levels", "[1, 10]")),
    "fuse n_iter=-1": (["fuse", "{a}", "{b}", "--method", "learned", "--param", "n_iter=-1"], ("n_iter", "[1, 100000]")),
    "fuse eps1=nan": (["fuse", "{a}", "{b}", "--method", "guided", "--param", "eps1=nan"], ("eps1", "finite", "> 0")),
    "fuse --modality XX": (["fuse", "{a}", "{b}", "--modality", "XX", "MR"], ("'XX'", "MR, MRI, CT")),
    "fuse --device bogus": (["fuse", "{a}", "{b}", "--device", "bogus"], ("'bogus'", "cpu")),
    "segment --patch -8": (["segment", "{vol}", "--method", "unet", "--model", "m", "--patch", "-8"], ("--patch", "[8, 1024]")),
    "segment --patch 0": (["segment", "{vol}", "--method", "unet", "--model", "m", "--patch", "0"], ("--patch", "[8, 1024]")),
    "segment --classes 9": (["segment", "{vol}", "--method", "multiotsu", "--classes", "9"], ("--classes", "[2, 5]")),
    "segment --device bogus": (["segment", "{vol}", "--method", "otsu", "--device", "bogus"], ("'bogus'", "cpu")),
    "register --levels 0": (["register", "{vol}", "{vol2}"], ("--levels", ">= 1")),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_parameter_out_of_range_is_refused(case, files, tmp_path, capsys):
    argv, needles = REFUSED[case]
    suffix = ".png" if argv[0] == "fuse" else ".nii.gz"
    output = tmp_path / f"out{suffix}"
    argv = [a.format(**files) for a in argv] + ["-o", str(output)]
    if case == "register --levels 0":
        argv += ["--levels", "0"]
    _refused(capsys, argv, output, *needles)


def test_check_parameter_messages():
    spec = ParameterRange(float, 0.0, 10.0, open_minimum=True)
    assert check_parameter("x", "2.5", spec) == 2.5
    for bad in ("0", "11", "nan", "inf", "two"):
        with pytest.raises(ValueError, match=r"^x must be a finite number in \(0, 10\], got"):
            check_parameter("x", bad, spec)
    with pytest.raises(ValueError, match=r"must be an integer"):
        check_parameter("n", "2.5", ParameterRange(int, 1, None))


def test_register_levels_capped_by_image_size(files, tmp_path, capsys):
    # 16 voxels a side: 16 // 2 = 8 keeps 8 voxels per axis, so at most 2 levels
    assert max_levels((16, 16, 16)) == 2 and max_levels((32, 32, 32)) == 3 and max_levels((7, 40)) == 1
    output = tmp_path / "r.nii.gz"
    argv = ["register", files["vol"], files["vol2"], "-o", str(output), "--levels", "100", "--iterations", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "note: --levels 100 capped to 2" in out
    assert output.exists()


# ----------------------------------------------------------------------------- 6: silent wrongs


def test_transform_off_reference_is_refused(files, tmp_path, capsys):
    identity = tmp_path / "id.tfm"
    identity.write_text(AFFINE_TEXT.format("1 0 0 0 1 0 0 0 1 0 0 0"))
    output = tmp_path / "t.nii.gz"
    argv = ["transform", files["far"], "--transform", str(identity), "--reference", files["vol"], "-o", str(output)]
    _refused(capsys, argv, output, "does not overlap the reference", "all zeros")
    # the same transform on an overlapping image still works
    assert main(["transform", files["vol2"], "--transform", str(identity), "--reference", files["vol"], "-o", str(output)]) == 0


def test_histogram_to_constant_reference_is_refused(files, tmp_path, capsys):
    output = tmp_path / "h.nii.gz"
    argv = ["normalize", files["vol"], "--method", "histogram", "--reference", files["zeros"], "-o", str(output)]
    _refused(capsys, argv, output, "reference image is constant")


def test_plain_multi_transform_file_is_refused_not_truncated(files, tmp_path, capsys):
    second = AFFINE_TEXT.format("2 0 0 0 1 0 0 0 1 0 0 0").split("\n", 1)[1].replace("#Transform 0", "#Transform 1")
    path = tmp_path / "two.tfm"
    path.write_text(AFFINE_TEXT.format("1 0 0 0 1 0 0 0 1 5 0 0") + second)
    assert path.read_text().count("Transform: ") == 2
    # SimpleITK keeps only the first of a plain list (with a warning): the second would be lost
    theirs = sitk.ReadTransform(str(path))
    assert theirs.GetName() != "CompositeTransform"
    assert theirs.TransformPoint((1.0, 1.0, 1.0)) == pytest.approx((6.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="holds 2 transforms .* without a CompositeTransform header"):
        read_transform(path)
    output = tmp_path / "t.nii.gz"
    argv = ["transform", files["vol"], "--transform", str(path), "--reference", files["vol"], "-o", str(output)]
    _refused(capsys, argv, output, "holds 2 transforms", "CompositeTransform")


def test_composite_transform_file_reads_as_simpleitk_applies_it(tmp_path):
    first = sitk.AffineTransform(3)
    first.SetMatrix((2.0, 0, 0, 0, 1, 0, 0, 0, 1))
    second = sitk.TranslationTransform(3, (5.0, -1.0, 2.0))
    path = tmp_path / "composite.tfm"
    sitk.WriteTransform(sitk.CompositeTransform([first, second]), str(path))
    theirs = sitk.ReadTransform(str(path))
    ours = read_transform(path)  # napari order (z, y, x) of ITK's physical (x, y, z)
    for point in [(1.0, 2.0, 3.0), (-4.0, 0.5, 7.0)]:
        expected = np.asarray(theirs.TransformPoint(point))
        mapped = ours @ np.append(point[::-1], 1.0)
        np.testing.assert_allclose(mapped[:3][::-1], expected, atol=1e-9)


def test_single_slice_volume_is_denoised_as_2d(tmp_path, capsys):
    data = _volume((1, 24, 24))
    source = _nifti(tmp_path / "slice.nii.gz", data)
    for method in ("tv", "gaussian", "median"):
        output = tmp_path / f"slice_{method}.nii.gz"
        assert main(["denoise", source, "--method", method, "-o", str(output)]) == 0, capsys.readouterr().err
        before, after = np.asarray(read(source)[0].level0), np.asarray(read(output)[0].level0)
        assert after.shape == before.shape
        assert np.isfinite(after).all() and not np.allclose(after, before)


# ----------------------------------------------------------------------------- 8: accurate messages


def test_fake_torchscript_is_named(files, tmp_path, capsys):
    model = tmp_path / "fake.pt"
    with zipfile.ZipFile(model, "w") as archive:
        archive.writestr("fake/code/__torch__.py", "not a model")
        archive.writestr("fake/data.pkl", "x")
    (tmp_path / "fake.json").write_text(json.dumps({"spatial_dims": 3, "in_channels": 1, "label_values": [0, 1]}))
    output = tmp_path / "seg.nii.gz"
    _refused(capsys, ["segment", files["vol"], "--model", str(model), "-o", str(output)], output,
             "is not a TorchScript model (or is corrupt)")


def test_constant_fused_volume_is_named(files, capsys):
    assert main(["fuse-metrics", files["vol"], files["vol2"], files["zeros"]]) == 1
    err = capsys.readouterr().err
    assert "the fused image is constant (all zeros)" in err and "NaN" not in err and "Traceback" not in err


def test_scribbles_off_the_grid_are_named(files, tmp_path, capsys):
    strokes = np.zeros((16, 16, 16), np.uint8)
    strokes[2:4, 2:4, 2:4], strokes[10:12, 10:12, 10:12] = 1, 2
    far = _nifti(tmp_path / "strokes_far.nii.gz", strokes, offset=1000.0)
    output = tmp_path / "seg.nii.gz"
    _refused(capsys, ["segment", files["vol"], "--scribbles", far, "--steps", "1", "-o", str(output)], output,
             "the scribbles do not overlap the images' grid")
