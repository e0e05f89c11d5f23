"""Cohorts: recipe validation, ``mmfuse run`` on a local Dask cluster, faults and ``--resume``."""

import numpy as np
import pytest
import yaml

from napari_mmfuse.cli import main
from napari_mmfuse.cohort import RecipeError, load_recipe
from napari_mmfuse.cohort.table import read_table
from napari_mmfuse.provenance import Provenance, sidecar_path

from conftest import write_phantom_subject

RECIPE = {
    "recipe": 1,
    "name": "phantom",
    "inputs": {"t1": "*_t1.nii.gz", "ct": "*_ct.nii.gz",
               "truth": {"pattern": "*_truth.nii.gz", "kind": "labels"}},
    "steps": [
        {"id": "t1_clean", "op": "denoise/gaussian", "inputs": {"image": "t1"}, "params": {"sigma": 1.0}},
        {"id": "ct_on_t1", "op": "register/rigid", "inputs": {"fixed": "t1_clean", "moving": "ct"},
         "params": {"levels": 2, "iterations": 100, "sampling": 1.0}},
        {"id": "fused", "op": "fuse/average", "inputs": {"images": ["t1_clean", "ct_on_t1.resampled"]}},
        {"id": "mask", "op": "segment/otsu", "inputs": {"images": ["t1_clean"]}},
    ],
    "measure": [{"dice": ["mask", "truth"]}],
}
SHIFT_MM = 2.0


@pytest.fixture
def cohort(tmp_path):
    for index in range(3):
        write_phantom_subject(tmp_path / "study" / f"sub-0{index + 1}", index)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE, sort_keys=False))
    return tmp_path, recipe


def test_a_bad_recipe_is_refused_before_any_subject_runs_naming_the_line(tmp_path):
    bad = dict(RECIPE, steps=[*RECIPE["steps"][:1], {"id": "x", "op": "denoise/nlmm", "inputs": {"image": "t1"}}])
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad, sort_keys=False))
    with pytest.raises(RecipeError, match=r"bad.yaml line \d+: step x: unknown denoise method 'nlmm'"):
        load_recipe(path)
    wrong_param = dict(RECIPE, steps=[{"id": "a", "op": "denoise/gaussian", "inputs": {"image": "t1"},
                                       "params": {"sigma": -1}}])
    path.write_text(yaml.safe_dump(wrong_param, sort_keys=False))
    with pytest.raises(RecipeError, match="step a: sigma must be"):
        load_recipe(path)
    unknown_input = dict(RECIPE, steps=[{"id": "a", "op": "denoise/gaussian", "inputs": {"image": "t2"}}])
    path.write_text(yaml.safe_dump(unknown_input, sort_keys=False))
    with pytest.raises(RecipeError, match="'t2' is neither a recipe input nor an earlier step's output"):
        load_recipe(path)


def test_run_resume_and_a_failingwrite_phantom_subject(cohort, capsys):
    root, recipe = cohort
    (root / "study" / "sub-03" / "sub-03_ct.nii.gz").write_bytes(b"not a nifti")  # corrupt: that subject fails
    out = root / "results"
    code = main(["run", str(recipe), "--subjects", str(root / "study" / "sub-*"), "-o", str(out), "--workers", "2"])
    assert code == 1  # one subject failed
    assert "Dask dashboard" in capsys.readouterr().err
    rows = {row["subject"]: row for row in read_table(out / "cohort.parquet")}
    assert sorted(rows) == ["sub-01", "sub-02", "sub-03"]
    assert rows["sub-03"]["status"] == "failed" and "sub-03_ct.nii.gz" in rows["sub-03"]["error"]
    for name in ("sub-01", "sub-02"):
        row = rows[name]
        assert row["status"] == "done" and row["computed"] == 4
        mask = _read(out / name / "mask.nii.gz") == 1
        truth = _read(root / "study" / name / f"{name}_truth.nii.gz") > 0
        assert row["dice.mask"] == pytest.approx(2 * (mask & truth).sum() / (mask.sum() + truth.sum()), abs=1e-6)
        assert row["dice.mask"] > 0.7
        assert row["mask.volume.1"] == pytest.approx(mask.sum() * 8.0)  # mm^3 of 2 mm voxels
        record = Provenance.load(sidecar_path(out / name / "fused.nii.gz"))
        assert record.operation == "fuse/average"
        # the known misalignment is found: 2 mm along x (napari's last axis)
        assert row["ct_on_t1.metric_after"] > row["ct_on_t1.metric_before"]  # MI rose
        transform = Provenance.load(sidecar_path(out / name / "ct_on_t1.tfm")).outputs["transform"]
        np.testing.assert_allclose(np.abs(np.asarray(transform["matrix"])[:3, 3]), [0, 0, SHIFT_MM], atol=0.5)  # a quarter voxel
    assert len(read_table(out / "cohort.csv")) == 3

    # refused without --resume; with it, only what is missing is recomputed
    assert main(["run", str(recipe), "--subjects", str(root / "study" / "sub-0[12]"), "-o", str(out)]) == 1
    assert "pass --resume" in capsys.readouterr().err
    (out / "sub-02" / "fused.nii.gz").unlink()
    assert main(["run", str(recipe), "--subjects", str(root / "study" / "sub-0[12]"), "-o", str(out), "--resume"]) == 0
    rows = {row["subject"]: row for row in read_table(out / "cohort.csv")}
    assert rows["sub-01"]["computed"] == 0 and rows["sub-01"]["reused"] == 4
    assert rows["sub-02"]["computed"] == 1 and rows["sub-02"]["reused"] == 3


def _read(path):
    from napari_mmfuse.pipeline import read_image

    return np.asarray(read_image(path).data)


def test_a_worker_killed_mid_run_is_replaced_and_every_subject_finishes_once(tmp_path):
    import os
    import signal

    from napari_mmfuse.cohort import close_client, find_subjects, run_cohort, start_client

    for index in range(4):
        write_phantom_subject(tmp_path / "study" / f"sub-0{index + 1}", index)
    recipe = load_recipe_from(RECIPE, tmp_path)
    subjects = find_subjects(recipe, str(tmp_path / "study" / "sub-*"))
    client = start_client(workers=2)
    killed = []

    def kill_a_busy_worker(row):
        if killed:
            return
        busy = [address for address, keys in client.processing().items() if keys]
        pids = client.run(os.getpid, workers=busy[:1]) if busy else {}
        for pid in pids.values():
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    try:
        rows = run_cohort(recipe, subjects, tmp_path / "out", client=client, on_row=kill_a_busy_worker)
    finally:
        close_client(client)
    assert killed, "no worker was busy when the first subject finished"
    assert [row["subject"] for row in rows] == ["sub-01", "sub-02", "sub-03", "sub-04"]
    assert all(row["status"] == "done" for row in rows), [row.get("error") for row in rows]
    table = read_table(tmp_path / "out" / "cohort.csv")
    assert sorted(row["subject"] for row in table) == ["sub-01", "sub-02", "sub-03", "sub-04"]
    assert not list((tmp_path / "out").rglob(".*.tmp-*")), "a temporary file was left under the outputs"


def load_recipe_from(document, folder):
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return load_recipe(path)


def test_a_recipe_from_one_subjects_results_runs_the_same_steps(tmp_path):
    from napari_mmfuse import pipeline
    from napari_mmfuse.cohort.from_provenance import guess_pattern, recipe_from_provenance

    write_phantom_subject(tmp_path / "study" / "sub-01", 0)
    folder = tmp_path / "study" / "sub-01"
    t1 = pipeline.read_image(folder / "sub-01_t1.nii.gz")
    ct = pipeline.read_image(folder / "sub-01_ct.nii.gz")
    clean, _ = pipeline.run("denoise", "gaussian", {"image": t1}, {"sigma": 1.5})
    fused, _ = pipeline.run("fuse", "average", {"images": [clean["image"], ct]})
    recipe, examples = recipe_from_provenance([fused["image"].metadata["provenance"]], name="clicked")
    assert [step.operation.key for step in recipe.steps] == ["denoise/gaussian", "fuse/average"]
    assert recipe.steps[0].params["sigma"] == 1.5
    assert {item.pattern for item in recipe.inputs.values()} == {"*_t1.nii.gz", "*_ct.nii.gz"}
    assert set(examples.values()) == {str(folder / "sub-01_t1.nii.gz"), str(folder / "sub-01_ct.nii.gz")}
    assert recipe.steps[1].inputs["images"][0] == recipe.steps[0].id
    assert guess_pattern("/data/sub-07/anat/sub-07_T1w.nii.gz") == ("sub-07", "anat/*_T1w.nii.gz")
    # saved, reloaded and run: the subject's result is the one clicked
    path = recipe.save(tmp_path / "clicked.yaml")
    assert main(["run", str(path), "--subjects", str(tmp_path / "study" / "sub-*"), "-o", str(tmp_path / "out"),
                 "--workers", "1"]) == 0
    again = pipeline.read_image(tmp_path / "out" / "sub-01" / f"{recipe.steps[1].id}.nii.gz")
    np.testing.assert_allclose(again.data, fused["image"].data, rtol=1e-6)


def test_the_readme_recipe_is_valid():
    from pathlib import Path

    from napari_mmfuse.cohort import parse_recipe

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("## Cohorts", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    recipe = parse_recipe(yaml.safe_load(block))
    assert [step.operation.key for step in recipe.steps] == [
        "denoise/nlm", "register/rigid", "transform/apply", "fuse/laplacian"]
