"""Method names of the core steps, importable without torch, SciPy or dask.

``mmfuse`` builds its subcommand parsers (``--method`` choices) from these, so that
``mmfuse --help`` does not import the modules that compute. The core modules take their
names from here; ``tests/test_startup.py`` checks that :func:`napari_mmfuse.core.fuse.method_names`
agrees with :data:`FUSE_METHODS`.
"""

from __future__ import annotations

#: Methods of :func:`napari_mmfuse.core.denoise.denoise` (``"n2v"`` runs Noise2Void).
DENOISE_METHODS = ("gaussian", "median", "bilateral", "tv", "nlm", "diffusion", "n2v")
#: Methods of :func:`napari_mmfuse.core.normalize.normalize`.
NORMALIZE_METHODS = ("percentile", "zscore", "histogram", "n4", "macenko", "reinhard")
#: Attribution methods of :mod:`napari_mmfuse.core.explain`.
EXPLAIN_METHODS = ("gradcam", "gradcampp", "occlusion", "saliency", "smoothgrad", "ig", "attention")
#: Every method :func:`napari_mmfuse.core.fuse.fuse` accepts, grey methods first, then ``"colour"``.
FUSE_METHODS = (
    "average", "maximum", "minimum", "pca", "laplacian", "wavelet", "activity", "guided", "saliency", "learned",
    "colour",
)
#: The grey fusion method used when none is given.
FUSE_DEFAULT_METHOD = "laplacian"
