"""Run a recipe over a cohort on Dask distributed: a local cluster by default, or an existing one.

Each subject is one task (:func:`napari_mmfuse.cohort.runner.run_subject`). A subject that
fails is a row with its error; a worker that dies is replaced and its subject rescheduled by
Dask; the cohort table is rewritten (atomically) as subjects finish, so an interrupted run
leaves a table of what finished, and ``--resume`` continues from the outputs on disk.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

from .recipe import Recipe
from .runner import run_subject
from .subjects import Subject
from .table import write_table

#: Name of the cohort table (``.csv`` and ``.parquet``) and of the run log in the output folder.
TABLE_STEM, LOG_NAME = "cohort", "cohort.log"


def _thread_plugin():
    """A Dask worker plugin giving each worker the cohort thread policy (one torch thread) at start."""
    from distributed import WorkerPlugin

    class WorkerThreads(WorkerPlugin):
        name = "mmfuse-threads"

        def setup(self, worker=None):
            from ..core.threads import worker_initializer

            worker_initializer()

    return WorkerThreads()


def start_client(scheduler: str = "local", *, workers: int = 2, memory_limit: str = "auto"):
    """A Dask client: on a new ``LocalCluster`` of ``workers`` processes (one thread each), or on
    the scheduler at ``scheduler`` (``tcp://host:8786``)."""
    from distributed import Client, LocalCluster

    if scheduler == "local":
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, memory_limit=memory_limit,
                               dashboard_address=":0")
        client = Client(cluster)
    else:
        client = Client(scheduler, timeout="20s")
    client.register_plugin(_thread_plugin())
    return client


def close_client(client) -> None:
    """Close a client and, when it started one, its local cluster (its worker processes end)."""
    cluster = client.cluster
    client.close()
    if cluster is not None:
        cluster.close()


def run_cohort(recipe: Recipe, subjects: list[Subject], outdir, *, client=None, resume: bool = False,
               device: str | None = None, on_row: Callable[[dict], None] | None = None,
               retries: int = 1) -> list[dict]:
    """Run ``recipe`` for every subject and write the cohort table and log into ``outdir``.

    Parameters
    ----------
    recipe : Recipe
    subjects : list of Subject
    outdir : str or Path
    client : distributed.Client, optional
        Default: a new local cluster with two workers (closed at the end).
    resume : bool
        Keep outputs whose sidecars match (see :mod:`napari_mmfuse.cohort.runner`).
    on_row : callable, optional
        Called with each subject's row as it finishes (progress bars).
    retries : int
        Times a subject's task is retried after an unexpected error in its worker.

    Returns
    -------
    list of dict
        One row per subject, in the subjects' order.
    """
    from distributed import as_completed

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    own_client = client is None
    client = client or start_client()
    document = recipe.to_dict()
    rows: dict[str, dict] = {}
    log = (outdir / LOG_NAME).open("a")
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} start {recipe.name} ({recipe.digest()}) on {len(subjects)} "
          f"subjects, resume={resume}", file=log, flush=True)
    try:
        futures = {client.submit(run_subject, document, subject, str(outdir), resume=resume, device=device,
                                 key=f"mmfuse-{recipe.digest()}-{subject.id}-{time.time_ns()}", pure=False,
                                 retries=retries): subject for subject in subjects}
        for future in as_completed(futures):
            subject = futures[future]
            try:
                row = future.result()
            except Exception as error:  # the task itself died (worker killed too often, ...): record it
                row = {"subject": subject.id, "status": "failed", "error": f"{type(error).__name__}: {error}"}
            rows[subject.id] = row
            print(f"{time.strftime('%H:%M:%S')} {row['subject']} {row['status']} {row.get('error', '')}",
                  file=log, flush=True)
            write_table([rows[s.id] for s in subjects if s.id in rows], outdir / TABLE_STEM)
            if on_row is not None:
                on_row(row)
    finally:
        log.close()
        if own_client:
            close_client(client)
    return [rows[s.id] for s in subjects]


def dashboard_of(client) -> str:
    """The Dask dashboard's address (printed at start so a user can watch the run)."""
    return getattr(client, "dashboard_link", "") or "(no dashboard)"


def print_summary(rows: list[dict], outdir: Path, stream=sys.stderr) -> None:
    """One line per failed subject and the totals."""
    failed = [row for row in rows if row["status"] != "done"]
    for row in failed:
        print(f"  {row['subject']}: {row['error']}", file=stream)
    print(f"{len(rows) - len(failed)} of {len(rows)} subjects done; table: {outdir / TABLE_STEM}.csv", file=stream)
