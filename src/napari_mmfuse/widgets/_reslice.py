"""World-resliced 2D display: oblique volumes shown on one world-aligned grid, lazily per plane.

napari draws a 2D slice of a 3D layer without the out-of-slice part of its rotation, so
scans tilted differently disagree in 2D. When the 3D image/labels layers of a viewer do not
all share one orientation, :class:`ResliceDisplay` makes each layer whose axes are not
those of the display grid (:func:`~napari_mmfuse.core.reslice.display_grid` of the
reference layer) show a :class:`~napari_mmfuse.core.reslice.ReslicedVolume` instead of its
data, placed on the grid through its scale/translate/rotate/shear. The layer's ``affine``
stays the user's (registration edits it; the view follows), and its own data and placement
are held by :mod:`._layers`, so ``image_of``, ``world_affine`` and the writers see the
original. The 3D view, switching the display off, or removing a layer restores the original.
A resliced labels layer is read-only (painting needs its own grid).
"""

from __future__ import annotations

import weakref

import numpy as np
from napari.layers import Image, Labels
from napari.utils.transforms.transform_utils import decompose_linear_matrix

from ..core import reslice
from ._layers import PLACEMENT_KEYS, hold_original, original_data, release_original, world_affine
from ._session import Callbacks

_DISPLAYS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def reslice_display(viewer) -> ResliceDisplay:
    """The viewer's :class:`ResliceDisplay`, started on first use (on by default)."""
    display = _DISPLAYS.get(viewer)
    if display is None:
        display = _DISPLAYS[viewer] = ResliceDisplay(viewer)
    return display


def placement_onto(layer_affine: np.ndarray, grid_affine: np.ndarray) -> dict:
    """scale/translate/rotate/shear that, after the layer's ``affine``, put grid indices at ``grid_affine``.

    Parameters
    ----------
    layer_affine : ndarray, shape (n + 1, n + 1)
        The layer's ``affine`` (physical -> world), kept as it is.
    grid_affine : ndarray, shape (n + 1, n + 1)
        The display grid's index -> world affine.

    Returns
    -------
    dict
        Keyword values for the layer's ``scale``, ``translate``, ``rotate`` and ``shear``.
    """
    physical = np.linalg.inv(layer_affine) @ grid_affine
    rotate, scale, shear = decompose_linear_matrix(physical[:-1, :-1])
    return {"scale": scale, "translate": physical[:-1, -1], "rotate": rotate, "shear": shear}


def _volume(layer) -> bool:
    """A 3D, single-scale, non-RGB image or labels layer: what the display reslices."""
    return (
        isinstance(layer, (Image, Labels))
        and layer.ndim == 3
        and not layer.multiscale
        and not getattr(layer, "rgb", False)
    )


class ResliceDisplay:
    """Keeps a viewer's 2D overlays of differently oriented volumes exact.

    Parameters
    ----------
    viewer : napari.viewer.Viewer

    Attributes
    ----------
    enabled : bool
        The user's switch (on by default); the display acts only in 2D and only when
        the volumes do not all share one orientation.
    reference : str or None
        Name of the layer whose grid is the display grid; None (or a name no longer
        present) means the first volume.
    """

    def __init__(self, viewer):
        self._viewer = weakref.ref(viewer)
        self.enabled = True
        self.reference: str | None = None
        self.grid: tuple[tuple, np.ndarray] | None = None
        self._views: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._busy = False
        self._callbacks = Callbacks()
        viewer.layers.events.inserted.connect(self._on_inserted)
        viewer.layers.events.removed.connect(self._on_removed)
        viewer.dims.events.ndisplay.connect(self.update)
        for layer in viewer.layers:
            self._watch(layer)
        self.update()

    def on_change(self, callback) -> None:
        """Call ``callback()`` after every update (bound methods are held weakly)."""
        self._callbacks.add(callback)

    @property
    def resliced(self) -> list:
        """The layers showing a resliced view now."""
        return list(self._views.keys())

    def set_enabled(self, enabled: bool) -> None:
        """Switch the resliced display on or off (off restores every layer's own data)."""
        self.enabled = bool(enabled)
        self.update()

    def set_reference(self, name: str | None) -> None:
        """Use the grid of the layer called ``name`` (None: the first volume)."""
        self.reference = name or None
        self.update()

    def _watch(self, layer) -> None:
        if isinstance(layer, (Image, Labels)):
            # first, so that handlers of other widgets already see the view that follows the new affine
            layer.events.affine.connect(self.update, position="first")
            layer.events.data.connect(self._on_data, position="first")

    def _on_inserted(self, event) -> None:
        self._watch(event.value)
        self.update()

    def _on_removed(self, event) -> None:
        layer = event.value
        if isinstance(layer, (Image, Labels)):
            layer.events.affine.disconnect(self.update)
            layer.events.data.disconnect(self._on_data)
            if layer in self._views:
                self._restore(layer)
        self.update()

    def _on_data(self, event) -> None:
        layer = event.source
        if self._busy or layer not in self._views or layer.data is self._views[layer]:
            return
        # new data set by someone else: it is the user's, on the layer's own placement
        _, placement = release_original(layer)
        del self._views[layer]
        self._place(layer, layer.data, placement)
        self.update()

    def plan(self) -> tuple[tuple, np.ndarray, list] | None:
        """The display grid and the layers to reslice onto it, or None when nothing needs it."""
        viewer = self._viewer()
        if viewer is None or not self.enabled or viewer.dims.ndisplay != 2:
            return None
        volumes = [layer for layer in viewer.layers if _volume(layer)]
        affines = [world_affine(layer) for layer in volumes]
        if len(volumes) < 2 or all(reslice.axes_parallel(a, affines[0]) for a in affines[1:]):
            return None
        names = [layer.name for layer in volumes]
        index = names.index(self.reference) if self.reference in names else 0
        shape, grid = reslice.display_grid(np.shape(original_data(volumes[index])), affines[index])
        chosen = [layer for layer, a in zip(volumes, affines, strict=True) if not reslice.axes_parallel(a, grid)]
        return shape, grid, chosen

    def update(self, event=None) -> None:
        """Re-evaluate: reslice the layers that need it, restore the others."""
        if self._busy:
            return
        self._busy = True
        try:
            plan = self.plan()
            chosen = plan[2] if plan is not None else []
            for layer in [layer for layer in self._views.keys() if layer not in chosen]:
                self._restore(layer)
            self.grid = plan[:2] if plan is not None else None
            for layer in chosen:
                self._show(layer, *plan[:2])
        finally:
            self._busy = False
        self._callbacks()

    def _show(self, layer, shape, grid) -> None:
        source, source_affine = original_data(layer), world_affine(layer)
        view = self._views.get(layer)
        if view is not None and view.matches(source, source_affine, shape, grid):
            return
        hold_original(layer)
        view = reslice.ReslicedVolume(source, source_affine, shape, grid, order=0 if isinstance(layer, Labels) else 1)
        self._views[layer] = view
        layer_affine = np.asarray(layer.affine.affine_matrix)
        self._place(layer, view, placement_onto(layer_affine, grid))

    def _restore(self, layer) -> None:
        del self._views[layer]
        data, placement = release_original(layer)
        self._place(layer, data, placement)

    @staticmethod
    def _place(layer, data, placement: dict) -> None:
        """Set data and placement with one redraw, keeping an image's contrast."""
        contrast = (layer.contrast_limits_range, layer.contrast_limits) if isinstance(layer, Image) else None
        with layer._block_refresh():
            if layer.data is not data:
                layer.data = data
            for key in PLACEMENT_KEYS:
                setattr(layer, key, placement[key])
            if contrast is not None:
                layer.contrast_limits_range, layer.contrast_limits = contrast
        if isinstance(layer, Labels) and isinstance(data, reslice.ReslicedVolume):
            layer.editable = False  # painting needs the layer's own grid: switch the display off to paint
        layer.refresh()
