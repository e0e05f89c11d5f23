"""Fusion benchmark: every method on the Harvard MRI-CT/PET/SPECT pairs and the head phantom.

Usage::

    PYTHONPATH=src python benchmarks/bench_fuse.py [--quick] [--data DIR] [--skip-volume] [--threads N]
    PYTHONPATH=src python benchmarks/bench_fuse.py --volume [--threads N]   # only the 256^3 timing
    PYTHONPATH=src python benchmarks/bench_fuse.py --screenshots docs/screenshots/fusion   # only the pictures

Prints one markdown table (mean metrics per set, split and method, fusion time per pair),
the CDDFuse reference numbers from its README, a line per set saying whether the default
fusion (what ``mmfuse fuse`` does without ``--method``) meets CDDFuse on all four of Q^AB/F,
SCD, SSIM and VIF on the held-out split, and the time of the default fusion of a 256^3 pair
(wall and CPU seconds: on a shared machine the CPU time is the steadier number).

Splits (fixed): each Harvard set's pairs sorted by file name; the first half (rounded down)
is the tuning split: the default network (``training/train_fusion.py``) was trained and the
parameters of modulated selection were chosen on it; the second half is
held out and was only evaluated. Adjacent file names are adjacent slices, so a half split
keeps the held-out slices away from the tuned ones (every other pair would not).

Conventions follow CDDFuse's evaluator so the numbers can be compared: sources and the
fused image are grey 0-255 and the fused image is rounded to uint8 (as when saved to
PNG); colour images (PET, SPECT) are fused and evaluated on their luminance Y (BT.601,
rounded); MI is in nats (CDDFuse uses scikit-learn's ``mutual_info_score``). Two
differences remain: our SSIM uses ``data_range=255`` (CDDFuse calls scikit-image on float
images without a data range) and our Q^AB/F sets the edge-strength ratio of two equal
strengths to 1 (CDDFuse's code sets it to the fused strength).

A published method's own outputs: the four MRI-PET/SPECT examples of Zero-Learning fusion
(Lahoud & Susstrunk 2019; ../shared/data/fusion/zerolearning, when present) are a fifth set,
fused by every method here and scored beside the authors' fused images (row "published").

Reference implementations written here from established libraries: PyWavelets DWT fusion
(db2, 3 levels, max-abs details, mean approximation) and a scikit-image Laplacian pyramid
(``pyramid_reduce``/``pyramid_expand``, 4 levels, max-abs details, mean base).
PyWavelets is needed only for this benchmark (``pip install PyWavelets``).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from napari_mmfuse.core import fuse as fusion
from napari_mmfuse.core.quality import fusion_metrics
from napari_mmfuse.operations import get as get_operation

DATA = Path("/work/shared/data/fusion/harvard")
SETS = ("MRI_CT", "MRI_PET", "MRI_SPECT")
CDDFUSE = {  # CDDFuse_MIF rows of the README (reference_metrics_from_README.txt)
    "MRI_CT": {"EN": 4.88, "SD": 79.17, "SF": 38.14, "MI": 2.61, "SCD": 1.41, "VIF": 0.61, "Qabf": 0.68, "SSIM": 1.34},
    "MRI_PET": {"EN": 4.22, "SD": 70.74, "SF": 29.57, "MI": 2.03, "SCD": 1.69, "VIF": 0.71, "Qabf": 0.71, "SSIM": 1.49},
    "MRI_SPECT": {"EN": 3.90, "SD": 58.31, "SF": 20.87, "MI": 2.49, "SCD": 1.35, "VIF": 0.97, "Qabf": 0.78, "SSIM": 1.48},
}
ZERO_LEARNING_CASES = (
    ("PET 001", "MRI-PET/MRI-001.png", "MRI-PET/PET-001.png", "MRI-PET/FUSED-001.png"),
    ("PET 012", "MRI-PET/MRI-012.png", "MRI-PET/PET-012.png", "MRI-PET/FUSED-012.png"),
    ("PET 060", "MRI-PET/MRI-060.png", "MRI-PET/PET-060.png", "MRI-PET/FUSED-060.png"),
    ("SPECT tc", "MRI-SPECT/mr.png", "MRI-SPECT/tc.png", "MRI-SPECT/fusion_mr_tc.png"),
)
COLUMNS = ("EN", "SD", "SF", "MI", "Qabf", "SSIM", "SCD", "VIF")
#: The four metrics of the default's target (CDDFuse_MIF's values, per set).
TARGET_METRICS = ("Qabf", "SCD", "SSIM", "VIF")
#: The classical (untrained) method closest to the targets on the held-out split (7 of 12 met).
BEST_CLASSICAL = "modulated"
#: The fixed split of each Harvard set (see the module docstring).
SPLITS = ("tuning", "held-out")


def grey_255(path: Path) -> np.ndarray:
    """A picture as grey 0-255 float: the luminance Y of RGB, rounded as OpenCV's GRAY read."""
    data = np.asarray(iio.imread(path), dtype=np.float64)
    if data.ndim == 3:
        data = np.round(fusion.luminance(data[..., :3]).astype(np.float64))
    return data


def reference_pywt(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """PyWavelets DWT fusion: db2, 3 levels, max-abs detail coefficients, mean approximation."""
    import pywt

    ca = pywt.wavedec2(a, "db2", level=3)
    cb = pywt.wavedec2(b, "db2", level=3)
    fused = [(ca[0] + cb[0]) / 2]
    for da, db in zip(ca[1:], cb[1:]):
        fused.append(tuple(np.where(np.abs(x) >= np.abs(y), x, y) for x, y in zip(da, db)))
    return pywt.waverec2(fused, "db2")[: a.shape[0], : a.shape[1]]


def reference_skimage(a: np.ndarray, b: np.ndarray, levels: int = 4) -> np.ndarray:
    """scikit-image Laplacian pyramid fusion: max-abs details, mean base."""
    from skimage.transform import pyramid_expand, pyramid_reduce, resize

    def pyramid(image):
        details, current = [], image
        for _ in range(levels):
            reduced = pyramid_reduce(current, downscale=2)
            expanded = resize(pyramid_expand(reduced, upscale=2), current.shape, order=1)
            details.append(current - expanded)
            current = reduced
        return details, current

    da, base_a = pyramid(a)
    db, base_b = pyramid(b)
    fused = (base_a + base_b) / 2
    for x, y in zip(reversed(da), reversed(db)):
        fused = resize(pyramid_expand(fused, upscale=2), x.shape, order=1) + np.where(np.abs(x) >= np.abs(y), x, y)
    return fused


def split_stems(data: Path, name: str) -> dict[str, list[str]]:
    """The file names of one set's pairs by split: sorted, first half "tuning", the rest "held-out"."""
    folder = data / name
    anatomical, functional = name.split("_")
    stems = sorted(p.name for p in (folder / functional).glob("*.png"))
    stems = [s for s in stems if (folder / anatomical / s).exists()]
    half = len(stems) // 2
    return {"tuning": stems[:half], "held-out": stems[half:]}


def harvard_pairs(data: Path, name: str, limit: int | None, split: str | None = None):
    """``(stem, anatomical, functional, functional path)`` grey 0-255 pairs of one set (same file
    name = a pair), of one split (``None``: all, sorted by name), at most ``limit`` of them."""
    folder = data / name
    anatomical, functional = name.split("_")
    by_split = split_stems(data, name)
    stems = sorted(by_split["tuning"] + by_split["held-out"]) if split is None else by_split[split]
    for stem in stems[:limit]:
        colour = folder / functional / stem
        yield stem, grey_255(folder / anatomical / stem), grey_255(colour), colour


def zero_learning_pairs(root: Path):
    """The MRI-PET and MRI-SPECT examples of Zero-Learning fusion with the authors' own fused outputs.

    ``(name, anatomical, functional, functional path, published fused)``, grey 0-255 (colour
    as luminance). Lahoud & Susstrunk, "Fast and Efficient Zero-Learning Image Fusion" (2019).
    """
    for name, anatomical, functional, fused in ZERO_LEARNING_CASES:
        colour = root / "images" / functional
        yield (
            name,
            grey_255(root / "images" / anatomical),
            grey_255(colour),
            colour,
            grey_255(root / "results" / fused),
        )


def phantom_pair():
    """T1 and PET of the head phantom, resampled onto the T1 grid's middle axial plane (0-255)."""
    from napari_mmfuse.sample_data import head_phantom

    records = {r.metadata.get("modality", r.name): r for r in head_phantom()}
    t1 = next(r for k, r in records.items() if "T1" in k)
    pet = next(r for k, r in records.items() if "PET" in k)
    t1_data = np.asarray(t1.data)
    plane = t1_data.shape[0] // 2
    prepared = fusion.resample_to_reference(
        [t1_data, np.asarray(pet.data)], [t1.affine, pet.affine], modalities=["MR", "PET"], plane=plane
    )
    return [("T1+PET", *(np.round(p * 255) for p in prepared), None)]


def run_method(method: str, a: np.ndarray, b: np.ndarray, colour_path: Path | None):
    """Fuse one pair; return (fused grey 0-255 before rounding, seconds)."""
    start = time.perf_counter()
    if method == "default":  # as mmfuse fuse without --method: colour fusion for a colour picture
        colour = None if colour_path is None else np.asarray(iio.imread(colour_path), dtype=np.float32)[..., :3]
        if colour is not None and fusion.is_colour(colour):
            result = fusion.fuse([a / 255, colour / 255], method="colour", normalise=False)
            out = fusion.luminance(result.fused) * 255
        else:
            out = fusion.fuse([a / 255, b / 255], method=fusion.DEFAULT_METHOD, normalise=False).fused * 255
    elif method == "ref:pywt-dwt":
        out = reference_pywt(a, b)
    elif method == "ref:skimage-laplacian":
        out = reference_skimage(a / 255, b / 255) * 255
    elif method == "colour":
        rgb = np.asarray(iio.imread(colour_path), dtype=np.float32)[..., :3] / 255
        result = fusion.fuse([a / 255, rgb], method="colour", normalise=False)
        out = fusion.luminance(result.fused) * 255
    else:
        out = fusion.fuse([a / 255, b / 255], method=method, normalise=False).fused * 255
    return out, time.perf_counter() - start


def evaluate(sets: dict, methods: list[str]):
    """Mean metrics of every method on every ``(set, split)``: rows ``(key, method, pairs, means, median s)``."""
    rows = []
    for set_name, pairs in sets.items():
        has_colour = any(p[3] is not None for p in pairs)
        for method in methods:
            if method == "colour" and not has_colour:
                continue
            metrics, times = [], []
            for _, a, b, colour_path in pairs:
                fused, seconds = run_method(method, a, b, colour_path)
                fused = np.round(np.clip(fused, 0, 255))
                metrics.append(fusion_metrics(fused, [a, b], mi_base=math.e))
                times.append(seconds)
            mean = {k: float(np.mean([m[k] for m in metrics])) for k in COLUMNS}
            rows.append((set_name, method, len(pairs), mean, statistics.median(times)))
            print(f"  {' '.join(set_name):20s} {method:22s} " + " ".join(f"{k} {mean[k]:.3f}" for k in TARGET_METRICS),
                  flush=True)
    return rows


def _volume_pair() -> tuple[np.ndarray, np.ndarray]:
    """A 256^3 float32 pair: a textured volume and a smooth blob, both with noise."""
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, 256, dtype=np.float32),) * 3, indexing="ij")
    a = (np.sin(6 * x) * np.cos(5 * y) + z + 0.05 * rng.standard_normal(x.shape, dtype=np.float32)).astype(np.float32)
    b = (np.exp(-(x**2 + y**2 + z**2) * 3) + 0.05 * rng.standard_normal(x.shape, dtype=np.float32)).astype(np.float32)
    return a, b


def volume_timing(repeats: int = 3, method: str = fusion.DEFAULT_METHOD) -> tuple[float, float]:
    """Median wall and CPU seconds of a fusion of a 256^3 float32 pair on the CPU (the whole volume at once).

    As ``fuse([a, b], method=method, device="cpu")`` is called (input checks and
    normalisation included), after a warm-up on a 32^3 crop.
    """
    a, b = _volume_pair()
    fusion.fuse([a[:32, :32, :32], b[:32, :32, :32]], method=method, device="cpu")
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fusion.fuse([a, b], method=method, device="cpu")
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def volume_metrics_timing() -> dict[str, float]:
    """Wall seconds of each fusion metric of the 256^3 default fusion (0-255, as ``fuse-metrics``)."""
    from napari_mmfuse.core import quality

    a, b = _volume_pair()
    result = fusion.fuse([a, b], method=fusion.DEFAULT_METHOD, device="cpu")
    fused = np.round(result.fused.astype(np.float64) * 255)
    sources = [np.round(fusion.normalise_intensity(s).astype(np.float64) * 255) for s in (a, b)]
    del a, b, result
    timed = {
        "EN": lambda: quality.fusion_entropy(fused),
        "SD": lambda: quality.fusion_sd(fused),
        "SF": lambda: quality.fusion_sf(fused),
        "MI": lambda: quality.fusion_mi(fused, sources),
        "Qabf": lambda: quality.fusion_qabf(fused, sources),
        "SSIM": lambda: quality.fusion_ssim(fused, sources),
        "SCD": lambda: quality.fusion_scd(fused, sources),
        "VIF": lambda: quality.fusion_vif(fused, sources),
    }
    seconds = {}
    for name, metric in timed.items():
        start = time.perf_counter()
        metric()
        seconds[name] = time.perf_counter() - start
    return seconds


def preview_timing(data: Path, repeats: int = 5) -> dict[str, float]:
    """Median milliseconds of the widget's live preview work for one 256x256 plane, per method.

    As the widget does it: resample both images onto the reference grid (intensity windows
    cached) and fuse; the PET of the first MRI-PET pair sits on a grid shifted by half a pixel.
    """
    _, mri, pet, _ = next(harvard_pairs(data, "MRI_PET", 1, "tuning"))
    affines = [np.eye(3), np.array([[1.0, 0, 0.5], [0, 1.0, 0.5], [0, 0, 1]])]
    windows = [fusion.intensity_window(image) for image in (mri, pet)]
    timings = {}
    for method in fusion.METHODS:
        if not get_operation("fuse", method).deterministic:  # trains: the widget offers no live preview
            continue
        times = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            prepared = fusion.resample_to_reference([mri, pet], affines, windows=windows, device="cpu")
            fusion.fuse(prepared, method=method, normalise=False, device="cpu")
            times.append(time.perf_counter() - start)
        timings[method] = 1000 * statistics.median(times[1:])
    return timings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 pairs per set")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--skip-volume", action="store_true", help="skip the 256^3 timing")
    parser.add_argument("--methods", nargs="*", help="subset of methods (default: all)")
    parser.add_argument("--skip-preview", action="store_true", help="skip the live-preview timing")
    parser.add_argument("--volume", action="store_true", help="only the 256^3 timing of the default")
    parser.add_argument("--screenshots", type=Path, metavar="DIR",
                        help="only write, per set, the first held-out pair: inputs | best classical | default")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.volume:
        print_volume_timing()
        return 0
    if args.screenshots:
        for name in SETS:
            print(write_comparison(args.data, name, args.screenshots))
        return 0

    limit = 2 if args.quick else None
    sets = {(name, split): list(harvard_pairs(args.data, name, limit, split)) for name in SETS for split in SPLITS}
    try:
        sets["phantom", "-"] = phantom_pair()
    except ImportError:
        print("(napari_mmfuse.sample_data missing: phantom set skipped)")
    zero_learning = []
    if (args.data.parent / "zerolearning").is_dir():
        zero_learning = list(zero_learning_pairs(args.data.parent / "zerolearning"))
        sets["zero-learning", "-"] = [case[:4] for case in zero_learning]
    methods = args.methods or ["default", *fusion.METHODS, "colour", "ref:pywt-dwt", "ref:skimage-laplacian"]
    rows = evaluate(sets, methods)
    if zero_learning:
        published = [fusion_metrics(case[4], [case[1], case[2]], mi_base=math.e) for case in zero_learning]
        mean = {k: float(np.mean([m[k] for m in published])) for k in COLUMNS}
        rows.append((("zero-learning", "-"), "published: Zero-Learning outputs", len(published), mean, math.nan))

    print("\n| set | split | method | pairs | " + " | ".join(COLUMNS) + " | time/pair (ms) |")
    print("|---|---|---|---|" + "---|" * (len(COLUMNS) + 1))
    for (set_name, split), method, count, mean, seconds in rows:
        values = " | ".join(f"{mean[k]:.2f}" if k in ("EN", "SD", "SF") else f"{mean[k]:.3f}" for k in COLUMNS)
        timing = "-" if math.isnan(seconds) else f"{1000 * seconds:.1f}"
        print(f"| {set_name} | {split} | {method} | {count} | {values} | {timing} |")
    for set_name, reference in CDDFUSE.items():
        values = " | ".join(str(reference[k]) for k in COLUMNS)
        print(f"| {set_name} | full set | CDDFuse (README) | - | {values} | - |")
    print_targets(rows)
    if not args.skip_preview:
        timings = preview_timing(args.data)
        print("\nLive preview (resample + fuse one 256x256 plane, CPU), median ms: "
              + ", ".join(f"{m} {t:.0f}" for m, t in timings.items()))
    if not args.skip_volume:
        print_volume_timing()
    return 0


def write_comparison(data: Path, name: str, folder: Path) -> Path:
    """``folder/<set>.png``: the first held-out pair as shipped | the best classical method | the default.

    Colour pictures are fused as ``mmfuse fuse`` fuses them (colour fusion, the luminance by
    the named grey method); each panel is labelled.
    """
    from PIL import Image, ImageDraw

    stem = split_stems(data, name)["held-out"][0]
    anatomical, functional = name.split("_")
    pictures = [np.asarray(iio.imread(data / name / folder_name / stem))[..., :3] for folder_name in name.split("_")]
    grey = pictures[0][..., 0]
    colour = fusion.is_colour(pictures[1])
    second = pictures[1] if colour else pictures[1][..., 0]
    panels = [(anatomical, pictures[0]), (functional, pictures[1])]
    compared = [(BEST_CLASSICAL, f"best classical ({BEST_CLASSICAL})")]
    if fusion.DEFAULT_METHOD != BEST_CLASSICAL:
        compared.append((fusion.DEFAULT_METHOD, f"default ({fusion.DEFAULT_METHOD})"))
    for method, label in compared:
        if colour:
            fused = fusion.fuse([grey / 255, second / 255], method="colour", inner=method, normalise=False).fused
        else:
            fused = np.repeat(fusion.fuse([grey / 255, second / 255], method=method, normalise=False).fused[..., None], 3, -1)
        panels.append((label, np.round(np.clip(fused, 0, 1) * 255).astype(np.uint8)))
    gap, top = 4, 18
    height, width = grey.shape
    canvas = Image.new("RGB", (len(panels) * (width + gap) - gap, height + top), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (label, picture) in enumerate(panels):
        canvas.paste(Image.fromarray(picture), (i * (width + gap), top))
        draw.text((i * (width + gap) + 4, 3), f"{label} ({stem})" if i < 2 else label, fill="black")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    canvas.save(path)
    return path


def print_targets(rows) -> None:
    """Per set and split: does the default meet CDDFuse on all four target metrics; how many do methods meet."""
    print(f"\nTarget: the default ({fusion.DEFAULT_METHOD}; colour fusion with it for colour pictures) at or above "
          "CDDFuse_MIF on all four of " + ", ".join(TARGET_METRICS))
    by_key = {(key, method): mean for key, method, _, mean, _ in rows}
    for set_name, reference in CDDFUSE.items():
        for split in SPLITS:
            ours = by_key.get(((set_name, split), "default"))
            if ours is None:
                continue
            compared = ", ".join(f"{k} {ours[k]:.3f} vs {reference[k]}" for k in TARGET_METRICS)
            met = all(ours[k] >= reference[k] for k in TARGET_METRICS)
            label = f"- {set_name}: default meets all four targets on {split}" if split == "held-out" else \
                f"  ({set_name} {split}: all four"
            print(f"{label}: {'yes' if met else 'no'} ({compared}){')' if split != 'held-out' else ''}")
            counts = {method: sum(mean[k] >= reference[k] for k in TARGET_METRICS)
                      for (key, method), mean in by_key.items() if key == (set_name, split)}
            print(f"    targets met on {split}: " + ", ".join(f"{m} {c}/4" for m, c in counts.items()))


def print_volume_timing() -> None:
    for method in dict.fromkeys([fusion.DEFAULT_METHOD, BEST_CLASSICAL]):
        wall, cpu = volume_timing(method=method)
        how = "plane by plane along the first axis" if method == "network" else "the whole volume at once"
        role = "Default fusion" if method == fusion.DEFAULT_METHOD else "Best classical fusion"
        print(
            f"\n{role} ({method}, {how}), 256^3 float32 pair, CPU, {torch.get_num_threads()} thread(s): "
            f"{wall:.2f} s wall, {cpu:.2f} s CPU time (medians of 3)"
        )
    seconds = volume_metrics_timing()
    print(
        "Fusion metrics of that 256^3 result, wall seconds: "
        + ", ".join(f"{name} {value:.1f}" for name, value in seconds.items())
        + f" (total {sum(seconds.values()):.1f})"
    )


if __name__ == "__main__":
    raise SystemExit(main())
