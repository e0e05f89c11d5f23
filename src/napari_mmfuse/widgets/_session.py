"""What the plugin's widgets share within one viewer, whichever proxy of it each was given.

napari hands every plugin dock widget its own public proxy of the viewer, and every
attribute read through a proxy returns a fresh proxy (layers included). Object identity
(``is``, ``id()``, weak references) therefore differs between two widgets of one viewer,
and between two reads of the same layer. Everything shared is keyed here by the napari
object *behind* the proxy, which every proxy of it agrees on:

* :func:`unwrap` and :func:`same` compare viewers and layers;
* :func:`session_of` returns the one :class:`Session` of a viewer (the session's model
  that Segment trains and Explain explains); it disappears with the viewer.

The undo history of layer placements is keyed the same way (see ``_history.py``).
"""

from __future__ import annotations

import weakref

import numpy as np

import wrapt


def unwrap(obj):
    """The napari object behind a viewer's public proxy (``obj`` itself when it is not one).

    Parameters
    ----------
    obj : object
        A viewer, layer, or anything read through a plugin's viewer proxy.

    Returns
    -------
    object
    """
    while isinstance(obj, wrapt.ObjectProxy):
        obj = obj.__wrapped__
    return obj


def same(a, b) -> bool:
    """Whether ``a`` and ``b`` are the same napari object (through proxies or not)."""
    return unwrap(a) is unwrap(b)


def index_of(layer, layers) -> int:
    """Position of ``layer`` in ``layers`` by identity behind proxies; -1 when absent."""
    target = unwrap(layer)
    return next((i for i, other in enumerate(layers) if unwrap(other) is target), -1)


class Callbacks:
    """Functions to call on an event; bound methods are held weakly, so a closed widget does not stay alive."""

    def __init__(self):
        self._refs: list = []

    def add(self, callback) -> None:
        """Remember ``callback`` (once)."""
        if any(ref() == callback for ref in self._refs):
            return
        self._refs.append(weakref.WeakMethod(callback) if hasattr(callback, "__self__") else (lambda: callback))

    def __call__(self) -> None:
        """Call every callback still alive."""
        self._refs = [ref for ref in self._refs if ref() is not None]
        for ref in self._refs:
            callback = ref()
            if callback is not None:
                callback()


class Session:
    """State shared by the widgets of one viewer.

    Attributes
    ----------
    model : tuple (model, list of str) or None
        The session's segmentation model and the names of the layers it takes, in
        channel order (set by Segment when it trains or loads one; read by Explain).
    class_voxels : dict of int to int
        How many voxels the model gave each class in its last segmentation (empty when
        unknown), from which Explain guesses the class of interest.
    """

    def __init__(self):
        self._model = None
        self.class_voxels: dict[int, int] = {}
        self._listeners = Callbacks()

    @property
    def model(self):
        return self._model

    def set_model(self, model, layer_names, class_voxels=None) -> None:
        """Make ``model`` the session's model (with its last result's class sizes) and tell every listener."""
        self._model = (model, list(layer_names))
        self.class_voxels = dict(class_voxels or {})
        self._listeners()

    def on_model(self, callback) -> None:
        """Call ``callback()`` whenever the model changes (bound methods are held weakly)."""
        self._listeners.add(callback)


_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def session_of(viewer) -> Session:
    """The one :class:`Session` of ``viewer`` (a viewer or any proxy of it), created on first use."""
    real = unwrap(viewer)
    session = _SESSIONS.get(real)
    if session is None:
        session = _SESSIONS[real] = Session()
    return session


def session_model(viewer):
    """The last model trained or loaded in this viewer's session, or None.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer, or any widget's proxy of it.

    Returns
    -------
    (SegmentationNet, list of str) or None
        The model and the names of the layers it was trained on, in channel order.
    """
    return session_of(viewer).model


def remember_model(viewer, model, layer_names, labels=None) -> None:
    """Make ``model`` the session's current model (see :func:`session_model`).

    ``labels``, the model's segmentation of its inputs, tells Explain how large each class is.
    """
    counts = {}
    if labels is not None:
        values, sizes = np.unique(np.asarray(labels), return_counts=True)
        counts = {int(v): int(n) for v, n in zip(values, sizes) if v != 0}
    session_of(viewer).set_model(model, layer_names, counts)
