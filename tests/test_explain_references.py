"""Our explanation methods against MONAI's and Captum's on a 3D UNet; the per-modality removal check."""

import numpy as np
import pytest
import torch

from napari_mmfuse.core import explain, segment
from napari_mmfuse.core.explain.windows import ig_steps, occlusion_steps
from napari_mmfuse.operations import drive

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def corr(a, b) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


@pytest.fixture
def unet3d():
    """An untrained 3D UNet on 2 channels (random weights: the methods are compared, not the model).

    A fresh one per test: MONAI's GradCAM leaves its hooks on the model it explains (one
    reason our Grad-CAM, which removes its hooks, stays).
    """
    torch.manual_seed(0)
    config = segment.ModelConfig(spatial_dims=3, in_channels=2, label_values=[0, 1], features=[4, 8, 16],
                                 patch_size=[16, 16, 16])
    model = segment.SegmentationNet(config).eval()
    x = torch.randn(1, 2, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    return model, x


class Target(torch.nn.Module):
    """The region-summed class logit as a (B, 1) output, for MONAI's and Captum's classification APIs."""

    def __init__(self, model, class_index, region=None):
        super().__init__()
        self.model, self.class_index, self.region = model, class_index, region

    def forward(self, x):
        return explain.target_score(self.model(x), self.class_index, self.region)[:, None]


def test_gradcam_matches_monai(unet3d):
    from monai.visualize import GradCAM

    model, x = unet3d
    layer = explain.default_layer(model, x)
    ours = explain.gradcam(model, x, class_index=1, layer=layer)
    theirs = GradCAM(Target(model, 1), target_layers=f"model.{layer}", postprocessing=lambda v: v)(x, class_idx=0)
    assert corr(ours, theirs[0, 0].detach().numpy()) > 0.99
    # MONAI's default normaliser maps the largest value to 0 and the smallest to 1: the sign flips
    flipped = GradCAM(Target(model, 1), target_layers=f"model.{layer}")(x, class_idx=0)
    assert corr(ours, flipped[0, 0].detach().numpy()) < -0.99


def test_occlusion_matches_captum(unet3d):
    from captum.attr import Occlusion

    model, x = unet3d
    fill = x.mean(dim=(2, 3, 4), keepdim=True)
    ours = explain.occlusion(model, x, class_index=1, window=4, stride=4, fill=fill)
    theirs = Occlusion(Target(model, 1)).attribute(x, sliding_window_shapes=(2, 4, 4, 4), strides=(2, 4, 4, 4),
                                                   baselines=fill, target=0)
    assert corr(ours, theirs[0].sum(dim=0).numpy()) > 0.99


def test_windowed_ig_is_captum_on_the_blended_prediction(unet3d):
    """The windows' IG (each window's share of the target) adds up to Captum's IG of the blended prediction."""
    from captum.attr import IntegratedGradients
    from monai.inferers import sliding_window_inference

    model, _ = unet3d
    x = torch.randn(1, 2, 16, 32, 32, generator=torch.Generator().manual_seed(2))
    baseline = x.mean(dim=(2, 3, 4), keepdim=True)
    tiling = explain.Tiling(x.shape[2:], model.config.patch_size, None)
    assert len(tiling.windows) > 1
    ours = drive(ig_steps(model, x, tiling, 1, baseline, 8, torch.device("cpu")))

    def blended(inputs):
        out = sliding_window_inference(inputs, roi_size=model.config.patch_size, sw_batch_size=4, predictor=model,
                                       overlap=explain.OVERLAP, mode="gaussian")
        return explain.target_score(out, 1)

    theirs = IntegratedGradients(blended).attribute(x, baselines=baseline.expand_as(x).contiguous(), n_steps=8,
                                                    method="riemann_middle", internal_batch_size=1)
    assert corr(ours, theirs[0].numpy()) > 0.99
    np.testing.assert_allclose(ours.sum(), float(theirs.sum()), rtol=1e-3)


def test_windowed_occlusion_equals_one_pass(unet3d):
    """Occlusion window by window: each occluder's drop summed over the windows it touches (one window: exact)."""
    model, x = unet3d
    fill = x.mean(dim=(2, 3, 4), keepdim=True)
    tiling = explain.Tiling(x.shape[2:], model.config.patch_size, None)
    windowed = drive(occlusion_steps(model, x, tiling, 1, fill, 4, torch.device("cpu"), stride=4))
    np.testing.assert_allclose(windowed, explain.occlusion(model, x, class_index=1, window=4, stride=4, fill=fill),
                               rtol=1e-4, atol=1e-5)


def test_copies_per_pass_follow_the_window():
    small = explain.Tiling((200, 200, 200), (48, 48, 48), None)
    large = explain.Tiling((200, 200, 200), (128, 128, 128), None)
    assert explain.copies_per_pass(small) == 8 and explain.copies_per_pass(large) == 1


def test_removal_agrees_with_attribution():
    """On the phantom where only A shows the lesion, removing A changes the lesion, removing B hardly."""
    from test_explain import two_modality_phantom

    images, lesion, scribbles = two_modality_phantom()
    model, _ = segment.train(images, scribbles, steps=150, features=(8, 16, 32), patch_size=(32, 32),
                             learning_rate=5e-3, channel_names=["A", "B"], device="cpu")
    removal = drive(explain.modality_removal_steps(model, images, target=2, region=lesion, device="cpu"))
    attribution = explain.modality_attribution(model, images, target=2, region=lesion, method="ig", steps=8,
                                               device="cpu")
    print(f"\nremoval dice {removal.dice}, probability change {removal.probability_change}; "
          f"attribution {attribution.scores}")
    assert removal.ranking() == attribution.ranking() == ["A", "B"]
    assert removal.dice[0] < 0.5 < removal.dice[1] and removal.probability_change[0] > 0.3
    entry = removal.describe()
    assert entry["ranking"] == ["A", "B"] and set(entry["dice"]) == {"A", "B"}
