"""How the plugin's widgets sit in napari's docks."""

from __future__ import annotations

from qtpy.QtCore import QEvent, QObject, Qt
from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget


class _FollowContentWidth(QObject):
    """Keeps a scroll area as wide as its contents need when they change (a form shown later, a new row)."""

    def __init__(self, area: QScrollArea):
        super().__init__(area)
        self.area = area

    def eventFilter(self, watched, event) -> bool:
        if event.type() == QEvent.LayoutRequest:
            self.fit()
        return False

    def fit(self) -> None:
        needed = self.area.widget().minimumSizeHint().width() + self.area.verticalScrollBar().sizeHint().width()
        if needed > self.area.minimumWidth():
            self.area.setMinimumWidth(needed)


def scroll_contents(widget: QWidget) -> None:
    """Move a widget's contents into a scroll area that scrolls vertically.

    napari stacks the docks a user opens from the Plugins menu; without scrolling their
    minimum heights add up and push the window past the screen (two docks exceeded a
    1080 px screen). Only the height scrolls: the area stays as wide as its contents need, also
    when they grow later (a method's form shown, longer layer names). Called at the end of each
    widget's ``__init__``.
    """
    content = QWidget()
    content.setLayout(widget.layout())  # Qt moves the layout, with its items, to ``content``
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.NoFrame)
    area.setWidget(content)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)  # as wide as the contents need; only height scrolls
    follow = _FollowContentWidth(area)
    follow.fit()
    content.installEventFilter(follow)
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(area)
