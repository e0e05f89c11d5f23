"""How high can any fused image score? Gradient ascent on the fused pixels themselves.

Usage::

    PYTHONPATH=src python benchmarks/fuse_feasibility.py --set MRI_SPECT [--pairs 21.png 25.png]
        [--starts default activity laplacian] [--steps 300] [--joint]

No method is involved: the fused image of each held-out pair is a free 256x256 array, started
from a fusion (``--starts``: ``default`` as ``mmfuse fuse`` does it, any grey method by name,
``anatomical``, or ``max``) and moved by Adam on the differentiable metrics
(:mod:`napari_mmfuse.core.fuse.objectives`). Without ``--joint`` it climbs Q^AB/F alone,
which bounds from above (as far as a local ascent finds) the Q^AB/F any fusion reaches on
that pair; with ``--joint`` it asks for all four of CDDFuse's values at once (a soft hinge at
1.12x the Q^AB/F target, 1.02x the others). Each result is rounded to 0-255 and scored by the
evaluator (:func:`napari_mmfuse.core.quality.fusion_metrics`); the last line is the mean over the pairs
of the best Q^AB/F reached (with ``--joint``: among results meeting the other three targets).
One thread; 5 s (Q^AB/F alone) or 40 s (``--joint``) per pair and start on a quiet CPU.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch
import torch.nn.functional as F
from bench_fuse import CDDFUSE, DATA, TARGET_METRICS, harvard_pairs, run_method

from napari_mmfuse.core.fuse import objectives
from napari_mmfuse.core.quality import fusion_metrics


def start_image(start: str, anatomical: np.ndarray, functional: np.ndarray, colour_path) -> np.ndarray:
    """The fused image the ascent starts from, 0-255."""
    if start == "anatomical":
        return anatomical
    if start == "max":
        return np.maximum(anatomical, functional)
    fused, _ = run_method(start, anatomical, functional, colour_path if start == "default" else None)
    return np.clip(fused, 0, 255)


def ascend(start: np.ndarray, sources: torch.Tensor, targets: torch.Tensor | None, steps: int, lr: float = 0.5):
    """The fused image after ``steps`` Adam steps on Q^AB/F (``targets`` None) or on the four hinges."""
    fused = torch.tensor(start, dtype=torch.float32)[None, None].requires_grad_(True)
    optimiser = torch.optim.Adam([fused], lr=lr)
    margins = torch.tensor([0.12, 0.02, 0.02, 0.02])
    for _ in range(steps):
        image = fused.clamp(0, 255)
        if targets is None:
            loss = -objectives.qabf(image, sources)[0]
        else:
            values = torch.stack([objectives.OBJECTIVES[k](image, sources)[0] for k in TARGET_METRICS])
            loss = (F.softplus(30 * (1 + margins - values / targets)) / 30).sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return np.round(fused.detach().clamp(0, 255)[0, 0].numpy().astype(np.float64))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", default="MRI_SPECT", choices=sorted(CDDFUSE))
    parser.add_argument("--pairs", nargs="*", help="held-out file names (default: all)")
    parser.add_argument("--starts", nargs="*", default=["default"])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--joint", action="store_true", help="all four targets at once, not Q^AB/F alone")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    targets = torch.tensor([CDDFUSE[args.set][k] for k in TARGET_METRICS]) if args.joint else None
    best = {}
    for stem, anatomical, functional, colour_path in harvard_pairs(DATA, args.set, None, "held-out"):
        if args.pairs and stem not in args.pairs:
            continue
        sources = torch.tensor(np.stack([anatomical, functional]), dtype=torch.float32)[None]
        for start in args.starts:
            fused = ascend(start_image(start, anatomical, functional, colour_path), sources, targets, args.steps)
            scores = fusion_metrics(fused, [anatomical, functional], mi_base=math.e)
            others_met = all(scores[k] >= CDDFUSE[args.set][k] for k in TARGET_METRICS if k != "Qabf")
            if others_met or not args.joint:
                best[stem] = max(best.get(stem, 0.0), scores["Qabf"])
            print(f"{args.set} {stem} from {start}: " + ", ".join(f"{k} {scores[k]:.3f}" for k in TARGET_METRICS),
                  flush=True)
    which = "with SCD, SSIM and VIF at their targets " if args.joint else ""
    print(f"{args.set}: mean over {len(best)} held-out pairs of the highest Q^AB/F reached {which}"
          f"{np.mean(list(best.values())):.3f} (CDDFuse's target {CDDFUSE[args.set]['Qabf']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
