"""Widget workers must never freeze the window (see ``widgets/_workers.py``)."""

import threading
import time

from qtpy.QtCore import QThreadPool
from qtpy.QtGui import QImage
from superqt.utils import create_worker

from napari_mmfuse.widgets._workers import start_worker


def test_busy_workers_leave_qt_a_thread_to_convert_images(qtbot):
    """Qt converts a large image on its global pool while the main thread waits holding the GIL.

    With every pool thread running a Python worker this deadlocked (it froze a Quality views
    test in CI): the workers could not take the GIL back to finish. ``start_worker`` keeps a
    thread free, so the conversion finishes.
    """
    pool = QThreadPool.globalInstance()
    release = threading.Event()

    def busy():
        while not release.is_set():
            time.sleep(0.005)  # each nap ends by taking the GIL back

    workers = [create_worker(busy) for _ in range(pool.maxThreadCount())]  # as many as the pool has threads
    finished = []
    for worker in workers:
        worker.finished.connect(lambda: finished.append(1))
        start_worker(worker)
    qtbot.waitUntil(lambda: pool.activeThreadCount() >= len(workers), timeout=10_000)
    assert pool.maxThreadCount() > len(workers)  # fail here rather than freeze below

    image = QImage(3000, 3000, QImage.Format_ARGB32_Premultiplied)
    image.fill(0)
    converted = image.convertToFormat(QImage.Format_RGBA8888)  # split across the pool's free threads
    assert converted.format() == QImage.Format_RGBA8888 and converted.size() == image.size()

    release.set()
    qtbot.waitUntil(lambda: len(finished) == len(workers), timeout=10_000)
