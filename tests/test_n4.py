"""N4 bias-field correction (operations/normalize/n4.py) against a known multiplicative field."""

import numpy as np
import pytest

from napari_mmfuse import pipeline
from napari_mmfuse.operations import Image, get


def _phantom_with_field():
    """Two tissues (100 and 160) in a sphere, times a smooth field up to ±30 %, 2 x 1 x 1 mm voxels."""
    z, y, x = np.mgrid[:32, :64, :64].astype(np.float32)
    inside = (z - 16) ** 2 / 14**2 + (y - 32) ** 2 / 28**2 + (x - 32) ** 2 / 28**2 < 1
    tissue = np.where(x < 32, 100.0, 160.0) * inside
    field = 1 + 0.3 * np.sin(np.pi * y / 63) * (x / 63 - 0.5) + 0.15 * (z / 31 - 0.5)
    affine = np.diag([2.0, 1.0, 1.0, 1.0])
    noisy = tissue * field + np.random.default_rng(0).normal(0, 1.0, tissue.shape) * inside
    return Image(noisy.astype(np.float32), affine, name="t1"), tissue, field, inside


def _spread(values, tissue, inside):
    """Mean coefficient of variation inside each tissue class."""
    classes = [(tissue == v) & inside for v in (100.0, 160.0)]
    return float(np.mean([values[c].std() / values[c].mean() for c in classes]))


def test_n4_removes_a_known_field_and_keeps_the_grid():
    image, tissue, field, inside = _phantom_with_field()
    outputs, record = pipeline.run("normalize", "n4", {"image": image}, {"shrink": 2}, device="cpu")
    corrected, estimated = outputs["image"], outputs["field"]
    np.testing.assert_array_equal(corrected.affine, image.affine)
    assert corrected.data.shape == image.data.shape
    before, after = _spread(image.data, tissue, inside), _spread(corrected.data, tissue, inside)
    assert before > 0.03 and after < before / 3, (before, after)
    # the field is found up to a constant factor: its log correlates with the true log field
    assert np.corrcoef(np.log(estimated.data[inside]), np.log(field[inside]))[0, 1] > 0.95
    assert record.operation == "normalize/n4" and record.params["shrink"] == 2
    assert record.params["iterations"] == get("normalize", "n4").param("iterations").default


def test_n4_refuses_negative_or_rgb_input_with_one_clear_error():
    image, *_ = _phantom_with_field()
    with pytest.raises(ValueError, match="positive intensities"):
        pipeline.run("normalize", "n4", {"image": image.like(image.data - 500)}, device="cpu")
    rgb = Image(np.zeros((8, 8, 3), np.float32), np.eye(3), rgb=True)
    with pytest.raises(ValueError, match="grey image"):
        pipeline.run("normalize", "n4", {"image": rgb}, device="cpu")
