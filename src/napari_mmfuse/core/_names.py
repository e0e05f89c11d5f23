"""The default fusion method, importable without torch, SciPy or dask.

Method names and parameters are declared by the operation registry
(:mod:`napari_mmfuse.operations`); the default fusion method lives here because both
:mod:`napari_mmfuse.core.fuse` and the fusion operations need it and neither may import the other.
"""

from __future__ import annotations

# benchmarks/bench_fuse.py (Harvard MRI-CT/PET/SPECT, tuning and held-out splits): the trained
# fusion network meets CDDFuse_MIF on more of Q^AB/F, SCD, SSIM and VIF at once than any other
# method here (8 of the 12 set x metric targets on the held-out split; modulated selection, the
# best untrained method, 7), with smaller shortfalls (at most 5 %: SPECT Q^AB/F, against 11 %).
# No fused image reaches SPECT's Q^AB/F target on the held-out pairs probed (issue 15's note).
#: The grey fusion method used when none is given (and colour fusion's default inner method).
FUSE_DEFAULT_METHOD = "network"
