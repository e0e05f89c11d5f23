"""Nothing lost, nothing half-written (issue #17): atomic writes, outputs checked first, interruptions."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_mmfuse.cli import main
from napari_mmfuse.io import read
from napari_mmfuse.io.atomic import atomic_output, temporary_name, write_text
from napari_mmfuse.io.nifti import write_nifti
from napari_mmfuse.io.omezarr import write_ome_zarr
from napari_mmfuse.io.tiff import write_ome_tiff
from napari_mmfuse.io.transforms import write_transform


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _image(shape=(64, 64), seed=0) -> np.ndarray:
    y, x = np.mgrid[: shape[0], : shape[1]]
    rng = np.random.default_rng(seed)
    return (np.sin(x / 5.0) + np.cos(y / 7.0) + 0.1 * rng.random(shape) + 3).astype(np.float32)


@pytest.fixture
def no_reading(monkeypatch):
    """Make any input read fail: the command must stop before its work starts."""
    import napari_mmfuse.io as io

    def refuse(path):
        raise AssertionError(f"{path} was read before the outputs were checked")

    monkeypatch.setattr(io, "read", refuse)


# ------------------------------------------------------------------ 1. an input is its own output


def test_transform_zarr_onto_itself_keeps_the_image(tmp_path, capsys):
    image = _image()
    # two levels: a pyramid is read lazily, the case where the old writer emptied the store first
    volume = write_ome_zarr(tmp_path / "v.ome.zarr", image, np.diag([0.5, 0.5, 1.0]), units="mm", levels=2)
    identity = write_transform(tmp_path / "id.tfm", np.eye(3))
    args = ["transform", str(volume), "--transform", str(identity), "--reference", str(volume), "-o", str(volume)]
    assert main(args) == 1  # an input, without --overwrite: refused before any work
    assert "also an input" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    back = np.asarray(read(volume)[0].level0)
    assert back.any(), "the image was destroyed by its own output"
    np.testing.assert_allclose(back, image, atol=1e-5)
    assert _hidden(tmp_path) == []


def test_register_onto_its_moving_zarr_keeps_the_image(tmp_path):
    image = _image()
    fixed = write_ome_zarr(tmp_path / "a.ome.zarr", image, np.eye(3), units="mm")
    moving = write_ome_zarr(tmp_path / "v.ome.zarr", image, np.eye(3), units="mm", levels=2)
    args = ["register", str(fixed), str(moving), "-o", str(moving), "--overwrite", "--levels", "1", "--iterations", "3"]
    assert main(args) == 0
    back = np.asarray(read(moving)[0].level0)
    assert back.any()
    assert np.corrcoef(back.ravel(), image.ravel())[0, 1] > 0.99
    assert _hidden(tmp_path) == []


def test_transform_ome_tiff_onto_itself_keeps_the_image(tmp_path, monkeypatch):
    """The streamed (> 256 MB) case in small: a pyramid read lazily, written tile by tile onto itself."""
    import napari_mmfuse.io.tiff as tiff

    monkeypatch.setattr(tiff, "IN_MEMORY_WRITE_BYTES", 0)
    image = _image((128, 128), seed=1)
    path = write_ome_tiff(tmp_path / "v.ome.tif", image, np.eye(3), units="um", pyramid_levels=2, tile=32)
    identity = write_transform(tmp_path / "id.tfm", np.eye(3))
    args = ["transform", str(path), "--transform", str(identity), "--reference", str(path), "-o", str(path), "--overwrite"]
    assert main(args) == 0
    np.testing.assert_allclose(np.asarray(read(path)[0].level0), image, atol=1e-5)


# ------------------------------------------------------------------ 2. writes are atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = write_nifti(tmp_path / "old.nii.gz", np.ones((4, 5, 6), np.float32), np.eye(4))
    before = path.read_bytes()

    def half_write(image, filename):
        Path(filename).write_bytes(b"\x00" * 100)  # a partial file ...
        raise KeyboardInterrupt  # ... and the interruption

    monkeypatch.setattr(nib, "save", half_write)
    with pytest.raises(KeyboardInterrupt):
        write_nifti(path, np.zeros((4, 5, 6), np.float32), np.eye(4), overwrite=True)
    with pytest.raises(KeyboardInterrupt):
        write_nifti(tmp_path / "new.nii", np.zeros((4, 5, 6), np.float32), np.eye(4))
    assert path.read_bytes() == before
    assert not (tmp_path / "new.nii").exists()
    assert _hidden(tmp_path) == []


def test_folder_outputs_are_swapped_in_whole(tmp_path):
    path = tmp_path / "out.ome.zarr"
    with pytest.raises(RuntimeError), atomic_output(path, folder=True) as temporary:
        temporary.mkdir()
        (temporary / "part").write_text("half")
        raise RuntimeError("stopped")
    assert not path.exists() and _hidden(tmp_path) == []
    write_ome_zarr(path, _image(), np.eye(3))
    write_ome_zarr(path, _image(seed=3), np.eye(3), overwrite=True)
    np.testing.assert_array_equal(np.asarray(read(path)[0].level0), _image(seed=3))
    assert _hidden(tmp_path) == []
    assert temporary_name(tmp_path / "x.nii.gz").name.endswith(".nii.gz")


# ------------------------------------------------------------------ 4. outputs checked before the work


def test_missing_output_folder_fails_before_reading(tmp_path, capsys, no_reading):
    missing = tmp_path / "nowhere" / "r.nii.gz"
    assert main(["register", str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nii.gz"), "-o", str(missing)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("mmfuse register: error:") and "does not exist" in err and "\n" not in err


def test_a_folder_is_never_replaced_by_a_file(tmp_path, capsys, no_reading):
    folder = tmp_path / "d.nii.gz"
    (folder / "keep").mkdir(parents=True)
    args = ["denoise", str(tmp_path / "v.nii.gz"), "--method", "gaussian", "-o", str(folder), "--overwrite"]
    assert main(args) == 1
    assert "a folder of that name" in capsys.readouterr().err and (folder / "keep").is_dir()
    with pytest.raises(IsADirectoryError):
        write_nifti(folder, np.zeros((2, 2, 2), np.float32), np.eye(4), overwrite=True)
    assert (folder / "keep").is_dir()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_fails_before_reading(tmp_path, capsys, no_reading):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        assert main(["denoise", str(tmp_path / "v.nii.gz"), "--method", "gaussian", "-o", str(folder / "d.nii.gz")]) == 1
    finally:
        folder.chmod(0o755)
    assert "not writable" in capsys.readouterr().err


def test_secondary_outputs_checked_before_the_work(tmp_path, capsys, no_reading):
    image, out = tmp_path / "flair.nii.gz", tmp_path / "s.nii.gz"
    # two outputs naming one file
    assert main(["segment", str(image), "--method", "unet", "--model", "m", "--probabilities", str(out), "-o", str(out)]) == 1
    assert "both name" in capsys.readouterr().err
    # an existing --save-model is refused before the training, not after it
    (tmp_path / "m.pt").write_bytes(b"trained before")
    args = ["segment", str(image), "--scribbles", str(image), "--save-model", str(tmp_path / "m"), "-o", str(out)]
    assert main(args) == 1
    assert "m.pt already exists" in capsys.readouterr().err
    assert (tmp_path / "m.pt").read_bytes() == b"trained before" and not out.exists()
    # register's --transform, explain's --attribution-json, fuse's --weights-out, denoise's --save-model
    (tmp_path / "t.tfm").write_text("keep")
    assert main(["register", str(image), str(image), "-o", str(tmp_path / "r.nii.gz"), "--transform", str(tmp_path / "t.tfm")]) == 1
    (tmp_path / "a.json").write_text("keep")
    assert main(["explain", str(image), "--model", "m", "--target", "1", "--method", "ig", "-o", str(tmp_path / "e.nii.gz"),
                 "--attribution-json", str(tmp_path / "a.json")]) == 1
    (tmp_path / "w_1_flair.nii.gz").write_text("keep")
    assert main(["fuse", str(image), str(image), "-o", str(tmp_path / "f.nii.gz"), "--weights-out", str(tmp_path / "w")]) == 1
    assert main(["denoise", str(image), "--method", "n2v", "--save-model", str(tmp_path / "m"), "-o", str(tmp_path / "d.tif")]) == 1
    err = capsys.readouterr().err
    assert err.count("already exists") == 4 and err.count("mmfuse") == 4
    assert not any((tmp_path / name).exists() for name in ("r.nii.gz", "e.nii.gz", "f.nii.gz", "d.tif"))


# ------------------------------------------------------------------ 5. concurrent writers


def test_concurrent_writers_leave_one_complete_result(tmp_path):
    path = tmp_path / "c.ome.zarr"
    images = [np.full((64, 64), 1.0, np.float32), np.full((64, 64), 2.0, np.float32)]
    errors = []

    def writer(image):
        try:
            for _ in range(6):
                write_ome_zarr(path, image, np.eye(3), overwrite=True, chunks=16)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(image,)) for image in images]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    back = np.asarray(read(path)[0].level0)
    assert np.unique(back).size == 1 and back[0, 0] in (1.0, 2.0), "pixels of two writers mixed"
    assert _hidden(tmp_path) == []


def test_json_outputs_are_atomic(tmp_path):
    path = write_text(tmp_path / "a.json", "{}")
    with pytest.raises(FileExistsError):
        write_text(path, "[]")
    assert write_text(path, "[]", overwrite=True).read_text() == "[]"


# ------------------------------------------------------------------ 2. interrupted commands


def _caught_signals(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return int(line.split()[1], 16)
    return 0


def _interrupt(tmp_path: Path, name: str, signum: int, moment: str) -> dict:
    """Run ``mmfuse denoise`` and send ``signum`` while it computes or while it writes."""
    folder = tmp_path / name
    folder.mkdir()
    output = folder / "x.ome.tif"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    command = [sys.executable, "-m", "napari_mmfuse.cli", "denoise", str(tmp_path / "vol.nii"), "--method", "gaussian",
               "--sigma", "1", "-o", str(output)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    sent = None
    while process.poll() is None and time.monotonic() < deadline:
        ready = _caught_signals(process.pid) & (1 << (signal.SIGTERM - 1))  # mmfuse's handlers are in place
        writing = any(p.name.startswith(".x.ome.tif.tmp-") for p in folder.iterdir())
        if ready and (moment == "compute" or writing):
            time.sleep(0.05)
            process.send_signal(signum)
            sent = moment
            break
        time.sleep(0.01)
    out, err = process.communicate(timeout=120)
    return {"rc": process.returncode, "err": err, "output": output, "folder": folder, "sent": sent}


def test_interrupted_denoise_leaves_no_partial_file(tmp_path):
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc to see when the command is ready")
    rng = np.random.default_rng(0)
    volume = rng.random((96, 256, 256), dtype=np.float32)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "vol.nii")
    from napari_mmfuse.core.denoise import denoise

    expected = denoise(np.asarray(read(tmp_path / "vol.nii")[0].level0), "gaussian", sigma=1.0,
                       spacing=np.ones(3), device="cpu")
    cases = [("int-compute", signal.SIGINT, "compute"), ("term-write", signal.SIGTERM, "write"),
             ("term-compute", signal.SIGTERM, "compute"), ("kill-write", signal.SIGKILL, "write")]
    results: dict = {}
    threads = [threading.Thread(target=lambda c=c: results.__setitem__(c[0], _interrupt(tmp_path, *c))) for c in cases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name, signum, _moment in cases:
        result = results[name]
        assert result["sent"], f"{name}: the command ended before the signal ({result['err'][-300:]})"
        if result["output"].exists():  # finished before the signal took effect: then complete
            np.testing.assert_allclose(np.asarray(read(result["output"])[0].level0), expected, atol=1e-4)
        if signum == signal.SIGKILL:
            assert result["rc"] == -signal.SIGKILL
            continue  # a hidden temporary may remain after SIGKILL; never a partial final file
        if result["rc"] == 0:  # the signal came after the final rename
            assert result["output"].exists()
            continue
        assert result["rc"] == 128 + signum, (name, result["rc"], result["err"][-500:])
        assert result["err"].strip().splitlines()[-1] == "mmfuse: interrupted"
        assert "Traceback" not in result["err"]
        assert not result["output"].exists()
        assert _hidden(result["folder"]) == []


def test_remove_temporaries_deletes_only_a_killed_writers_leftovers(tmp_path):
    from napari_mmfuse.io.atomic import remove_temporaries, temporary_name

    kept = tmp_path / "t1_clean.nii.gz"
    kept.write_bytes(b"result")
    (tmp_path / ".hidden_setting").write_text("not ours")
    leftover_file = temporary_name(kept)
    leftover_file.write_bytes(b"half")
    leftover_folder = temporary_name(tmp_path / "seg.ome.zarr")
    (leftover_folder / "0").mkdir(parents=True)
    assert remove_temporaries(tmp_path) == sorted([leftover_file, leftover_folder])
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden_setting", "t1_clean.nii.gz"]
