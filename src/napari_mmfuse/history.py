"""Undo/redo history of layer affines: a pure model, shared by the registration widgets.

Every widget that changes a layer's placement (Register, Manual correction, Quality
views) goes through :func:`history_for`, so one layer has one history whichever widget
moved it. The histories live in a module-level :class:`weakref.WeakKeyDictionary`: a
history disappears with its layer and never ends up in saved layer metadata.

The history stores the layer's ``affine`` matrix (napari's ``layer.affine``, not the full
world affine that also contains scale and translate), because that is what registration
edits. An affine changed outside the history (layer controls, a script, a live slider)
is recorded before the next undo or change, so undo always returns to what the user saw.
"""

from __future__ import annotations

import weakref

import numpy as np

from .widgets._session import Callbacks, unwrap

_HISTORIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def layer_affine(layer) -> np.ndarray:
    """The layer's ``affine`` matrix as a float64 array.

    Parameters
    ----------
    layer : napari.layers.Layer or object
        Anything with an ``affine`` attribute that is a matrix or has ``affine_matrix``.

    Returns
    -------
    ndarray, shape (n + 1, n + 1)
    """
    affine = layer.affine
    return np.array(getattr(affine, "affine_matrix", affine), dtype=np.float64)


class AffineHistory:
    """Undo/redo stack of one layer's affine matrices.

    Parameters
    ----------
    layer : napari.layers.Layer or object
        The layer whose ``affine`` the history edits. Held by a weak reference.

    Attributes
    ----------
    original : ndarray, shape (n + 1, n + 1)
        The affine when the history was created (what *Reset* returns to).
    """

    def __init__(self, layer):
        layer = unwrap(layer)
        self._layer = weakref.ref(layer)
        self.original = layer_affine(layer)
        self._done: list[tuple[str, np.ndarray]] = [("original", self.original.copy())]
        self._undone: list[tuple[str, np.ndarray]] = []
        self._callbacks = Callbacks()

    @property
    def current(self) -> np.ndarray:
        """The affine at the top of the history."""
        return self._done[-1][1].copy()

    @property
    def can_undo(self) -> bool:
        """Whether there is an earlier affine (or an unrecorded change) to go back to."""
        return len(self._done) > 1 or not self._layer_matches()

    @property
    def can_redo(self) -> bool:
        """Whether an undone change can be re-applied."""
        return bool(self._undone)

    @property
    def labels(self) -> list[str]:
        """Names of the recorded states, oldest first."""
        return [label for label, _ in self._done]

    def on_change(self, callback) -> None:
        """Call ``callback()`` after every change, undo or redo (e.g. to refresh buttons).

        Bound methods are held weakly, so a closed widget does not stay alive.
        """
        self._callbacks.add(callback)

    def record(self, label: str = "edit") -> bool:
        """Record the layer's present affine if it differs from the top of the history.

        Returns
        -------
        bool
            True if a new state was recorded.
        """
        if self._layer_matches():
            return False
        self._done.append((label, layer_affine(self._layer())))
        self._undone.clear()
        self._notify()
        return True

    def apply(self, affine, label: str = "edit") -> None:
        """Set the layer's affine and record it (recording any unrecorded change first)."""
        affine = np.array(affine, dtype=np.float64)
        self.record("external edit")
        self._layer().affine = affine
        self._done.append((label, affine.copy()))
        self._undone.clear()
        self._notify()

    def undo(self) -> bool:
        """Go back one state. Returns False when there is nothing to undo."""
        self.record("external edit")
        if len(self._done) < 2:
            return False
        self._undone.append(self._done.pop())
        self._layer().affine = self.current
        self._notify()
        return True

    def redo(self) -> bool:
        """Re-apply the last undone state. Returns False when there is nothing to redo."""
        if not self._undone:
            return False
        if not self._layer_matches():
            self.record("external edit")
            return False
        self._done.append(self._undone.pop())
        self._layer().affine = self.current
        self._notify()
        return True

    def reset(self) -> None:
        """Return to :attr:`original` as a new, undoable state."""
        self.apply(self.original, "reset")

    def _layer_matches(self) -> bool:
        return np.array_equal(layer_affine(self._layer()), self._done[-1][1])

    def _notify(self) -> None:
        self._callbacks()


def history_for(layer) -> AffineHistory:
    """The one :class:`AffineHistory` of ``layer``, created on first use.

    Parameters
    ----------
    layer : napari.layers.Layer or object
        Must be hashable and weak-referenceable (napari layers are), or a proxy of one.

    Returns
    -------
    AffineHistory
    """
    layer = unwrap(layer)  # every proxy of one layer shares its history
    history = _HISTORIES.get(layer)
    if history is None:
        history = _HISTORIES[layer] = AffineHistory(layer)
    return history
