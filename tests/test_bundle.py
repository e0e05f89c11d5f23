"""MONAI bundles as bring-your-own models: read without running their code, predict like MONAI."""

import json
import pickle

import numpy as np
import pytest
import torch

from napari_mmfuse.cli import main
from napari_mmfuse.core import segment
from napari_mmfuse.core.bundle import read_bundle
from napari_mmfuse.io.nifti import read_nifti, write_nifti

NETWORK = {"_target_": "UNet", "spatial_dims": 3, "in_channels": 2, "out_channels": 3,
           "channels": [8, 16], "strides": [2], "num_res_units": 1}


def make_bundle(folder, *, network=NETWORK, preprocessing=None, postprocessing=None, weights=None):
    """A bundle folder as the MONAI Model Zoo lays them out, with a freshly initialised UNet."""
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    if preprocessing is None:
        preprocessing = [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": [2.0, 2.0, 2.0], "mode": "bilinear"},
            {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True},
            {"_target_": "EnsureTyped", "keys": "image"},
        ]
    inference = {
        "imports": ["$import glob"],
        "device": "$torch.device('cpu')",
        "network_def": network,
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": preprocessing},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16], "sw_batch_size": 2, "overlap": 0.25},
        "postprocessing": {"_target_": "Compose", "transforms": postprocessing or [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True}]},
    }
    metadata = {"network_data_format": {
        "inputs": {"image": {"num_channels": 2, "channel_def": {"0": "T1", "1": "FLAIR"}}},
        "outputs": {"pred": {"num_channels": 3, "channel_def": {"0": "background", "1": "oedema", "2": "core"}}}}}
    (folder / "configs" / "inference.json").write_text(json.dumps(inference))
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata))
    torch.manual_seed(0)
    from monai.networks.nets import UNet

    net = UNet(**{k: v for k, v in NETWORK.items() if k != "_target_"})
    torch.save(weights if weights is not None else net.state_dict(), folder / "models" / "model.pt")
    return net.eval()


@pytest.mark.parametrize("suffix", ["json", "yaml"])
def test_bundle_reads_network_spacing_intensity_window_and_classes(tmp_path, suffix):
    make_bundle(tmp_path / "b")
    if suffix == "yaml":
        import yaml

        config_file = tmp_path / "b" / "configs" / "inference.json"
        (tmp_path / "b" / "configs" / "inference.yaml").write_text(yaml.safe_dump(json.loads(config_file.read_text())))
        config_file.unlink()
    config, weights = read_bundle(tmp_path / "b")
    assert config.architecture == "monai" and config.network["name"] == "UNet"
    assert config.network["args"]["channels"] == [8, 16]
    assert config.spacing == [2.0, 2.0, 2.0] and config.patch_size == [16, 16, 16]
    assert config.intensity == [{"name": "NormalizeIntensity", "args": {"nonzero": True, "channel_wise": True}}]
    assert config.label_values == [0, 1, 2] and config.channel_names == ["T1", "FLAIR"]
    assert weights == tmp_path / "b" / "models" / "model.pt"


def test_bundle_predicts_as_monai_would(tmp_path):
    """Same normalisation and windows as MONAI's own NormalizeIntensity and sliding-window inference."""
    from monai.inferers import sliding_window_inference
    from monai.transforms import NormalizeIntensity

    net = make_bundle(tmp_path / "b")
    model = segment.load_model(tmp_path / "b")
    rng = np.random.default_rng(0)
    images = np.zeros((2, 24, 28, 20), np.float32)
    images[:, 4:20, 5:24, 3:17] = rng.normal(3.0, 1.0, (2, 16, 19, 14))  # zero background around tissue
    labels, probabilities = segment.predict(model, images, device="cpu")  # no affine: on the input grid

    x = NormalizeIntensity(nonzero=True, channel_wise=True)(torch.from_numpy(images))[None]
    with torch.no_grad():
        # windows blended as class probabilities, as predict does for every model
        expected = sliding_window_inference(x, (16, 16, 16), 4, lambda w: torch.softmax(net(w), 1), overlap=0.25,
                                            mode="gaussian")[0]
    np.testing.assert_allclose(probabilities, expected.numpy(), atol=1e-5)
    np.testing.assert_array_equal(labels, expected.numpy().argmax(0))

    # placed at 1 mm, the input is resampled to the bundle's 2 mm and the result back
    labels_1mm, probabilities_1mm = segment.predict(model, images, affine=np.eye(4), device="cpu")
    assert labels_1mm.shape == images.shape[1:] and probabilities_1mm.shape == (3, *images.shape[1:])
    np.testing.assert_allclose(probabilities_1mm.sum(0), 1, atol=1e-5)

    # a model loaded from its models/model.pt finds its bundle; save/load keeps it
    again = segment.load_model(tmp_path / "b" / "models" / "model.pt")
    saved = segment.save_model(again, tmp_path / "copy")[0]
    np.testing.assert_allclose(segment.predict(segment.load_model(saved), images, device="cpu")[1], probabilities,
                               atol=1e-6)


@pytest.mark.parametrize("change, message", [
    ({"network": {**NETWORK, "channels": "$[8, 16]"}}, "expression or reference"),
    ({"network": {**NETWORK, "_target_": "os.system"}}, "outside torch and MONAI"),
    ({"network": {**NETWORK, "_target_": "torch.nn.Identity"}}, "only networks of monai.networks.nets"),
    ({"preprocessing": [{"_target_": "my_scripts.Transformd", "keys": "image"}]}, "outside torch and MONAI"),
    ({"network": {**NETWORK, "_target_": "NoSuchNet"}}, "not a network class"),
    ({"network": {**NETWORK, "no_such_argument": 1}}, "do not fit"),
    ({"preprocessing": [{"_target_": "RandGaussianNoised", "keys": "image"}]}, "does not apply"),
])
def test_bundle_refusals_are_clear(tmp_path, change, message):
    make_bundle(tmp_path / "b", **change)
    with pytest.raises(ValueError, match=message):
        segment.load_model(tmp_path / "b")


def test_bundle_weights_must_be_weights_only(tmp_path):
    make_bundle(tmp_path / "b")
    with open(tmp_path / "b" / "models" / "model.pt", "wb") as handle:
        pickle.dump({"evil": print}, handle)  # unpickling would import and call arbitrary objects
    with pytest.raises(ValueError, match="weights-only|cannot read"):
        segment.load_model(tmp_path / "b")


def test_cli_segments_with_a_bundle(tmp_path, capsys):
    make_bundle(tmp_path / "b")
    rng = np.random.default_rng(1)
    for name in ("t1", "flair"):
        write_nifti(tmp_path / f"{name}.nii.gz", rng.normal(1.0, 0.3, (24, 20, 18)).astype(np.float32),
                    np.diag([2.0, 2.0, 2.0, 1.0]))
    out = tmp_path / "labels.nii.gz"
    assert main(["segment", str(tmp_path / "t1.nii.gz"), str(tmp_path / "flair.nii.gz"), "--model", str(tmp_path / "b"),
                 "-o", str(out)]) == 0
    labels = read_nifti(out)[0].data
    assert labels.shape == (24, 20, 18) and set(np.unique(labels)) <= {0, 1, 2}


def test_segment_widget_loads_a_bundle_by_its_weights_file(make_napari_viewer, tmp_path):
    from napari_mmfuse.widgets.segment import SegmentWidget

    make_bundle(tmp_path / "b")
    widget = SegmentWidget(make_napari_viewer())
    model = widget.load_model(str(tmp_path / "b" / "models" / "model.pt"))
    assert model is widget.model and model.config.architecture == "monai"
    assert "inputs T1, FLAIR; classes 0 background, 1 oedema, 2 core" in widget.status.text()
