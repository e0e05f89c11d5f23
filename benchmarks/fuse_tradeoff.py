"""Metric trade-offs of fusion: block edits of maximum selection, and the tuning of the default.

``--tune`` chooses the parameters of the default fusion (modulated selection) on the tuning
split of ``bench_fuse.py`` only: a coordinate search (two rounds over each parameter's
candidate values, starting from ``--start``) that ranks a setting first by how many of the
12 set x metric targets (CDDFuse_MIF's Q^AB/F, SCD, SSIM and VIF on MRI-CT/PET/SPECT) it
meets, then by its summed relative shortfall. The held-out split is never read.

Usage::

    PYTHONPATH=src python benchmarks/fuse_tradeoff.py --tune [--rounds 2] [--threads 1]

The rest of this docstring is about the block edits (the earlier target, MI and SSIM at or
above maximum selection's):

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

from bench_fuse import CDDFUSE, DATA, SETS, TARGET_METRICS, harvard_pairs
from napari_mmfuse.core import fuse as fusion
from napari_mmfuse.core.quality import fusion_mi, fusion_qabf, fusion_scd, fusion_ssim, fusion_vif
from napari_mmfuse.operations import get as get_operation

#: Candidate values of the default's parameters for ``--tune``.
TUNE_GRID = {
    "gain": (0.25, 0.5, 0.6, 0.75, 1.0),
    "radius": (2, 4, 6, 8),
    "consistency": (0, 3, 5, 8, 10),
    "brightness": (0.0, 0.03, 0.05, 0.07, 0.1, 0.2),
    "softness": (0, 1, 2, 3),
}


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


def target_metrics(fused: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """The four target metrics (as in ``bench_fuse.py``) of a fused 0-255 image."""
    sources = [a, b]
    return {"Qabf": fusion_qabf(fused, sources), "SCD": fusion_scd(fused, sources),
            "SSIM": fusion_ssim(fused, sources), "VIF": fusion_vif(fused, sources)}


def tuning_score(params: dict, pairs: dict) -> tuple[int, float, dict]:
    """(targets met, summed relative shortfall <= 0, mean metrics per set) of modulated selection."""
    means, met, shortfall = {}, 0, 0.0
    for set_name, set_pairs in pairs.items():
        rows = []
        for _, a, b, _ in set_pairs:
            fused = fusion.fuse([a / 255, b / 255], method="modulated", normalise=False, **params).fused
            rows.append(target_metrics(np.round(np.clip(fused * 255, 0, 255)), a, b))
        means[set_name] = {k: float(np.mean([r[k] for r in rows])) for k in TARGET_METRICS}
        for k in TARGET_METRICS:
            ratio = means[set_name][k] / CDDFUSE[set_name][k] - 1
            met += ratio >= 0
            shortfall += min(ratio, 0.0)
    return met, shortfall, means


def tune(data: Path, rounds: int, start: dict) -> dict:
    """Coordinate search of modulated selection's parameters on the tuning split; prints each trial."""
    pairs = {name: list(harvard_pairs(data, name, None, "tuning")) for name in SETS}
    best = dict(start)
    best_met, best_shortfall, _ = tuning_score(best, pairs)
    print(f"start {best}: {best_met}/12 met, shortfall {best_shortfall:+.3f}", flush=True)
    for _ in range(rounds):
        for name, values in TUNE_GRID.items():
            for value in values:
                if value == best[name]:
                    continue
                trial = {**best, name: value}
                met, shortfall, means = tuning_score(trial, pairs)
                summary = " | ".join(f"{s} " + " ".join(f"{means[s][k]:.3f}" for k in TARGET_METRICS) for s in SETS)
                print(f"{met}/12 {shortfall:+.3f} {trial} {summary}", flush=True)
                if (met, shortfall) > (best_met, best_shortfall):
                    best, best_met, best_shortfall = trial, met, shortfall
        print(f"best after the round: {best}: {best_met}/12 met, shortfall {best_shortfall:+.3f}", flush=True)
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    parser.add_argument("--pairs", type=int, default=2, help="pairs per set (the first ones)")
    parser.add_argument("--block", type=int, default=8, help="block side in pixels")
    parser.add_argument("--edits", type=int, default=300, help="random edits per pair")
    parser.add_argument("--greedy", action="store_true", help="also run the greedy search (minutes per pair)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tune", action="store_true", help="only the coordinate search of the default's parameters")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the coordinate search")
    parser.add_argument("--start", nargs="*", default=[], metavar="KEY=VALUE",
                        help="starting parameters of the search (default: the registry's defaults)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.tune:
        operation = get_operation("fuse", "modulated")
        start = {**operation.defaults(), **operation.check(dict(item.split("=", 1) for item in args.start))}
        tune(args.data, args.rounds, start)
        return 0
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
