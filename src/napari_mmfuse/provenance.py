"""Provenance: what produced a result, recorded so that it can be replayed.

One :class:`Provenance` record per result: the operation, the package version, every
parameter (defaults filled in), each input with a content hash, its placement and where it
came from, the transforms applied to the inputs, the random seed, the device and the time.
The CLI writes it as a JSON sidecar beside every output (:func:`sidecar_path`), layers keep
it in ``layer.metadata["provenance"]``, and ``mmfuse replay`` recomputes the output from it.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import __version__

#: Suffix added to an output's file name for its sidecar: ``t1_nlm.nii.gz.provenance.json``.
SIDECAR_SUFFIX = ".provenance.json"
#: Bytes hashed at a time (bounds memory for large and lazy arrays).
_HASH_BLOCK = 1 << 26


def content_hash(data) -> str:
    """SHA-256 of an array's dtype, shape and values (``sha256:<hex>``), read in bounded blocks.

    Works on numpy and dask arrays alike; two arrays with equal values, shape and dtype
    have the same hash whatever their memory layout.
    """
    digest = hashlib.sha256()
    dtype = np.dtype(data.dtype)
    digest.update(f"{dtype.str}{tuple(int(n) for n in data.shape)}".encode())
    if data.ndim == 0 or data.size == 0:
        digest.update(np.ascontiguousarray(np.asarray(data)).tobytes())
        return "sha256:" + digest.hexdigest()
    row_bytes = max(int(np.prod(data.shape[1:], dtype=np.int64)) * dtype.itemsize, 1)
    step = max(1, _HASH_BLOCK // row_bytes)
    for start in range(0, data.shape[0], step):
        block = np.ascontiguousarray(np.asarray(data[start : start + step]))
        digest.update(block.tobytes())
    return "sha256:" + digest.hexdigest()


def describe_input(image, *, source: dict | None = None) -> dict:
    """The provenance entry of one input: hash, shape, dtype, placement, source and its own provenance.

    Parameters
    ----------
    image : napari_mmfuse.operations.Image or array-like
    source : dict, optional
        Where it was read from: ``{"path": ..., "series": ...}``.
    """
    data = getattr(image, "data", image)
    entry = {"name": getattr(image, "name", ""), "hash": content_hash(data),
             "shape": [int(n) for n in data.shape], "dtype": np.dtype(data.dtype).str}
    affine = getattr(image, "affine", None)
    if affine is not None:
        entry["affine"] = np.asarray(affine, dtype=float).tolist()
    metadata = getattr(image, "metadata", None) or {}
    source = source or metadata.get("source")
    if source:
        entry["source"] = dict(source)
    if metadata.get("provenance"):
        entry["provenance"] = metadata["provenance"]
    return entry


@dataclass
class Provenance:
    """What produced one result.

    Attributes
    ----------
    operation : str
        ``capability/method``.
    params : dict
        Every parameter, defaults filled in.
    inputs : dict
        Port name -> list of input entries (:func:`describe_input`).
    transforms : list
        Transforms applied to the inputs, in order (each a dict: kind, matrix or file, hash).
    seed, device : optional
    version : str
        napari-mmfuse's version.
    started : str
        ISO 8601 time the work started (UTC).
    seconds : float
        How long it took.
    outputs : dict
        Output port name -> ``{"hash", "shape", "dtype"}`` for arrays, a transform's or model's summary.
    output : str, optional
        In the record an output carries (a layer's, a file's sidecar): which port it is.
    """

    operation: str
    params: dict
    inputs: dict = field(default_factory=dict)
    transforms: list = field(default_factory=list)
    seed: int | None = None
    device: str | None = None
    version: str = __version__
    started: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    seconds: float = 0.0
    outputs: dict = field(default_factory=dict)
    output: str | None = None

    @property
    def capability(self) -> str:
        return self.operation.split("/", 1)[0]

    @property
    def method(self) -> str:
        return self.operation.split("/", 1)[1]

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (``step`` and ``method`` keys included for file metadata)."""
        record = _jsonable(asdict(self))
        return {"step": self.capability, "method": self.method, **record}

    @classmethod
    def from_dict(cls, record: dict) -> "Provenance":
        """The record back from :meth:`to_dict` (unknown keys are refused with one clear error)."""
        record = {k: v for k, v in record.items() if k not in ("step", "method")}
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(record) - known)
        if unknown or "operation" not in record:
            raise ValueError(f"not an mmfuse provenance record (unexpected keys {unknown} or no operation)")
        return cls(**record)

    def save(self, path, *, overwrite: bool = False) -> Path:
        """Write the record as JSON, atomically."""
        from .io.atomic import atomic_output

        path = Path(path)
        with atomic_output(path, overwrite=overwrite) as temporary:
            Path(temporary).write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path) -> "Provenance":
        """Read a record written by :meth:`save`; a clear ``ValueError`` for anything else."""
        path = Path(path)
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path.name} is not JSON: {error}") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path.name} is not an mmfuse provenance record")
        return cls.from_dict(record)


def sidecar_path(output) -> Path:
    """Where the provenance of ``output`` is written: its name plus :data:`SIDECAR_SUFFIX`."""
    output = Path(output)
    return output.with_name(output.name + SIDECAR_SUFFIX)


def _jsonable(value):
    """``value`` with numpy scalars and arrays, tuples and paths made JSON types."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value
