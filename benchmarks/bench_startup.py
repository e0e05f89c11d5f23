"""Startup benchmark: ``mmfuse --help`` and ``import napari_mmfuse._reader``.

Each command runs in a fresh subprocess ``--repeat`` times (default 5); the
median wall time is printed, with the ten slowest cumulative imports from
``python -X importtime`` and whether torch, monai or napari were imported.
A bare ``python -c pass`` is timed too, for reference
(interpreter start-up is part of every figure). Exits 1 when a target is missed (median over ``--limit`` seconds, default
0.5, or a forbidden module in ``sys.modules``).

Usage::

    python benchmarks/bench_startup.py [--repeat 5] [--limit 0.5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

HEAVY = ("torch", "monai", "napari", "qtpy")

# name -> (python code run with ``python -c``, modules that must stay out)
CASES = {
    "mmfuse --help": (
        "import sys; sys.argv = ['mmfuse', '--help']\n"
        "from napari_mmfuse.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n",
        ("torch", "monai", "napari", "qtpy"),
    ),
    "import napari_mmfuse._reader": (
        "import napari_mmfuse._reader\n",
        ("torch", "monai"),
    ),
}

_PROBE = (
    "\nimport sys as _s\n"
    "print('LOADED=' + ','.join(m for m in %r if m in _s.modules), file=_s.stderr)\n"
)


def _run(code: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *extra, "-c", code],
        capture_output=True,
        text=True,
        check=False,
    )


def _wall(code: str) -> float:
    t0 = time.perf_counter()
    _run(code)
    return time.perf_counter() - t0


def _top_imports(code: str, n: int = 10) -> list[tuple[int, str]]:
    proc = _run(code, "-X", "importtime")
    rows = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _self, cum, name = line[len("import time:"):].split("|", 2)
        rows.append((int(cum), name.rstrip()))
    rows.sort(reverse=True)
    return rows[:n]


def _loaded(code: str) -> list[str]:
    proc = _run(code + _PROBE % (HEAVY,))
    for line in proc.stderr.splitlines():
        if line.startswith("LOADED="):
            return [m for m in line[len("LOADED="):].split(",") if m]
    raise RuntimeError(f"probe failed:\n{proc.stderr}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per command (default 5)")
    parser.add_argument("--limit", type=float, default=0.5, help="seconds (default 0.5)")
    args = parser.parse_args(argv)

    failed = False
    bare = statistics.median(_wall("pass") for _ in range(args.repeat))
    print(f"(reference: a bare `python -c pass` takes {bare:.3f} s median here)")
    for name, (code, forbidden) in CASES.items():
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            proc = _run(code)
            times.append(time.perf_counter() - t0)
            if proc.returncode != 0:
                print(f"{name}: exit {proc.returncode}\n{proc.stderr}")
                failed = True
        median = statistics.median(times)
        loaded = _loaded(code)
        bad = [m for m in loaded if m in forbidden]
        ok = median <= args.limit and not bad
        failed |= not ok
        print(f"== {name}: median {median:.3f} s over {args.repeat} runs "
              f"(limit {args.limit} s) {'OK' if ok else 'MISSED'}")
        print(f"   heavy modules loaded: {', '.join(loaded) or 'none'}"
              + (f" (forbidden: {', '.join(bad)})" if bad else ""))
        print("   top 10 cumulative imports (us):")
        for cum, mod in _top_imports(code):
            print(f"   {cum:>10}  {mod.strip()}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
