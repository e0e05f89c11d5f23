"""Bundles load right: orientation, spacing and window in the bundle's axes, sigmoid and softmax heads.

The synthetic bundles copy the zoo's configs (brats_mri_segmentation: 4 MRI channels,
``Orientationd`` RAS, ``Spacingd``, ``NormalizeIntensityd`` nonzero/channel-wise, sigmoid
with 3 overlapping outputs; spleen_ct_segmentation: 1 CT channel, ``ScaleIntensityRanged``,
softmax). Their network is a MONAI UNet without norm or activation whose weights make it a
known function: each output channel thresholds one input channel, shifted by one voxel
along one of the bundle's axes, so a result in the wrong axes lands in the wrong place.
"""

import json

import numpy as np
import pytest
import torch

from napari_mmfuse.core import segment, space
from napari_mmfuse.core.bundle import load_bundle, read_bundle
from napari_mmfuse.core.segment.predict import model_grid

BRATS_CHANNELS = {"0": "T1c", "1": "T1", "2": "T2", "3": "FLAIR"}
BRATS_OUTPUTS = {"0": "Tumor core", "1": "Whole tumor", "2": "Enhancing tumor"}
#: output channel -> (input channel it thresholds, bundle axis it is shifted along by one voxel or None)
BRATS_WIRING = {0: (0, 0), 1: (3, 2), 2: (2, None)}
#: input channel -> (centre offset in mm from the volume centre, napari z, y, x; radius in mm)
OBJECTS = {0: ((2.0, -3.0, 4.0), 9.0), 3: ((0.0, -2.0, 3.0), 14.0), 2: ((3.0, -4.0, 5.0), 6.0), 1: ((0, 0, 0), 0.0)}


def linear_unet(in_channels, out_channels, wiring, thresholds, gain=20.0):
    """A UNet (no norm, no activation, stride 1) whose output ``o`` is ``gain * (x[c] shifted - t)``."""
    from monai.networks.nets import UNet

    net = UNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, channels=(4, 4), strides=(1,),
               num_res_units=0, act=None, norm=None)
    state = {k: torch.zeros_like(v) for k, v in net.state_dict().items()}
    n = min(in_channels, 4)
    for c in range(n):
        state["model.0.conv.weight"][c, c, 1, 1, 1] = 1.0
    for o, (c, axis) in wiring.items():
        sign, source = (1.0, c) if c >= 0 else (-1.0, -c - 1)
        kernel = [1, 1, 1]
        if axis is not None:
            kernel[axis] = 2  # transposed conv: output voxel i reads input voxel i - 1 (a +1 voxel shift)
        state["model.2.conv.weight"][(source, o, *kernel)] = sign * gain
        state["model.2.conv.bias"][o] = -sign * gain * thresholds[source]
    net.load_state_dict(state)
    return net.eval()


def write_bundle(folder, net, *, network_args, preprocessing, roi, head, channels, outputs):
    """A bundle folder laid out and configured like the zoo's."""
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    post = [{"_target_": "Activationsd", "keys": "pred", head: True}]
    post += [{"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5} if head == "sigmoid"
             else {"_target_": "AsDiscreted", "keys": "pred", "argmax": True}]
    inference = {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": {"_target_": "UNet", **network_args},
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            *preprocessing,
            {"_target_": "EnsureTyped", "keys": "image"}]},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": roi, "sw_batch_size": 1, "overlap": 0.5},
        "postprocessing": {"_target_": "Compose", "transforms": post},
    }
    metadata = {"version": "0.1.0", "network_data_format": {
        "inputs": {"image": {"type": "image", "num_channels": len(channels), "channel_def": channels}},
        "outputs": {"pred": {"type": "image", "num_channels": len(outputs), "channel_def": outputs}}}}
    (folder / "configs" / "inference.json").write_text(json.dumps(inference, indent=1))
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=1))
    torch.save(net.state_dict(), folder / "models" / "model.pt")
    return folder


def network_args(in_channels, out_channels):
    return {"spatial_dims": 3, "in_channels": in_channels, "out_channels": out_channels, "channels": [4, 4],
            "strides": [1], "num_res_units": 0, "act": None, "norm": None}


def make_brats_bundle(folder, *, pixdim=(1.0, 1.0, 1.0), roi=(32, 32, 16), thresholds=(0.5, 0.5, 0.5, 0.5)):
    """brats_mri_segmentation's layout: 4 channels, RAS, Spacingd, nonzero z-scores, 3 sigmoid outputs."""
    net = linear_unet(4, 3, BRATS_WIRING, thresholds)
    preprocessing = [{"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
                     {"_target_": "Spacingd", "keys": "image", "pixdim": list(pixdim), "mode": "bilinear"},
                     {"_target_": "monai.transforms.NormalizeIntensityd", "keys": "@image_key", "nonzero": True,
                      "channel_wise": True}]  # a reference in keys (unused here) and a full module path
    return write_bundle(folder, net, network_args=network_args(4, 3), preprocessing=preprocessing, roi=list(roi),
                        head="sigmoid", channels=BRATS_CHANNELS, outputs=BRATS_OUTPUTS)


def make_spleen_bundle(folder):
    """spleen_ct_segmentation's layout: 1 CT channel, RAS, [1.5, 1.5, 2.0] mm, HU window, softmax."""
    # ScaleIntensityRange maps -57..164 HU to 0..1; 100 HU (spleen) -> 0.71, 0 HU -> 0.26: threshold 0.5
    net = linear_unet(1, 2, {0: (-1, 1), 1: (0, 1)}, [0.5])
    preprocessing = [{"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
                     {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 2.0], "mode": "bilinear"},
                     {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -57, "a_max": 164, "b_min": 0.0,
                      "b_max": 1.0, "clip": True}]
    return write_bundle(folder, net, network_args=network_args(1, 2), preprocessing=preprocessing, roi=[32, 32, 32],
                        head="softmax", channels={"0": "image"}, outputs={"0": "background", "1": "spleen"})


def rotation(degrees, axis):
    angle = np.deg2rad(degrees)
    c, s = np.cos(angle), np.sin(angle)
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


#: input grids (napari affine, shape): DICOM-like axial LPS, NIfTI-like RAS (i, j, k) arrays, oblique
GRIDS = {
    "axial-lps": (np.diag([3.0, 0.8, 0.8, 1.0]), (20, 64, 64)),
    "nifti-ras": (space.affine_from_nifti(np.diag([1.2, 1.2, 1.5, 1.0])), (48, 48, 40)),
    "oblique": (None, (40, 44, 40)),
}


def grid(name):
    affine, shape = GRIDS[name]
    if affine is None:  # rotated 20 degrees about x then 15 about z, anisotropic voxels, a leading flip
        affine = np.eye(4)
        affine[:3, :3] = rotation(20, 2) @ rotation(15, 0) @ np.diag([-1.4, 1.1, 1.2])
    affine = affine.copy()
    centre = space.voxel_to_world(affine, (np.asarray(shape) - 1) / 2)
    affine[:3, 3] += np.array([10.0, -20.0, 30.0]) - centre  # volume centre at a known world point
    return affine, shape


def world_points(shape, affine):
    index = np.indices(shape).reshape(3, -1).T
    return space.voxel_to_world(affine, index).reshape(*shape, 3)


def phantom(shape, affine):
    """4 MRI channels: a head (1) holding per-channel spheres (3) placed in world mm; 0 outside the head."""
    points = world_points(shape, affine)
    centre = np.array([10.0, -20.0, 30.0])
    head = (((points - centre) / np.array([22.0, 24.0, 24.0])) ** 2).sum(-1) < 1
    images = np.zeros((4, *shape), np.float32)
    for channel, (offset, radius) in OBJECTS.items():
        images[channel][head] = 1.0
        images[channel][np.linalg.norm(points - centre - offset, axis=-1) < radius] = 3.0
        images[channel][~head] = 0.0
    return images, points, centre


def midpoints(images):
    """Per channel, raw value 2 (between head 1 and object 3) after nonzero channel-wise z-scoring."""
    values = [channel[channel != 0] for channel in images]
    return [float((2.0 - v.mean()) / v.std()) if v.std() else 0.5 for v in values]


def monai_grid(shape, affine, axcodes, pixdim):
    """MONAI's own Orientation + Spacing of the same image: its shape and napari-order LPS affine."""
    from monai.data import MetaTensor
    from monai.transforms import Orientation, Spacing

    image = MetaTensor(torch.zeros((1, *shape)), affine=torch.as_tensor(space.nifti_from_affine(affine)))
    out = Spacing(pixdim=pixdim)(Orientation(axcodes=axcodes)(image))
    return tuple(out.shape[1:]), space.affine_from_nifti(np.asarray(out.affine, np.float64))


def dice(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


@pytest.mark.parametrize("name", sorted(GRIDS))
@pytest.mark.parametrize("pixdim", [(1.0, 1.0, 1.0), (0.8, 0.8, 3.0)])
def test_model_grid_is_monai_orientation_then_spacing(name, pixdim):
    affine, shape = grid(name)
    config = read_bundle_config(pixdim)
    ours_shape, ours = model_grid(config, shape, affine)
    theirs_shape, theirs = monai_grid(shape, affine, "RAS", pixdim)
    np.testing.assert_allclose(ours[:3, :3], theirs[:3, :3], atol=1e-6)  # same axes, directions, spacing
    # MONAI spans the voxel centres, we the voxels' full extent: at most one input voxel apart
    slack = np.ceil(space.spacing_of(affine).max() / np.asarray(pixdim))
    assert np.all(np.abs(np.subtract(ours_shape, theirs_shape)) <= slack), (ours_shape, theirs_shape)
    # same world extent: the grids' centres agree to within a voxel of the bundle's spacing
    ours_centre = space.voxel_to_world(ours, (np.asarray(ours_shape) - 1) / 2)
    theirs_centre = space.voxel_to_world(theirs, (np.asarray(theirs_shape) - 1) / 2)
    assert np.linalg.norm(ours_centre - theirs_centre) <= max(pixdim)


def read_bundle_config(pixdim):
    """The configuration read from a brats-like bundle with ``pixdim``."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        return read_bundle(make_brats_bundle(Path(folder) / "b", pixdim=pixdim))[0]


def test_axial_ct_keeps_its_grid_at_its_own_spacing():
    """The measured bug: an axial CT at 0.8 x 0.8 x 3 mm went from (40, 256, 256) to (150, 256, 68)."""
    config = read_bundle_config((0.8, 0.8, 3.0))
    assert config.orientation == "RAS" and config.spacing == [0.8, 0.8, 3.0] and config.patch_size == [32, 32, 16]
    shape, affine = model_grid(config, (40, 256, 256), np.diag([3.0, 0.8, 0.8, 1.0]))
    assert shape == (256, 256, 40)  # the bundle's (x, y, z) axes, same voxels
    np.testing.assert_allclose(space.spacing_of(affine), [0.8, 0.8, 3.0])
    assert space.orientation_code(affine) == "RAS"


@pytest.mark.parametrize("name", sorted(GRIDS))
@pytest.mark.parametrize("pixdim", [(1.0, 1.0, 1.0), (0.8, 0.8, 3.0)])
def test_brats_like_bundle_finds_each_object_in_place(tmp_path, name, pixdim):
    affine, shape = grid(name)
    images, points, centre = phantom(shape, affine)
    model = load_bundle(make_brats_bundle(tmp_path / "b", pixdim=pixdim, thresholds=midpoints(images)))
    assert model.config.activation == "sigmoid" and model.config.class_names == list(BRATS_OUTPUTS.values())
    labels, probabilities = segment.predict(model, images, affine=affine, device="cpu")
    assert labels.shape == shape and probabilities.shape == (3, *shape)

    _, work = monai_grid(shape, affine, "RAS", pixdim)  # MONAI's axes: where a one-voxel shift goes
    for output, (channel, axis) in BRATS_WIRING.items():
        offset, radius = OBJECTS[channel]
        shift = work[:3, axis] if axis is not None else 0.0
        truth = np.linalg.norm(points - centre - offset - shift, axis=-1) < radius
        assert dice(probabilities[output] >= 0.5, truth) > 0.9, (output, dice(probabilities[output] >= 0.5, truth))
    # nested: each voxel shows its smallest region (enhancing inside core inside whole tumour)
    masks = probabilities >= 0.5
    assert set(np.unique(labels)) <= {0, 1, 2, 3}
    assert np.all(labels[masks[2]] == 3) and np.all(masks[1][labels == 2])


def test_spleen_like_softmax_bundle_segments_in_place(tmp_path):
    affine, shape = grid("axial-lps")
    points = world_points(shape, affine)
    centre = np.array([10.0, -20.0, 30.0]) + (2.0, 4.0, -3.0)
    ct = np.full(shape, 0.0, np.float32)  # soft tissue 0 HU, spleen 100 HU
    ct[np.linalg.norm(points - centre, axis=-1) < 10] = 100.0
    model = load_bundle(make_spleen_bundle(tmp_path / "spleen"))
    assert model.config.activation == "softmax" and model.config.class_names == ["background", "spleen"]
    assert model.config.label_values == [0, 1]
    labels, probabilities = segment.predict(model, ct[None], affine=affine, device="cpu")
    _, work = monai_grid(shape, affine, "RAS", (1.5, 1.5, 2.0))
    truth = np.linalg.norm(points - centre - work[:3, 1], axis=-1) < 10  # shifted one voxel along A
    assert dice(labels == 1, truth) > 0.9
    np.testing.assert_allclose(probabilities.sum(0), 1, atol=1e-5)
