"""The format list is the one truth: napari.yaml, the reader dispatch and the writers follow it."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from napari_mmfuse import io
from napari_mmfuse.io.formats import (
    FORMATS,
    file_suffix,
    get_format,
    napari_writers,
    reader_patterns,
    stem,
    writable_suffixes,
    write_format,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def manifest() -> dict:
    return yaml.safe_load((ROOT / "napari.yaml").read_text(encoding="utf-8"))["contributions"]


def test_reader_patterns_are_the_declared_suffixes(manifest):
    (reader,) = manifest["readers"]
    assert reader["command"] == "napari-mmfuse.get_reader"
    assert reader["filename_patterns"] == reader_patterns()
    assert reader["accepts_directories"] is True  # DICOM folders and OME-Zarr
    for pattern in ("*.btf", "*.dicom", "*.DCM", "*.nii.gz"):
        assert pattern in reader["filename_patterns"]


def test_writer_contributions_are_the_declared_writers(manifest):
    assert manifest["writers"] == napari_writers()
    commands = {c["id"]: c["python_name"] for c in manifest["commands"]}
    for writer in manifest["writers"]:
        module, function = commands[writer["command"]].split(":")
        assert module == "napari_mmfuse._writer"
        assert callable(getattr(__import__(module, fromlist=[function]), function))


def test_every_declared_suffix_reaches_its_reader(tmp_path):
    for fmt in FORMATS:
        if not fmt.reader or fmt.sniff_only:
            continue
        for suffix in fmt.suffixes:
            for name in (f"a{suffix}", f"A{suffix.upper()}"):
                path = tmp_path / name
                path.write_bytes(b"")
                assert io.reader_for(path) is fmt.load_reader(), name
    assert io.reader_for(tmp_path / "notes.txt") is None


def test_write_suffixes_and_names():
    assert write_format("x.ome.tif").name == "ome_tiff"
    assert write_format("x.TIF").name == "tiff"
    assert write_format("x.dcm") is None
    assert set(writable_suffixes()) == {s for f in FORMATS for s in f.writes}
    assert file_suffix("A.NII.GZ") == ".nii.gz"
    assert file_suffix("a.b.ome.tiff") == ".ome.tiff"
    assert stem("Sub-01.Nii.Gz", get_format("nifti").suffixes) == "Sub-01"
    with pytest.raises(KeyError):
        get_format("gif")
    with pytest.raises(ValueError, match="must end in one of"):
        io.check_writable("out.dcm")


@pytest.mark.parametrize("suffix", writable_suffixes())
def test_every_writable_suffix_round_trips(tmp_path, suffix):
    data = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    picture = write_format(f"x{suffix}").name == "picture"
    affine = np.eye(3) if picture else np.diag([0.5, 0.25, 1.0])
    written = io.write(tmp_path / f"x{suffix}", data, affine)
    (record,) = io.read(written)
    lossy = suffix in (".jpg", ".jpeg")
    np.testing.assert_allclose(np.squeeze(np.asarray(record.data)), data, atol=8 if lossy else 0)
    np.testing.assert_allclose(np.asarray(record.affine)[-3:, -3:], affine)  # NIfTI adds a slice axis


def test_formats_need_only_the_standard_library():
    code = (
        "import sys, importlib.util;"
        "spec = importlib.util.spec_from_file_location('formats', r'%s');"
        "m = sys.modules['formats'] = importlib.util.module_from_spec(spec); spec.loader.exec_module(m);"
        "assert m.FORMATS;"
        "print(sorted(n for n in ('numpy', 'torch', 'dask', 'tifffile') if n in sys.modules))"
    ) % (ROOT / "src" / "napari_mmfuse" / "io" / "formats.py")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_format_list_loads_no_reader():
    code = (
        "import sys, napari_mmfuse.io.formats;"
        "print(sorted(n for n in ('torch', 'dask', 'tifffile', 'pydicom', 'nibabel', 'zarr') if n in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_btf_and_dicom_suffixes_read(tmp_path):
    """The two suffixes the reader opened before napari.yaml declared them."""
    import shutil

    import tifffile
    from pydicom.data import get_testdata_file

    data = np.arange(20 * 30, dtype=np.uint16).reshape(20, 30)
    tifffile.imwrite(tmp_path / "slide.btf", data, bigtiff=True)
    (record,) = io.read(tmp_path / "slide.btf")
    np.testing.assert_array_equal(np.asarray(record.data), data)

    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "ct.dicom")
    (record,) = io.read(tmp_path / "ct.dicom")
    assert record.metadata["dicom_modality"] == "CT" and record.data.ndim == 3
