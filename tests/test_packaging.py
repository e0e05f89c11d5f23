"""The plugin installs and napari finds its manifest: editable install and built wheel."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_manifest_is_valid_and_found():
    from npe2 import PluginManager, PluginManifest

    manifest = PluginManifest.from_distribution("napari-mmfuse")
    assert manifest.name == "napari-mmfuse"
    PluginManifest.from_file(ROOT / "napari.yaml")  # the root copy parses on its own
    pm = PluginManager()
    pm.discover()
    assert pm.get_manifest("napari-mmfuse").name == "napari-mmfuse"
    result = subprocess.run(["npe2", "validate", "napari-mmfuse"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_manifest_command_imports():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-mmfuse")
    for command in manifest.contributions.commands:
        module, _, attr = command.python_name.partition(":")
        imported = __import__(module, fromlist=[attr])
        assert callable(getattr(imported, attr)), command.python_name


@pytest.mark.slow
def test_wheel_carries_manifest_and_installs(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
    )
    wheel = next(tmp_path.glob("napari_mmfuse-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert "napari_mmfuse/napari.yaml" in names
        weights = "napari_mmfuse/core/fuse/fusion_net.pt"  # the trained fusion network ships in the wheel
        assert weights in names
        assert archive.read(weights) == (ROOT / "src" / weights).read_bytes()
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        text = archive.read(entry_points).decode()
        assert "napari-mmfuse = napari_mmfuse:napari.yaml" in text
        assert archive.read("napari_mmfuse/napari.yaml") == (ROOT / "napari.yaml").read_bytes()

    # A bare venv that sees this environment's packages through a .pth file: unlike
    # --system-site-packages, that works when this environment is itself a venv.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site_packages = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    outer = subprocess.run(  # this interpreter's path as a fresh process sees it (no pytest additions)
        [sys.executable, "-c", "import json, sys; print(json.dumps(sys.path))"],
        check=True, capture_output=True, text=True, cwd=tmp_path,
    ).stdout
    paths = [p for p in json.loads(outer) if p and Path(p).is_dir()]
    (Path(site_packages) / "_outer_environment.pth").write_text("\n".join(paths) + "\n")
    # the venv's own site-packages comes first on its path, so its install shadows the editable one
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed", str(wheel)], check=True)
    probe = (
        "import json, napari_mmfuse, importlib.resources as r;"
        "from npe2 import PluginManifest;"
        "m = PluginManifest.from_file(r.files('napari_mmfuse') / 'napari.yaml');"
        "from napari_mmfuse.core.fuse import network;"
        "network.load();"
        "print(json.dumps([napari_mmfuse.__file__, m.name, str(network.WEIGHTS)]))"
    )
    out = subprocess.run([python, "-c", probe], check=True, capture_output=True, text=True, cwd=tmp_path)
    module_file, name, weights_file = json.loads(out.stdout)
    assert str(venv) in module_file  # the wheel's copy, not the source tree
    assert str(venv) in weights_file  # the fusion network loads the wheel's weights
    assert name == "napari-mmfuse"
