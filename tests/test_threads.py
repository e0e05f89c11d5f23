"""Thread policy: counts from affinity and cgroup quota, roles, MMFUSE_THREADS, torch."""

from __future__ import annotations

import pytest

from napari_mmfuse.core import threads


@pytest.mark.parametrize(
    ("affinity", "cpu_max", "expected"),
    [
        (set(range(8)), "200000 100000", 2),
        (set(range(8)), "max 100000", 8),
        (set(range(8)), None, 8),
        ({0, 1}, "800000 100000", 2),
        (set(range(8)), "150000 100000", 1),
        (set(range(8)), "50000 100000", 1),
    ],
)
def test_cpus_from_affinity_and_v2_quota(affinity, cpu_max, expected):
    assert threads.cpus_from(affinity, threads.quota_from_cgroup_v2(cpu_max)) == expected


def test_v1_quota():
    assert threads.quota_from_cgroup_v1("300000\n", "100000\n") == 3
    assert threads.quota_from_cgroup_v1("-1\n", "100000\n") is None
    assert threads.quota_from_cgroup_v1(None, None) is None
    assert threads.cpus_from(set(range(8)), threads.quota_from_cgroup_v1("300000", "100000")) == 3


def test_malformed_quota_is_ignored():
    assert threads.quota_from_cgroup_v2("garbage") is None
    assert threads.quota_from_cgroup_v2("") is None


def test_no_affinity_falls_back_to_cpu_count():
    assert threads.cpus_from(None, None, cpu_count=6) == 6
    assert threads.cpus_from(None, None, cpu_count=None) == 1


@pytest.mark.parametrize(("role", "cpus", "expected"), [("cli", 8, 8), ("viewer", 8, 7), ("viewer", 3, 2), ("viewer", 2, 2), ("viewer", 1, 1), ("worker", 8, 1), ("cli", 1, 1)])
def test_roles(role, cpus, expected):
    assert threads.threads_for(role, cpus) == expected


def test_env_override():
    assert threads.threads_for("viewer", 8, "3") == 3
    assert threads.threads_for("worker", 8, " 5 ") == 5
    assert threads.threads_for("cli", 8, "") == 8


@pytest.mark.parametrize("value", ["abc", "0", "-2", "1.5"])
def test_invalid_env_is_one_line_value_error(value):
    with pytest.raises(ValueError, match="MMFUSE_THREADS") as info:
        threads.threads_for("cli", 8, value)
    assert "\n" not in str(info.value)


def test_unknown_role():
    with pytest.raises(ValueError, match="role"):
        threads.threads_for("gpu", 8)


def test_thread_count_reads_environment(monkeypatch):
    monkeypatch.setenv("MMFUSE_THREADS", "2")
    assert threads.thread_count("worker") == 2
    monkeypatch.setenv("MMFUSE_THREADS", "x")
    with pytest.raises(ValueError, match="MMFUSE_THREADS"):
        threads.thread_count("cli")


def test_available_cpus_is_positive_and_within_affinity():
    import os

    n = threads.available_cpus()
    assert 1 <= n <= len(os.sched_getaffinity(0))


def test_apply_thread_policy_sets_torch_threads(monkeypatch):
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("MMFUSE_THREADS", "1")
        assert threads.apply_thread_policy("cli") == 1
        assert torch.get_num_threads() == 1
        monkeypatch.delenv("MMFUSE_THREADS")
        expected = threads.thread_count("viewer")
        assert threads.apply_thread_policy("viewer") == expected
        assert torch.get_num_threads() == expected
    finally:
        torch.set_num_threads(before)


def test_apply_thread_policy_before_torch_sets_environment(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys, os\n"
        "from napari_mmfuse.core.threads import apply_thread_policy\n"
        "n = apply_thread_policy('worker')\n"
        "assert 'torch' not in sys.modules\n"
        "import torch\n"
        "print(n, torch.get_num_threads(), os.environ['OMP_WAIT_POLICY'])\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("MMFUSE_THREADS", "OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "1", "PASSIVE"]


def test_worker_initializer_in_a_process_pool():
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, initializer=threads.worker_initializer) as pool:
        assert pool.submit(_worker_threads).result() == 1


def _worker_threads() -> int:
    import torch

    return torch.get_num_threads()


def test_cli_reports_invalid_env_in_one_line(monkeypatch, capsys):
    from napari_mmfuse.cli import main

    monkeypatch.setenv("MMFUSE_THREADS", "lots")
    assert main(["info", "missing.nii"]) == 1
    err = capsys.readouterr().err
    assert "MMFUSE_THREADS" in err and err.count("\n") == 1
