"""Train the shipped fusion network (``napari_mmfuse/core/fuse/fusion_net.pt``).

Usage::

    PYTHONPATH=src python training/train_fusion.py [--steps 900] [--threads 1] [--out PATH]

Unsupervised: no fused image is ever given. The loss asks, for every training pair, that
the fused image reach CDDFuse_MIF's published values (its set's row in
``benchmarks/bench_fuse.py``) on the four target metrics, Q^AB/F, SCD, SSIM and VIF,
computed differentiably (:mod:`napari_mmfuse.core.fuse.objectives`): a soft hinge per
metric at 1 + ``--margin`` of the target, so a metric above its hinge buys nothing and no
metric is traded for another's surplus. Q^AB/F's hinge weighs 3 (``--emphasis``): it is
the metric every other setting left short. The shipped weights are this script's output
with its defaults (about 20 minutes on one CPU thread).

Data: the tuning split of the Harvard MRI-CT, MRI-PET and MRI-SPECT pairs as
``benchmarks/bench_fuse.py`` defines it (sorted names, first half; colour pictures as their
luminance), full 256x256 images, each set drawn equally often, random flips and quarter
turns. The held-out halves are never read here. Seeds are fixed (``--seed``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_fuse import CDDFUSE, DATA, SETS, TARGET_METRICS, harvard_pairs  # noqa: E402

from napari_mmfuse.core.fuse import objectives  # noqa: E402
from napari_mmfuse.core.fuse.network import WEIGHTS, FusionNet  # noqa: E402


def tuning_pairs(data: Path) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """``(set, stack (2, H, W) in [0, 1], targets (4,))`` for every tuning pair."""
    pairs = []
    for name in SETS:
        targets = torch.tensor([CDDFUSE[name][k] for k in TARGET_METRICS])
        for _, anatomical, functional, _ in harvard_pairs(data, name, None, "tuning"):
            stack = torch.tensor(np.stack([anatomical, functional]) / 255, dtype=torch.float32)
            pairs.append((name, stack, targets))
    return pairs


def metric_values(fused: torch.Tensor, stack: torch.Tensor) -> torch.Tensor:
    """The four target metrics, shape (B, 4), of fused (B, 1, H, W) against the sources (B, N, H, W), 0-255."""
    return torch.stack([objectives.OBJECTIVES[k](255 * fused, 255 * stack) for k in TARGET_METRICS], 1)


def target_loss(values: torch.Tensor, targets: torch.Tensor, margin: float, emphasis: torch.Tensor,
                sharpness: float = 30.0) -> torch.Tensor:
    """Mean over the batch of the soft hinges ``softplus(s (1 + margin - value / target)) / s``,
    summed over the metrics with the weights ``emphasis``."""
    return (emphasis * F.softplus(sharpness * (1 + margin - values / targets)) / sharpness).sum(1).mean()


def augment(stack: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random flip and quarter turn of a (N, H, W) stack."""
    turns = int(torch.randint(0, 4, (1,), generator=generator))
    stack = torch.rot90(stack, turns, (1, 2))
    if bool(torch.randint(0, 2, (1,), generator=generator)):
        stack = stack.flip(2)
    return stack


def train(pairs, *, steps: int, batch: int, lr: float, margin: float, emphasis: torch.Tensor, width: int, seed: int,
          log_every: int = 50):
    """Train a :class:`FusionNet` on ``pairs``; returns it (eval mode)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    net = FusionNet(width)
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps, pct_start=0.1)
    by_set = {name: [p for p in pairs if p[0] == name] for name in SETS}
    start = time.perf_counter()
    ratios = []
    for step in range(1, steps + 1):
        chosen = []
        for _ in range(batch):
            group = by_set[SETS[int(torch.randint(0, len(SETS), (1,), generator=generator))]]
            chosen.append(group[int(torch.randint(0, len(group), (1,), generator=generator))])
        stack = torch.stack([augment(p[1], generator) for p in chosen])
        targets = torch.stack([p[2] for p in chosen])
        fused, _ = net(stack)
        values = metric_values(fused, stack)
        loss = target_loss(values, targets, margin, emphasis)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        ratios.append((values / targets).detach())
        if step % log_every == 0 or step == steps:
            ratio = torch.cat(ratios).mean(0).tolist()
            ratios = []
            print(f"step {step}/{steps} loss {loss.item():.4f} mean value/target since the last line: "
                  + " ".join(f"{k} {r:.3f}" for k, r in zip(TARGET_METRICS, ratio))
                  + f" ({time.perf_counter() - start:.0f} s)", flush=True)
    return net.eval()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    parser.add_argument("--steps", type=int, default=900)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--margin", type=float, default=0.05, help="hinge at (1 + margin) x the target")
    parser.add_argument("--emphasis", default="3,1,1,1",
                        help="weights of the " + ", ".join(TARGET_METRICS) + " hinges (comma-separated)")
    parser.add_argument("--width", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pairs = tuning_pairs(args.data)
    print(f"{len(pairs)} tuning pairs: " + ", ".join(f"{n} {sum(p[0] == n for p in pairs)}" for n in SETS))
    start = time.perf_counter()
    emphasis = torch.tensor([float(x) for x in args.emphasis.split(",")])
    if emphasis.shape != (len(TARGET_METRICS),) or bool((emphasis < 0).any()):
        parser.error(f"--emphasis needs {len(TARGET_METRICS)} non-negative numbers, got {args.emphasis}")
    net = train(pairs, steps=args.steps, batch=args.batch, lr=args.lr, margin=args.margin, emphasis=emphasis,
                width=args.width, seed=args.seed)
    checkpoint = {
        "width": args.width,
        "state_dict": {k: v.detach().clone() for k, v in net.state_dict().items()},
        "trained": f"training/train_fusion.py --steps {args.steps} --batch {args.batch} --lr {args.lr} "
                   f"--margin {args.margin} --emphasis {args.emphasis} --width {args.width} --seed {args.seed} "
                   f"--threads {args.threads}",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, args.out)
    print(f"trained in {time.perf_counter() - start:.0f} s; weights: {args.out} ({args.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
