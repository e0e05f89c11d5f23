"""*Provenance* dock widget: what produced the selected layer, saved as a replayable record or a recipe.

It shows the record an operation left in ``layer.metadata["mmfuse"]`` (operation, parameters,
inputs with their hashes, seed, device, time) and saves it as JSON, the sidecar format that
``mmfuse replay RECORD -o OUT`` recomputes from. *Save as recipe* turns the chain that made
the selected layers into a recipe for ``mmfuse run`` on a whole cohort, after the user confirms
the file patterns each subject's inputs are found by.
"""

from __future__ import annotations

import json
from pathlib import Path

import napari
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..provenance import SIDECAR_SUFFIX, Provenance
from ._session import unwrap


class ProvenanceWidget(QWidget):
    """Shows and saves the provenance of the active layer."""

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.title = QLabel("")
        self.text = QPlainTextEdit()
        self.text.setReadOnly(True)
        self.save_button = QPushButton("Save provenance…")
        self.save_button.clicked.connect(self._ask_and_save)
        self.recipe_button = QPushButton("Save selected layers as recipe…")
        self.recipe_button.clicked.connect(self._ask_and_save_recipe)
        layout = QVBoxLayout(self)
        layout.addWidget(self.title)
        layout.addWidget(self.text)
        layout.addWidget(self.save_button)
        layout.addWidget(self.recipe_button)
        self.viewer.layers.selection.events.active.connect(self.refresh)
        self.refresh()

    def record(self) -> Provenance | None:
        """The active layer's provenance, or None when no operation of ours produced it."""
        layer = self.viewer.layers.selection.active
        found = (getattr(layer, "metadata", None) or {}).get("mmfuse") if layer is not None else None
        try:
            return Provenance.from_dict(found) if isinstance(found, dict) else None
        except (TypeError, ValueError):
            return None

    def refresh(self, event=None) -> None:
        """Show the active layer's record (or say why there is none)."""
        layer = self.viewer.layers.selection.active
        record = self.record()
        if layer is None:
            self.title.setText("Select a layer to see what produced it.")
        elif record is None:
            self.title.setText(f"{layer.name}: not produced by an mmfuse operation (opened or drawn).")
        else:
            self.title.setText(f"{layer.name}: {record.operation} in {record.seconds:.1f} s on {record.device}")
        self.text.setPlainText(json.dumps(record.to_dict(), indent=2) if record else "")
        self.save_button.setEnabled(record is not None)

    def save(self, path) -> Path:
        """Write the active layer's provenance to ``path`` (atomically, never over an existing file)."""
        record = self.record()
        if record is None:
            raise ValueError("the active layer has no provenance to save")
        return record.save(path)

    def _ask_and_save(self) -> None:
        layer = unwrap(self.viewer.layers.selection.active)
        suggested = f"{layer.name}{SIDECAR_SUFFIX}" if layer is not None else f"layer{SIDECAR_SUFFIX}"
        path, _ = QFileDialog.getSaveFileName(self, "Save provenance", suggested, "Provenance (*.json)")
        if not path:
            return
        try:
            show_info(f"provenance saved to {self.save(path)}; recompute with: mmfuse replay {path} -o OUT")
        except (ValueError, OSError) as error:
            show_error(f"Provenance: {error}")

    def recipe_for_selection(self, name: str = "recipe"):
        """The recipe that recomputes the selected result layers, and the file each input came from.

        Raises
        ------
        ValueError
            No selected layer was made by an operation, or one depends on something drawn by hand.
        """
        from ..cohort.from_provenance import recipe_from_provenance

        records = [layer.metadata["mmfuse"] for layer in self.viewer.layers.selection
                   if isinstance((layer.metadata or {}).get("mmfuse"), dict)]
        if not records:
            raise ValueError("select the result layers to reproduce (layers made by an mmfuse operation)")
        return recipe_from_provenance(records, name=name)

    def save_recipe(self, path, patterns: dict | None = None) -> Path:
        """Write the selection's recipe, with input patterns replaced by ``patterns`` (name -> glob)."""
        from ..cohort.recipe import parse_recipe

        recipe, _ = self.recipe_for_selection(Path(path).stem)
        document = recipe.to_dict()
        for input_name, pattern in (patterns or {}).items():
            entry = document["inputs"][input_name]
            if isinstance(entry, dict):
                entry["pattern"] = pattern
            else:
                document["inputs"][input_name] = pattern
        return parse_recipe(document).save(path)

    def _ask_and_save_recipe(self) -> None:
        try:
            recipe, examples = self.recipe_for_selection()
        except ValueError as error:
            show_error(f"Recipe: {error}")
            return
        dialog = QDialog(self)
        dialog.setWindowTitle("Confirm how each subject's inputs are found")
        form = QFormLayout(dialog)
        edits = {}
        for input_name, item in recipe.inputs.items():
            edits[input_name] = QLineEdit(item.pattern)
            form.addRow(f"{input_name} (here: {Path(examples[input_name]).name})", edits[input_name])
        buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        buttons.accepted.connect(dialog.accept)
        buttons.rejected.connect(dialog.reject)
        form.addRow(buttons)
        if dialog.exec_() != QDialog.Accepted:
            return
        path, _ = QFileDialog.getSaveFileName(self, "Save recipe", "recipe.yaml", "Recipe (*.yaml *.yml)")
        if not path:
            return
        try:
            saved = self.save_recipe(path, {k: e.text() for k, e in edits.items()})
            show_info(f"recipe saved to {saved}; run it with: mmfuse run {saved} --subjects 'STUDY/sub-*' -o OUT")
        except (ValueError, OSError) as error:
            show_error(f"Recipe: {error}")
