"""The viewer saves any result layer's provenance, and ``mmfuse replay`` recomputes the layer from it."""

import numpy as np

from napari_mmfuse import pipeline
from napari_mmfuse.cli import main
from napari_mmfuse.io import write
from napari_mmfuse.provenance import Provenance
from napari_mmfuse.widgets._layers import add_image_layer, image_of


def test_saved_layer_provenance_replays_to_the_same_pixels(make_napari_viewer, tmp_path):
    rng = np.random.default_rng(3)
    source = write(tmp_path / "t1.nii.gz", (rng.random((10, 24, 24)) * 80 + 20).astype(np.float32),
                   np.diag([2.5, 1.0, 1.0, 1.0]))
    viewer = make_napari_viewer()
    opened = viewer.open(str(source), plugin="napari-mmfuse")[0]
    _, widget = viewer.window.add_plugin_dock_widget("napari-mmfuse", "Provenance")
    assert "not produced by an mmfuse operation" in widget.title.text()
    assert not widget.save_button.isEnabled()

    image = image_of(opened)  # the layer was opened by our reader: it knows its file
    outputs, record = pipeline.run("normalize", "n4", {"image": image}, {"shrink": 2, "iterations": 5})
    layer = add_image_layer(viewer, outputs["image"], like=opened, name="t1 n4")
    viewer.layers.selection.active = layer
    assert widget.title.text().startswith("t1 n4: normalize/n4")
    saved = widget.save(tmp_path / "t1_n4.provenance.json")
    assert Provenance.load(saved).params == record.params

    assert main(["replay", str(saved), "-o", str(tmp_path / "again.nii.gz")]) == 0
    again = pipeline.read_image(tmp_path / "again.nii.gz")
    np.testing.assert_array_equal(again.data, layer.data)
    np.testing.assert_allclose(again.affine, image.affine)
