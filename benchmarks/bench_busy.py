"""Our long CPU paths on an idle and a busy machine, against a reference, in one run.

Tasks (each run is a fresh Python process, timed on the work alone, data prepared once by the
parent and loaded from a temporary file):

* ``register``: rigid MI registration of bench_register's head160 pair (IXI002 T1 vs a T2-like
  image, 160x192x224 at 1 mm; ``--quick``: every second voxel, 80x96x112). Ours:
  ``pipeline.run("register", "rigid", ...)`` with its defaults (what ``mmfuse register`` runs);
  reference: SimpleITK, bench_register's rigid stage (Mattes MI, regular step gradient descent,
  3-level pyramid, moments centring), its default thread count.
* ``n2v``: Noise2Void on ``skimage.data.camera()`` (512x512) in [0, 1] plus Gaussian noise 0.1,
  ``--n2v-steps`` training steps. Ours: ``n2v_train`` with its defaults; reference: a plain
  PyTorch loop of the same network (N2V2UNet, Adam, the same blind-spot batches), torch imported
  first (OpenMP's default wait policy) with torch's default threads and contiguous tensors.
* ``segment``: Segment training on the BraTS 2015 case (FLAIR + T1c, bench_segment's scribbles),
  ``--segment-steps`` steps. Ours: ``core.segment.train_steps`` with its defaults; reference: a
  plain PyTorch loop of the same network (MONAI UNet (16, 32, 64), batch norm, Adam 2e-3, the same
  patch sampler and loss) as for n2v.

"ours" runs as ``mmfuse`` does: napari_mmfuse imported before torch (``OMP_WAIT_POLICY=PASSIVE``)
and ``apply_thread_policy("cli")``. Loads: idle, then ``--load`` competing busy processes
(``python -c "while True: pass"``, started before and killed after the busy block). "slowdown" is
busy / idle time; "ours/ref" is ours / the reference under the same load. Each configuration runs
``--repeat`` times and keeps the median.

Extra registration configurations (``--configs``), the thread policy's evidence in
core/threads.py: ``register ours torch-default`` (torch imported first: OpenMP's default wait
policy, torch's default threads), ``register ours ACTIVE``, ``register ours viewer`` (the
viewer role's thread count), ``register ours spin 10k`` (default policy with ``GOMP_SPINCOUNT=10000``).

``--viewer``: Segment training in the viewer against the same training from the command line:
``segment viewer`` docks the Segment widget in a napari viewer (under Xvfb when there is no
display), checks the two BraTS layers, picks the strokes, sets the steps and clicks "Train &
segment", timing the click to the worker's end; ``segment cli`` runs the same operation
(``pipeline.run("segment", "unet", ...)``, same parameters) with the CLI's thread policy. Both
train and then segment the whole volume, as the widget does. The viewer run also reports the longest (and 99th percentile)
wait of napari's main thread between event-loop turns during training: what a user feels.

Usage::

    python benchmarks/bench_busy.py [--quick] [--load 2] [--repeat 1] [--configs ...] [--viewer]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

#: name -> (task, method, thread role, environment changes (None = unset))
CONFIGS = {
    "register ours": ("register", "ours", "cli", {}),
    "register SimpleITK": ("register", "sitk", "default", {}),
    "n2v ours": ("n2v", "ours", "cli", {}),
    "n2v plain torch": ("n2v", "plain", "default", {"OMP_WAIT_POLICY": None}),
    "segment ours": ("segment", "ours", "cli", {}),
    "segment plain torch": ("segment", "plain", "default", {"OMP_WAIT_POLICY": None}),
    "register ours torch-default": ("register", "ours", "default", {"OMP_WAIT_POLICY": None}),
    "register ours ACTIVE": ("register", "ours", "cli", {"OMP_WAIT_POLICY": "ACTIVE"}),
    "register ours viewer": ("register", "ours", "viewer", {}),
    "register ours spin 10k": ("register", "ours", "cli+torch-first", {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "10000"}),
    "segment viewer": ("segment-app", "viewer", "viewer", {}),
    "segment cli": ("segment-app", "cli", "cli", {}),
}
DEFAULT_CONFIGS = list(CONFIGS)[:6]
#: ours / reference pairs of the summary
PAIRS = {"register ours": "register SimpleITK", "n2v ours": "n2v plain torch", "segment ours": "segment plain torch",
         "segment viewer": "segment cli"}


# ----------------------------------------------------------------------------- data (parent)


def prepare(folder: Path, quick: bool, n2v_steps: int, segment_steps: int) -> Path:
    """Write every task's inputs to ``folder/data.npz``; returns the path."""
    import numpy as np
    from bench_register import head160_pair
    from bench_segment import BRATS, load_brats, scribbles_from_truth
    from skimage import data

    fixed, moving, _, affine, _ = head160_pair()
    if quick:
        fixed, moving = fixed[::2, ::2, ::2], moving[::2, ::2, ::2]
        affine = affine @ np.diag([2.0, 2.0, 2.0, 1.0])
    clean = data.camera().astype(np.float32) / 255
    noisy = clean + np.random.default_rng(0).normal(0, 0.1, clean.shape).astype(np.float32)
    arrays = {"fixed": np.ascontiguousarray(fixed), "moving": np.ascontiguousarray(moving), "affine": affine,
              "noisy": noisy, "steps": np.array([n2v_steps, segment_steps])}
    if BRATS.is_dir():
        case = load_brats(1)
        scribbles, _ = scribbles_from_truth(case["truth"], case["body"])
        arrays |= {"brats": case["images"], "scribbles": scribbles.astype(np.int32)}
    path = folder / "data.npz"
    np.savez(path, **arrays)
    return path


# ----------------------------------------------------------------------------- children


def _register(method: str, data) -> float:
    fixed, moving, affine = data["fixed"], data["moving"], data["affine"]
    if method == "sitk":
        from bench_register import simpleitk_linear

        start = time.perf_counter()
        simpleitk_linear(fixed, affine, moving, affine, "rigid")
        return time.perf_counter() - start
    from bench_register import ours_cli

    return ours_cli(fixed, affine, moving, affine)[1]


def _n2v(method: str, data) -> float:
    import torch

    noisy, steps = data["noisy"], int(data["steps"][0])
    if method == "ours":
        from napari_mmfuse.core.denoise.n2v import n2v_train
        from napari_mmfuse.operations import drive

        start = time.perf_counter()
        drive(n2v_train(noisy, steps=steps, device="cpu"))
        return time.perf_counter() - start
    from napari_mmfuse.core.denoise.n2v import N2V2UNet
    from napari_mmfuse.core.denoise.n2v import _blind_spot_batch as blind_spot_batch  # the same batches as ours

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    image = torch.from_numpy((noisy - noisy.mean()) / noisy.std())
    network = N2V2UNet(2, (32, 64, 128))
    optimiser = torch.optim.Adam(network.parameters(), lr=1e-3)
    start = time.perf_counter()
    for _ in range(steps):
        inputs, target, mask = blind_spot_batch(image, patch=(64, 64), batch=8, mask_fraction=0.02, radius=2, generator=generator)
        loss = torch.nn.functional.mse_loss(network(inputs)[mask], target[mask])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return time.perf_counter() - start


def _segment(method: str, data) -> float:
    import numpy as np
    import torch

    images, scribbles, steps = data["brats"], data["scribbles"], int(data["steps"][1])
    if method == "ours":
        from napari_mmfuse.core.segment import train_steps
        from napari_mmfuse.operations import drive

        start = time.perf_counter()
        drive(train_steps(images, scribbles, steps=steps, device="cpu"))
        return time.perf_counter() - start
    from monai.networks.nets import UNet

    from napari_mmfuse.core.segment.train import sample_patches

    start = time.perf_counter()  # its preparation counts, as train_steps' does for ours
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    values = [int(v) for v in np.unique(scribbles[scribbles != 0])]
    target = np.full(scribbles.shape, -1, np.int64)
    for index, value in enumerate(values):
        target[scribbles == value] = index
    mean = images.reshape(len(images), -1).mean(axis=1).reshape(-1, 1, 1, 1)
    std = images.reshape(len(images), -1).std(axis=1).reshape(-1, 1, 1, 1)
    normalised = ((images - mean) / std).astype(np.float32)
    by_class = [np.argwhere(target == k) for k in range(len(values))]
    fill = normalised.reshape(len(images), -1).min(axis=1).reshape(-1, 1, 1, 1)
    network = UNet(spatial_dims=3, in_channels=len(images), out_channels=len(values), channels=(16, 32, 64),
                   strides=(2, 2), num_res_units=1, norm="batch")
    optimiser = torch.optim.Adam(network.parameters(), lr=2e-3)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=-1)
    for _ in range(steps):
        x, y = sample_patches(normalised, target, by_class, [48, 48, 48], 4, rng, fill)
        loss = loss_fn(network(torch.from_numpy(x)), torch.from_numpy(np.ascontiguousarray(y)))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return time.perf_counter() - start


#: the main thread's gaps between event-loop turns while the viewer trains (seconds)
EVENT_LOOP_GAPS: list[float] = []


def _segment_app(method: str, data) -> float:
    """The Segment widget's training in a napari viewer, or the same operation as the CLI runs it."""
    import numpy as np

    images, scribbles, steps = data["brats"], data["scribbles"], int(data["steps"][1])
    if method == "cli":
        from napari_mmfuse.operations import Image
        from napari_mmfuse.pipeline import run

        affine = np.eye(4)
        inputs = {"images": [Image(images[0], affine, name="FLAIR"), Image(images[1], affine, name="T1c")],
                  "strokes": Image(scribbles, affine, name="strokes", kind="labels")}
        start = time.perf_counter()
        run("segment", "unet", inputs, {"steps": steps})
        return time.perf_counter() - start
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=False)
    flair = viewer.add_image(images[0], name="FLAIR")
    t1c = viewer.add_image(images[1], name="T1c")
    strokes = viewer.add_labels(scribbles, name="strokes")
    _, widget = viewer.window.add_plugin_dock_widget("napari-mmfuse", "Segment")
    widget.layers.set_checked([flair, t1c])
    widget.scribbles.set_layer(strokes)
    widget.steps.setValue(steps)
    app = QApplication.instance()
    start = time.perf_counter()
    widget.train_button.click()
    if widget.worker is None:
        raise RuntimeError("the Segment widget did not start training")
    last = time.perf_counter()
    while widget.worker is not None:
        app.processEvents()
        time.sleep(0.005)
        now = time.perf_counter()
        EVENT_LOOP_GAPS.append(now - last - 0.005)  # how long the main thread waited for its turn
        last = now
    seconds = time.perf_counter() - start
    if "FLAIR segmentation" not in viewer.layers:
        raise RuntimeError("the Segment widget finished without a result layer")
    viewer.close()
    return seconds


def child(task: str, method: str, role: str, data_path: str) -> None:
    """One timed run in this process; prints a JSON line."""
    omp_seen = os.environ.get("OMP_WAIT_POLICY")  # what libgomp sees when torch is imported first
    torch_first = role == "default" or role.endswith("+torch-first")
    role = role.removesuffix("+torch-first")
    if torch_first:
        importlib.import_module("torch")  # before napari_mmfuse: libgomp starts with OpenMP's default wait policy
    importlib.import_module("napari_mmfuse")  # when first, as in mmfuse: OMP_WAIT_POLICY=PASSIVE unless set
    import numpy as np
    import torch

    if method != "sitk" and role != "default":
        from napari_mmfuse.core.threads import apply_thread_policy

        apply_thread_policy(role)
    with np.load(data_path) as loaded:
        data = dict(loaded)
    seconds = {"register": _register, "n2v": _n2v, "segment": _segment, "segment-app": _segment_app}[task](method, data)
    threads = torch.get_num_threads()
    if method == "sitk":
        import SimpleITK as sitk

        threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    gaps = sorted(EVENT_LOOP_GAPS)
    stall = {"stall_ms": 1000 * gaps[-1], "stall_p99_ms": 1000 * gaps[int(0.99 * (len(gaps) - 1))]} if gaps else {}
    print(json.dumps({**stall, "seconds": seconds, "threads": threads, "omp": omp_seen if torch_first else os.environ.get("OMP_WAIT_POLICY"),
                      "spin": os.environ.get("GOMP_SPINCOUNT")}))


# ----------------------------------------------------------------------------- parent


def run(name: str, data_path: Path) -> dict:
    task, method, role, env_changes = CONFIGS[name]
    env = dict(os.environ)
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    command = [sys.executable, __file__, "--child", task, method, role, str(data_path)]
    if task == "segment-app" and method == "viewer" and not env.get("DISPLAY") and shutil.which("xvfb-run"):
        command = ["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24"] + command
    out = subprocess.run(command, env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="registration on every second voxel, fewer training steps")
    parser.add_argument("--load", type=int, default=2, help="competing busy processes")
    parser.add_argument("--repeat", type=int, default=1, help="runs per configuration and load (the median is kept)")
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS), help="comma-separated subset of: " + ", ".join(CONFIGS))
    parser.add_argument("--viewer", action="store_true", help="only Segment training in the viewer vs the CLI, idle")
    parser.add_argument("--n2v-steps", type=int, default=None, help="Noise2Void steps (default 120, --quick 30)")
    parser.add_argument("--segment-steps", type=int, default=None, help="Segment steps (default 200, the operation's default; --quick 15)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    n2v_steps = args.n2v_steps or (30 if args.quick else 120)
    segment_steps = args.segment_steps or (15 if args.quick else 200)
    names = ["segment viewer", "segment cli"] if args.viewer else [name.strip() for name in args.configs.split(",")]
    loads = ["idle"] if args.viewer else ["idle", f"busy x{args.load}"]
    print(f"CPUs (affinity) {len(os.sched_getaffinity(0))}, load average before {os.getloadavg()[0]:.2f}; "
          f"registration {'80x96x112' if args.quick else '160x192x224'}, N2V {n2v_steps} steps, Segment {segment_steps} steps")
    times: dict[tuple[str, str], float] = {}
    with tempfile.TemporaryDirectory() as folder:
        data_path = prepare(Path(folder), args.quick, n2v_steps, segment_steps)
        for load in loads:
            hogs = []
            if load != "idle":
                hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.load)]
                time.sleep(1.0)
            try:
                for name in names:
                    runs = [run(name, data_path) for _ in range(args.repeat)]
                    seconds = sorted(r["seconds"] for r in runs)[len(runs) // 2]
                    times[(name, load)] = seconds
                    stall = (f", event loop stall max {runs[0]['stall_ms']:.0f} ms, p99 {runs[0]['stall_p99_ms']:.0f} ms"
                             if "stall_ms" in runs[0] else "")
                    print(f"  {load:8s} {name:28s} {seconds:7.2f} s  (threads {runs[0]['threads']}, "
                          f"OMP_WAIT_POLICY {runs[0]['omp']}, GOMP_SPINCOUNT {runs[0]['spin']}{stall})", flush=True)
            finally:
                for hog in hogs:
                    hog.kill()
                    hog.wait()
    print()
    header = f"{'configuration':28s} " + " ".join(f"{load + ' s':>10s}" for load in loads)
    print(header + ("" if args.viewer else f" {'slowdown':>9s}"))
    for name in names:
        line = f"{name:28s} " + " ".join(f"{times[(name, load)]:10.2f}" for load in loads)
        if not args.viewer:
            line += f" {times[(name, loads[1])] / times[(name, 'idle')]:8.2f}x"
        print(line)
    for ours, reference in PAIRS.items():
        if ours in names and reference in names:
            ratios = ", ".join(f"{load} {times[(ours, load)] / times[(reference, load)]:.2f}" for load in loads)
            print(f"{ours} / {reference}: {ratios}")


if __name__ == "__main__":
    main()
