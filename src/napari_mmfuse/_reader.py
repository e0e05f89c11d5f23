"""npe2 reader contribution: every supported format opens as layers placed in world space (LPS).

Images open with a clinical display for their modality (see
:func:`napari_mmfuse.core.display.clinical_display`): CT in a preset window, MR on robust
percentiles, PET and SPECT in a hot colormap.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .core.display import clinical_display
from .io import read, reader_for

#: Note on PET/SPECT images that are not DICOM PET (NIfTI, MetaImage, DICOM NM): no SUV.
STORED_UNITS_NOTE = (
    "values as stored: SUV needs a DICOM PET series' injected dose, patient weight and injection time tags"
)


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
    file), so that results computed from it name their source and can be replayed, and
    ``display_window`` (how its contrast limits were chosen).

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
            display = _clinical_settings(record)
            data, kwargs, layer_type = record.to_layer_data()
            layers.append((data, kwargs | display, layer_type))
    _exact_2d_overlays()
    return layers


def _exact_2d_overlays() -> None:
    """Start the world-resliced 2D display (on by default) on the viewer the layers open into."""
    import napari

    viewer = napari.current_viewer()
    if viewer is not None:
        from .widgets._reslice import reslice_display

        reslice_display(viewer)


def _clinical_settings(record) -> dict:
    """Layer settings for a single-channel in-memory image by its modality; notes go to its metadata."""
    if (record.layer_type != "image" or record.rgb or record.channel_axis is not None
            or not isinstance(record.data, np.ndarray)):
        return {}
    meta = record.metadata
    region = " ".join(str(meta.get(key) or "") for key in ("body_part", "series_description", "source_path"))
    settings, notes = clinical_display(record.data, meta.get("modality"), region=region)
    meta.update(notes)
    if meta.get("modality") in ("PET", "SPECT") and "value_units" not in meta:
        meta.update(value_units="as stored", suv_note=STORED_UNITS_NOTE)
    return settings
