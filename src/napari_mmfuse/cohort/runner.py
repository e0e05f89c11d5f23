"""Run a recipe on one subject: every step through the pipeline, every output with its sidecar.

Outputs land in ``OUTDIR/<subject>/<step>[.<port>]<suffix>``, each written atomically and then
its provenance sidecar. With ``resume``, a step whose sidecars match the recipe (operation,
parameters) and the current inputs (content hashes) is not recomputed; its outputs are read
back only when a later step needs them.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np

from .. import pipeline
from ..io import file_suffix
from ..io.atomic import remove_temporaries
from ..operations import Image
from ..provenance import SIDECAR_SUFFIX, Provenance, content_hash, sidecar_path
from .recipe import Recipe, Step, parse_recipe
from .subjects import Subject

#: Suffix of files holding image-like outputs: volumes as NIfTI, 2D images and slides as OME-TIFF.
VOLUME_SUFFIX, PLANE_SUFFIX = ".nii.gz", ".ome.tif"


def output_path(folder: Path, step: Step, port: str, value=None, *, first: bool) -> Path:
    """Where a step's output goes: ``<step><suffix>`` for its first output, ``<step>.<port><suffix>`` else."""
    stem = step.id if first else f"{step.id}.{port}"
    if isinstance(value, Image) or value is None:
        kind = next(p.kind for p in step.operation.outputs if p.name == port)
        if kind in ("image", "labels", "map"):
            planar = isinstance(value, Image) and value.spatial_ndim == 2
            return folder / (stem + (PLANE_SUFFIX if planar else VOLUME_SUFFIX))
    if getattr(value, "kind", None) == "transform":
        return folder / (stem + ".tfm")
    return folder / (stem + getattr(value, "default_suffix", ".json"))


def run_subject(recipe, subject: Subject, outdir, *, resume: bool = False, device: str | None = None) -> dict:
    """Run ``recipe`` on ``subject``; return its cohort-table row (never raises for a bad subject).

    Parameters
    ----------
    recipe : Recipe or dict
        A dict (``Recipe.to_dict()``) travels to cluster workers more safely than objects.
    subject : Subject
    outdir : str or Path
    resume : bool
        Keep outputs whose sidecars match (see the module docstring).
    device : str, optional

    Returns
    -------
    dict
        ``subject``, ``status`` ("done" or "failed"), ``error``, ``seconds``, ``computed``,
        ``reused`` (step counts) and the measurements (``<output>.volume.<label>``, ``dice.<a>``,
        numbers the transforms report).
    """
    recipe = recipe if isinstance(recipe, Recipe) else parse_recipe(recipe)
    started = time.perf_counter()
    row = {"subject": subject.id, "status": "done", "error": "", "computed": 0, "reused": 0}
    try:
        if subject.problem:
            raise ValueError(subject.problem)
        _Subject(recipe, subject, Path(outdir) / subject.id, resume, device, row).run()
    except (ValueError, OSError, RuntimeError, ArithmeticError, KeyError, IndexError) as error:
        row.update(status="failed", error=(str(error) or type(error).__name__).splitlines()[0])
    row["seconds"] = round(time.perf_counter() - started, 3)
    return row


class _Subject:
    """The state of one subject's run: values and content hashes by recipe name."""

    def __init__(self, recipe: Recipe, subject: Subject, folder: Path, resume: bool, device, row: dict):
        self.recipe, self.subject, self.folder = recipe, subject, folder
        self.resume, self.device, self.row = resume, device, row
        self.values: dict = {}
        self.hashes: dict = {}
        self.pending: dict = {}  # name -> step whose reused output is read (or recomputed) on demand
        self.first_ports = {step.id: step.operation.outputs[0].name for step in recipe.steps}

    def run(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_temporaries(self.folder)  # an earlier attempt's, on a worker that was killed mid-write
        for name, path in self.subject.files.items():
            if path is not None:
                kind = self.recipe.inputs[name].kind
                self.values[name] = pipeline.read_image(path, kind=kind)
                self.hashes[name] = content_hash(self.values[name].data)
        for step in self.recipe.steps:
            if self.resume and self._reuse(step):
                self.row["reused"] += 1
            else:
                self._compute(step)
        self._measure()

    def _names(self, step: Step) -> dict:
        """Recipe names of a step's outputs by port."""
        return {port.name: (step.id if i == 0 else f"{step.id}.{port.name}")
                for i, port in enumerate(step.operation.outputs)}

    def _canonical(self, name: str) -> str:
        """``reg`` for ``reg.transform`` when ``transform`` is that step's first output (two names, one value)."""
        step_id, _, port = name.partition(".")
        return step_id if port and self.first_ports.get(step_id) == port else name

    def _value(self, name: str):
        """The value of a recipe name, read back (or recomputed) when its step was reused."""
        name = self._canonical(name)
        if name in self.pending:
            step, port = self.pending.pop(name)
            first = port == step.operation.outputs[0].name
            path = self._existing(step, port, first=first)
            kind = next(p.kind for p in step.operation.outputs if p.name == port)
            if path is not None and kind in ("image", "labels", "map"):
                self.values[name] = pipeline.read_image(path, kind="labels" if kind == "labels" else "image")
                self._report(name, self.values[name])
            else:  # not kept on disk in a readable form: recompute the step
                for other in self._names(step).values():
                    self.pending.pop(other, None)
                self._compute(step)
                self.row["reused"] -= 1
        return self.values.get(name)

    def _inputs(self, step: Step) -> dict:
        inputs = {}
        for port, source in step.inputs.items():
            inputs[port] = [self._value(n) for n in source] if isinstance(source, list) else self._value(source)
        return {k: v for k, v in inputs.items() if v is not None and v != [None]}

    def _input_hashes(self, step: Step) -> dict:
        return {port: [self.hashes.get(self._canonical(n)) for n in (source if isinstance(source, list) else [source])]
                for port, source in step.inputs.items()}

    def _compute(self, step: Step) -> None:
        started = time.perf_counter()
        outputs, record = pipeline.run(step.operation.capability, step.operation.name, self._inputs(step),
                                       step.params, device=self.device)
        names = self._names(step)
        for port, value in outputs.items():
            if _savable(value):
                self._save(output_path(self.folder, step, port, value, first=port == step.operation.outputs[0].name),
                           value, record, port)
            self.values[names[port]] = value
            self.hashes[names[port]] = record.outputs.get(port, {}).get("hash") or _identity(value)
            self._report(names[port], value)
        self.row[f"{step.id}.seconds"] = round(time.perf_counter() - started, 3)
        self.row["computed"] += 1

    def _save(self, path: Path, value, record: Provenance, port: str) -> None:
        """Write one output, then its sidecar (naming this output's port and path only)."""
        from ..commands._outputs import save_output

        own = copy.deepcopy(record)
        own.outputs[port] = {**own.outputs.get(port, {}), "path": str(path)}
        own.outputs[port].setdefault("hash", _identity(value))
        for other in own.outputs.values():
            if other is not own.outputs[port]:
                other.pop("path", None)
        grids = [held.metadata["grid"] for held in self.values.values()  # the files' own grids, inputs first
                 if isinstance(getattr(held, "metadata", None), dict) and "grid" in held.metadata]
        save_output(path, value, overwrite=True, provenance=own.to_dict(), grid=grids)
        own.save(sidecar_path(path), overwrite=True)

    def _reuse(self, step: Step) -> bool:
        """Whether ``step``'s first output is on disk with a sidecar matching the step and its inputs."""
        path = self._existing(step, step.operation.outputs[0].name, first=True)
        if path is None:
            return False
        try:
            record = Provenance.load(sidecar_path(path))
        except (OSError, ValueError):
            return False
        hashes = {p: [e.get("hash") for e in entries] for p, entries in record.inputs.items()}
        if record.operation != step.operation.key or record.params != step.params or hashes != self._input_hashes(step):
            return False
        for port, name in self._names(step).items():
            entry = record.outputs.get(port, {})
            self.hashes[name] = entry.get("hash")
            self.pending[name] = (step, port)
            self._report_numbers(name, entry)
            if next(p.kind for p in step.operation.outputs if p.name == port) == "labels":
                self._value(name)  # read back for its volumes
        return True

    def _existing(self, step: Step, port: str, *, first: bool) -> Path | None:
        """The file holding a step's output, when it is there with its sidecar."""
        stem = step.id if first else f"{step.id}.{port}"
        for candidate in sorted(self.folder.glob(f"{stem}.*")):
            own_stem = candidate.name[: len(candidate.name) - len(file_suffix(candidate))]
            if not candidate.name.endswith(SIDECAR_SUFFIX) and own_stem == stem and sidecar_path(candidate).exists():
                return candidate
        return None

    def _report(self, name: str, value) -> None:
        """Measurements of one output: volumes per label of labels, the numbers a transform reports."""
        if isinstance(value, Image) and value.kind == "labels":
            voxel = float(abs(np.linalg.det(np.asarray(value.affine, dtype=float)[:-1, :-1])))
            labels, counts = np.unique(np.asarray(value.data), return_counts=True)
            for label, count in zip(labels, counts):
                if label != 0:
                    self.row[f"{name}.volume.{int(label)}"] = round(float(count) * voxel, 4)
        elif callable(getattr(value, "describe", None)):
            self._report_numbers(name, value.describe())

    def _report_numbers(self, name: str, summary: dict) -> None:
        """The plain numbers of an output's summary (a registration's metric before and after, ...)."""
        for key, number in summary.items():
            if isinstance(number, (int, float)) and not isinstance(number, bool):
                self.row[f"{name}.{key}"] = number

    def _measure(self) -> None:
        for measure in self.recipe.measure:
            labels_name, reference_name = measure["dice"]
            labels, reference = self._value(labels_name), self._value(reference_name)
            if labels is None or reference is None:
                continue
            self.row[f"dice.{labels_name}"] = round(dice(labels.data, reference.data), 6)


def dice(labels, reference) -> float:
    """Mean Dice over the labels present in ``reference`` (1.0 when both are empty)."""
    labels, reference = np.asarray(labels), np.asarray(reference)
    if labels.shape != reference.shape:
        raise ValueError(f"Dice needs labels on the reference grid: shapes {labels.shape} and {reference.shape}")
    values = [v for v in np.unique(reference) if v != 0]
    if not values:
        return 1.0 if not labels.any() else 0.0
    scores = []
    for value in values:
        a, b = labels == value, reference == value
        scores.append(2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))
    return float(np.mean(scores))


def _identity(value) -> str | None:
    data = getattr(value, "data", None)
    if data is not None and hasattr(data, "dtype"):
        return content_hash(data)
    describe = getattr(value, "describe", None)
    return describe().get("hash") if callable(describe) else None


def _savable(value) -> bool:
    """Outputs written to files: images, labels and maps, and objects that save themselves."""
    return isinstance(value, Image) or callable(getattr(value, "save", None))
