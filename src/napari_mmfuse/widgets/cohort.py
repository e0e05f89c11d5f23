"""*Cohort* dock widget: a cohort run's subjects with their status; one click opens a subject's outputs.

It reads the table ``mmfuse run`` writes (``OUTDIR/cohort.csv``) and opens the chosen
subject's output files (``OUTDIR/<subject>/``) as layers placed in physical space, the way a
user checks a batch.
"""

from __future__ import annotations

from pathlib import Path

import napari
from napari.utils.notifications import show_error
from qtpy.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..provenance import SIDECAR_SUFFIX
from ._dock import scroll_contents

#: Table columns shown (the measurements stay in the CSV).
COLUMNS = ("subject", "status", "seconds", "error")


class CohortWidget(QWidget):
    """Lists a cohort run's subjects and opens a subject's outputs."""

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.rows: list[dict] = []
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("output folder of mmfuse run")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.clicked.connect(lambda: self.load(self.folder_edit.text()))
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.cellDoubleClicked.connect(lambda row, _: self.open_subject(self.rows[row]["subject"]))
        self.open_button = QPushButton("Open subject's outputs")
        self.open_button.clicked.connect(self._open_selected)
        self.summary = QLabel("")
        top = QHBoxLayout()
        top.addWidget(self.folder_edit)
        top.addWidget(browse)
        top.addWidget(self.refresh_button)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.summary)
        layout.addWidget(self.table)
        layout.addWidget(self.open_button)
        scroll_contents(self)

    def load(self, folder) -> list[dict]:
        """Read ``folder/cohort.csv`` and list its subjects."""
        from ..cohort.cluster import TABLE_STEM
        from ..cohort.table import read_table

        folder = Path(folder)
        table = folder / f"{TABLE_STEM}.csv"
        if not table.exists():
            self.summary.setText(f"{folder} holds no cohort table ({table.name})")
            self.rows = []
        else:
            self.rows = read_table(table)
            done = sum(row.get("status") == "done" for row in self.rows)
            self.summary.setText(f"{done} of {len(self.rows)} subjects done")
        self.folder_edit.setText(str(folder))
        self.table.setRowCount(len(self.rows))
        for index, row in enumerate(self.rows):
            for column, key in enumerate(COLUMNS):
                self.table.setItem(index, column, QTableWidgetItem(str(row.get(key, ""))))
        self.table.resizeColumnsToContents()
        return self.rows

    def outputs_of(self, subject: str) -> list[Path]:
        """A subject's output files (sidecars and hidden temporaries left out), by name."""
        folder = Path(self.folder_edit.text()) / subject
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and not p.name.endswith(SIDECAR_SUFFIX)
                      and not p.name.endswith((".pt", ".json", ".tfm", ".txt")))

    def open_subject(self, subject: str) -> list:
        """Open every image output of ``subject`` as layers in physical space (named ``<subject> <step>``)."""
        layers = []
        for path in self.outputs_of(subject):
            try:
                opened = self.viewer.open(str(path), plugin="napari-mmfuse")
            except (ValueError, OSError) as error:
                show_error(f"Cohort: cannot open {path.name}: {error}")
                continue
            for layer in opened:
                layer.name = f"{subject} {layer.name}"
            layers += opened
        if not layers:
            show_error(f"Cohort: {subject} has no image outputs in {self.folder_edit.text()}")
        return layers

    def _open_selected(self) -> None:
        rows = sorted({index.row() for index in self.table.selectedIndexes()})
        if not rows:
            show_error("Cohort: select a subject first")
            return
        for row in rows:
            self.open_subject(self.rows[row]["subject"])

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Cohort output folder", self.folder_edit.text())
        if folder:
            self.load(folder)
