"""napari-mmfuse: multimodal biomedical imaging in napari."""

import os as _os

# OpenMP threads sleep instead of spinning between parallel regions; libgomp reads this once,
# when torch is imported, so it is set here, first. See napari_mmfuse.core.threads.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
