"""The headless pipeline: arrays plus affines in, (result, provenance) out.

Both front ends call :func:`run`: the widgets with layers turned into
:class:`~napari_mmfuse.operations.Image`, the CLI with images read from files. Neither
re-implements orchestration: that lives in the operations' run functions.
:func:`replay` recomputes a result from its provenance record.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from .operations import Image, Progress, drive, get
from .provenance import Provenance, content_hash, describe_input


def run(capability: str, method: str, inputs: dict, params: dict | None = None, *, device: str | None = None,
        seed: int | None = None, on_progress: Callable[[Progress], None] | None = None,
        cancelled: Callable[[], bool] | None = None) -> tuple[dict, Provenance]:
    """Run one operation and record what produced its result (see :func:`run_steps`).

    Returns
    -------
    outputs : dict
        Output port name -> value; images carry the provenance in ``metadata["provenance"]``.
    provenance : Provenance
    """
    steps = run_steps(capability, method, inputs, params, device=device, seed=seed)
    return drive(steps, on_progress=on_progress, cancelled=cancelled)


def run_steps(
    capability: str,
    method: str,
    inputs: dict,
    params: dict | None = None,
    *,
    device: str | None = None,
    seed: int | None = None,
):
    """Run one operation as a generator: yields :class:`Progress`, returns ``(outputs, provenance)``.

    Widgets run this in a worker (each yield is a point where Cancel takes effect).

    Parameters
    ----------
    capability, method : str
        Which operation (see :func:`napari_mmfuse.operations.operations`).
    inputs : dict
        Port name -> :class:`Image`, list of images (``images`` ports) or other value
        (a transform, a model).
    params : dict, optional
        Parameter values; missing ones take the operation's defaults.
    device : str, optional
        ``cpu``, ``cuda``, ...; default: the best available.
    seed : int, optional
        Seed of trained operations (default 0 for them, None for deterministic ones).
    """
    operation = get(capability, method)
    checked = operation.check(params)
    missing = [port.name for port in operation.inputs if not port.optional and inputs.get(port.name) is None]
    extra = sorted(set(inputs) - {port.name for port in operation.inputs})
    if missing or extra:
        raise ValueError(f"{operation.key} takes inputs {[p.name for p in operation.inputs]}; "
                         f"missing {missing}, unexpected {extra}")
    if seed is None and not operation.deterministic:
        seed = 0
    record = Provenance(
        operation=operation.key,
        params=checked,
        inputs={name: _describe(value) for name, value in inputs.items() if value is not None},
        transforms=[_describe_other(v) for v in inputs.values() if _is_transform(v)],
        seed=seed,
        device=_device_name(device),
    )
    start = time.perf_counter()
    steps = operation.run(**{k: v for k, v in inputs.items() if v is not None}, device=device, seed=seed, **checked)
    outputs = yield from steps
    record.seconds = round(time.perf_counter() - start, 3)
    for name, value in outputs.items():
        data = getattr(value, "data", value)
        if callable(getattr(value, "describe", None)):  # a transform, a model: its own summary
            record.outputs[name] = value.describe()
        elif hasattr(data, "dtype") and hasattr(data, "shape"):
            record.outputs[name] = {"hash": content_hash(data), "shape": [int(n) for n in data.shape],
                                    "dtype": str(data.dtype)}
    for name, value in outputs.items():
        if isinstance(value, Image):
            value.metadata["provenance"] = {**record.to_dict(), "output": name}
    return outputs, record


def replay(record: Provenance, *, read_input: Callable[[dict], object] | None = None,
           device: str | None = None) -> tuple[dict, Provenance]:
    """Recompute a result from its provenance: the same operation, parameters, inputs and seed.

    Parameters
    ----------
    record : Provenance
    read_input : callable, optional
        Entry -> value (an :class:`Image`, a transform, ...); default reads ``entry["source"]``
        with :func:`read_source`. Each value's content hash must match the recorded one.
    device : str, optional
        Default: the recorded device.

    Raises
    ------
    ValueError
        An input has no source or its content changed since the record was made.
    """
    read_input = read_input or read_source
    inputs = {}
    for port, entries in record.inputs.items():
        values = []
        for entry in entries:
            value = read_input(entry)
            if _changed(entry, value):
                where = entry.get("source", {}).get("path", entry.get("name", port))
                raise ValueError(f"input {port} ({where}) changed since the result was made: its content hash differs")
            values.append(value)
        port_kind = next(p.kind for p in get(record.capability, record.method).inputs if p.name == port)
        inputs[port] = values if port_kind == "images" else values[0]
    return run(record.capability, record.method, inputs, record.params, device=device or record.device,
               seed=record.seed)


def _changed(entry: dict, value) -> bool:
    """Whether ``value`` differs from what ``entry`` recorded (its content hash, or its summary's hashes)."""
    data = getattr(value, "data", value)
    if "hash" in entry and hasattr(data, "dtype"):
        return content_hash(data) != entry["hash"]
    describe = getattr(value, "describe", None)
    summary = describe() if callable(describe) else {}
    return any(key.endswith("hash") and summary.get(key) != recorded for key, recorded in entry.items())


def read_source(entry: dict):
    """The input an entry was read from (``entry["source"]``): an :class:`Image` (path and series),
    a :class:`~napari_mmfuse.io.transforms.Transform` (``kind: transform``) or a saved segmentation
    model (``kind: model``)."""
    source = entry.get("source")
    if not source or "path" not in source:
        raise ValueError(f"input {entry.get('name', '')!r} was not read from a file: it cannot be replayed headless")
    if source.get("kind") == "transform":
        from .io.transforms import Transform

        return Transform.from_source(source)
    if source.get("kind") == "model":  # a saved segmentation model or MONAI bundle
        from .core.segment import load_model

        return load_model(source["path"])
    image = read_image(source["path"], series=int(source.get("series", 0)), kind=source.get("kind", "image"))
    if source.get("modality"):  # the modality the user gave (mmfuse fuse --modality) overrides the file's
        image.metadata["modality"] = source["modality"]
        image.metadata["source"]["modality"] = source["modality"]
    return image


def read_image(path, *, series: int = 0, kind: str | None = None) -> Image:
    """Read one image of a file as an :class:`Image` whose metadata names its source.

    Raises
    ------
    ValueError
        ``series`` is out of range or the image has a channel axis.
    """
    from .io import materialize, read

    path = Path(path)
    records = read(path)
    if not 0 <= series < len(records):
        raise ValueError(f"{path} holds {len(records)} image(s); --series {series} is out of range")
    record = records[series]
    if record.channel_axis is not None:
        raise ValueError(f"{path} has a channel axis; write one channel to its own file first")
    kind = kind or ("labels" if record.layer_type == "labels" else "image")
    metadata = {"source": {"path": str(path.resolve()), "series": series, "kind": kind}}
    if record.metadata.get("modality"):
        metadata["modality"] = record.metadata["modality"]
    if record.metadata.get("grid"):
        metadata["grid"] = record.metadata["grid"]  # the file's own grid: outputs on it are written in its order
    return Image(materialize(record.level0, path), record.affine, name=record.name, kind=kind, rgb=bool(record.rgb),
                 units=record.units, metadata=metadata)


def _describe(value):
    if isinstance(value, (list, tuple)):
        return [describe_input(v) for v in value]
    return [describe_input(value) if hasattr(getattr(value, "data", value), "dtype") else _describe_other(value)]


def _describe_other(value) -> dict:
    """Entry of a non-array input (a transform, a model): its own ``describe()`` when it has one."""
    describe = getattr(value, "describe", None)
    return describe() if callable(describe) else {"name": type(value).__name__}


def _is_transform(value) -> bool:
    return getattr(value, "kind", None) == "transform"


def _device_name(device) -> str | None:
    """The device that will run (resolved now so the record says ``cuda:0``, not None)."""
    from .core.device import get_device

    return str(get_device(device))
