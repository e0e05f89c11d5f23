"""A recipe from the provenance of results: what a user clicked through, ready for a cohort.

Each record becomes a step (records that produced its inputs first); inputs read from files
become recipe inputs whose patterns replace the subject's id by ``*``
(``sub-01/anat/sub-01_T1w.nii.gz`` -> ``anat/*_T1w.nii.gz`` inside each subject folder).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .recipe import FORMAT, Recipe, parse_recipe


def guess_pattern(path) -> tuple[str, str]:
    """(subject id, pattern inside the subject folder) for one input file.

    The subject folder is the nearest folder whose name appears in the file's name; the
    pattern replaces that name by ``*``. Without one, the file's folder is the subject's and
    the pattern is the file's name.
    """
    path = Path(path)
    for folder in path.parents:
        if folder.name and folder.name in path.name:
            relative = path.relative_to(folder).as_posix()
            return folder.name, relative.replace(folder.name, "*")
    return path.parent.name, path.name


def recipe_from_provenance(records: list[dict], *, name: str = "recipe") -> tuple[Recipe, dict[str, str]]:
    """The recipe that recomputes ``records`` (layers' or sidecars' provenance) for any subject.

    Parameters
    ----------
    records : list of dict
        Provenance records (``Provenance.to_dict()``), each of a result to reproduce.
    name : str

    Returns
    -------
    recipe : Recipe
        Validated against the registry.
    examples : dict
        Recipe input name -> the file it was made from (for the user to confirm the patterns).

    Raises
    ------
    ValueError
        A result depends on something neither read from a file nor made by an operation
        (a layer drawn by hand): no other subject has it.
    """
    builder = _Builder()
    for record in records:
        builder.step_of(record)
    document = {"recipe": FORMAT, "name": name, "inputs": builder.inputs, "steps": builder.steps}
    return parse_recipe(document), builder.examples


class _Builder:
    def __init__(self):
        self.inputs: dict[str, str | dict] = {}
        self.examples: dict[str, str] = {}
        self.steps: list[dict] = []
        self.done: dict[str, str] = {}  # record key -> step id
        self.by_path: dict[str, str] = {}

    def step_of(self, record: dict) -> str:
        """The id of the step that makes ``record`` (added, with the steps before it, when new)."""
        key = json.dumps({k: v for k, v in record.items() if k not in ("output", "started", "seconds")},
                         sort_keys=True, default=str)
        if key in self.done:
            return self.done[key]
        capability, method = record["operation"].split("/")
        wiring = {}
        for port, entries in record.get("inputs", {}).items():
            names = [self._name_of(entry) for entry in entries]
            wiring[port] = names if _is_list_port(capability, method, port) else names[0]
        step_id = _unique(re.sub(r"\W", "_", method), {s["id"] for s in self.steps} | set(self.inputs))
        self.steps.append({"id": step_id, "op": record["operation"], "inputs": wiring,
                           "params": record.get("params", {})})
        self.done[key] = step_id
        return step_id

    def _name_of(self, entry: dict) -> str:
        if entry.get("provenance"):
            made_by = entry["provenance"]
            step_id = self.step_of(made_by)
            first = _first_output(*made_by["operation"].split("/"))
            port = made_by.get("output") or first
            return step_id if port == first else f"{step_id}.{port}"
        source = entry.get("source") or {}
        if "path" not in source:
            raise ValueError(f"{entry.get('name') or 'an input'} was neither read from a file nor made by an "
                             "operation (drawn by hand?): other subjects do not have it; save it to a file first")
        path = str(source["path"])
        if path in self.by_path:
            return self.by_path[path]
        _, pattern = guess_pattern(path)
        stem = re.sub(r"\W", "_", (entry.get("name") or Path(path).name.split(".")[0]).lower()).strip("_") or "input"
        input_name = _unique(stem if stem[0].isalpha() else f"in_{stem}", set(self.inputs))
        kind = source.get("kind", "image")
        self.inputs[input_name] = pattern if kind == "image" else {"pattern": pattern, "kind": kind}
        self.examples[input_name] = path
        self.by_path[path] = input_name
        return input_name


def _unique(name: str, taken: set) -> str:
    if name not in taken:
        return name
    index = 2
    while f"{name}_{index}" in taken:
        index += 1
    return f"{name}_{index}"


def _is_list_port(capability: str, method: str, port: str) -> bool:
    from ..operations import get

    return next(p.kind for p in get(capability, method).inputs if p.name == port) == "images"


def _first_output(capability: str, method: str) -> str:
    from ..operations import get

    return get(capability, method).outputs[0].name
