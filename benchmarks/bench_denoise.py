"""Denoising benchmark: napari-mmfuse vs scikit-image (and BM3D when installed) on the same inputs.

Data
----
* ``camera``: ``skimage.data.camera()`` in [0, 1] plus Gaussian noise, sigma 0.1 (the issue's target test).
* ``w2s-poisson``: the W2S 400-frame average ``target_avg400_020_1`` scaled to a peak of 30 photons,
  Poisson noise, back to [0, 1] (a real fluorescence image with noise of known statistics).
* ``w2s-real``: the real W2S pairs in the snapshot (three) (single frame vs 400-frame average) and
  ``fmd-bpae-real``: the FMD BPAE pair (red channel of the RGB-rendered PNGs; the ``image_R_1``
  files named in SOURCE.md are not in the snapshot), from /work/shared/data/denoise. Noisy and clean frames of these pairs are 8-bit images scaled
  independently, so every output (and the noisy input) is first mapped onto the clean image
  by a least-squares ``a * x + b`` before PSNR/SSIM; the column says "fitted".
* ``volume``: a 128^3 fluorescence-like phantom (blurred spheres of random size and brightness on a
  dim background) at a peak of 30 photons with Poisson noise plus Gaussian read noise (sigma 0.02
  of the peak), the issue's "128^3 image on the CPU" case; ``--quick`` uses 64^3.
* ``bias``: a two-class phantom times a smooth multiplicative field: our N4-like correction vs
  SimpleITK's N4, PSNR/SSIM of the corrected image (fitted) against the bias-free truth.

Parameters: classical methods get the noise level each library estimates itself (ours:
``estimate_noise``, others: ``skimage.restoration.estimate_sigma``); TV weight = sigma and
non-local means (patch 7, search distance 6, h = 0.8 sigma) use the same numbers for ours and
scikit-image. Noise2Void is given no noise level and runs with its defaults (the same for every
image): it trains on the noisy image (W2S: one model trained on the first pair and applied to
all) and predicts with test-time augmentation. Torch runs on one CPU thread by default
(scikit-image and BM3D are single-threaded), so times compare the same CPU budget; they are
CPU seconds of the process (``time.process_time``), which a busy shared machine does not inflate.

Usage::

    PYTHONPATH=src python benchmarks/bench_denoise.py            # full (several minutes)
    PYTHONPATH=src python benchmarks/bench_denoise.py --quick    # 256 x 256 crops, short N2V
    PYTHONPATH=src python benchmarks/bench_denoise.py --sets w2s-real fmd volume   # only these

Sets of several pairs get a row per pair and their mean.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from skimage import data as skdata
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.restoration import denoise_nl_means, denoise_tv_chambolle, denoise_wavelet, estimate_sigma

from napari_mmfuse.core import denoise as dn
from napari_mmfuse.core import normalize as nm

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "denoise"


def load(path: Path) -> np.ndarray:
    import imageio.v3 as iio

    image = iio.imread(path)
    if image.ndim == 3:
        image = image[..., 0]
    return image.astype(np.float32) / 255.0


def fit(clean: np.ndarray, image: np.ndarray) -> np.ndarray:
    design = np.stack([image.ravel(), np.ones(image.size)], axis=1).astype(np.float64)
    coef, *_ = np.linalg.lstsq(design, clean.ravel().astype(np.float64), rcond=None)
    return (design @ coef).reshape(clean.shape).astype(np.float32)


def scores(clean, image, fitted: bool) -> tuple[float, float]:
    image = fit(clean, image) if fitted else np.asarray(image, np.float32)
    return (
        peak_signal_noise_ratio(clean, image, data_range=1.0),
        structural_similarity(clean, image, data_range=1.0),
    )


def timed(function, *args, **kwargs):
    """``function``'s result and the CPU seconds this process spent on it.

    CPU time, not wall time: on a shared machine the wall clock counts other jobs' load; with
    one thread the CPU time is the wall time on an idle core.
    """
    start = time.process_time()
    out = function(*args, **kwargs)
    return out, time.process_time() - start


def datasets(quick: bool) -> list[tuple[str, list[tuple[np.ndarray, np.ndarray]], bool, list | None, list[str]]]:
    """(name, [(clean, noisy), ...], fitted, published outputs or None, pair names) with images in [0, 1]."""
    rng = np.random.default_rng(0)
    crop = (slice(128, 384), slice(128, 384)) if quick else (slice(None), slice(None))
    camera = (skdata.camera().astype(np.float32) / 255)[crop]
    noisy_camera = (camera + 0.1 * rng.standard_normal(camera.shape)).astype(np.float32)
    sets = [("camera sigma=0.1", [(camera, noisy_camera)], False, None, [""])]
    w2s = DATA / "w2s"
    if w2s.is_dir():
        clean = load(w2s / "clean_avg400" / "target_avg400_020_1.tif")[crop]
        peak = 30.0
        noisy = (rng.poisson(clean * peak) / peak).astype(np.float32)
        sets.append(("w2s-poisson peak=30", [(clean, noisy)], False, None, [""]))
        ids = sorted(
            p.name.removeprefix("input_avg1_")
            for p in (w2s / "noisy_avg1").glob("input_avg1_*.tif")
            if (w2s / "clean_avg400" / p.name.replace("input_avg1_", "target_avg400_")).exists()
        )[: 1 if quick else None]
        pairs = [(load(w2s / "clean_avg400" / f"target_avg400_{i}")[crop], load(w2s / "noisy_avg1" / f"input_avg1_{i}")[crop]) for i in ids]
        published = [load(w2s / "ref_noise2noise_output" / f"denoised_avg1_{i}")[crop] for i in ids]
        sets.append(("w2s-real (fitted)", pairs, True, published, [i.removesuffix(".tif") for i in ids]))
    fmd = DATA / "fmd"
    if (fmd / "BPAE_R_Channel_noisy_image.png").exists():
        pair = (load(fmd / "BPAE_R_Channel_gt_image.png")[crop], load(fmd / "BPAE_R_Channel_noisy_image.png")[crop])
        sets.append(("fmd-bpae-real (fitted)", [pair], True, None, [""]))
    return sets


def classical_methods(bm3d):
    """name -> function(noisy) for one image."""

    def ours(method, **fixed):
        def run(noisy):
            sigma = dn.estimate_noise(noisy)
            params = dn.suggest_parameters(noisy, method, sigma=sigma) | {
                k: v(sigma) if callable(v) else v for k, v in fixed.items()
            }
            return dn.denoise(noisy, method, device="cpu", **params)

        return run

    methods = {
        "ours gaussian (sigma 1 px)": ours("gaussian", sigma=1.0),
        "ours median (3x3)": ours("median", radius=1.0),
        "ours bilateral (auto)": ours("bilateral"),
        "ours diffusion (auto)": ours("diffusion"),
        "ours tv (weight=sigma)": ours("tv", weight=lambda s: s),
        "skimage tv_chambolle (weight=sigma)": lambda x: denoise_tv_chambolle(x, weight=estimate_sigma(x)),
        "ours nlm (7/6, h=0.8 sigma)": ours(
            "nlm", patch_radius=3.0, search_radius=6.0, h=lambda s: 0.8 * s, sigma=lambda s: s
        ),
        "skimage nl_means fast (7/6, h=0.8 sigma)": lambda x: denoise_nl_means(
            x, patch_size=7, patch_distance=6, h=0.8 * estimate_sigma(x), sigma=estimate_sigma(x), fast_mode=True
        ),
        "skimage wavelet (BayesShrink)": lambda x: denoise_wavelet(x, rescale_sigma=True),
    }
    if bm3d is not None:
        methods["BM3D (sigma estimated)"] = lambda x: bm3d.bm3d(x, sigma_psd=estimate_sigma(x)).astype(np.float32)
    return methods


def n2v_model(noisy: np.ndarray, steps: int | None):
    training = dn.n2v_train(noisy, device="cpu", **({} if steps is None else {"steps": steps}))
    while True:
        try:
            next(training)
        except StopIteration as done:
            return done.value


def volume_phantom(
    size: int, seed: int = 0, peak: float = 30.0, read_noise: float = 0.02
) -> tuple[np.ndarray, np.ndarray]:
    """(clean, noisy) ``size``^3 in [0, 1]: blurred spheres, Poisson noise at ``peak`` photons plus read noise."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    clean = np.full((size,) * 3, 0.05, np.float32)
    for _ in range(size):
        centre, radius, brightness = rng.uniform(0, size, 3), rng.uniform(2, size / 12), rng.uniform(0.2, 1.0)
        box = tuple(slice(max(0, int(c - radius)), min(size, int(c + radius) + 2)) for c in centre)
        offsets = np.ix_(*(np.arange(b.start, b.stop) - c for b, c in zip(box, centre)))
        inside = sum(o**2 for o in offsets) < radius**2
        clean[box] = np.maximum(clean[box], np.where(inside, brightness, 0))
    clean = ndi.gaussian_filter(clean, 1.5)
    clean /= clean.max()
    noisy = rng.poisson(clean * peak) / peak + read_noise * rng.standard_normal(clean.shape)
    return clean, noisy.astype(np.float32)


def volume_rows(quick: bool, steps: int | None, bm3d) -> list[tuple[str, str, float, float, float]]:
    """Noise2Void on a 3D volume (the issue's 128^3 case) next to 3D classical filters and slice-wise BM3D."""
    clean, noisy = volume_phantom(64 if quick else 128)
    name = f"volume {noisy.shape[0]}^3 peak=30"
    rows = [(name, "noisy input", *scores(clean, noisy, False), 0.0)]
    sigma = dn.estimate_noise(noisy)
    methods = {
        "ours gaussian (sigma 1 px)": lambda x: dn.gaussian(x, sigma=1.0, device="cpu"),
        "ours tv (weight=sigma)": lambda x: dn.total_variation(x, weight=sigma, device="cpu"),
        "skimage tv_chambolle (weight=sigma)": lambda x: denoise_tv_chambolle(x, weight=estimate_sigma(x)),
    }
    if bm3d is not None:
        methods["BM3D per slice (sigma estimated)"] = lambda x: np.stack(
            [bm3d.bm3d(plane, sigma_psd=estimate_sigma(x)) for plane in x]
        ).astype(np.float32)
    for label, function in methods.items():
        out, seconds = timed(function, noisy)
        rows.append((name, label, *scores(clean, out, False), seconds))
    model, train_seconds = timed(n2v_model, noisy, steps)
    out, seconds = timed(model.predict, noisy, device="cpu")
    label = f"ours n2v ({model.config.steps_trained} steps, no sigma; train {train_seconds:.0f} s)"
    rows.append((name, label, *scores(clean, out, False), train_seconds + seconds))
    return rows


def bias_rows() -> list[tuple[str, str, float, float, float]]:
    import SimpleITK as sitk

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[-1:1:256j, -1:1:256j]
    truth = np.where(xx**2 + yy**2 < 0.8, 0.5, 0.0)
    truth[(xx - 0.2) ** 2 + (yy + 0.1) ** 2 < 0.1] = 0.8
    truth = (truth + np.where(truth > 0, rng.normal(0, 0.015, truth.shape), 0)).astype(np.float32)
    observed = (truth * np.exp(0.35 * xx - 0.25 * yy**2 + 0.2 * xx * yy) + 0.005).astype(np.float32)
    mask = observed > 0.1
    rows = [("bias (fitted)", "input (biased)", *scores(truth, observed, True), 0.0)]
    ours, seconds = timed(nm.correct_bias_field, observed, mask=mask)
    rows.append(("bias (fitted)", "ours n4-like (poly degree 3)", *scores(truth, np.where(mask, ours, observed), True), seconds))
    image, mask_image = sitk.GetImageFromArray(observed), sitk.GetImageFromArray(mask.astype(np.uint8))
    theirs, seconds = timed(lambda: sitk.GetArrayFromImage(sitk.N4BiasFieldCorrection(image, mask_image)))
    rows.append(("bias (fitted)", "SimpleITK N4BiasFieldCorrection", *scores(truth, np.where(mask, theirs, observed), True), seconds))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256x256 crops, one W2S pair, 64^3 volume, short N2V")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--n2v-steps", type=int, default=None, help="N2V training steps (default n2v_train's, quick 100)")
    parser.add_argument(
        "--sets", nargs="+", default=None, help="only the data sets whose name contains one of these words, e.g. fmd volume"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps = args.n2v_steps or (100 if args.quick else None)

    def wanted(name: str) -> bool:
        return args.sets is None or any(word in name for word in args.sets)

    try:
        import bm3d
    except ImportError:
        bm3d = None
    methods = classical_methods(bm3d)
    rows = []
    for name, pairs, fitted, published, pair_names in datasets(args.quick):
        if not wanted(name):
            continue
        results: dict[str, list] = {"noisy input": [scores(c, n, fitted) + (0.0,) for c, n in pairs]}
        for label, function in methods.items():
            for clean, noisy in pairs:
                out, seconds = timed(function, noisy)
                results.setdefault(label, []).append(scores(clean, out, fitted) + (seconds,))
        if published is not None:
            label = "published Noise2Noise output (trained with pairs; reference)"
            results[label] = [scores(c, out, fitted) + (0.0,) for (c, _), out in zip(pairs, published)]
        model, train_seconds = timed(n2v_model, pairs[0][1], steps)
        n2v_label = f"ours n2v ({model.config.steps_trained} steps, no sigma)"
        for clean, noisy in pairs:
            out, seconds = timed(model.predict, noisy, device="cpu")
            results.setdefault(n2v_label, []).append(scores(clean, out, fitted) + (seconds,))
        for label, values in results.items():
            values = np.array(values)
            if label == n2v_label:
                values[:, 2] += train_seconds  # training (once per set) + prediction of one image
            if len(pairs) > 1:
                rows.extend((f"{name} {pair}", label, *value) for pair, value in zip(pair_names, values))
            rows.append((f"{name} x{len(pairs)}" + (" mean" if len(pairs) > 1 else ""), label, *values.mean(axis=0)))
        print(f"done: {name}", flush=True)
    if wanted("volume"):
        rows.extend(volume_rows(args.quick, steps, bm3d))
    if wanted("bias"):
        rows.extend(bias_rows())

    print(
        f"\ntorch threads: {args.threads}; time = CPU seconds per image (all threads together); "
        "N2V adds its training (once per set, on the first image)"
    )
    print("\n| data | method | PSNR (dB) | SSIM | CPU time (s) |\n|---|---|---|---|---|")
    for data_name, label, psnr, ssim, seconds in sorted(rows, key=lambda row: row[0]):
        print(f"| {data_name} | {label} | {psnr:.2f} | {ssim:.3f} | {seconds:.2f} |")
    if bm3d is None:
        print("\nBM3D: not installed (pip install bm3d)")


if __name__ == "__main__":
    main()
