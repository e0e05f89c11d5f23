"""Full-size explanations keep their memory bounded by the window, not the image."""

import json
import subprocess
import sys

from napari_mmfuse.core import explain

CHILD = """
import json, sys
import numpy as np, torch
import captum.attr  # imported before measuring: a library, not the explanation's memory
from napari_mmfuse.core import explain, segment
torch.set_num_threads(1)
torch.manual_seed(0)
config = segment.ModelConfig(spatial_dims=3, in_channels=2, label_values=[0, 1], features=[4, 8, 16],
                             patch_size=[32, 32, 32])
model = segment.SegmentationNet(config).eval()
images = np.random.default_rng(0).standard_normal((2, 32, 64, 64)).astype(np.float32)
before = int(open("/proc/self/statm").read().split()[1]) * 4096
explain.explain(model, images, method="ig", target=1, steps=8, device="cpu")
# VmHWM: this process's own peak (ru_maxrss would also hold the forked parent's size from before exec)
peak = int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1]) * 1024
print(json.dumps({"extra": peak - before, "image": images.nbytes}))
"""

def test_integrated_gradients_memory_is_bounded_by_the_window():
    """IG on a 2 x 32 x 64 x 64 volume (32^3 windows, 8 path points) in a fresh process.

    Bound: a few copies of the image (input, normalised, padded, maps) plus the network's
    activations for one pass (:func:`copies_per_pass` copies of a window, every feature
    map of the UNet kept for the backward pass, twice for the gradients) plus a fixed
    64 MiB of library workspace. Sending all 8 path points of the whole image at once
    would need 16 copies of every activation of the image (the earlier 16 GB on BraTS).
    """
    run = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120, check=True)
    measured = json.loads(run.stdout.strip().splitlines()[-1])
    window = 32**3
    copies = explain.copies_per_pass(explain.Tiling((32, 64, 64), (32, 32, 32), None))
    activations = copies * window * 4 * 2 * (2 + 4 + 8 + 16 + 8 + 4 + 2)  # every level's maps, encoder and decoder
    bound = 16 * measured["image"] + activations + 64 * 2**20
    whole_at_once = 8 * (measured["image"] // 2) * 2 * (2 + 4 + 8 + 16 + 8 + 4 + 2)
    print(f"\nextra peak RSS {measured['extra'] / 2**20:.0f} MiB, bound {bound / 2**20:.0f} MiB "
          f"(all path points at once: {whole_at_once / 2**20:.0f} MiB of activations)")
    assert copies == 8
    assert measured["extra"] < bound


def test_cancel_frees_the_arrays():
    """Closing the generator (a worker's quit) releases its arrays: traced memory falls back to where it was."""
    import gc
    import tracemalloc

    import numpy as np
    import torch

    from napari_mmfuse.core import segment

    torch.manual_seed(0)
    config = segment.ModelConfig(spatial_dims=3, in_channels=2, label_values=[0, 1], features=[4, 8],
                                 patch_size=[16, 16, 16])
    model = segment.SegmentationNet(config).eval()
    images = np.random.default_rng(0).standard_normal((2, 32, 48, 48)).astype(np.float32)
    explain.explain(model, images[:, :16, :16, :16], method="ig", target=1, steps=4, device="cpu")  # imports, caches
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        steps = explain.explain_steps(model, images, method="ig", target=1, steps=4, device="cpu")
        next(steps), next(steps)
        held = tracemalloc.get_traced_memory()[0] - before
        steps.close()
        del steps
        gc.collect()
        left = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held > images.nbytes  # the normalised, padded copy at least
    assert left < 0.1 * held, (held, left)  # what stays: a few small caches
