"""``mmfuse demo``: napari with the multimodal phantom loaded and the plugin's widgets docked."""

from __future__ import annotations

from functools import cache

PLUGIN = "napari-mmfuse"
DEFAULT_SAMPLE = "head_phantom"
# The demo window on a 1920x1080 screen (smaller where the screen is smaller).
WINDOW_SIZE = (1600, 1000)


@cache
def sample_keys() -> tuple[str, ...]:
    """The keys of the plugin's sample data, read from its packaged ``napari.yaml``."""
    from importlib.resources import files

    import yaml

    # the C loader where PyYAML has it: the pure-Python one takes ~40 ms of `mmfuse --help`
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    manifest = yaml.load((files("napari_mmfuse") / "napari.yaml").read_text(encoding="utf-8"), Loader=loader)
    return tuple(sample["key"] for sample in manifest["contributions"]["sample_data"])


def add_parser(subparsers) -> None:
    keys = sample_keys()
    parser = subparsers.add_parser("demo", help="open napari with the head phantom and the plugin's widgets")
    parser.add_argument(
        "--sample",
        default=DEFAULT_SAMPLE,
        choices=keys,
        metavar="KEY",
        help=f"sample to open, one of: {', '.join(keys)} (default: {DEFAULT_SAMPLE})",
    )
    parser.add_argument("--screenshot", metavar="PNG", help="save a screenshot of the window and exit")
    parser.set_defaults(func=run)


def open_demo(sample: str = DEFAULT_SAMPLE):
    """Create a viewer with the sample opened and every widget of the plugin docked; return it.

    The widgets share one tabbed dock on the right, each tab titled with the widget's name
    (each widget scrolls its own contents), so the window fits the screen (at most ``WINDOW_SIZE``).

    Raises
    ------
    ValueError
        If ``sample`` is not one of :func:`sample_keys`.
    """
    if sample not in sample_keys():
        raise ValueError(f"unknown sample {sample!r}; choose from: {', '.join(sample_keys())}")
    import napari
    from npe2 import PluginManager
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QApplication, QTabBar, QTabWidget

    viewer = napari.Viewer(title="napari-mmfuse demo")
    viewer.open_sample(PLUGIN, sample)
    window = viewer.window._qt_window
    window.setTabPosition(Qt.RightDockWidgetArea, QTabWidget.East)  # room for every full title
    manifest = PluginManager.instance().get_manifest(PLUGIN)
    docks = []
    for contribution in manifest.contributions.widgets or []:
        dock, _ = viewer.window.add_plugin_dock_widget(PLUGIN, contribution.display_name)
        # the tab's text ("&" escaped: Qt reads it as a shortcut mark); the dock keeps its name
        dock.setWindowTitle(contribution.display_name.replace("&", "&&"))
        if window.dockWidgetArea(dock) != Qt.RightDockWidgetArea:  # napari's settings remember areas
            window.addDockWidget(Qt.RightDockWidgetArea, dock)
        if docks:
            window.tabifyDockWidget(docks[-1], dock)
        docks.append(dock)
    available = window.screen().availableGeometry()
    window.resize(min(WINDOW_SIZE[0], available.width()), min(WINDOW_SIZE[1], available.height()))
    QApplication.processEvents()  # the main window builds its tab bar when it lays the docks out
    for bar in window.findChildren(QTabBar):
        bar.setElideMode(Qt.ElideNone)
    fuse = next((dock for dock in docks if dock.windowTitle() == "Fuse"), None)
    if fuse is not None:  # the headline move: open images and click Fuse
        fuse.raise_()
    viewer.dims.current_step = tuple(s // 2 for s in viewer.dims.nsteps)
    viewer.reset_view()
    first_image = next((layer for layer in viewer.layers if layer._type_string == "image"), None)
    if first_image is not None:
        viewer.layers.selection.active = first_image
    return viewer


def run(args) -> int:
    import napari

    if args.screenshot:
        from ._outputs import check_outputs

        check_outputs([("--screenshot", args.screenshot)], overwrite=True)  # folder there and writable, before the window
    viewer = open_demo(args.sample)
    if args.screenshot:
        from qtpy.QtWidgets import QApplication

        QApplication.processEvents()
        from ..io.atomic import atomic_output

        with atomic_output(args.screenshot, overwrite=True) as temporary:  # renamed into place whole
            if not viewer.window._qt_window.grab().save(str(temporary)):
                raise OSError(f"Qt could not write the screenshot {args.screenshot}")
        viewer.close()
        return 0
    napari.run()
    return 0
