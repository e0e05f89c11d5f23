"""Method names of the core steps, importable without torch, SciPy or dask.

``mmfuse`` builds its subcommand parsers (``--method`` choices) from these, so that
``mmfuse --help`` does not import the modules that compute. The core modules take their
names from here (fusion's come from its operation registry, :mod:`napari_mmfuse.operations.fuse`).
"""

from __future__ import annotations

#: Methods of :func:`napari_mmfuse.core.denoise.denoise` (``"n2v"`` runs Noise2Void).
DENOISE_METHODS = ("gaussian", "median", "bilateral", "tv", "nlm", "diffusion", "n2v")
#: Methods of :func:`napari_mmfuse.core.normalize.normalize`.
NORMALIZE_METHODS = ("percentile", "zscore", "histogram", "poly-bias", "macenko", "reinhard")
#: Attribution methods of :mod:`napari_mmfuse.core.explain`.
EXPLAIN_METHODS = ("gradcam", "gradcampp", "occlusion", "saliency", "smoothgrad", "ig", "attention")
