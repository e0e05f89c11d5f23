"""The one job panel every widget runs its work through: Run, Cancel, progress, status.

A widget gives :meth:`JobPanel.start` a generator (usually :func:`napari_mmfuse.pipeline.run_steps`)
that yields :class:`~napari_mmfuse.operations.Progress` and returns the result; the panel runs
it in a napari worker, shows its progress and status, turns errors into napari
notifications, stops it on Cancel, and hands the result to the widget's callback on the main
thread.
"""

from __future__ import annotations

import time
from typing import Callable

from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from ..operations import Progress
from ._workers import start_worker

#: Steps of the progress bar.
_BAR_STEPS = 1000


class JobPanel(QWidget):
    """Run and Cancel buttons, one progress bar and a status line.

    Parameters
    ----------
    run_text : str
        The Run button's text.
    on_run : callable
        Called when Run is pressed (the widget gathers its inputs and calls :meth:`start`).

    Attributes
    ----------
    worker : napari worker or None
        The running job.
    """

    def __init__(self, run_text: str = "Run", on_run: Callable[[], None] | None = None, parent=None):
        super().__init__(parent)
        self.worker = None
        self.run_button = QPushButton(run_text)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, _BAR_STEPS)
        self.progress.setValue(0)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        if on_run is not None:
            self.run_button.clicked.connect(on_run)
        self.cancel_button.clicked.connect(self.cancel)

    @property
    def busy(self) -> bool:
        """Whether a job is running."""
        return self.worker is not None

    def start(self, steps_function: Callable, *args, title: str, on_result: Callable,
              on_progress: Callable[[Progress], None] | None = None,
              on_error: Callable[[BaseException], None] | None = None,
              on_abort: Callable[[], None] | None = None,
              on_finished: Callable[[], None] | None = None, **kwargs):
        """Run ``steps_function(*args, **kwargs)`` (a generator function) in a worker.

        Parameters
        ----------
        steps_function : callable
            Returns a generator yielding :class:`Progress` and returning the result.
        title : str
            Names the job in the status line and in notifications.
        on_result : callable
            Called with the result on the main thread.
        on_progress : callable, optional
            Called with each :class:`Progress` on the main thread (plots, live values).
        on_error, on_abort : callable, optional
            Called on the main thread after the panel reported a failure (with the error) or
            a cancellation.
        on_finished : callable, optional
            Called on the main thread when the job ends, whatever the outcome (after the
            panel is ready for the next job).

        Every callback is connected before the work starts, so a job that ends at once
        reaches them too.

        Returns
        -------
        The started worker, or None when a job is already running.
        """
        if self.busy:
            return None
        # errors are reported by the panel (a notification and the status line), not raised again by Qt
        worker = thread_worker(steps_function, start_thread=False, ignore_errors=True)(*args, **kwargs)
        started = time.perf_counter()
        worker.yielded.connect(lambda progress: self._show(progress, title, on_progress))
        worker.returned.connect(lambda result: self._done(result, title, started, on_result))
        worker.errored.connect(lambda error: self._failed(error, title))
        worker.aborted.connect(lambda: self._set_status(f"{title}: cancelled", notify=True))
        if on_error is not None:
            worker.errored.connect(on_error)
        if on_abort is not None:
            worker.aborted.connect(on_abort)
        worker.finished.connect(self._finished)
        if on_finished is not None:
            worker.finished.connect(on_finished)
        self.worker = worker
        self.progress.setValue(0)
        self._set_status(f"{title}: running…")
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        start_worker(worker)
        return worker

    def cancel(self) -> None:
        """Ask the running job to stop at its next progress step."""
        if self.worker is not None:
            self.worker.quit()
            self._set_status("cancelling…")

    def fail(self, title: str, message: str) -> None:
        """Report a problem found before the job started (bad input) as a notification."""
        self._set_status(f"{title}: {message}")
        show_error(f"{title}: {message}")

    def _show(self, progress, title: str, on_progress) -> None:
        if not isinstance(progress, Progress):
            return
        self.progress.setValue(int(round(progress.fraction * _BAR_STEPS)))
        if progress.message:
            self.status.setText(f"{title}: {progress.message}")
        if on_progress is not None:
            on_progress(progress)

    def _done(self, result, title: str, started: float, on_result) -> None:
        self.progress.setValue(_BAR_STEPS)
        self._set_status(f"{title}: done in {time.perf_counter() - started:.1f} s")
        try:
            on_result(result)
        except (ValueError, OSError) as error:
            self.fail(title, str(error))

    def _failed(self, error: BaseException, title: str) -> None:
        message = str(error) or type(error).__name__
        self.fail(title, message.splitlines()[0])

    def _set_status(self, text: str, notify: bool = False) -> None:
        self.status.setText(text)
        if notify:
            show_info(text)

    def _finished(self) -> None:
        self.worker = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
