"""A small live curve drawn with QPainter: registration metric or training loss per step."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QWidget

COLORS = ("#4fc3f7", "#ffb74d", "#81c784", "#e57373", "#ba68c8")


class CurvePlot(QWidget):
    """Values against their step, one colour per group (e.g. pyramid level).

    Parameters
    ----------
    placeholder : str
        Text shown until two points have arrived.
    """

    def __init__(self, placeholder: str):
        super().__init__()
        self.placeholder = placeholder
        self.setMinimumHeight(80)
        self.values: list[float] = []
        self.groups: list[int] = []

    def clear(self) -> None:
        """Forget all points."""
        self.values, self.groups = [], []
        self.update()

    def add(self, value: float, group: int = 0) -> None:
        """Append one point (non-finite values are skipped) and repaint."""
        if np.isfinite(value):
            self.values.append(float(value))
            self.groups.append(int(group))
            self.update()

    def paintEvent(self, event):  # noqa: N802 (Qt API)
        """Draw the curve scaled to the widget, with its range and last value."""
        painter = QPainter(self)
        painter.setRenderHint(QPainter.Antialiasing)
        painter.fillRect(self.rect(), QColor("#262930"))
        painter.setPen(QColor("#888888"))
        painter.drawRect(self.rect().adjusted(0, 0, -1, -1))
        if len(self.values) < 2:
            painter.drawText(self.rect(), Qt.AlignCenter, self.placeholder)
            painter.end()
            return
        low, high = min(self.values), max(self.values)
        span = (high - low) or 1.0
        margin = 6
        width, height = self.width() - 2 * margin, self.height() - 2 * margin
        step = width / (len(self.values) - 1)
        points = [
            QPointF(margin + i * step, margin + height * (1 - (v - low) / span)) for i, v in enumerate(self.values)
        ]
        start = 0
        for i in range(1, len(points) + 1):
            if i == len(points) or self.groups[i] != self.groups[start]:
                painter.setPen(QPen(QColor(COLORS[self.groups[start] % len(COLORS)]), 1.5))
                painter.drawPolyline(QPolygonF(points[max(start - 1, 0) : i]))
                start = i
        painter.setPen(QColor("#dddddd"))
        painter.drawText(margin + 2, margin + 12, f"{high:.4g}")
        painter.drawText(
            margin + 2, self.height() - margin - 2, f"{low:.4g}  (step {len(self.values)}, last {self.values[-1]:.4g})"
        )
        painter.end()
