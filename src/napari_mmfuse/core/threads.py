"""How many CPU threads the compute uses, decided in one place.

The policy
----------
``available_cpus()`` is the number of CPUs this process may actually use: its CPU affinity
(``os.sched_getaffinity``, which taskset, Slurm and containers narrow), capped by a cgroup CPU
quota (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``; a quota of
200000/100000 is 2 CPUs), and at least 1. ``os.cpu_count()`` counts the host's CPUs instead
and oversubscribes a container or a batch slot.

``thread_count(role)`` turns that into a thread count:

* ``"cli"``: every available CPU (``mmfuse`` runs one step at a time, headless);
* ``"viewer"``: one fewer where there are more than 2 (napari renders on the main thread, which
  must stay responsive while a widget's worker computes); every CPU on 1 or 2, where leaving
  one out halves the compute (Segment training in napari took 1.45x the CLI's time on 2 CPUs)
  while the main thread, idle but for progress redraws, still gets its turns from the OS
  (``bench_busy.py --viewer`` measures the longest event-loop stall during training);
* ``"worker"``: 1 (each worker of a cohort run computes one subject; parallelism comes from
  running several workers, not from threads inside each).

The environment variable ``MMFUSE_THREADS`` (a positive integer) overrides every role.

``apply_thread_policy(role)`` sets torch's intra-op thread count (``torch.set_num_threads``)
and, when that is still possible, its inter-op count, and returns the count chosen. The CLI
applies it in ``main`` (role ``"cli"``) and the widgets once, before their first worker starts
(role ``"viewer"``); a cohort worker calls ``apply_thread_policy("worker")`` when it starts.

OpenMP wait policy
------------------
torch's CPU kernels run on OpenMP (libgomp). By default libgomp's threads busy-wait (spin) for
a while after each parallel region; with other processes competing for the CPUs, the spinning
threads take CPU time from the threads that have work, so a torch workload slows down more than
the load alone explains. ``OMP_WAIT_POLICY=PASSIVE`` makes them sleep instead. libgomp reads it
once, when it is loaded (``import torch``), and ``torch.set_num_threads`` does not change it, so
it can only be set in the environment before torch is imported.

Decision: ``napari_mmfuse/__init__.py`` sets ``OMP_WAIT_POLICY=PASSIVE`` with
``os.environ.setdefault`` (a value the user exported wins). It takes effect whenever
napari_mmfuse is imported before torch: ``mmfuse``, the napari plugin (napari itself does not
import torch), and scripts that import napari_mmfuse first. A script or host that imports torch
first keeps OpenMP's default; export ``OMP_WAIT_POLICY=PASSIVE`` there. ``torch.set_num_threads``
(and so :func:`apply_thread_policy`) keeps the wait policy libgomp started with: the PASSIVE
runs below went through it.

Measurement (``benchmarks/bench_busy.py --repeat 3`` with its registration configurations, when
its case was the head phantom downsampled by 2, 60x72x60 (it is now the 160x192x224 head160
pair: ``--configs "register ours torch-default,register ours,register ours ACTIVE,register ours
viewer,register ours spin 10k,register SimpleITK"`` reruns the table on it); median of 3 runs, each in a fresh process, seconds; a
2-CPU machine that another user's jobs kept at a load average of 2 to 3 even in the "idle"
column; "busy" adds two ``while True: pass`` processes; torch 2.13 CPU, libgomp; the two
blocks are two invocations):

==================================  =====  =====  ========
configuration (2 torch threads)     idle   busy   slowdown
==================================  =====  =====  ========
OpenMP default (spin, then sleep)   2.17   12.60  5.8x
OMP_WAIT_POLICY=PASSIVE             3.41    5.56  1.6x
OMP_WAIT_POLICY=ACTIVE              2.27   14.37  6.3x
1 thread (viewer role), PASSIVE     2.66    5.21  2.0x
SimpleITK, for reference            0.50    2.99  5.9x
----------------------------------  -----  -----  --------
OpenMP default                      2.44   14.36  5.9x
OMP_WAIT_POLICY=PASSIVE             3.33    5.41  1.6x
GOMP_SPINCOUNT=10000 (short spin)   2.89    6.68  2.3x
==================================  =====  =====  ========

PASSIVE costs 40-55 % on the lightly shared machine (threads sleep and wake for every
parallel region) and gains a factor of 2.3-2.7 under the extra load, where spinning threads
take the CPUs from the threads with work. The plugin runs beside napari's rendering, other
jobs and other subjects, so PASSIVE is the default; a short spin (libgomp's GOMP_SPINCOUNT) is
in between but libgomp-only, while OMP_WAIT_POLICY is portable OpenMP. On a dedicated idle
workstation, ``export OMP_WAIT_POLICY=ACTIVE`` (or unset it before importing torch first)
wins back the idle speed. A first ``--quick`` run (40x48x40) under a heavier background load
gave 15.3 s idle / 63.2 s busy with OpenMP's default and 2.5 / 6.9 s with PASSIVE: the spinning
cost grows with the contention. Not measured: a truly idle machine, and more than 2 CPUs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

#: the roles :func:`thread_count` knows
ROLES = ("cli", "viewer", "worker")

#: environment variable overriding the thread count of every role
ENV_VAR = "MMFUSE_THREADS"

_applied: dict[str, int] = {}


def cpus_from(affinity: Iterable[int] | None, quota: float | None, *, cpu_count: int | None = None) -> int:
    """CPUs usable given an affinity set and a CPU quota (in CPUs); pure, for tests.

    Parameters
    ----------
    affinity : iterable of int or None
        The CPUs the process may run on; None where unknown (falls back to ``cpu_count``).
    quota : float or None
        The cgroup CPU quota in CPUs (quota / period); None where unlimited.
    cpu_count : int or None
        The fallback count where ``affinity`` is None.

    Returns
    -------
    int
        ``min(len(affinity), floor(quota))``, at least 1.
    """
    n = len(set(affinity)) if affinity is not None else (cpu_count or 1)
    if quota is not None and quota > 0:
        n = min(n, int(quota))  # a quota of 1.5 CPUs gives 1 thread: 2 would be throttled
    return max(1, n)


def quota_from_cgroup_v2(cpu_max: str | None) -> float | None:
    """CPU quota in CPUs from the contents of cgroup v2 ``cpu.max`` (``"quota period"``).

    ``"max 100000"`` (no limit), None, empty or malformed contents give None.
    """
    if not cpu_max:
        return None
    fields = cpu_max.split()
    try:
        if fields[0] == "max":
            return None
        quota, period = float(fields[0]), float(fields[1]) if len(fields) > 1 else 100000.0
    except (ValueError, IndexError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def quota_from_cgroup_v1(quota_us: str | None, period_us: str | None) -> float | None:
    """CPU quota in CPUs from cgroup v1 ``cpu.cfs_quota_us`` and ``cpu.cfs_period_us`` (-1: no limit)."""
    try:
        quota, period = float((quota_us or "").strip()), float((period_us or "").strip())
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as file:
            return file.read()
    except OSError:
        return None


def _system_quota() -> float | None:
    """The cgroup CPU quota of this process's cgroup (v2, else v1), in CPUs, or None."""
    quota = quota_from_cgroup_v2(_read("/sys/fs/cgroup/cpu.max"))
    if quota is None:
        for root in ("/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"):
            quota = quota_from_cgroup_v1(_read(f"{root}/cpu.cfs_quota_us"), _read(f"{root}/cpu.cfs_period_us"))
            if quota is not None:
                break
    return quota


def available_cpus() -> int:
    """The number of CPUs this process may use: affinity capped by the cgroup quota, at least 1."""
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return cpus_from(affinity, _system_quota(), cpu_count=os.cpu_count())


def threads_for(role: str, cpus: int, env: str | None = None) -> int:
    """Thread count for ``role`` given ``cpus`` available and the ``MMFUSE_THREADS`` value; pure.

    Raises
    ------
    ValueError
        For an unknown role or an ``env`` value that is not a positive integer.
    """
    if role not in ROLES:
        raise ValueError(f"unknown thread role {role!r}; expected one of {', '.join(ROLES)}")
    if env is not None and env.strip():
        try:
            count = int(env.strip())
        except ValueError:
            count = 0
        if count < 1:
            raise ValueError(f"{ENV_VAR}={env!r} is not a positive integer; set it to a thread count such as 4, or unset it")
        return count
    if role == "cli":
        return max(1, cpus)
    if role == "viewer":
        return cpus - 1 if cpus > 2 else max(1, cpus)
    return 1


def thread_count(role: str) -> int:
    """Thread count for ``role`` (``"cli"``, ``"viewer"`` or ``"worker"``) on this machine.

    ``MMFUSE_THREADS`` overrides it; see the module docstring.
    """
    return threads_for(role, available_cpus(), os.environ.get(ENV_VAR))


def apply_thread_policy(role: str) -> int:
    """Set torch's thread counts for ``role`` and return the intra-op count chosen.

    If torch is already imported, ``torch.set_num_threads`` is called, and
    ``torch.set_num_interop_threads`` too (same count) unless it was set before or torch's
    inter-op pool has already started (torch then refuses to change it). If torch is not
    imported yet, it is not imported here (``mmfuse info`` and a napari start stay fast):
    ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` are set instead, which torch reads when it is
    imported.

    Raises
    ------
    ValueError
        For an invalid ``MMFUSE_THREADS`` or an unknown role.
    """
    count = thread_count(role)
    torch = sys.modules.get("torch")
    if torch is None:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(count)
    else:
        torch.set_num_threads(count)
        if "interop" not in _applied:
            try:
                torch.set_num_interop_threads(count)
            except RuntimeError:  # inter-op work already started, or set before: keep torch's
                pass
            _applied["interop"] = count
    _applied[role] = count
    return count


def worker_initializer() -> None:
    """Thread policy of one cohort worker process (role ``"worker"``: 1 thread).

    A picklable, argument-free hook for ``concurrent.futures.ProcessPoolExecutor(initializer=...)``,
    ``multiprocessing.Pool(initializer=...)`` or a Dask worker's setup, called in each worker
    before it computes. Run it before the worker imports torch where possible: the count then
    reaches torch through ``OMP_NUM_THREADS`` (see :func:`apply_thread_policy`).
    """
    apply_thread_policy("worker")
