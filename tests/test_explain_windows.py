"""Explanations window by window: the windows of prediction, progress and cancelling, no stride grid or haze."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_mmfuse.core import explain, segment
from napari_mmfuse.operations import Progress, drive
from test_explain import two_modality_phantom

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def spectral_peaks(values, periods):
    """Amplitude of the map's spectrum at each period, over the median amplitude, per axis (max over axes)."""
    peaks = {}
    for axis in range(values.ndim):
        centred = values - values.mean(axis=axis, keepdims=True)
        others = tuple(a for a in range(values.ndim) if a != axis)
        amplitude = np.abs(np.fft.rfft(centred, axis=axis)).mean(axis=others)
        for period in periods:
            ratio = amplitude[values.shape[axis] // period] / np.median(amplitude[1:])
            peaks[period] = max(peaks.get(period, 0.0), float(ratio))
    return peaks


@pytest.fixture(scope="module")
def wide():
    """A 96 x 128 phantom (3 x 5 windows of 32) whose head sits on a constant background, with a trained UNet."""
    images, lesion, scribbles = two_modality_phantom(size=96, seed=2)
    head = np.zeros((96, 96), bool)
    head[np.hypot(*(np.mgrid[:96, :96] - 47.5) / np.array([42, 36])[:, None, None]) < 1] = True
    images[:, ~head] = 0  # air: a constant background, as skull-stripped MRI
    images, lesion, scribbles = (np.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, 0), (0, 32)]) for a in
                                 (images, lesion, scribbles))
    model, _ = segment.train(images, scribbles, steps=30, features=(8, 16, 32), patch_size=(32, 32),
                             learning_rate=5e-3, device="cpu")
    return images, lesion, model


def test_windows_are_those_of_prediction(wide):
    images, lesion, model = wide
    x = torch.from_numpy(model.normalise(images))[None]
    tiling = explain.Tiling(x.shape[2:], model.config.patch_size, None)
    assert len(tiling.windows) == 4 * 5 and all(w[0].stop - w[0].start == 32 for w in tiling.windows)
    blended = torch.zeros(x.shape[2:])
    for window in tiling.windows:
        blended[window] += tiling.weights(window)
    torch.testing.assert_close(blended, torch.ones(x.shape[2:]))  # the weights of the overlaps sum to 1
    assert len(explain.Tiling(x.shape[2:], model.config.patch_size, torch.from_numpy(lesion)).windows) < 20


def test_window_gradients_are_the_blended_prediction_gradient(wide):
    """The gradients of the windows' weighted targets add up to the gradient of predict's blended logits."""
    from monai.inferers import sliding_window_inference

    images, lesion, model = wide
    x = torch.from_numpy(model.normalise(images))[None].requires_grad_(True)
    blended = sliding_window_inference(x, roi_size=model.config.patch_size, sw_batch_size=4, predictor=model,
                                       overlap=explain.OVERLAP, mode="gaussian")
    region = torch.from_numpy(lesion)
    (expected,) = torch.autograd.grad(explain.target_score(blended, 1, region).sum(), x)
    tiling = explain.Tiling(x.shape[2:], model.config.patch_size, region)
    steps = explain.saliency_steps(model, x.detach(), tiling, 1, 0, torch.device("cpu"))
    np.testing.assert_allclose(drive(steps), expected[0].abs().numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["ig", "gradcam", "occlusion", "smoothgrad"])
def test_explain_steps_progress_and_cancel(wide, method):
    images, lesion, model = wide
    options = {"method": method, "target": 2, "region": lesion, "samples": 2, "steps": 16, "device": "cpu"}
    steps = explain.explain_steps(model, images, **options)
    ticks = []
    while True:
        try:
            ticks.append(next(steps))
        except StopIteration as stop:
            result = stop.value
            break
    assert all(isinstance(tick, Progress) for tick in ticks)
    assert ticks[0].done == 0 and all(isinstance(v, int) for tick in ticks for v in (tick.done, tick.total))
    assert [t.done for t in ticks] == list(range(len(ticks))) and {t.total for t in ticks} == {len(ticks) - 1}
    np.testing.assert_array_equal(result.map, explain.explain(model, images, **options).map)
    cancelled = explain.explain_steps(model, images, **options)
    next(cancelled), next(cancelled)
    cancelled.close()  # a worker's quit: no error, the frame (and its arrays) released
    assert cancelled.gi_frame is None


def test_modality_attribution_steps(wide):
    images, lesion, model = wide
    for method in explain.ATTRIBUTIONS:
        steps = explain.modality_attribution_steps(model, images, target=2, region=lesion, method=method,
                                                   steps=8, device="cpu")
        first = next(steps)
        assert first.done == 0 and first.total > 1  # the lesion's box with its margin spans several windows
        result = drive(steps)
        assert result.maps.shape == images.shape and result.scores.sum() == pytest.approx(1.0)


def test_no_grid_and_no_haze(wide):
    """No peak at the network's stride periods; exactly zero far from the region.

    Before the fix the gradient maps of this UNet (kernel-3, stride-2 convolutions) had
    peaks of 4 to 9 times the median amplitude at periods 2 and 4.
    """
    images, lesion, model = wide
    for method in ("saliency", "ig"):
        peaks = spectral_peaks(explain.explain(model, images, method=method, target=2, region=lesion, steps=16,
                                               device="cpu").map, (2, 4))
        assert max(peaks.values()) < 2.0, (method, peaks)
    far = ~ndimage.binary_dilation(lesion, iterations=40)
    for method in ("saliency", "ig"):
        assert explain.explain(model, images, method=method, target=2, region=lesion, margin=64,
                               device="cpu").map[far].max() == 0, method
