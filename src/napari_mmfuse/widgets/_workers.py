"""Starting the widgets' background workers without freezing the window."""

from __future__ import annotations

from qtpy.QtCore import QThreadPool

#: workers started by :func:`start_worker` that have not finished yet
_in_flight: set = set()


#: whether the viewer's thread policy has been applied (once, before the first worker)
_thread_policy_applied = False


def _apply_viewer_thread_policy() -> None:
    """Leave one CPU to napari's main thread: torch gets ``thread_count("viewer")`` threads.

    An invalid ``MMFUSE_THREADS`` becomes a warning (napari shows it as a notification) and
    torch keeps its thread count, instead of every widget failing to start.
    """
    global _thread_policy_applied
    from ..core.threads import apply_thread_policy

    _thread_policy_applied = True
    try:
        apply_thread_policy("viewer")
    except ValueError as error:
        import warnings

        warnings.warn(str(error), stacklevel=3)


def start_worker(worker) -> None:
    """Start a napari worker, keeping one thread of Qt's global pool free for Qt.

    napari workers run on ``QThreadPool.globalInstance()``, which Qt also uses to convert
    large images while it paints the window: ``QImage::convertTo`` splits the work across
    that pool and the main thread waits for it while holding Python's GIL. If Python
    workers filled every thread of the pool at that moment, they could not take the GIL
    back and the window would freeze for good (two workers suffice on a 2-core machine,
    where the pool has two threads). The pool is therefore widened, when needed, to one
    thread more than the workers started here.

    Parameters
    ----------
    worker : napari.qt.threading.WorkerBase
        A worker that has not been started.
    """
    if not _thread_policy_applied:
        _apply_viewer_thread_policy()
    pool = QThreadPool.globalInstance()
    _in_flight.add(worker)
    worker.finished.connect(lambda: _in_flight.discard(worker))
    needed = len(_in_flight) + 1
    if pool.maxThreadCount() < needed:
        pool.setMaxThreadCount(needed)
    worker.start()
