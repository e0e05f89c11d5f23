"""``mmfuse register`` / ``register-landmarks`` / ``transform`` on small files, checked with SimpleITK."""

import imageio.v3 as iio
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from napari_mmfuse.cli import main
from napari_mmfuse.core import space
from napari_mmfuse.core.register import apply_transform, transform_from_parameters
from napari_mmfuse.io.transforms import read_itk_transform, read_json_transform

# PNG world = pixel coordinates, (row, col) in napari order
TRUTH = transform_from_parameters(ndim=2, rotation_deg=6.0, translation=(5.0, -7.0), center=(48.0, 48.0))


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _scene(shape=(96, 96), seed=0):
    rng = np.random.default_rng(seed)
    texture = ndimage.gaussian_filter(rng.standard_normal(shape), 3)
    rows, cols = np.indices(shape)
    body = ((rows - 48) / 38.0) ** 2 + ((cols - 48) / 30.0) ** 2 < 1
    return np.where(body, 90 + 400 * texture, 10).clip(0, 255)


def _mean_error(estimate, truth, shape):
    points = np.indices(shape).reshape(2, -1).T.astype(float)
    difference = estimate - truth
    return float(np.linalg.norm(points @ difference[:2, :2].T + difference[:2, 2], axis=1).mean())


@pytest.fixture
def png_pair(tmp_path):
    """Fixed PNG and an inverted-contrast moving PNG with ``moving(TRUTH(p)) == fixed(p)``."""
    scene = _scene().astype(np.float32)
    moving = apply_transform(255 - scene, np.eye(3), np.linalg.inv(TRUTH), scene.shape, np.eye(3))
    iio.imwrite(tmp_path / "fixed.png", scene.astype(np.uint8))
    iio.imwrite(tmp_path / "moving.png", np.rint(moving).astype(np.uint8))
    return tmp_path / "fixed.png", tmp_path / "moving.png"


def test_register_png_pair_matches_truth_and_simpleitk(png_pair, tmp_path, capsys):
    fixed, moving = png_pair
    out, tfm = tmp_path / "out.png", tmp_path / "t.tfm"
    assert main(["register", str(fixed), str(moving), "-o", str(out), "--transform", str(tfm), "--metric", "mi"]) == 0
    assert "mi before" in capsys.readouterr().out
    estimate = read_itk_transform(tfm)
    assert _mean_error(estimate, TRUTH, (96, 96)) < 0.5
    ours = iio.imread(out)
    theirs = sitk.GetArrayFromImage(
        sitk.Resample(sitk.ReadImage(str(moving), sitk.sitkFloat32), sitk.ReadImage(str(fixed)), sitk.ReadTransform(str(tfm)), sitk.sitkLinear, 0.0)
    )
    assert ours.dtype == np.uint8 and ours.shape == theirs.shape
    inner = (slice(4, -4), slice(4, -4))
    assert np.abs(ours[inner].astype(float) - np.rint(theirs[inner])).max() <= 1

    # the saved transform reproduces the output through `mmfuse transform`
    again = tmp_path / "again.png"
    assert main(["transform", str(moving), "--transform", str(tfm), "--reference", str(fixed), "-o", str(again)]) == 0
    np.testing.assert_array_equal(iio.imread(again), ours)

    # outputs are not overwritten without --overwrite
    assert main(["register", str(fixed), str(moving), "-o", str(out), "--transform", str(tfm)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["transform", str(moving), "--transform", str(tfm), "--reference", str(fixed), "-o", str(again), "--overwrite"]) == 0


def test_register_rgb_moving_on_luminance_with_init(png_pair, tmp_path):
    fixed, moving = png_pair
    grey = iio.imread(moving)
    rgb_path = tmp_path / "moving_rgb.png"
    tinted = [grey, (grey * 0.8).astype(grey.dtype), (grey * 0.5).astype(grey.dtype)]  # colour, not grey-as-RGB
    iio.imwrite(rgb_path, np.stack(tinted, axis=-1))
    init = tmp_path / "init.json"
    assert main(["register-landmarks", str(_csv(tmp_path, "f.csv", [[0, 0], [90, 10], [30, 80]])),
                 str(_csv(tmp_path, "m.csv", _moved([[0, 0], [90, 10], [30, 80]], TRUTH))),
                 "--transform", str(init), "--model", "rigid"]) == 0  # fmt: skip
    out, tfm = tmp_path / "out_rgb.png", tmp_path / "t.json"
    assert main(["register", str(fixed), str(rgb_path), "-o", str(out), "--transform", str(tfm), "--init", str(init), "--model", "similarity"]) == 0
    assert iio.imread(out).shape == (96, 96, 3)
    assert _mean_error(read_json_transform(tfm), TRUTH, (96, 96)) < 0.5


def _csv(folder, name, points, header="x,y"):
    path = folder / name
    path.write_text(header + "\n" + "\n".join(",".join(f"{v:.10f}" for v in p) for p in points) + "\n")
    return path


def _moved(points_xy, transform):
    """Physical (x, y[, z]) points mapped through a napari-order transform."""
    napari = np.asarray(points_xy, float)[:, ::-1]
    n = napari.shape[1]
    return (napari @ transform[:n, :n].T + transform[:n, n])[:, ::-1]


def test_register_landmarks_3d_exact(tmp_path, capsys):
    truth = transform_from_parameters(ndim=3, rotation_deg=(10, -20, 30), translation=(4, -5, 6), scale=1.1, center=(1, 2, 3))
    fixed = np.random.default_rng(0).uniform(-40, 40, (6, 3))
    f = _csv(tmp_path, "fixed.csv", fixed, header="x,y,z")
    m = _csv(tmp_path, "moving.csv", _moved(fixed, truth), header="x,y,z")
    out = tmp_path / "lm.tfm"
    assert main(["register-landmarks", str(f), str(m), "--model", "similarity", "--transform", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "pair 6: residual 0.0000" in printed and "RMS residual" in printed
    np.testing.assert_allclose(read_itk_transform(out), truth, atol=1e-7)
    # SimpleITK maps the fixed physical points onto the moving ones
    itk = sitk.ReadTransform(str(out))
    np.testing.assert_allclose(itk.TransformPoint(tuple(fixed[0])), _moved(fixed[:1], truth)[0], atol=1e-6)
    assert main(["register-landmarks", str(f), str(m), "--transform", str(out)]) == 1
    few = _csv(tmp_path, "few.csv", fixed[:2], header="x,y,z")
    assert main(["register-landmarks", str(few), str(few), "--transform", str(tmp_path / "x.tfm")]) == 1
    assert "at least 3" in capsys.readouterr().err


def test_register_deformable_writes_field_simpleitk_agrees(tmp_path):
    shape = (64, 64)
    scene = _scene(shape, seed=2).astype(np.float32)
    affine = space.affine_from_itk((0.8, 0.8), (-20.0, 10.0))
    rows, cols = np.indices(shape)
    bump = np.exp(-(((rows - 32) / 14.0) ** 2 + ((cols - 30) / 14.0) ** 2))
    field = np.stack([1.5 * bump, -1.2 * bump], axis=-1).astype(np.float32)
    moving = apply_transform(255 - scene, affine, np.eye(3), shape, affine)
    fixed = apply_transform(scene, affine, np.eye(3), shape, affine, displacement=-field)
    for name, data in (("fixed.mha", fixed), ("moving.mha", moving)):
        image = sitk.GetImageFromArray(data)
        image.SetSpacing((0.8, 0.8))
        image.SetOrigin((-20.0, 10.0))
        sitk.WriteImage(image, str(tmp_path / name))
    out, tfm, disp = tmp_path / "out.mha", tmp_path / "t.tfm", tmp_path / "d.nii.gz"
    args = ["register", str(tmp_path / "fixed.mha"), str(tmp_path / "moving.mha"), "-o", str(out),
            "--model", "deformable", "--transform", str(tfm), "--displacement", str(disp), "--iterations", "60"]  # fmt: skip
    assert main(args) == 0
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    composite = sitk.CompositeTransform(
        [sitk.ReadTransform(str(tfm)), sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(str(disp)), sitk.sitkVectorFloat64))]
    )
    theirs = sitk.GetArrayFromImage(
        sitk.Resample(sitk.ReadImage(str(tmp_path / "moving.mha")), sitk.ReadImage(str(tmp_path / "fixed.mha")), composite, sitk.sitkLinear, 0.0)
    )
    inner = (slice(4, -4), slice(4, -4))
    np.testing.assert_allclose(ours[inner], theirs[inner], atol=1e-2)
    # the registered image is closer to the (inverted) fixed image than the input was
    target = 255 - fixed
    assert np.abs(ours - target)[inner].mean() < 0.7 * np.abs(moving - target)[inner].mean()


def test_cli_bad_input_messages(png_pair, tmp_path, capsys):
    fixed, _ = png_pair
    volume = tmp_path / "vol.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).random((8, 8, 8)).astype(np.float32)), str(volume))
    assert main(["register", str(fixed), str(volume), "-o", str(tmp_path / "o.mha")]) == 1
    assert "2D and the moving image 3D" in capsys.readouterr().err
    assert main(["register", str(fixed), str(fixed), "-o", str(tmp_path / "o.xyz")]) == 1
    assert "must end in one of" in capsys.readouterr().err
    assert main(["register", str(fixed), str(fixed), "-o", str(tmp_path / "same.png")]) == 0
    assert "identical" in capsys.readouterr().out


def test_register_and_transform_replay_from_their_sidecars(png_pair, tmp_path):
    """CLI output -> provenance sidecar -> ``mmfuse replay`` -> the identical output (rigid is deterministic here)."""
    from napari_mmfuse.provenance import sidecar_path

    fixed, moving = png_pair
    out, tfm = tmp_path / "out.nii.gz", tmp_path / "t.tfm"
    assert main(["register", str(fixed), str(moving), "-o", str(out), "--transform", str(tfm), "--iterations", "30"]) == 0
    assert sidecar_path(out).is_file() and sidecar_path(tfm).is_file()
    again = tmp_path / "again.tfm"
    assert main(["replay", str(sidecar_path(tfm)), "-o", str(again)]) == 0
    np.testing.assert_array_equal(read_itk_transform(again), read_itk_transform(tfm))
    resampled = tmp_path / "again.nii.gz"
    assert main(["replay", str(sidecar_path(out)), "-o", str(resampled)]) == 0
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(resampled))),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(out))))

    moved = tmp_path / "moved.nii.gz"
    assert main(["transform", str(moving), "--transform", str(tfm), "--reference", str(fixed), "-o", str(moved)]) == 0
    assert sidecar_path(moved).is_file()
    moved_again = tmp_path / "moved_again.nii.gz"
    assert main(["replay", str(sidecar_path(moved)), "-o", str(moved_again)]) == 0
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(moved_again))),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(moved))))
