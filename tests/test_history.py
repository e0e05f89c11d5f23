"""Undo/redo history of layer affines (pure Python, no Qt)."""

import gc

import numpy as np

from napari_mmfuse.history import AffineHistory, history_for, layer_affine


class FakeLayer:
    """Stand-in for a napari layer: only an ``affine`` attribute."""

    def __init__(self, ndim=2):
        self.affine = np.eye(ndim + 1)


def shifted(dy, dx):
    affine = np.eye(3)
    affine[:2, 2] = dy, dx
    return affine


def test_history_is_one_per_layer():
    a, b = FakeLayer(), FakeLayer()
    assert history_for(a) is history_for(a)
    assert history_for(a) is not history_for(b)


def test_history_dies_with_its_layer():
    from napari_mmfuse import history as _history

    layer = FakeLayer()
    history_for(layer)
    n = len(_history._HISTORIES)
    del layer
    gc.collect()
    assert len(_history._HISTORIES) == n - 1


def test_apply_undo_redo_exact():
    layer = FakeLayer()
    history = AffineHistory(layer)
    assert not history.can_undo and not history.can_redo
    history.apply(shifted(1.5, -2), "register")
    history.apply(shifted(3, 4), "manual")
    np.testing.assert_array_equal(layer.affine, shifted(3, 4))
    assert history.labels == ["original", "register", "manual"]
    assert history.undo()
    np.testing.assert_array_equal(layer.affine, shifted(1.5, -2))
    assert history.undo()
    np.testing.assert_array_equal(layer.affine, np.eye(3))
    assert not history.undo()
    assert history.redo() and history.redo()
    np.testing.assert_array_equal(layer.affine, shifted(3, 4))
    assert not history.redo()


def test_new_change_clears_redo():
    layer = FakeLayer()
    history = AffineHistory(layer)
    history.apply(shifted(1, 0))
    history.undo()
    assert history.can_redo
    history.apply(shifted(0, 1))
    assert not history.can_redo


def test_unrecorded_change_is_undone_first():
    layer = FakeLayer()
    history = AffineHistory(layer)
    history.apply(shifted(1, 1), "register")
    layer.affine = shifted(5, 5)  # e.g. a live slider or the layer controls
    assert history.can_undo
    history.undo()
    np.testing.assert_array_equal(layer.affine, shifted(1, 1))
    history.redo()
    np.testing.assert_array_equal(layer.affine, shifted(5, 5))


def test_record_only_when_changed():
    layer = FakeLayer()
    history = AffineHistory(layer)
    assert not history.record()
    layer.affine = shifted(2, 0)
    assert history.record("slider")
    assert history.labels == ["original", "slider"]


def test_reset_is_undoable():
    layer = FakeLayer(3)
    history = AffineHistory(layer)
    moved = np.eye(4)
    moved[0, 3] = 7
    history.apply(moved)
    history.reset()
    np.testing.assert_array_equal(layer.affine, np.eye(4))
    history.undo()
    np.testing.assert_array_equal(layer.affine, moved)


def test_callbacks_fire_and_are_weak():
    layer = FakeLayer()
    history = AffineHistory(layer)

    class Listener:
        calls = 0

        def refresh(self):
            Listener.calls += 1

    listener = Listener()
    history.on_change(listener.refresh)
    history.on_change(listener.refresh)
    history.apply(shifted(1, 0))
    assert Listener.calls == 1
    del listener
    gc.collect()
    history.undo()
    assert Listener.calls == 1


def test_layer_affine_reads_napari_style_objects():
    class Affine:
        affine_matrix = shifted(1, 2)

    class Layer:
        affine = Affine()

    np.testing.assert_array_equal(layer_affine(Layer()), shifted(1, 2))
