"""Small plots drawn with QPainter: a live curve (registration metric, training loss) and ranked bars."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QWidget

COLORS = ("#4fc3f7", "#ffb74d", "#81c784", "#e57373", "#ba68c8")


def framed_painter(widget: QWidget, placeholder: str | None) -> QPainter | None:
    """A painter on ``widget`` after drawing its dark framed background; with ``placeholder``,
    that text is drawn centred instead and None is returned (nothing more to draw)."""
    painter = QPainter(widget)
    painter.setRenderHint(QPainter.Antialiasing)
    painter.fillRect(widget.rect(), QColor("#262930"))
    painter.setPen(QColor("#888888"))
    painter.drawRect(widget.rect().adjusted(0, 0, -1, -1))
    if placeholder is None:
        return painter
    painter.drawText(widget.rect(), Qt.AlignCenter, placeholder)
    painter.end()
    return None


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
        painter = framed_painter(self, self.placeholder if len(self.values) < 2 else None)
        if painter is None:
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


class RankedBars(QWidget):
    """Columns of horizontal bars, one row per name, each bar with its value and its rank in its column.

    Shows two rankings of the same names side by side (e.g. the per-modality attribution
    and what removing each modality does), so a reader sees at once whether they agree.

    Parameters
    ----------
    placeholder : str
        Text shown until the first scores arrive.
    """

    ROW, TITLE = 22, 20

    def __init__(self, placeholder: str):
        super().__init__()
        self.placeholder = placeholder
        self.names: list[str] = []
        self.columns: list[tuple[str, list[float]]] = []
        self.setMinimumHeight(80)

    @property
    def scores(self) -> list[float]:
        """The first column's values."""
        return self.columns[0][1] if self.columns else []

    def set_columns(self, names, columns) -> None:
        """Show ``columns``: ``(title, values)`` pairs, one value per name (bars scaled to each column's maximum)."""
        self.names = [str(name) for name in names]
        self.columns = [(str(title), [float(v) for v in values]) for title, values in columns]
        self.setMinimumHeight(self.TITLE + 16 + self.ROW * max(len(self.names), 1))
        self.update()

    def paintEvent(self, event):  # noqa: N802 (Qt API)
        """Draw the names, then each column's title and its bars with value and rank."""
        painter = framed_painter(self, None if self.columns else self.placeholder)
        if painter is None:
            return
        label_width = min(90, self.width() // 4)
        column_width = (self.width() - label_width - 8) / len(self.columns)
        top = 6 + self.TITLE
        painter.setPen(QColor("#dddddd"))
        for row, name in enumerate(self.names):
            painter.drawText(QRectF(6, top + self.ROW * row, label_width - 8, 18), Qt.AlignVCenter | Qt.AlignLeft,
                             name)
        for index, (title, values) in enumerate(self.columns):
            left = label_width + index * column_width
            painter.setPen(QColor("#dddddd"))
            painter.drawText(QRectF(left, 4, column_width - 4, self.TITLE), Qt.AlignVCenter | Qt.AlignLeft, title)
            scale = max(max(values, default=0.0), 1e-12)
            ranks = {i: rank for rank, i in enumerate(np.argsort([-v for v in values], kind="stable"), start=1)}
            bar_space = column_width - 70
            for row, value in enumerate(values):
                y = top + self.ROW * row
                width = max(bar_space * max(value, 0.0) / scale, 1.0)
                painter.fillRect(QRectF(left, y + 2, width, 14), QColor(COLORS[row % len(COLORS)]))
                painter.setPen(QColor("#dddddd"))
                painter.drawText(QRectF(left + width + 4, y, 66, 18), Qt.AlignVCenter | Qt.AlignLeft,
                                 f"{value:.2f} #{ranks[row]}")
        painter.end()
