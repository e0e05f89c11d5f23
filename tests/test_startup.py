"""Fast start (issue #12): opening a file in napari and ``mmfuse --help`` import no torch.

napari imports the reader for every file a user opens, and ``mmfuse`` builds every
subcommand's parser before it parses; torch, MONAI and napari are imported only when an
operation runs. Each check runs in a fresh interpreter, since this test session has
torch loaded already. Timings are ``benchmarks/bench_startup.py``'s, not asserted here.
"""

import json
import subprocess
import sys

import pytest

PROBE = "\nimport json, sys\nprint(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))\n"


def loaded_after(code: str) -> set[str]:
    """Top-level packages in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    proc = subprocess.run([sys.executable, "-c", code + PROBE], capture_output=True, text=True, check=True)
    return set(json.loads(proc.stdout.splitlines()[-1]))


def test_reader_import_loads_no_torch():
    loaded = loaded_after("import napari_mmfuse._reader")
    assert not loaded & {"torch", "monai"}


@pytest.mark.parametrize("argv", [["--help"], ["--version"]])
def test_cli_help_loads_no_torch_or_napari(argv):
    code = (
        "from napari_mmfuse.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit as exit:\n    assert exit.code == 0, exit.code\n"
    )
    loaded = loaded_after(code)
    assert not loaded & {"torch", "monai", "napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6"}


def test_cli_parser_builds_without_torch():
    """Every subcommand's parser (with its ``--method`` choices) is built without torch."""
    loaded = loaded_after("from napari_mmfuse.cli import build_parser\nbuild_parser()")
    assert not loaded & {"torch", "monai", "napari", "qtpy"}


def test_parser_method_names_match_the_core():
    """The torch-free names the parsers offer (the registry's) are the ones the core modules accept."""
    from napari_mmfuse.core import _names, denoise, explain, fuse, normalize
    from napari_mmfuse.operations import operations

    assert fuse.method_names() == list(operations("fuse"))
    assert fuse.DEFAULT_METHOD == _names.FUSE_DEFAULT_METHOD
    assert list(operations("denoise")) == list(denoise.METHODS)
    assert set(normalize.METHODS) <= set(operations("normalize"))
    assert list(operations("explain")) == list(explain.METHODS)


def test_public_import_paths_still_work():
    from napari_mmfuse.core import space
    from napari_mmfuse.core.lazy import MAX_REGISTRATION_SIZE, lazy_apply_transform
    from napari_mmfuse.io import ImageRecord, read, write

    assert callable(space.resample) and callable(lazy_apply_transform) and callable(read) and callable(write)
    assert MAX_REGISTRATION_SIZE > 0 and ImageRecord
