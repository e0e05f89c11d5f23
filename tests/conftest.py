"""Shared test setup: a Qt platform that works with or without a screen, and shared fixtures.

Without an X display (no ``DISPLAY``, and ``pytest-xvfb`` found no ``Xvfb`` to start) Qt's
default ``xcb`` platform aborts the whole run. There the tests fall back to Qt's
``offscreen`` platform: plain Qt widgets work, but it has no OpenGL, so napari's vispy canvas
cannot draw a layer (``viewer.add_image`` fails on the first GL call) and ``viewer.screenshot``
cannot work. Tests that need a napari viewer (the ``make_napari_viewer`` fixture or the
``needs_canvas`` marker) are skipped there, and the run says so in one line at the end
(``MMFUSE_REQUIRE_CANVAS=1`` makes it an error instead, as in ``.ci/run``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

NO_CANVAS = (
    "no X display and no Xvfb: widget tests that need an OpenGL canvas are skipped; "
    "install xvfb (apt-get install xvfb) to run them"
)
_VIEWER_FIXTURES = {"make_napari_viewer", "make_napari_viewer_proxy"}
_canvas: bool | None = None  # decided in pytest_configure


def _has_screen() -> bool:
    """Whether Qt can open windows with OpenGL here: a display, or not a Linux/BSD desktop."""
    if os.environ.get("QT_QPA_PLATFORM", "").split(":")[0] in ("offscreen", "minimal"):
        return False
    if not sys.platform.startswith(("linux", "freebsd")):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


@pytest.hookimpl(trylast=True)  # after pytest-xvfb has started Xvfb and set DISPLAY
def pytest_configure(config: pytest.Config) -> None:
    global _canvas
    _canvas = _has_screen()
    if not _canvas and os.environ.get("MMFUSE_REQUIRE_CANVAS"):  # CI: never skip them silently
        raise pytest.UsageError(
            "no X display and no Xvfb, and MMFUSE_REQUIRE_CANVAS is set: "
            "install xvfb (apt-get install xvfb) to run the widget tests"
        )
    if not _canvas:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"  # before any QApplication exists


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without a screen, skip the tests that need a drawing napari viewer.

    A ``skip`` mark (not a skip inside a fixture) lets ``-ra`` fold the skips to a line per file.
    """
    if _canvas is not False:
        return
    skip = pytest.mark.skip(reason="needs an OpenGL canvas (no X display and no Xvfb)")
    for item in items:
        if _VIEWER_FIXTURES & set(getattr(item, "fixturenames", ())) or item.get_closest_marker("needs_canvas"):
            item.add_marker(skip)


@pytest.hookimpl(wrapper=True, tryfirst=True)  # around the terminal's own: after its short summary
def pytest_terminal_summary(terminalreporter):
    result = yield
    for report in terminalreporter.stats.get("passed", []):  # the flows' step times (test_flows.py)
        steps = [(name, seconds) for name, seconds in report.user_properties if ": " in str(name)]
        if steps:
            flow = steps[0][0].split(": ")[0]
            terminalreporter.write_line(f"{flow}: " + ", ".join(f"{n.split(': ', 1)[1]} {s:.1f} s" for n, s in steps))
    if _canvas is False:
        terminalreporter.write_line(NO_CANVAS, yellow=True, bold=True)
    return result


@pytest.fixture
def shots_dir(tmp_path: Path) -> Path:
    """Where a test saves its screenshots: ``$MMFUSE_SHOTS`` (created) when set, else ``tmp_path``."""
    shots = os.environ.get("MMFUSE_SHOTS")
    if not shots:
        return tmp_path
    path = Path(shots)
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one CPU thread for the module (timings and results stable on shared machines)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_phantom_subject(folder: Path, seed: int) -> None:
    """Overlapping smooth ellipsoids (2 mm voxels) as a T1-like image, a CT-like image of the same
    anatomy (another contrast) shifted by one voxel (2 mm) along x, and the true foreground mask."""
    from scipy import ndimage

    from napari_mmfuse.io import write

    folder.mkdir(parents=True)
    z, y, x = np.mgrid[:24, :40, :40].astype(np.float32)
    rng = np.random.default_rng(seed)
    tissue = np.zeros(z.shape, np.float32)
    for k in range(6):
        centre, radii = rng.uniform([6, 10, 10], [18, 30, 30]), rng.uniform([3, 4, 4], [7, 10, 10])
        tissue += (k + 1) * ((((z - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2
                              + ((x - centre[2]) / radii[2]) ** 2) < 1)
    tissue = ndimage.gaussian_filter(tissue, 1.0)
    t1 = 20 + 15 * tissue + rng.normal(0, 2, tissue.shape)
    ct = np.roll(200 - 30 * tissue**1.5, 1, axis=2)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    name = folder.name
    write(folder / f"{name}_t1.nii.gz", t1.astype(np.float32), affine)
    write(folder / f"{name}_ct.nii.gz", ct.astype(np.float32), affine)
    write(folder / f"{name}_truth.nii.gz", (tissue > 1.0).astype(np.uint8), affine, labels=True)
