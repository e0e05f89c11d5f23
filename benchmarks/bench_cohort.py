"""A cohort in one run: serial CLI loop vs ``mmfuse run`` with 1 and 2 workers, faults and resume.

Cohort: head phantom variants (``sample_data.misaligned_phantom("rigid", seed=s, moving_modality="CT",
labels=True)``, anatomy and noise varying with the seed; the known fixed -> moving rigid transform),
downsampled by 2 along every axis so a subject takes seconds. Recipe: Gaussian denoise of T1 ->
rigid MI registration of CT to it -> the CT's labels transformed onto the T1 grid (nearest) ->
average fusion of T1 and the registered CT -> Dice of the transformed labels against the T1 labels.

Reported, in one run:

* wall time of a serial loop over the CLI (one ``mmfuse`` process per step, as a shell script
  would do) and of ``mmfuse run`` with 1 and 2 local workers, with the ratio to the loop;
* peak memory (RSS) per worker process;
* registration error against the known transform for every subject: the mean distance between
  ``T_est(p)`` and ``T_true(p)`` over the T1 head voxels (mm), and the worst subject;
* fault run: one worker killed (SIGKILL) after the first subject; the run must finish with
  every subject once and every row done;
* resume run: a run stopped after about half the subjects (Ctrl-C, SIGINT) and ``--resume``d:
  only the unfinished subjects may be recomputed (counted from the table's ``computed`` column).

``--quick`` runs 6 subjects and exits non-zero when a check fails (registration error over
1 mm, lost or duplicated rows, a fault not survived, reused work recomputed).

Usage::

    python benchmarks/bench_cohort.py [--quick] [--subjects 24] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

RECIPE = """\
recipe: 1
name: phantom-cohort
inputs:
  t1: "*_T1w.nii.gz"
  ct: "*_ct.nii.gz"
  ct_labels: {pattern: "*_ct_labels.nii.gz", kind: labels}
  t1_labels: {pattern: "*_T1w_labels.nii.gz", kind: labels}
steps:
  - id: t1_clean
    op: denoise/gaussian
    inputs: {image: t1}
    params: {sigma: 1.0}
  - id: ct_to_t1
    op: register/rigid
    inputs: {fixed: t1_clean, moving: ct}
    params: {metric: mi, levels: 3, iterations: 100}
  - id: labels_on_t1
    op: transform/apply
    inputs: {image: ct_labels, transform: ct_to_t1.transform, reference: t1_clean}
  - id: fused
    op: fuse/average
    inputs: {images: [t1_clean, ct_to_t1.resampled]}
measure:
  - dice: [labels_on_t1, t1_labels]
"""


def make_cohort(root: Path, count: int) -> dict[str, np.ndarray]:
    """Write ``count`` subjects; return each one's true fixed -> moving matrix."""
    from napari_mmfuse.io import write
    from napari_mmfuse.sample_data import misaligned_phantom

    truths = {}
    for seed in range(count):
        subject = f"sub-{seed + 1:02d}"
        folder = root / subject
        folder.mkdir(parents=True, exist_ok=True)
        fixed, moving, fixed_labels, moving_labels = misaligned_phantom("rigid", seed=seed, moving_modality="CT",
                                                                         labels=True)
        for record, suffix in ((fixed, "T1w"), (moving, "ct"), (fixed_labels, "T1w_labels"),
                               (moving_labels, "ct_labels")):
            data = np.asarray(record.level0)[::2, ::2, ::2]
            affine = np.asarray(record.affine) @ np.diag([2.0, 2.0, 2.0, 1.0])
            labels = record.layer_type == "labels"
            write(folder / f"{subject}_{suffix}.nii.gz", data.astype(np.uint8 if labels else np.float32), affine,
                  labels=labels, overwrite=True)
        truths[subject] = np.asarray(moving.metadata["ground_truth"]["fixed_to_moving"], dtype=float)
    return truths


def registration_error(subject_dir: Path, study: Path, truth: np.ndarray) -> float:
    """Mean |T_est(p) - T_true(p)| (mm) over the T1 head voxels (intensity above 10 % of its range)."""
    from napari_mmfuse.pipeline import read_image
    from napari_mmfuse.provenance import Provenance, sidecar_path

    record = Provenance.load(sidecar_path(subject_dir / "ct_to_t1.tfm"))
    estimate = np.asarray(record.outputs["transform"]["matrix"], dtype=float)
    t1 = read_image(next((study / subject_dir.name).glob("*_T1w.nii.gz")))
    data = np.asarray(t1.data)
    index = np.argwhere(data > data.min() + 0.1 * np.ptp(data))[::7]
    points = np.c_[index, np.ones(len(index))] @ np.asarray(t1.affine).T
    return float(np.linalg.norm((points @ estimate.T - points @ truth.T)[:, :3], axis=1).mean())


def serial_cli(study: Path, out: Path) -> float:
    """The loop a user would script: one mmfuse process per step and subject."""
    started = time.perf_counter()
    for folder in sorted(study.glob("sub-*")):
        name, target = folder.name, out / folder.name
        target.mkdir(parents=True, exist_ok=True)
        steps = [
            ["denoise", str(folder / f"{name}_T1w.nii.gz"), "--method", "gaussian", "--sigma", "1.0",
             "-o", str(target / "t1_clean.nii.gz")],
            ["register", str(target / "t1_clean.nii.gz"), str(folder / f"{name}_ct.nii.gz"), "--model", "rigid",
             "--metric", "mi", "--levels", "3", "--iterations", "100", "--transform", str(target / "ct_to_t1.tfm"),
             "-o", str(target / "ct_on_t1.nii.gz")],
            ["transform", str(folder / f"{name}_ct_labels.nii.gz"), "--transform", str(target / "ct_to_t1.tfm"),
             "--reference", str(target / "t1_clean.nii.gz"), "--interpolation", "nearest",
             "-o", str(target / "labels_on_t1.nii.gz")],
            ["fuse", str(target / "t1_clean.nii.gz"), str(target / "ct_on_t1.nii.gz"), "--method", "average",
             "-o", str(target / "fused.nii.gz")],
        ]
        for step in steps:
            subprocess.run([sys.executable, "-m", "napari_mmfuse.cli", *step, "--overwrite"], check=True,
                           capture_output=True, env=_env())
    return time.perf_counter() - started


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def cohort_run(recipe: Path, study: Path, out: Path, workers: int, *extra, stop_after: int | None = None):
    """``mmfuse run`` as a user starts it; optionally interrupted (SIGINT) after ``stop_after`` rows."""
    command = [sys.executable, "-m", "napari_mmfuse.cli", "run", str(recipe), "--subjects", str(study / "sub-*"),
               "-o", str(out), "--workers", str(workers), *extra]
    started = time.perf_counter()
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if stop_after is not None:
        while process.poll() is None and _rows(out) < stop_after:
            time.sleep(0.5)
        process.send_signal(signal.SIGINT)
    _, errors = process.communicate()
    return time.perf_counter() - started, process.returncode, errors


def _rows(out: Path) -> int:
    table = out / "cohort.csv"
    return max(0, len(table.read_text().splitlines()) - 1) if table.exists() else 0


def peak_worker_memory(recipe: Path, study: Path, out: Path) -> tuple[float, list[float]]:
    """Run on 2 workers in this process's client and read each worker's peak RSS (MiB)."""
    from napari_mmfuse.cohort import close_client, find_subjects, load_recipe, run_cohort, start_client

    def peak():
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    loaded = load_recipe(recipe)
    client = start_client(workers=2)
    started = time.perf_counter()
    try:
        run_cohort(loaded, find_subjects(loaded, str(study / "sub-*")), out, client=client)
        peaks = list(client.run(peak).values())
    finally:
        close_client(client)
    return time.perf_counter() - started, peaks


def fault_run(recipe: Path, study: Path, out: Path) -> tuple[bool, str]:
    """Kill one busy worker after the first subject; the run must complete, each subject once."""
    from napari_mmfuse.cohort import close_client, find_subjects, load_recipe, run_cohort, start_client
    from napari_mmfuse.cohort.table import read_table

    loaded = load_recipe(recipe)
    subjects = find_subjects(loaded, str(study / "sub-*"))
    client, killed = start_client(workers=2), []

    def kill(row):
        busy = [address for address, keys in client.processing().items() if keys]
        if not killed and busy:
            for pid in client.run(os.getpid, workers=busy[:1]).values():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    try:
        rows = run_cohort(loaded, subjects, out, client=client, on_row=kill)
    finally:
        close_client(client)
    names = [row["subject"] for row in read_table(out / "cohort.csv")]
    ok = bool(killed) and sorted(names) == sorted(s.id for s in subjects) and all(r["status"] == "done" for r in rows)
    return ok, f"killed {len(killed)} worker(s); {len(names)} rows, {len(set(names))} distinct, " \
               f"{sum(r['status'] == 'done' for r in rows)} done"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 subjects; exit non-zero when a check fails")
    parser.add_argument("--subjects", type=int, default=None, help="cohort size (default 24, quick 6)")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = parser.parse_args()
    count = args.subjects or (6 if args.quick else 24)
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_cohort_"))
    work.mkdir(parents=True, exist_ok=True)
    study, recipe = work / "study", work / "recipe.yaml"
    recipe.write_text(RECIPE)
    print(f"writing {count} subjects to {study} ...", flush=True)
    truths = make_cohort(study, count)
    failures = []

    loop = serial_cli(study, work / "serial")
    one, code_one, errors = cohort_run(recipe, study, work / "run1", 1)
    if code_one != 0:
        failures.append(f"mmfuse run --workers 1 exited {code_one}: {errors.strip().splitlines()[-1:]}")
    two, code_two, _ = cohort_run(recipe, study, work / "run2", 2)
    memory_time, peaks = peak_worker_memory(recipe, study, work / "memory")
    print(f"\n{'run':<34}{'wall s':>9}{'vs loop':>9}")
    for label, seconds in (("serial CLI loop (1 process/step)", loop), ("mmfuse run --workers 1", one),
                           ("mmfuse run --workers 2", two)):
        print(f"{label:<34}{seconds:>9.1f}{seconds / loop:>9.2f}")
    print(f"peak RSS per worker (2 workers): {', '.join(f'{p:.0f} MiB' for p in peaks)}")

    from napari_mmfuse.cohort.table import read_table

    rows = {row["subject"]: row for row in read_table(work / "run2" / "cohort.csv")}
    errors_mm = {s: registration_error(work / "run2" / s, study, truths[s]) for s in truths if s in rows}
    dice = [row.get("dice.labels_on_t1", float("nan")) for row in rows.values()]
    print(f"registration error (mm): mean {np.mean(list(errors_mm.values())):.3f}, "
          f"worst {max(errors_mm.values()):.3f} ({max(errors_mm, key=errors_mm.get)}); "
          f"labels Dice mean {np.nanmean(dice):.3f}")
    if len(rows) != count or max(errors_mm.values()) > 1.0:
        failures.append(f"{len(rows)} rows for {count} subjects; worst registration error "
                        f"{max(errors_mm.values()):.2f} mm")

    ok, text = fault_run(recipe, study, work / "fault")
    print(f"fault run: {text}")
    if not ok:
        failures.append(f"fault run: {text}")

    half = count // 2
    _, code, _ = cohort_run(recipe, study, work / "resume", 2, stop_after=half)
    finished = {row["subject"] for row in read_table(work / "resume" / "cohort.csv") if row["status"] == "done"}
    _, code, _ = cohort_run(recipe, study, work / "resume", 2, "--resume")
    table = read_table(work / "resume" / "cohort.csv")
    recomputed = [row["subject"] for row in table if row.get("computed", 0) > 0]
    print(f"resume run: interrupted with {len(finished)} subjects in the table; --resume recomputed steps of "
          f"{len(recomputed)} subjects (at most the {count - len(finished)} unfinished: subjects whose workers "
          f"finished after the interrupt keep their outputs), {len(table)} rows")
    if set(recomputed) & finished or len(table) != count or code != 0:
        failures.append(f"resume recomputed {sorted(set(recomputed) & finished)} or lost rows ({len(table)})")

    for failure in failures:
        print(f"CHECK FAILED: {failure}")
    return 1 if failures and args.quick else 0


if __name__ == "__main__":
    sys.exit(main())
