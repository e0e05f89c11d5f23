"""The default fusion method, importable without torch, SciPy or dask.

Method names and parameters are declared by the operation registry
(:mod:`napari_mmfuse.operations`); the default fusion method lives here because both
:mod:`napari_mmfuse.core.fuse` and the fusion operations need it and neither may import the other.
"""

from __future__ import annotations

# benchmarks/bench_fuse.py (Harvard MRI-CT/PET/SPECT and the head phantom): the Laplacian
# pyramid has Q^AB/F 0.620 / 0.760 / 0.710 and the highest SCD of the blending methods in
# that table (both modalities stay visible), and it is fast enough for the live preview and
# for volumes. Learned fusion scores 0.656 / 0.806 / 0.732 but trains per image pair
# (seconds), guided filtering 0.572 / 0.773 / 0.714; maximum selection switches pixels hard
# between sources.
#: The grey fusion method used when none is given (and colour fusion's default inner method).
FUSE_DEFAULT_METHOD = "laplacian"
