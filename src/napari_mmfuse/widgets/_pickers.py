"""Layer drop-downs and check lists shared by the dock widgets.

Both follow the layer list live (insertions, removals, renames) and compare layers by the
object behind napari's viewer proxy (see ``_session.py``), so a choice survives a rename.
"""

from __future__ import annotations

from napari.layers import Image
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QFileDialog, QListWidget, QListWidgetItem

from ._session import index_of, same, unwrap


def is_result(layer) -> bool:
    """Whether a layer was produced by one of the plugin's widgets (a result or a live preview, not an input)."""
    metadata = getattr(layer, "metadata", None)
    return isinstance(metadata, dict) and ("mmfuse" in metadata or "preview_of" in metadata)


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
    prefer : callable, optional
        ``prefer(layers) -> layer or None``: the default among the offered layers while
        nothing is chosen (an optional picker otherwise starts at "(none)").
    """

    NONE = "(none)"

    def __init__(self, viewer, types, *, optional=False, default_index=0, prefer=None):
        super().__init__()
        self.viewer = viewer
        self.types = types
        self.optional = optional
        self.default_index = default_index
        self.prefer = prefer
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
        preferred = self.prefer(layers) if self.prefer is not None and current is None else None
        if current is not None and index_of(current, layers) >= 0:
            self.set_layer(current)
        elif preferred is not None:
            self.set_layer(preferred)
        elif not self.optional and len(layers) > self.default_index:
            self.setCurrentIndex(self.default_index)
        self.blockSignals(False)
        if not same(self.layer(), current):
            self.currentIndexChanged.emit(self.currentIndex())

    def layer(self):
        """The chosen layer, or None."""
        return self.currentData() if self.count() else None

    def set_layer(self, layer) -> None:
        """Select ``layer`` (which must be offered)."""
        for index in range(self.count()):
            if self.itemData(index) is not None and same(self.itemData(index), layer):
                self.setCurrentIndex(index)
                return
        raise ValueError(f"{layer.name} is not offered here")


class LayerChecklist(QListWidget):
    """The viewer's image layers with a check box each; the checked ones, in list order, are the inputs.

    Until the user ticks or unticks a box, the visible image layers that are not the
    plugin's own results are the ones checked (the inputs a user means by what they see);
    after that the user's ticks are kept, by layer, through renames and list changes.

    Parameters
    ----------
    viewer : napari.Viewer
    """

    def __init__(self, viewer):
        super().__init__()
        self.viewer = viewer
        self.user_chose = False
        self.setMaximumHeight(110)
        viewer.layers.events.inserted.connect(self.refresh)
        viewer.layers.events.removed.connect(self.refresh)
        viewer.layers.events.inserted.connect(lambda event: event.value.events.name.connect(self.refresh))
        viewer.layers.events.inserted.connect(lambda event: event.value.events.visible.connect(self._on_visible))
        for layer in viewer.layers:
            layer.events.name.connect(self.refresh)
            layer.events.visible.connect(self._on_visible)
        self.itemChanged.connect(self._on_item_changed)
        self.refresh()

    def _on_item_changed(self, _item) -> None:
        self.user_chose = True

    def _on_visible(self, _event=None) -> None:
        if not self.user_chose:
            self.refresh()

    def _default(self, layer) -> bool:
        return bool(layer.visible) and not is_result(layer)

    def refresh(self, event=None) -> None:
        """Rebuild, keeping the check state of layers still present."""
        checked = {id(unwrap(layer)) for layer in self.checked()}
        self.blockSignals(True)
        self.clear()
        for layer in self.viewer.layers:
            if isinstance(layer, Image):
                tick = self._default(layer) if not self.user_chose else id(unwrap(layer)) in checked
                self._add(layer, tick)
        self.blockSignals(False)

    def _add(self, layer, checked: bool) -> None:
        item = QListWidgetItem(layer.name)
        item.setData(Qt.UserRole, layer)
        item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
        item.setCheckState(Qt.Checked if checked else Qt.Unchecked)
        self.addItem(item)

    def layers(self) -> list:
        """Every offered layer, top to bottom."""
        return [self.item(i).data(Qt.UserRole) for i in range(self.count())]

    def checked(self) -> list:
        """The checked layers, top to bottom."""
        return [self.item(i).data(Qt.UserRole) for i in range(self.count()) if self.item(i).checkState() == Qt.Checked]

    def set_checked(self, layers) -> None:
        """Check exactly ``layers`` and put them first, in that order (the user's choice from now on)."""
        wanted = list(layers)
        rest = [layer for layer in self.layers() if index_of(layer, wanted) < 0]
        self.blockSignals(True)
        self.clear()
        for layer in wanted + rest:
            self._add(layer, index_of(layer, wanted) >= 0)
        self.blockSignals(False)
        self.user_chose = True


def choose_model_file(parent) -> str:
    """Ask for a model file (a MONAI bundle is picked by its ``models/model.pt``); "" if cancelled."""
    path, _ = QFileDialog.getOpenFileName(
        parent, "Load model (a MONAI bundle: its models/model.pt)", "", "Model (*.pt *.pth *.ts)"
    )
    return path
