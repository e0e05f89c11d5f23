"""The operation layer's foundation: parameters, operations, progress, provenance, CLI flags, replay."""

import argparse
import json

import numpy as np
import pytest

from napari_mmfuse import pipeline
from napari_mmfuse.cli import main
from napari_mmfuse.commands._options import add_method_options, params_from_args
from napari_mmfuse.operations import Cancelled, Image, Operation, Param, Port, Progress, drive, get
from napari_mmfuse.provenance import Provenance, content_hash, sidecar_path


def test_param_checks_type_range_and_choices():
    sigma = Param("sigma", float, 1.0, minimum=0.0, open_minimum=True, unit="world")
    assert sigma.check("2.5") == 2.5 and sigma.cli_flag == "--sigma" and sigma.title == "sigma (world units)"
    for bad in (0, -1, "nan", "x"):
        with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
            sigma.check(bad)
    n_iter = Param("n_iter", int, 10, minimum=1, flag="iterations")
    assert n_iter.cli_flag == "--iterations" and n_iter.check(3.0) == 3
    with pytest.raises(ValueError, match="an integer"):
        n_iter.check(2.5)
    rule = Param("rule", str, "energy", choices=("energy", "maxabs"))
    with pytest.raises(ValueError, match="one of energy, maxabs"):
        rule.check("median")
    with pytest.raises(ValueError):
        Param("bad", float, -1.0, minimum=0.0)  # a default outside its own range is a declaration bug


def _doubler():
    def run(image, *, factor, device=None, seed=None):
        for step in range(3):
            yield Progress(step, 3, f"step {step}")
        return {"image": image.like(image.data * factor)}

    return Operation("denoise", "double", "multiply by a factor", (Param("factor", float, 2.0, minimum=0.0),),
                     (Port("image", "image"),), (Port("image", "image"),), run)


def test_operation_check_fills_defaults_and_names_unknown_parameters():
    operation = _doubler()
    assert operation.check({}) == {"factor": 2.0} and operation.check({"factor": None}) == {"factor": 2.0}
    with pytest.raises(ValueError, match="no parameter 'facter'"):
        operation.check({"facter": 3})


def test_drive_reports_progress_and_stops_on_cancel():
    operation = _doubler()
    image = Image(np.ones((2, 2)), np.eye(3))
    seen = []
    result = drive(operation.run(image, factor=3.0), on_progress=seen.append)
    assert [p.done for p in seen] == [0, 1, 2] and seen[-1].fraction == pytest.approx(2 / 3)
    np.testing.assert_array_equal(result["image"].data, 3.0)
    with pytest.raises(Cancelled):
        drive(operation.run(image, factor=3.0), cancelled=lambda: True)


def test_content_hash_depends_on_values_shape_and_dtype_not_layout():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert content_hash(a) == content_hash(np.asfortranarray(a))
    assert content_hash(a) != content_hash(a.reshape(4, 3))
    assert content_hash(a) != content_hash(a.astype(np.float64))
    import dask.array as da

    assert content_hash(da.from_array(a, chunks=(1, 2))) == content_hash(a)


def test_provenance_round_trips_through_json(tmp_path):
    record = Provenance("normalize/n4", {"shrink": 2}, inputs={"image": [{"hash": "sha256:0"}]}, seed=None,
                        device="cpu")
    path = record.save(tmp_path / "out.nii.gz.provenance.json")
    loaded = Provenance.load(path)
    assert loaded == record and json.loads(path.read_text())["step"] == "normalize"
    path.write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="not an mmfuse provenance record"):
        Provenance.load(path)


def test_cli_flags_come_from_the_registry_and_unset_flags_take_the_default():
    parser = argparse.ArgumentParser()
    add_method_options(parser, "normalize")
    n4 = get("normalize", "n4")
    args = parser.parse_args(["--method", "n4", "--shrink", "2"])
    assert params_from_args(n4, args) == {**n4.defaults(), "shrink": 2}
    args = parser.parse_args(["--method", "n4", "--shrink", "0"])
    with pytest.raises(ValueError, match="--shrink must be an integer in \\[1, 16\\]"):
        params_from_args(n4, args)


def test_replay_recomputes_an_identical_output_from_its_sidecar(tmp_path, capsys):
    from napari_mmfuse.commands._options import write_sidecar
    from napari_mmfuse.commands._outputs import save_output
    from napari_mmfuse.io import write

    rng = np.random.default_rng(0)
    source = write(tmp_path / "t1.nii.gz", (rng.random((12, 20, 20)) * 100 + 50).astype(np.float32),
                   np.diag([2.0, 1.0, 1.0, 1.0]))
    image = pipeline.read_image(source)
    outputs, record = pipeline.run("normalize", "n4", {"image": image}, {"shrink": 2, "iterations": 5})
    first = save_output(tmp_path / "n4.nii.gz", outputs["image"], provenance=record.to_dict())
    record.outputs["image"]["path"] = str(first)
    write_sidecar(first, record, overwrite=False)
    assert main(["replay", str(sidecar_path(first)), "-o", str(tmp_path / "again.nii.gz")]) == 0
    assert "identical to the recorded output" in capsys.readouterr().err
    again = pipeline.read_image(tmp_path / "again.nii.gz")
    np.testing.assert_array_equal(again.data, pipeline.read_image(first).data)
    np.testing.assert_array_equal(again.affine, image.affine)
    assert Provenance.load(sidecar_path(tmp_path / "again.nii.gz")).params == record.params
    # an input that changed since is refused, with one line
    write(source, np.zeros((12, 20, 20), np.float32), np.diag([2.0, 1.0, 1.0, 1.0]), overwrite=True)
    assert main(["replay", str(sidecar_path(first)), "-o", str(tmp_path / "third.nii.gz")]) == 1
    assert "changed since the result was made" in capsys.readouterr().err
