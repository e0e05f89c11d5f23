"""How the plugin's widgets sit in napari's docks."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget


def scroll_contents(widget: QWidget) -> None:
    """Move a widget's contents into a scroll area that scrolls vertically.

    napari stacks the docks a user opens from the Plugins menu; without scrolling their
    minimum heights add up and push the window past the screen (two docks exceeded a
    1080 px screen). Called at the end of each widget's ``__init__``.
    """
    content = QWidget()
    content.setLayout(widget.layout())  # Qt moves the layout, with its items, to ``content``
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.NoFrame)
    area.setWidget(content)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)  # as wide as the contents need; only height scrolls
    area.setMinimumWidth(content.minimumSizeHint().width() + area.verticalScrollBar().sizeHint().width())
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(area)
