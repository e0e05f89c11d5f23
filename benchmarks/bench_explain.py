"""Explanations on a full-size volume: time and peak memory per method, per-modality answers, missing modalities.

The input is the BraTS 2015 case (``../shared/data/segmentation/brats2015_case``:
FLAIR + T1c, 2 x 155 x 240 x 240) when present, else a synthetic volume of the same size.
The model is a session UNet (default features, 48-voxel patches) trained briefly on
strokes drawn from the ground truth (a synthetic lesion without the case): the numbers
measure cost, not quality. Each method runs in a fresh subprocess, which reports its
wall time, the number of progress steps :func:`explain_steps` yielded, its peak
resident memory (``VmHWM``, the process's own high-water mark; ``ru_maxrss`` would keep the
forked parent's size) and the peak of numpy's allocations
(``tracemalloc``; torch's CPU tensors are not traced, the RSS holds them), so one method's
arrays never count for another. Then the per-modality answers (attribution and removal
ranked side by side), and with ``--missing`` the missing-modality table: models trained
with and without modality dropout, Dice of the tumour (labels > 0 of the ground truth)
with all modalities and with each one removed.

Usage::

    python benchmarks/bench_explain.py                 # gradcam, ig (tumour), ig (whole image), 1 thread
    python benchmarks/bench_explain.py --methods ig:whole occlusion:lesion --threads 2
    python benchmarks/bench_explain.py --missing --dropout 0.3 --train-steps 200
    python benchmarks/bench_explain.py --quick         # script check: a quarter-size volume, 8 IG steps

Timings depend on the machine's load; rerun on a quiet machine before quoting them.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

BRATS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "segmentation" / "brats2015_case"
SHAPE = (155, 240, 240)


def load_case(quick: bool) -> tuple[np.ndarray, np.ndarray]:
    """Images (2, Z, Y, X) and the lesion mask: BraTS if present, else a synthetic volume."""
    if BRATS.exists():
        from napari_mmfuse.io import read

        def one(name):
            return np.asarray(read(BRATS / name)[0].data)

        images = np.stack([one("Flair_subtrMeanDivStd.nii.gz"), one("T1c_subtrMeanDivStd.nii.gz")])
        lesion = one("OTMultiClass.nii.gz") > 0
    else:
        rng = np.random.default_rng(0)
        zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in SHAPE], indexing="ij")
        head = zz**2 / 0.8 + yy**2 / 0.7 + xx**2 / 0.6 < 1
        lesion = (zz - 0.1) ** 2 + (yy - 0.2) ** 2 + (xx + 0.2) ** 2 < 0.05
        images = np.stack([head + 1.5 * lesion, head - 0.5 * lesion]) + 0.1 * rng.standard_normal((2, *SHAPE))
        images[:, ~head] = 0
    if quick:
        images, lesion = images[:, ::2, ::2, ::2], lesion[::2, ::2, ::2]
    return np.ascontiguousarray(images, dtype=np.float32), lesion


def train_model(images, lesion, path: Path | None, steps: int, dropout: float = 0.0, seed: int = 0):
    """A briefly trained session UNet (saved at ``path`` when given): lesion = 2, a band around it = 1."""
    from scipy import ndimage

    from napari_mmfuse.core import segment

    scribbles = np.zeros(lesion.shape, np.int32)
    middle = int(np.argwhere(lesion)[:, 0].mean())
    for z in (middle - 4, middle, middle + 4):
        core = ndimage.binary_erosion(lesion[z], iterations=2)
        ring = ndimage.binary_dilation(lesion[z], iterations=8) & ~ndimage.binary_dilation(lesion[z], iterations=5)
        scribbles[z][core] = 2
        scribbles[z][ring] = 1
    model, _ = segment.train(images, scribbles, steps=steps, patch_size=[48] * 3, batch_size=2, device="cpu",
                             channel_names=["FLAIR", "T1c"], modality_dropout=dropout, seed=seed)
    if path is not None:
        segment.save_model(model, path, overwrite=True)
    return model


def child(args) -> None:
    """Run one method in this process and print its row as JSON."""
    import torch

    from napari_mmfuse.core import explain, segment

    torch.set_num_threads(args.threads)
    images, lesion = load_case(args.quick)
    model = segment.load_model(args.model)
    before = peak_rss_gb()
    region = lesion if args.region == "lesion" else None
    tracemalloc.start()
    start = time.perf_counter()
    if args.child == "answers":  # the per-modality answers: attribution and removal
        attribution = drive_counting(explain.modality_attribution_steps(
            model, images, target=2, region=region, method="ig", steps=8, device="cpu"))
        removal = drive_counting(explain.modality_removal_steps(model, images, target=2, region=region,
                                                                device="cpu"))
        result, yields, first = removal[0], attribution[1] + removal[1], attribution[2]
        extra = {"attribution": attribution[0].describe(), "removal": removal[0].describe()}
    else:
        result, yields, first = drive_counting(explain.explain_steps(
            model, images, method=args.child, target=2, region=region, steps=8 if args.quick else 32, device="cpu"))
        extra = {"map_max": float(result.map.max())}
    seconds = time.perf_counter() - start
    traced = tracemalloc.get_traced_memory()[1] / 2**30
    peak = peak_rss_gb()
    print(json.dumps({"method": args.child, "region": args.region, "shape": list(images.shape), "threads": args.threads,
                      "seconds": round(seconds, 1), "first_yield_s": round(first - start, 2), "yields": yields,
                      "peak_rss_gb": round(peak, 2), "rss_before_gb": round(before, 2),
                      "peak_traced_numpy_gb": round(traced, 2), "image_gb": round(images.nbytes / 2**30, 3)} | extra))


def peak_rss_gb() -> float:
    """This process's peak resident memory (GiB), from ``/proc/self/status`` (``VmHWM``) where there is one."""
    try:
        with open("/proc/self/status") as status:
            return int(next(line for line in status if line.startswith("VmHWM")).split()[1]) / 2**20
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def drive_counting(steps):
    """Run a generator of progress to its end: its result, how many steps it yielded, when the first came."""
    yields, first = 0, None
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value, yields, first
        yields += 1
        first = first if first is not None else time.perf_counter()


def missing_table(images, lesion, args) -> None:
    """Dice of the tumour with all modalities and with each removed, trained with and without modality dropout."""
    from napari_mmfuse.core import segment
    from napari_mmfuse.core.segment.train import fill_missing

    names = ["FLAIR", "T1c"]
    for dropout in (0.0, args.dropout):
        start = time.perf_counter()
        model = train_model(images, lesion, None, args.train_steps, dropout=dropout)
        trained = time.perf_counter() - start
        row = {"modality_dropout": dropout, "train_s": round(trained, 1)}
        model.config.modality_dropout = max(model.config.modality_dropout, 1e-6)  # fill the plain model the same way
        for missing in (None, 0, 1):
            channels = [None if c == missing else images[c] for c in range(len(names))]
            x, filled = fill_missing(model, channels)
            labels, _ = segment.predict(filled, x, device="cpu")
            tumour = labels == 2
            dice = 2 * (tumour & lesion).sum() / max(tumour.sum() + lesion.sum(), 1)
            row["all" if missing is None else f"without {names[missing]}"] = round(float(dice), 3)
        print(json.dumps(row), flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a quarter-size volume and 8 IG steps")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--methods", nargs="+", default=["gradcam:whole", "ig:lesion", "ig:whole", "answers:lesion"],
                        help="method[:lesion|whole] (default region: lesion); 'answers': attribution and removal")
    parser.add_argument("--train-steps", type=int, default=40)
    parser.add_argument("--missing", action="store_true", help="only the missing-modality Dice table")
    parser.add_argument("--dropout", type=float, default=0.3, help="modality dropout of the table's second model")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--region", default="lesion", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return 0
    import torch

    torch.set_num_threads(args.threads)
    images, lesion = load_case(args.quick)
    print(json.dumps({"case": "brats2015" if BRATS.exists() else "synthetic", "shape": list(images.shape),
                      "threads": args.threads}), flush=True)
    if args.missing:
        missing_table(images, lesion, args)
        return 0
    with tempfile.TemporaryDirectory() as folder:
        model = Path(folder) / "unet"
        train_model(images, lesion, model, 4 if args.quick else args.train_steps)
        del images, lesion
        for spec in args.methods:
            method, _, region = spec.partition(":")
            command = [sys.executable, __file__, "--child", method, "--region", region or "lesion", "--model",
                       str(model), "--threads", str(args.threads)] + (["--quick"] if args.quick else [])
            subprocess.run(command, check=True)
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
