"""``mmfuse demo``: napari with the multimodal phantom loaded and the plugin's widgets docked."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="open napari with the head phantom and the plugin's widgets")
    parser.add_argument("--sample", default="head_phantom", help="sample key from the plugin (default: head_phantom)")
    parser.add_argument("--screenshot", metavar="PNG", help="save a screenshot of the window and exit")
    parser.set_defaults(func=run)


def open_demo(sample: str = "head_phantom"):
    """Create a viewer with the sample opened and every widget of the plugin docked; return it."""
    import napari
    from npe2 import PluginManager

    viewer = napari.Viewer(title="napari-mmfuse demo")
    viewer.open_sample("napari-mmfuse", sample)
    manifest = PluginManager.instance().get_manifest("napari-mmfuse")
    docks = {}
    for contribution in manifest.contributions.widgets or []:
        dock, _ = viewer.window.add_plugin_dock_widget("napari-mmfuse", contribution.display_name, tabify=True)
        docks[contribution.display_name] = dock
    if "Fuse" in docks:  # the headline move: open images and click Fuse
        docks["Fuse"].raise_()
    viewer.window._qt_window.resize(1500, 950)
    viewer.dims.current_step = tuple(s // 2 for s in viewer.dims.nsteps)
    viewer.reset_view()
    first_image = next((layer for layer in viewer.layers if layer._type_string == "image"), None)
    if first_image is not None:
        viewer.layers.selection.active = first_image
    return viewer


def run(args) -> int:
    import napari

    viewer = open_demo(args.sample)
    if args.screenshot:
        from qtpy.QtWidgets import QApplication

        QApplication.processEvents()
        viewer.window._qt_window.grab().save(args.screenshot)
        viewer.close()
        return 0
    napari.run()
    return 0
