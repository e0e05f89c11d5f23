"""Rigid registration on a busy machine: ours against SimpleITK, with and without the thread policy.

Case: the head phantom (``sample_data.misaligned_phantom("rigid")``, T1 fixed -> T2 moving),
downsampled by 2 along every axis (by 3 with ``--quick``) so that one run takes seconds. Ours is
``register(..., model="rigid", metric="mi")``; SimpleITK is bench_register.py's rigid stage
(Mattes MI, regular step gradient descent, 3-level pyramid, moments centring).

Each run is a fresh Python process (``OMP_WAIT_POLICY`` is read by libgomp once, when torch is
imported), timed on the registration call alone. Configurations:

* ``ours torch-default``: torch's own thread count (``os.cpu_count()``), OpenMP's default wait
  policy (torch is imported before napari_mmfuse, whose ``__init__`` would set it);
* ``ours policy``: ``apply_thread_policy("cli")`` in the environment napari_mmfuse sets up
  (``OMP_WAIT_POLICY=PASSIVE`` unless already set, see :mod:`napari_mmfuse.core.threads`);
* ``ours policy ACTIVE``: the policy's thread count with ``OMP_WAIT_POLICY=ACTIVE`` forced;
* ``ours viewer``: ``apply_thread_policy("viewer")`` (one CPU left to napari);
* ``ours policy spin 10k``: the policy's thread count, OpenMP's default wait policy with libgomp's
  ``GOMP_SPINCOUNT=10000`` (spin briefly, then sleep; default 300000);
* ``SimpleITK``: its default thread count (all CPUs).

Loads: idle, then ``--load`` competing busy processes (``python -c "while True: pass"``,
started before and killed after each load block). "slowdown" is busy / idle time; "/SITK" is
ours / SimpleITK under the same load.

Usage::

    python benchmarks/bench_busy.py [--quick] [--load 2] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

CONFIGS = {
    "ours torch-default": ("ours", "default", {"OMP_WAIT_POLICY": None}),
    "ours policy": ("ours", "cli", {}),
    "ours policy ACTIVE": ("ours", "cli", {"OMP_WAIT_POLICY": "ACTIVE"}),
    "ours viewer": ("ours", "viewer", {}),
    "ours policy spin 10k": ("ours", "cli+torch-first", {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "10000"}),
    "SimpleITK": ("sitk", "default", {}),
}


def _pair(step: int):
    import numpy as np

    from napari_mmfuse.sample_data import misaligned_phantom

    fixed, moving = misaligned_phantom("rigid")[:2]
    scale = np.diag([step, step, step, 1.0])
    f = np.ascontiguousarray(np.asarray(fixed.data, np.float32)[::step, ::step, ::step])
    m = np.ascontiguousarray(np.asarray(moving.data, np.float32)[::step, ::step, ::step])
    return f, fixed.affine @ scale, m, moving.affine @ scale


def child(method: str, role: str, step: int) -> None:
    """One timed registration in this process; prints a JSON line."""
    omp_seen = os.environ.get("OMP_WAIT_POLICY")  # what libgomp sees when torch is imported first
    torch_first = role == "default" or role.endswith("+torch-first")
    role = role.removesuffix("+torch-first")
    if torch_first:
        import torch  # noqa: F401  before napari_mmfuse: libgomp starts with OpenMP's default wait policy

    f, fa, m, ma = _pair(step)
    threads = None
    if method == "ours":
        import torch

        from napari_mmfuse.core.register import register

        if role != "default":
            from napari_mmfuse.core.threads import apply_thread_policy

            apply_thread_policy(role)
        threads = torch.get_num_threads()
        start = time.perf_counter()
        register(f, fa, m, ma, model="rigid", metric="mi")
    else:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import SimpleITK as sitk
        from bench_register import simpleitk_linear

        threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
        start = time.perf_counter()
        simpleitk_linear(f, fa, m, ma, "rigid")
    print(json.dumps({"seconds": time.perf_counter() - start, "threads": threads, "omp": omp_seen if torch_first else os.environ.get("OMP_WAIT_POLICY"), "spin": os.environ.get("GOMP_SPINCOUNT")}))


def run(name: str, step: int) -> dict:
    method, role, env_changes = CONFIGS[name]
    env = dict(os.environ)
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    out = subprocess.run([sys.executable, __file__, "--child", method, role, str(step)], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller volume (downsample by 3)")
    parser.add_argument("--load", type=int, default=2, help="competing busy processes")
    parser.add_argument("--repeat", type=int, default=1, help="runs per configuration and load (the median is kept)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of: " + ", ".join(CONFIGS))
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return
    step = 3 if args.quick else 2
    names = [name.strip() for name in args.configs.split(",")]
    print(f"CPUs (affinity) {len(os.sched_getaffinity(0))}, load average before {os.getloadavg()[0]:.2f}, phantom downsampled by {step}")
    times: dict[tuple[str, str], float] = {}
    for load in ("idle", f"busy x{args.load}"):
        hogs = []
        if load != "idle":
            hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.load)]
            time.sleep(1.0)
        try:
            for name in names:
                runs = [run(name, step) for _ in range(args.repeat)]
                seconds = sorted(r["seconds"] for r in runs)[len(runs) // 2]
                times[(name, load)] = seconds
                print(f"  {load:8s} {name:20s} {seconds:7.2f} s  (threads {runs[0]['threads']}, OMP_WAIT_POLICY {runs[0]['omp']}, GOMP_SPINCOUNT {runs[0]['spin']})", flush=True)
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait()
    busy = f"busy x{args.load}"
    print()
    print(f"{'configuration':20s} {'idle s':>8s} {'busy s':>8s} {'slowdown':>9s} {'idle/SITK':>10s} {'busy/SITK':>10s}")
    for name in names:
        idle_t, busy_t = times[(name, "idle")], times[(name, busy)]
        ratio = ""
        if "SimpleITK" in names:
            ratio = f"{idle_t / times[('SimpleITK', 'idle')]:10.2f} {busy_t / times[('SimpleITK', busy)]:10.2f}"
        print(f"{name:20s} {idle_t:8.2f} {busy_t:8.2f} {busy_t / idle_t:8.2f}x {ratio}")


if __name__ == "__main__":
    main()
