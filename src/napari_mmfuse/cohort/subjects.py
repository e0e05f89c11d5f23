"""Subjects of a cohort: their folders (a glob) or a CSV table, and each one's input files."""

from __future__ import annotations

import csv
import glob
from dataclasses import dataclass, field
from pathlib import Path

from .recipe import Recipe


@dataclass(frozen=True)
class Subject:
    """One subject: its id, its input files by recipe input name (None: optional and absent), or why not."""

    id: str
    files: dict = field(default_factory=dict)
    problem: str | None = None


def find_subjects(recipe: Recipe, subjects: str) -> list[Subject]:
    """The subjects named by a folder glob (``data/sub-*``) or a CSV file, in a stable order.

    With a glob, each matching folder is a subject (its name is the id) and each recipe input's
    pattern is a glob inside it that must match exactly one file. With a CSV, a ``subject``
    column gives the ids and one column per recipe input gives the paths (relative to the CSV).
    A subject whose files cannot be resolved keeps a ``problem`` (it is reported, the others run).

    Raises
    ------
    ValueError
        Nothing matches, the CSV lacks columns, or two subjects share an id.
    """
    if subjects.lower().endswith(".csv") and Path(subjects).is_file():
        found = _from_csv(recipe, Path(subjects))
    else:
        folders = sorted(Path(p) for p in glob.glob(subjects) if Path(p).is_dir())
        if not folders:
            raise ValueError(f"no subject folder matches {subjects!r}")
        found = [_from_folder(recipe, folder) for folder in folders]
    ids = [s.id for s in found]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"subject id {duplicates[0]!r} appears more than once")
    return found


def _from_folder(recipe: Recipe, folder: Path) -> Subject:
    files, problems = {}, []
    for item in recipe.inputs.values():
        matches = sorted(folder.glob(item.pattern))
        if len(matches) == 1:
            files[item.name] = matches[0]
        elif not matches and item.optional:
            files[item.name] = None
        elif not matches:
            problems.append(f"no file matches {item.name}: {item.pattern}")
        else:
            problems.append(f"{len(matches)} files match {item.name}: {item.pattern} ({matches[0].name}, ...)")
    return Subject(folder.name, files, "; ".join(problems) or None)


def _from_csv(recipe: Recipe, table: Path) -> list[Subject]:
    with table.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns = set(rows[0]) if rows else set()
    missing = [name for name in ["subject", *recipe.inputs] if name not in columns
               and not (name in recipe.inputs and recipe.inputs[name].optional)]
    if not rows or missing:
        raise ValueError(f"{table.name} needs a 'subject' column and one column per input; missing {missing or 'rows'}")
    found = []
    for row in rows:
        files, problems = {}, []
        for item in recipe.inputs.values():
            text = (row.get(item.name) or "").strip()
            path = (table.parent / text) if text else None
            if path is None and not item.optional:
                problems.append(f"no {item.name} given")
            elif path is not None and not path.exists():
                problems.append(f"{item.name}: {path} does not exist")
            files[item.name] = path
        found.append(Subject(row["subject"].strip(), files, "; ".join(problems) or None))
    return found
