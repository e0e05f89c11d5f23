"""One module per ``mmfuse`` subcommand (see :mod:`napari_mmfuse.cli`)."""
