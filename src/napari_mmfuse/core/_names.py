"""The default fusion method, importable without torch, SciPy or dask.

Method names and parameters are declared by the operation registry
(:mod:`napari_mmfuse.operations`); the default fusion method lives here because both
:mod:`napari_mmfuse.core.fuse` and the fusion operations need it and neither may import the other.
"""

from __future__ import annotations

# benchmarks/bench_fuse.py (Harvard MRI-CT/PET/SPECT, tuning and held-out splits): modulated
# selection meets CDDFuse_MIF on more of Q^AB/F, SCD, SSIM and VIF at once than any other method
# here (7 of the 12 set x metric targets on the held-out split, the Laplacian pyramid 6, and its
# largest shortfall is 11 % against the pyramid's 31 %: SPECT VIF); its five parameters were
# chosen on the tuning split. It works on volumes as they are (3D windows), needs no training.
#: The grey fusion method used when none is given (and colour fusion's default inner method).
FUSE_DEFAULT_METHOD = "modulated"
