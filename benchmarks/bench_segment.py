"""Segmentation from sparse scribbles: classical methods vs small networks, and fusion modes.

Two cases with a known target:

* the **head phantom** (:mod:`napari_mmfuse.sample_data`): T1 and T2 (resampled onto the
  T1 grid), lesion = rim + core classes (9, 10), or with ``--phantom-classes 8,9,10`` the
  lesion with its oedema (the analogue of BraTS's whole tumour);
* one **BraTS 2015 case** (``/work/shared/data/segmentation/brats2015_case``): FLAIR and
  T1c, whole tumour = label > 0, brain mask given.

Scribbles are generated from the ground truth on a few axial slices (at most 5 % of the
slices): the skeleton of the eroded target, of an eroded ring of background around it,
of the eroded rest of the body, and one line through the air. The networks train on them
(background = 1, target = 2) and predict the whole volume by sliding windows, each window
also flipped along each axis and the probabilities averaged (``--no-flips``: plain). Every
method's mask, classical or learned, then loses the connected components smaller than
``--min-component`` (default 1 %) of the mask's volume (specks). Reported: whole-target Dice, training and inference wall
time on this CPU.

Usage::

    python benchmarks/bench_segment.py                      # both cases, full settings
    python benchmarks/bench_segment.py --case brats --seeds 0 1 2 --json out.json  # mean, sd over seeds
    python benchmarks/bench_segment.py --quick              # script check: tiny, meaningless numbers

Timings depend on the machine's load; rerun on a quiet machine before quoting them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from skimage.morphology import skeletonize

from napari_mmfuse.core import segment
from napari_mmfuse.core.space import resample

BRATS = Path("/work/shared/data/segmentation/brats2015_case")
BACKGROUND, TARGET = 1, 2


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice overlap of two boolean masks (1.0 when both are empty)."""
    total = prediction.sum() + truth.sum()
    return float(2.0 * np.logical_and(prediction, truth).sum() / total) if total else 1.0


def _stroke(region: np.ndarray, erosion: int) -> np.ndarray:
    """Skeleton of the region eroded as much as possible up to ``erosion`` voxels (a painted stroke)."""
    for iterations in range(erosion, 0, -1):
        eroded = ndimage.binary_erosion(region, iterations=iterations)
        if eroded.any():
            return skeletonize(eroded)
    return skeletonize(region)


def scribbles_from_truth(truth: np.ndarray, body: np.ndarray, *, fraction: float = 0.05, max_slices: int = 7,
                         erosion: int = 2) -> tuple[np.ndarray, list[int]]:
    """Sparse strokes on a few axial slices through the target.

    Parameters
    ----------
    truth : ndarray of bool, shape (Z, Y, X)
        The target (lesion / whole tumour).
    body : ndarray of bool, shape (Z, Y, X)
        Head or brain; strokes outside it mark air as background.
    fraction : float
        Most slices labelled, as a fraction of Z.
    max_slices : int
    erosion : int
        Voxels eroded from each region before taking its skeleton.

    Returns
    -------
    scribbles : ndarray, shape (Z, Y, X), int32
        0 unlabelled, 1 background, 2 target.
    slices : list of int
    """
    z_with = np.flatnonzero(truth.any(axis=(1, 2)))
    count = max(1, min(max_slices, int(np.floor(fraction * truth.shape[0]))))
    slices = sorted(set(np.quantile(z_with, np.linspace(0.1, 0.9, count)).round().astype(int).tolist()))
    scribbles = np.zeros(truth.shape, np.int32)
    for z in slices:
        near = ndimage.binary_dilation(truth[z], iterations=10) & ~ndimage.binary_dilation(truth[z], iterations=4)
        far = body[z] & ~ndimage.binary_dilation(truth[z], iterations=10)
        scribbles[z][_stroke(near & body[z], 1)] = BACKGROUND
        scribbles[z][_stroke(far, erosion)] = BACKGROUND
        air = np.flatnonzero(~body[z].any(axis=0))
        if air.size:
            scribbles[z][:, air[: max(1, air.size // 2)][-1]] = BACKGROUND
        scribbles[z][_stroke(truth[z], erosion)] = TARGET
    return scribbles, slices


def load_phantom(stride: int, classes=(9, 10)) -> dict:
    from napari_mmfuse.sample_data import head_phantom, head_phantom_labels

    t1, t2 = head_phantom()[:2]
    labels = head_phantom_labels().data
    t2_on_t1 = resample(t2.data, t2.affine, t1.data.shape, t1.affine)
    images = np.stack([t1.data, t2_on_t1]).astype(np.float32)
    cut = (slice(None), slice(None, None, stride), slice(None, None, stride), slice(None, None, stride))
    return {
        "name": "phantom", "names": ["T1", "T2"], "images": images[cut], "truth": np.isin(labels, classes)[cut[1:]],
        "body": (labels > 0)[cut[1:]], "threshold_channel": 1,
    }


def load_brats(stride: int) -> dict:
    from napari_mmfuse.io import read

    def one(name):
        return np.asarray(read(BRATS / name)[0].data)

    images = np.stack([one("Flair_subtrMeanDivStd.nii.gz"), one("T1c_subtrMeanDivStd.nii.gz")]).astype(np.float32)
    cut = (slice(None), slice(None, None, stride), slice(None, None, stride), slice(None, None, stride))
    return {
        "name": "brats2015", "names": ["FLAIR", "T1c"], "images": images[cut],
        "truth": (one("OTMultiClass.nii.gz") > 0)[cut[1:]], "body": (one("brainmask.nii.gz") > 0)[cut[1:]],
        "threshold_channel": 0,
    }


def run_case(case: dict, *, steps: int, patch: int, batch: int, seeds: list[int], lr: float, flips: bool = True,
             min_component: float = 0.0) -> list[dict]:
    images, truth, body = case["images"], case["truth"], case["body"]
    scribbles, slices = scribbles_from_truth(truth, body)
    info = {"case": case["name"], "shape": list(truth.shape), "scribble_slices": slices,
            "slice_fraction": round(len(slices) / truth.shape[0], 4),
            "scribble_voxels": {"background": int((scribbles == BACKGROUND).sum()),
                                "target": int((scribbles == TARGET).sum())}}
    print(json.dumps(info))
    rows = []

    def record(method, inputs, predicted, train_s=None, infer_s=None, seed=None):
        specks = math.ceil(min_component * predicted.sum())
        predicted = segment.connected_components(predicted, min_size=specks) > 0
        row = {"case": case["name"], "method": method, "inputs": inputs, "dice": round(dice(predicted, truth), 4),
               "train_s": None if train_s is None else round(train_s, 1),
               "infer_s": None if infer_s is None else round(infer_s, 1), "seed": seed}
        rows.append(row | {"slices": len(slices), "slice_fraction": info["slice_fraction"]})
        print(json.dumps(row), flush=True)

    channel = case["threshold_channel"]
    name = case["names"][channel]
    t = time.perf_counter()
    otsu = segment.threshold(images[channel], method="otsu", mask=body) == 1
    otsu = segment.connected_components(otsu, min_size=50) > 0
    record("otsu + components >= 50 (in body mask)", name, otsu, infer_s=time.perf_counter() - t)
    t = time.perf_counter()
    multi = segment.threshold(images[channel], method="multiotsu", classes=3, mask=body) == 3
    record("multiotsu top of 3 (in body mask)", name, multi, infer_s=time.perf_counter() - t)
    t = time.perf_counter()
    grown = segment.watershed(images, scribbles) == TARGET
    record("seeded watershed from scribbles", "+".join(case["names"]), grown, infer_s=time.perf_counter() - t)

    options = {"steps": steps, "patch_size": [patch] * 3, "batch_size": batch, "device": "cpu", "learning_rate": lr}
    settings = [([0], "early"), ([1], "early"), ([0, 1], "early"), ([0, 1], "late")]
    for (channels, fusion), seed in itertools.product(settings, seeds):
        t = time.perf_counter()
        model, losses = segment.train(images[channels], scribbles, fusion=fusion, seed=seed,
                                      channel_names=[case["names"][c] for c in channels], **options)
        train_s = time.perf_counter() - t
        combines = ["average", "vote"] if fusion == "late" else ["average"]
        for combine in combines:
            model.config.combine = combine
            t = time.perf_counter()
            labels, _ = segment.predict(model, images[channels], test_time_flips=flips, device="cpu")
            infer_s = time.perf_counter() - t
            mode = f"late ({combine})" if fusion == "late" else ("early" if len(channels) > 1 else "single")
            label = f"unet {mode}"
            record(label, "+".join(case["names"][c] for c in channels), labels == TARGET, train_s, infer_s, seed)
            print(f"  final loss {np.mean(losses[-20:]):.4f}", flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=("phantom", "brats", "both"), default="both")
    parser.add_argument("--steps", type=int, default=150, help="training steps per network")
    parser.add_argument("--patch", type=int, default=48, help="training patch edge (voxels)")
    parser.add_argument("--batch", type=int, default=4,
                        help="patches per step (BatchNorm statistics of 2 patches made early fusion unstable)")
    parser.add_argument("--phantom-classes", default="9,10",
                        help="phantom classes forming the target: 9,10 = lesion rim + core; 8,9,10 adds the oedema")
    parser.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate")
    parser.add_argument("--seeds", "--seed", type=int, nargs="+", default=[0],
                        help="training seeds; with several, every network is trained once per seed and summarised")
    parser.add_argument("--no-flips", action="store_true", help="predict without test-time flips")
    parser.add_argument("--min-component", type=float, default=0.01,
                        help="remove connected components smaller than this fraction of every method's mask")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="downsample 3x and train 5 steps (checks the script)")
    parser.add_argument("--json", help="write all rows to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    stride, steps = (3, 5) if args.quick else (1, args.steps)
    patch = 16 if args.quick else args.patch
    rows = []
    if args.case in ("phantom", "both"):
        classes = tuple(int(c) for c in args.phantom_classes.split(","))
        rows += run_case(load_phantom(stride, classes), steps=steps, patch=patch, batch=args.batch, seeds=args.seeds,
                         lr=args.lr, flips=not args.no_flips, min_component=args.min_component)
    if args.case in ("brats", "both"):
        rows += run_case(load_brats(stride), steps=steps, patch=patch, batch=args.batch, seeds=args.seeds, lr=args.lr,
                         flips=not args.no_flips, min_component=args.min_component)
    print("\n| case | method | inputs | seed | slices | Dice | train s | infer s |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['method']} | {r['inputs']} | {'-' if r['seed'] is None else r['seed']} "
              f"| {r['slices']} ({100 * r['slice_fraction']:.1f} %) "
              f"| {r['dice']:.3f} | {r['train_s'] if r['train_s'] is not None else '-'} "
              f"| {r['infer_s'] if r['infer_s'] is not None else '-'} |")
    if len(args.seeds) > 1:
        print(f"\n| case | method | inputs | Dice mean | sd | min | max (seeds {args.seeds}) |\n|---|---|---|---|---|---|---|")
        for key in dict.fromkeys((r["case"], r["method"], r["inputs"]) for r in rows if r["seed"] is not None):
            values = np.array([r["dice"] for r in rows if (r["case"], r["method"], r["inputs"]) == key])
            print(f"| {' | '.join(key)} | {values.mean():.3f} | {values.std():.3f} | {values.min():.3f} | {values.max():.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "torch_threads": torch.get_num_threads(),
                                               "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
