"""Core segmentation (classical, trainable, saved models) and the ``mmfuse segment``/``explain`` CLI."""

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from napari_mmfuse.cli import main
from napari_mmfuse.core import segment
from napari_mmfuse.io.nifti import read_nifti, write_nifti


pytestmark = pytest.mark.usefixtures("one_thread")


def blobs_2d(seed=0, size=48):
    """Two channels: A shows a bright disk (the lesion) on a head ellipse, B the head only."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    head = ((yy - size / 2) / (0.42 * size)) ** 2 + ((xx - size / 2) / (0.36 * size)) ** 2 < 1
    lesion = (yy - 0.6 * size) ** 2 + (xx - 0.62 * size) ** 2 < (0.1 * size) ** 2
    a = 0.5 * head + 0.8 * lesion + 0.05 * rng.standard_normal((size, size))
    b = 0.7 * head + 0.05 * rng.standard_normal((size, size))
    return np.stack([a, b]).astype(np.float32), head, lesion


def strokes(lesion, head, *, background=3, target=7):
    """Thin strokes: lesion centre row (value ``target``), rows of head and air (value ``background``)."""
    scribbles = np.zeros(lesion.shape, np.int32)
    ys, xs = np.nonzero(lesion)
    cy = int(ys.mean())
    scribbles[cy, xs[ys == cy].min() + 1 : xs[ys == cy].max()] = target
    for row in (int(0.3 * lesion.shape[0]), int(0.45 * lesion.shape[0]), int(0.8 * lesion.shape[0])):
        scribbles[row][head[row] & ~lesion[row]] = background
    scribbles[2, :] = background
    scribbles[cy + 8, :] = np.where(head[cy + 8] & ~lesion[cy + 8], background, scribbles[cy + 8])
    return scribbles


def dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


SMALL = {"features": (8, 16), "patch_size": (32, 32), "device": "cpu", "batch_size": 4, "learning_rate": 1e-2}


@pytest.fixture(scope="module")
def trained():
    images, head, lesion = blobs_2d()
    scribbles = strokes(lesion, head)
    model, losses = segment.train(images, scribbles, steps=60, **SMALL)
    return images, scribbles, lesion, model, losses


def test_core_imports_no_qt():
    code = "import sys, napari_mmfuse.core.segment, napari_mmfuse.core.explain; sys.exit('qtpy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
@pytest.mark.parametrize("shape", [(40, 40), (12, 20, 20)])
def test_thresholds(dtype, shape):
    rng = np.random.default_rng(1)
    image = (rng.random(shape) * 100).astype(dtype)
    image[(slice(None),) * (len(shape) - 1) + (slice(0, 5),)] = 1000
    otsu = segment.threshold(image, method="otsu")
    assert otsu.dtype == np.uint8 and otsu.shape == shape
    assert otsu[..., :5].all() and otsu[..., 5:].mean() < 0.01  # Otsu's bin may clip the top of the low mode
    multi = segment.threshold(image, method="multiotsu", classes=3)
    assert set(np.unique(multi)) <= {1, 2, 3} and (multi[..., :5] == 3).all()
    pct = segment.threshold(image, method="percentile", percentiles=(50,))
    assert abs((pct == 2).mean() - 0.5) < 0.05
    mask = np.zeros(shape, bool)
    mask[..., 10:] = True
    assert not segment.threshold(image, method="otsu", mask=mask)[..., :10].any()


def test_threshold_errors():
    with pytest.raises(ValueError, match="constant"):
        segment.threshold(np.ones((8, 8)))
    with pytest.raises(ValueError, match="unknown threshold"):
        segment.threshold(np.arange(64.0).reshape(8, 8), method="kmeans")
    with pytest.raises(ValueError, match="2 to 5"):
        segment.threshold(np.arange(64.0).reshape(8, 8), method="multiotsu", classes=9)


def test_connected_components_size_filter():
    mask = np.zeros((20, 20), bool)
    mask[1:3, 1:3] = True  # 4 voxels
    mask[10:15, 10:15] = True  # 25 voxels
    mask[5:8, 15:18] = True  # 9 voxels
    labels = segment.connected_components(mask, min_size=5)
    assert labels.dtype == np.int32 and labels.max() == 2
    assert (labels[10:15, 10:15] == 1).all() and (labels[5:8, 15:18] == 2).all() and labels[1, 1] == 0
    largest = segment.connected_components(mask, keep="largest")
    assert largest.max() == 1 and largest.sum() == 25
    assert not segment.connected_components(np.zeros((4, 4))).any()


def test_watershed_keeps_class_values_and_rejects_one_class():
    images, head, lesion = blobs_2d()
    seeds = strokes(lesion, head, background=4, target=9)
    labels = segment.watershed(images, seeds)
    assert set(np.unique(labels)) == {4, 9}
    assert dice(labels == 9, lesion) > 0.8
    with pytest.raises(ValueError, match="two classes"):
        segment.watershed(images, np.where(seeds == 9, 9, 0))


def test_channel_stats_leave_out_a_constant_background():
    rng = np.random.default_rng(2)
    tissue = rng.normal(3.0, 0.5, (20, 20))
    stripped = np.full((40, 40), -4.0)  # a skull-stripped slice: constant outside the brain
    stripped[10:30, 10:30] = tissue
    natural = rng.normal(1.0, 2.0, (40, 40))  # no repeated minimum: every voxel counts
    mostly_empty = np.zeros((40, 40))
    mostly_empty[0, :5] = 1.0  # under 1 % above the minimum: every voxel counts
    mean, std = segment.channel_stats(np.stack([stripped, natural, mostly_empty]))
    np.testing.assert_allclose(mean[0], tissue.mean(), rtol=1e-6)
    np.testing.assert_allclose(std[0], tissue.std(), rtol=1e-6)
    above_minimum = natural[natural > natural.min()]
    np.testing.assert_allclose([mean[1], std[1]], [above_minimum.mean(), above_minimum.std()], rtol=1e-6)
    np.testing.assert_allclose([mean[2], std[2]], [mostly_empty.mean(), mostly_empty.std()], rtol=1e-6)
    assert segment.channel_stats(np.zeros((1, 8, 8)))[1] == [1e-6]


def test_stack_modalities_resamples_to_the_reference_grid():
    fine = np.zeros((20, 20), np.float32)
    fine[:, 10:] = 1
    coarse = fine[::2, ::2]
    coarse_affine = np.diag([2.0, 2.0, 1.0])
    coarse_affine[:2, 2] = 0.5  # voxel centres of the 2x coarser grid
    stacked = segment.stack_modalities([fine, coarse], [np.eye(3), coarse_affine], (20, 20), np.eye(3), device="cpu")
    assert stacked.shape == (2, 20, 20) and stacked.dtype == np.float32
    assert np.abs(stacked[1][:, :9] - 0).max() < 1e-6 and np.abs(stacked[1][:, 11:] - 1).max() < 1e-6
    with pytest.raises(ValueError, match="affines"):
        segment.stack_modalities([fine], [], (20, 20), np.eye(3))


def test_train_predict_2d_keeps_label_values(trained):
    images, scribbles, lesion, model, losses = trained
    assert model.config.label_values == [3, 7]
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    labels, probabilities = segment.predict(model, images, device="cpu")
    assert labels.shape == images.shape[1:] and set(np.unique(labels)) <= {3, 7}
    assert probabilities.shape == (2,) + images.shape[1:] and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=0), 1, atol=1e-5)
    assert (labels[scribbles > 0] == scribbles[scribbles > 0]).mean() > 0.9
    assert dice(labels == 7, lesion) > 0.6
    for kind in ("entropy", "margin"):
        u = segment.uncertainty(probabilities, kind=kind)
        assert u.shape == labels.shape and 0 <= u.min() and u.max() <= 1


def test_test_time_flips_average_the_flipped_predictions(trained):
    images, _, lesion, model, _ = trained
    _, plain = segment.predict(model, images, device="cpu")
    labels, flipped = segment.predict(model, images, test_time_flips=True, device="cpu")
    # 48 px with 32 px windows: the windows are placed symmetrically, so each pass is a whole flipped prediction
    passes = [plain] + [np.flip(segment.predict(model, np.flip(images, axis), device="cpu")[1], axis)
                        for axis in (1, 2)]
    np.testing.assert_allclose(flipped, np.mean(passes, axis=0), atol=1e-5)
    assert dice(labels == 7, lesion) > 0.6


def test_augmented_patches_keep_labels_aligned():
    rng = np.random.default_rng(0)
    target = rng.integers(-1, 3, size=(10, 12, 14))
    images = np.stack([target, 10 + target]).astype(np.float32)  # each channel encodes the label it should carry
    by_class = [np.argwhere(target == k) for k in range(3)]
    fill = np.array([-1.0, 9.0], np.float32).reshape(2, 1, 1, 1)  # outside: unlabelled in both encodings
    x, y = segment.sample_patches(images, target, by_class, (8, 8, 8), 16, rng, fill, intensity=0.0)
    assert x.shape == (16, 2, 8, 8, 8) and y.shape == (16, 8, 8, 8)
    np.testing.assert_array_equal(x[:, 0], y)
    np.testing.assert_array_equal(x[:, 1], 10 + y)


def test_warm_start_continues_the_same_weights(trained):
    images, scribbles, _, model, _ = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    generator = segment.train_steps(images, scribbles, model=model, steps=50, device="cpu")
    first = next(generator)
    generator.close()  # cancel after one step
    assert first.step == 1 and first.total == 50
    assert not model.training
    changed = [k for k in before if not torch.equal(before[k], model.state_dict()[k])]
    assert changed
    with pytest.raises(ValueError, match="channels"):
        next(segment.train_steps(images[:1], scribbles, model=model, device="cpu"))
    with pytest.raises(ValueError, match="not among"):
        next(segment.train_steps(images, np.where(scribbles == 7, 5, scribbles), model=model, device="cpu"))


@pytest.mark.parametrize(
    ("scribbles", "message"),
    [(np.zeros((48, 48), int), "empty"), (np.pad(np.ones((2, 2), int), 23), "one class"),
     (np.zeros((10, 10), int), "shape")],
)
def test_bad_scribbles(scribbles, message):
    images, _, _ = blobs_2d()
    with pytest.raises(ValueError, match=message):
        next(segment.train_steps(images, scribbles, device="cpu"))


def test_late_fusion_3d_average_and_vote():
    rng = np.random.default_rng(2)
    images = rng.standard_normal((2, 12, 16, 16)).astype(np.float32)
    images[0, :, 4:10, 4:10] += 3
    scribbles = np.zeros((12, 16, 16), np.int32)
    scribbles[6, 6:8, 6:8] = 2
    scribbles[6, 0, :] = 1
    model, _ = segment.train(images, scribbles, fusion="late", steps=3, features=(4, 8), patch_size=(8, 8, 8),
                             fusion_weights=(3, 1), device="cpu")
    assert len(model.networks) == 2 and model.config.fusion_weights == [3.0, 1.0]
    labels, probabilities = segment.predict(model, images, device="cpu")
    assert labels.shape == (12, 16, 16) and probabilities.shape == (2, 12, 16, 16)
    model.config.combine = "vote"
    voted, _ = segment.predict(model, images, device="cpu")
    assert set(np.unique(voted)) <= {1, 2}
    model.config.fusion_weights = [1.0, 1.0]  # two equal voters: ties go to the averaged probabilities
    model.config.combine = "average"
    averaged, _ = segment.predict(model, images, device="cpu")
    model.config.combine = "vote"
    np.testing.assert_array_equal(segment.predict(model, images, device="cpu")[0], averaged)
    with pytest.raises(ValueError, match="channels"):
        segment.predict(model, images[:1], device="cpu")


def test_save_load_round_trip_and_unsafe_files(trained, tmp_path):
    images, _, _, model, _ = trained
    weights, config = segment.save_model(model, tmp_path / "model")
    assert weights.name == "model.pt" and json.loads(config.read_text())["label_values"] == [3, 7]
    with pytest.raises(FileExistsError):
        segment.save_model(model, tmp_path / "model.pt")
    loaded = segment.load_model(tmp_path / "model")
    np.testing.assert_array_equal(segment.predict(loaded, images, device="cpu")[0],
                                  segment.predict(model, images, device="cpu")[0])
    # a model is an operation output: saved by its own save(), described for provenance
    assert model.kind == "model" and "source" not in model.describe()
    described = loaded.describe()
    assert described["weights_hash"] == model.describe()["weights_hash"] and described["label_values"] == [3, 7]
    assert described["source"] == {"path": str((tmp_path / "model").resolve()), "kind": "model"}
    assert model.save(tmp_path / "again", overwrite=False)[1] == tmp_path / "again.json"

    # an arbitrary object needs full unpickling (it could run code), which weights_only refuses
    torch.save({"payload": argparse.Namespace(command="rm -rf")}, tmp_path / "unsafe.pt")
    (tmp_path / "unsafe.json").write_text(config.read_text())
    with pytest.raises(ValueError, match="not a weights-only file"):
        segment.load_model(tmp_path / "unsafe.pt")
    other = json.loads(config.read_text()) | {"features": [4, 8]}
    (tmp_path / "model.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match="do not fit"):
        segment.load_model(tmp_path / "model.pt")
    (tmp_path / "model.json").write_text(json.dumps(other | {"colour": "red"}))
    with pytest.raises(ValueError, match="unknown model configuration keys"):
        segment.load_model(tmp_path / "model.pt")
    (tmp_path / "model.json").unlink()
    with pytest.raises(ValueError, match="no configuration"):
        segment.load_model(tmp_path / "model.pt")


def test_torchscript_model_with_config(trained, tmp_path):
    images, _, _, model, _ = trained
    scripted = torch.jit.trace(model.networks[0], torch.zeros(1, 2, 32, 32))
    scripted.save(str(tmp_path / "net.pt"))
    with pytest.raises(ValueError, match="TorchScript model without"):
        segment.load_model(tmp_path / "net.pt")
    config = {"spatial_dims": 2, "in_channels": 2, "label_values": [3, 7], "patch_size": [32, 32],
              "channel_mean": model.config.channel_mean, "channel_std": model.config.channel_std}
    (tmp_path / "net.json").write_text(json.dumps(config))
    loaded = segment.load_model(tmp_path / "net.pt")
    assert loaded.config.architecture == "torchscript"
    np.testing.assert_array_equal(segment.predict(loaded, images, device="cpu")[0],
                                  segment.predict(model, images, device="cpu")[0])


def test_predict_resamples_to_the_model_spacing(trained):
    images, _, lesion, model, _ = trained
    fine = np.repeat(np.repeat(images, 2, axis=1), 2, axis=2)  # same anatomy at 0.5 mm
    model.config.spacing = [1.0, 1.0]
    try:
        affine = np.diag([0.5, 0.5, 1.0])
        affine[:2, 2] = -0.25
        labels, probabilities = segment.predict(model, fine, affine=affine, device="cpu")
    finally:
        model.config.spacing = None
    assert labels.shape == fine.shape[1:] and probabilities.shape == (2,) + fine.shape[1:]
    coarse, _ = segment.predict(model, images, device="cpu")
    assert dice(labels[::2, ::2] == 7, coarse == 7) > 0.9


def _write_subject(tmp_path):
    rng = np.random.default_rng(3)
    z, y, x = np.mgrid[:12, :24, :24]
    lesion = (z - 6) ** 2 + (y - 12) ** 2 + (x - 14) ** 2 < 16
    a = (lesion * 2.0 + 0.1 * rng.standard_normal(lesion.shape)).astype(np.float32)
    b = rng.standard_normal((12, 12, 12)).astype(np.float32)  # other grid: 2 mm in-plane
    affine_b = np.diag([1.0, 2.0, 2.0, 1.0])
    write_nifti(tmp_path / "a.nii.gz", a, np.eye(4))
    write_nifti(tmp_path / "b.nii.gz", b, affine_b)
    scribbles = np.zeros(lesion.shape, np.int16)
    scribbles[6, 12, 12:17] = 5
    scribbles[6, 2, :] = 1
    scribbles[6, 20, :] = 1
    write_nifti(tmp_path / "s.nii.gz", scribbles, np.eye(4), labels=True)
    return lesion


def test_cli_segment_and_explain(tmp_path, capsys):
    lesion = _write_subject(tmp_path)
    a, b, s = (str(tmp_path / f"{n}.nii.gz") for n in "abs")
    assert main(["segment", a, b, "--method", "otsu", "-o", str(tmp_path / "otsu.nii.gz")]) == 0
    otsu = read_nifti(tmp_path / "otsu.nii.gz")[0]
    assert otsu.layer_type == "labels" and dice(np.asarray(otsu.data) == 1, lesion) > 0.9
    args = ["segment", a, b, "--method", "unet", "--scribbles", s, "--steps", "4", "--patch", "8",
            "--save-model", str(tmp_path / "m"), "--probabilities", str(tmp_path / "p.nii.gz"),
            "-o", str(tmp_path / "unet.nii.gz"), "--device", "cpu"]
    assert main(args) == 0
    labels = np.asarray(read_nifti(tmp_path / "unet.nii.gz")[0].data)
    assert labels.shape == (12, 24, 24) and set(np.unique(labels)) <= {1, 5}
    probabilities = read_nifti(tmp_path / "p.nii.gz")[0]
    assert np.asarray(probabilities.data).shape == (2, 12, 24, 24)
    assert (tmp_path / "m.pt").exists() and (tmp_path / "m.json").exists()
    assert main(args) == 1  # outputs exist, no --overwrite
    assert "already exists" in capsys.readouterr().err
    assert main(["segment", a, b, "--model", str(tmp_path / "m"), "-o", str(tmp_path / "again.nii.gz")]) == 0
    write_nifti(tmp_path / "roi.nii.gz", lesion.astype(np.uint8), np.eye(4), labels=True)
    assert main(["explain", a, b, "--model", str(tmp_path / "m"), "--target", "5", "--roi",
                 str(tmp_path / "roi.nii.gz"), "--method", "saliency", "-o", str(tmp_path / "sal.nii.gz"),
                 "--attribution-json", str(tmp_path / "attr.json"), "--device", "cpu"]) == 0
    saliency = np.asarray(read_nifti(tmp_path / "sal.nii.gz")[0].data)
    assert saliency.shape == (12, 24, 24) and saliency.max() > 0
    attribution = json.loads((tmp_path / "attr.json").read_text())
    assert len(attribution["attribution"]) == 2 and abs(sum(attribution["attribution"]) - 1) < 1e-6
    assert main(["explain", a, "--model", str(tmp_path / "m"), "--target", "5", "--method", "ig",
                 "-o", str(tmp_path / "ig.nii.gz")]) == 1
    assert "takes 2 channels" in capsys.readouterr().err


def test_cli_rejects_one_class_scribbles(tmp_path, capsys):
    _write_subject(tmp_path)
    write_nifti(tmp_path / "one.nii.gz", np.pad(np.ones((1, 2, 2), np.int16), ((6, 5), (10, 12), (10, 12))),
                np.eye(4), labels=True)
    code = main(["segment", str(tmp_path / "a.nii.gz"), "--scribbles", str(tmp_path / "one.nii.gz"),
                 "-o", str(tmp_path / "x.nii.gz")])
    assert code == 1 and "one class" in capsys.readouterr().err
    assert not (tmp_path / "x.nii.gz").exists()


@pytest.mark.parametrize("method", ["unet", "otsu"])
def test_cli_segment_replays_from_its_sidecar(tmp_path, method):
    """``mmfuse segment`` writes a provenance sidecar; ``mmfuse replay`` recomputes identical labels (seeded on the CPU)."""
    _write_subject(tmp_path)
    a, b, s = (str(tmp_path / f"{n}.nii.gz") for n in "abs")
    first, again = tmp_path / "first.nii.gz", tmp_path / "again.nii.gz"
    extra = ["--scribbles", s, "--steps", "3", "--patch", "8", "--seed", "5"] if method == "unet" else []
    assert main(["segment", a, b, "--method", method, *extra, "--device", "cpu", "-o", str(first)]) == 0
    sidecar = tmp_path / "first.nii.gz.provenance.json"
    record = json.loads(sidecar.read_text())
    assert record["operation"] == f"segment/{method}" and record["outputs"]["labels"]["path"] == str(first)
    assert record["seed"] == (5 if method == "unet" else None)
    assert main(["replay", str(sidecar), "-o", str(again)]) == 0
    np.testing.assert_array_equal(np.asarray(read_nifti(again)[0].data), np.asarray(read_nifti(first)[0].data))
