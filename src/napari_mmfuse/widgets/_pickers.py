"""Layer drop-downs shared by the dock widgets."""

from __future__ import annotations

from qtpy.QtWidgets import QComboBox


class LayerPicker(QComboBox):
    """Drop-down of the viewer's layers of some types, kept in sync with the layer list.

    Parameters
    ----------
    viewer : napari.Viewer
    types : tuple of type
        Layer classes offered.
    optional : bool
        Offer "(none)" as the first entry.
    default_index : int
        Which matching layer to select initially (e.g. 1 for the second image).
    """

    NONE = "(none)"

    def __init__(self, viewer, types, *, optional=False, default_index=0):
        super().__init__()
        self.viewer = viewer
        self.types = types
        self.optional = optional
        self.default_index = default_index
        viewer.layers.events.inserted.connect(self.refresh)
        viewer.layers.events.removed.connect(self.refresh)
        viewer.layers.events.inserted.connect(self._watch_name)
        for layer in viewer.layers:
            layer.events.name.connect(self.refresh)
        self.refresh()

    def _watch_name(self, event):
        event.value.events.name.connect(self.refresh)

    def refresh(self, event=None):
        """Rebuild the list, keeping the current choice when it still exists."""
        current = self.layer()
        layers = [layer for layer in self.viewer.layers if isinstance(layer, self.types)]
        self.blockSignals(True)
        self.clear()
        if self.optional:
            self.addItem(self.NONE, None)
        for layer in layers:
            self.addItem(layer.name, layer)
        if current is not None and current in layers:
            self.set_layer(current)
        elif not self.optional and len(layers) > self.default_index:
            self.setCurrentIndex(self.default_index)
        self.blockSignals(False)
        if self.layer() is not current:
            self.currentIndexChanged.emit(self.currentIndex())

    def layer(self):
        """The chosen layer, or None."""
        return self.currentData() if self.count() else None

    def set_layer(self, layer) -> None:
        """Select ``layer`` (which must be offered)."""
        for index in range(self.count()):
            if self.itemData(index) is layer:
                self.setCurrentIndex(index)
                return
        raise ValueError(f"{layer.name} is not offered here")
