"""Recipes: the inputs a subject has and the ordered operations to run on them, validated up front.

A recipe is a small YAML (or JSON) file::

    recipe: 1
    name: phantom-fusion
    inputs:                         # per subject: a glob relative to the subject folder (or a CSV column)
      t1: "anat/*_T1w.nii.gz"
      pet: "pet/*_pet.nii.gz"
      truth: {pattern: "anat/*_labels.nii.gz", kind: labels, optional: true}
    steps:
      - id: t1_clean                # names the step's outputs: t1_clean (its first output) or t1_clean.<port>
        op: denoise/nlm             # capability/method from the operation registry
        inputs: {image: t1}
        params: {patch_radius: 2}
      - id: pet_on_t1
        op: register/rigid
        inputs: {fixed: t1_clean, moving: pet}
      - id: fused
        op: fuse/laplacian
        inputs: {images: [t1_clean, pet_on_t1.resampled]}
    measure:
      - dice: [segmented, truth]    # Dice of a labels output against a reference labels input

:func:`load_recipe` checks every operation, parameter and input name against the registry
before any subject starts; an error names the file and line.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..operations import Operation, get

#: Recipe format version this code reads.
FORMAT = 1


class RecipeError(ValueError):
    """A recipe that cannot run: the message names the file and line."""


@dataclass(frozen=True)
class RecipeInput:
    """One file a subject has: a glob pattern (relative to the subject folder) or a CSV column name."""

    name: str
    pattern: str
    kind: str = "image"
    optional: bool = False


@dataclass(frozen=True)
class Step:
    """One operation of a recipe with its wiring and checked parameters."""

    id: str
    operation: Operation
    inputs: dict
    params: dict
    line: int = 0

    def describe(self) -> dict:
        """The step as data (what a result's provenance must match for ``--resume`` to keep it)."""
        return {"id": self.id, "op": self.operation.key, "inputs": self.inputs, "params": self.params}


@dataclass
class Recipe:
    """A validated recipe."""

    name: str
    inputs: dict[str, RecipeInput]
    steps: list[Step]
    measure: list = field(default_factory=list)
    path: Path | None = None

    def to_dict(self) -> dict:
        """The recipe as written (defaults filled in)."""
        inputs = {}
        for item in self.inputs.values():
            plain = item.kind == "image" and not item.optional
            inputs[item.name] = item.pattern if plain else {"pattern": item.pattern, "kind": item.kind,
                                                             "optional": item.optional}
        steps = [{"id": s.id, "op": s.operation.key, "inputs": s.inputs, "params": s.params} for s in self.steps]
        return {"recipe": FORMAT, "name": self.name, "inputs": inputs, "steps": steps, "measure": self.measure}

    def digest(self) -> str:
        """A hash of the recipe's content (not of its formatting)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def save(self, path, *, overwrite: bool = False) -> Path:
        """Write the recipe as YAML, atomically."""
        from ..io.atomic import atomic_output

        path = Path(path)
        with atomic_output(path, overwrite=overwrite) as temporary:
            Path(temporary).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        return path


class _LineLoader(yaml.SafeLoader):
    """A YAML loader that records the line of every mapping under the key ``__line__``."""

    def construct_mapping(self, node, deep=False):
        mapping = super().construct_mapping(node, deep=deep)
        mapping["__line__"] = node.start_mark.line + 1
        return mapping


def load_recipe(path) -> Recipe:
    """Read and validate a recipe file (YAML or JSON).

    Raises
    ------
    RecipeError
        ``<file> line <n>: <problem>`` for an unknown operation, parameter, input or output name,
        a parameter out of range, or a malformed file.
    """
    path = Path(path)
    try:
        document = yaml.load(path.read_text(), Loader=_LineLoader)
    except yaml.YAMLError as error:
        raise RecipeError(f"{path.name}: not a YAML/JSON recipe ({error})") from None
    except OSError as error:
        raise RecipeError(f"{path}: {error.strerror or error}") from None
    return parse_recipe(document, source=path)


def parse_recipe(document, *, source: Path | None = None) -> Recipe:
    """Validate a recipe given as a dict (see :func:`load_recipe`)."""
    where = source.name if source else "recipe"

    def fail(line, message):
        raise RecipeError(f"{where} line {line}: {message}" if line else f"{where}: {message}")

    if not isinstance(document, dict):
        fail(0, "a recipe is a mapping with 'inputs' and 'steps'")
    top = document.get("__line__", 1)
    unknown = sorted(set(document) - {"recipe", "name", "inputs", "steps", "measure", "__line__"})
    if unknown:
        fail(top, f"unknown key {unknown[0]!r} (keys: recipe, name, inputs, steps, measure)")
    if document.get("recipe", FORMAT) != FORMAT:
        fail(top, f"recipe format {document.get('recipe')!r} is not supported (this version reads {FORMAT})")
    inputs = _inputs(document.get("inputs"), fail, top)
    steps, known = [], {name: item.kind for name, item in inputs.items()}
    raw_steps = document.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        fail(top, "'steps' must be a non-empty list of operations")
    for raw in raw_steps:
        step = _step(raw, known, fail)
        steps.append(step)
        for index, port in enumerate(step.operation.outputs):
            known[f"{step.id}.{port.name}"] = port.kind
            if index == 0:
                known[step.id] = port.kind
    measure = _measure(document.get("measure") or [], known, fail)
    return Recipe(str(document.get("name") or (source.stem if source else "recipe")), inputs, steps, measure,
                  source)


def _inputs(raw, fail, line) -> dict[str, RecipeInput]:
    if not isinstance(raw, dict) or not [k for k in raw if k != "__line__"]:
        fail(line, "'inputs' must map each input name to a file pattern")
    line = raw.get("__line__", line)
    found = {}
    for name, value in raw.items():
        if name == "__line__":
            continue
        if isinstance(value, str):
            found[name] = RecipeInput(name, value)
            continue
        if not isinstance(value, dict) or "pattern" not in value:
            fail(line, f"input {name!r}: give a pattern, or a mapping with 'pattern' (and 'kind', 'optional')")
        kind = value.get("kind", "image")
        if kind not in ("image", "labels"):
            fail(value.get("__line__", line), f"input {name!r}: kind must be image or labels, not {kind!r}")
        found[name] = RecipeInput(name, str(value["pattern"]), kind, bool(value.get("optional", False)))
    return found


def _step(raw, known: dict, fail) -> Step:
    if not isinstance(raw, dict):
        fail(0, f"each step is a mapping with 'id', 'op' and 'inputs', not {raw!r}")
    line = raw.get("__line__", 0)
    unknown = sorted(set(raw) - {"id", "op", "inputs", "params", "__line__"})
    if unknown:
        fail(line, f"unknown step key {unknown[0]!r} (keys: id, op, inputs, params)")
    step_id, op = raw.get("id"), raw.get("op")
    if not isinstance(step_id, str) or not step_id.isidentifier():
        fail(line, f"a step needs an 'id' made of letters, digits and _ (got {step_id!r})")
    if step_id in known:
        fail(line, f"step id {step_id!r} is already the name of an input or an earlier step")
    if not isinstance(op, str) or op.count("/") != 1:
        fail(line, f"step {step_id}: 'op' must be capability/method, e.g. denoise/nlm (got {op!r})")
    try:
        operation = get(*op.split("/"))
    except ValueError as error:
        fail(line, f"step {step_id}: {error}")
    wiring = {k: v for k, v in (raw.get("inputs") or {}).items() if k != "__line__"}
    ports = {port.name: port for port in operation.inputs}
    for port_name, source in wiring.items():
        if port_name not in ports:
            fail(line, f"step {step_id}: {op} has no input {port_name!r} (inputs: {', '.join(ports)})")
        sources = source if isinstance(source, list) else [source]
        if ports[port_name].kind != "images" and isinstance(source, list):
            fail(line, f"step {step_id}: input {port_name!r} takes one value, not a list")
        for name in sources:
            if name not in known:
                fail(line, f"step {step_id}: {name!r} is neither a recipe input nor an earlier step's output")
    missing = [p.name for p in operation.inputs if not p.optional and p.name not in wiring]
    if missing:
        fail(line, f"step {step_id}: {op} needs input {missing[0]!r}")
    params = {k: v for k, v in (raw.get("params") or {}).items() if k != "__line__"}
    try:
        checked = operation.check(params)
    except ValueError as error:
        fail(raw.get("params", {}).get("__line__", line) if isinstance(raw.get("params"), dict) else line,
             f"step {step_id}: {error}")
    return Step(step_id, operation, wiring, checked, line)


def _measure(raw, known: dict, fail) -> list:
    measures = []
    for item in raw:
        line = item.get("__line__", 0) if isinstance(item, dict) else 0
        pair = item.get("dice") if isinstance(item, dict) else None
        if not isinstance(pair, list) or len(pair) != 2:
            fail(line, "a measure is 'dice: [labels output, reference labels input]'")
        for name in pair:  # an operation's image output holds labels when its input did (transform/apply)
            if known.get(name) not in ("labels", "image"):
                fail(line, f"dice: {name!r} is not a labels input or output of the recipe")
        measures.append({"dice": list(pair)})
    return measures
