"""Can a fusion keep maximum selection's MI and SSIM and still gain Q^AB/F? A local search.

The fusion target asks for CDDFuse's Q^AB/F *and* MI and SSIM at or above plain maximum
selection. This script measures how much room that leaves: starting from maximum selection
of each Harvard pair, it edits one square block at a time, copying the block from the
gradient-activity fusion, from source A or from source B, and

* samples ``--edits`` random edits per pair and counts how many keep MI, SSIM, both, and
  both while raising Q^AB/F;
* with ``--greedy``, walks the blocks (largest change first) and keeps an edit only when
  Q^AB/F rises while MI and SSIM stay at or above maximum selection's: the Q^AB/F that
  such edits can reach.

Usage::

    PYTHONPATH=src python benchmarks/fuse_tradeoff.py [--sets MRI_CT MRI_SPECT] [--pairs 2]
        [--block 8] [--edits 300] [--greedy] [--threads 1]

Metrics as in ``bench_fuse.py`` (0-255 grey, luminance of the colour images, MI in nats).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from bench_fuse import DATA, SETS, harvard_pairs
from napari_mmfuse.core import fuse as fusion
from napari_mmfuse.core.quality import fusion_mi, fusion_qabf, fusion_ssim


def mi_qabf_ssim(fused: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(MI in nats, Q^AB/F, SSIM) of a fused 0-255 image against its two sources."""
    return np.array([fusion_mi(fused, [a, b], base=math.e), fusion_qabf(fused, [a, b]), fusion_ssim(fused, [a, b])])


def candidates(a: np.ndarray, b: np.ndarray) -> list[np.ndarray]:
    """What a block may be copied from: the activity fusion (rounded), source A, source B."""
    activity = fusion.fuse([a / 255, b / 255], method="activity", normalise=False).fused * 255
    return [np.round(np.clip(activity, 0, 255)), a, b]


def blocks(shape, size: int):
    for i in range(0, shape[0], size):
        for j in range(0, shape[1], size):
            yield np.s_[i : i + size, j : j + size]


def random_edits(a, b, start, sources, size: int, count: int, rng) -> np.ndarray:
    """Metric changes (rows: MI, Q^AB/F, SSIM) of ``count`` random one-block edits of ``start``."""
    base = mi_qabf_ssim(start, a, b)
    all_blocks = list(blocks(a.shape, size))
    changes = []
    while len(changes) < count:
        where = all_blocks[rng.integers(len(all_blocks))]
        source = sources[rng.integers(len(sources))]
        if np.array_equal(start[where], source[where]):
            continue
        edited = start.copy()
        edited[where] = source[where]
        changes.append(mi_qabf_ssim(edited, a, b) - base)
    return np.array(changes)


def greedy(a, b, start, sources, size: int) -> tuple[np.ndarray, int]:
    """Keep block edits that raise Q^AB/F with MI and SSIM >= ``start``'s; the final metrics and edit count."""
    floor = mi_qabf_ssim(start, a, b)
    current, metrics, kept = start.copy(), floor, 0
    order = sorted(blocks(a.shape, size), key=lambda w: -sum(float(np.abs(s[w] - start[w]).sum()) for s in sources))
    for where in order:
        for source in sources:
            if np.array_equal(current[where], source[where]):
                continue
            edited = current.copy()
            edited[where] = source[where]
            trial = mi_qabf_ssim(edited, a, b)
            if trial[1] > metrics[1] and trial[0] >= floor[0] and trial[2] >= floor[2]:
                current, metrics, kept = edited, trial, kept + 1
    return metrics, kept


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    parser.add_argument("--pairs", type=int, default=2, help="pairs per set (the first ones)")
    parser.add_argument("--block", type=int, default=8, help="block side in pixels")
    parser.add_argument("--edits", type=int, default=300, help="random edits per pair")
    parser.add_argument("--greedy", action="store_true", help="also run the greedy search (minutes per pair)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)

    print("| set | pair | edits | keep MI | keep SSIM | keep both | keep both, Qabf up |"
          + (" Qabf max / activity / greedy | edits kept |" if args.greedy else ""))
    print("|---|---|---|---|---|---|---|" + ("---|---|" if args.greedy else ""))
    for set_name in args.sets:
        for label, a, b, _ in list(harvard_pairs(args.data, set_name, args.pairs)):
            start = np.maximum(a, b)
            sources = candidates(a, b)
            change = random_edits(a, b, start, sources, args.block, args.edits, rng)
            keep_mi, keep_ssim = change[:, 0] >= 0, change[:, 2] >= 0
            row = (f"| {set_name} | {label} | {len(change)} | {keep_mi.mean():.1%} | {keep_ssim.mean():.1%} | "
                   f"{(keep_mi & keep_ssim).mean():.1%} | {(keep_mi & keep_ssim & (change[:, 1] > 0)).mean():.1%} |")
            if args.greedy:
                metrics, kept = greedy(a, b, start, sources, args.block)
                q_max = mi_qabf_ssim(start, a, b)[1]
                q_activity = mi_qabf_ssim(sources[0], a, b)[1]
                row += f" {q_max:.3f} / {q_activity:.3f} / {metrics[1]:.3f} | {kept} |"
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
