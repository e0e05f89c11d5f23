"""npe2 reader contribution: every supported format opens as layers placed in world space (LPS)."""

from __future__ import annotations

from pathlib import Path

from .io import read, reader_for


def get_reader(path):
    """Return a reader function for ``path`` (or a list of paths), or None if we do not read it.

    Never raises, so napari can try other readers.
    """
    paths = path if isinstance(path, list) else [path]
    if not paths or any(reader_for(p) is None for p in paths):
        return None
    return read_layers


def read_layers(path) -> list[tuple]:
    """Read one or several paths into napari layer data tuples.

    Each layer's metadata keeps ``source_path`` and ``series`` (the record's index in its
    file), so that results computed from it name their source and can be replayed.

    Raises
    ------
    napari_mmfuse.io.ReadError
        Naming the file and the problem, when a file of a supported type is corrupt.
    """
    paths = path if isinstance(path, list) else [path]
    layers = []
    for p in paths:
        for series, record in enumerate(read(Path(p))):
            record.metadata["series"] = series
            layers.append(record.to_layer_data())
    return layers
