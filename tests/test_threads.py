"""Thread counts that do not oversubscribe the cores (napari_vnet.workflows.threads): the pure
choice with fake facts, cgroup quotas from fake files, the block that applies and
restores them, and ``--threads`` on the command line."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from napari_vnet.workflows.threads import (
    ThreadChoice,
    choose_threads,
    cpu_quota,
    parse_cpu_max,
    thread_choice,
    use_threads,
)


def test_idle_machine_uses_every_core():
    assert choose_threads(affinity=8, load=0.0).threads == 8
    assert choose_threads(affinity=8, load=0.4).threads == 8  # rounded


def test_load_of_other_processes_takes_cores():
    # the busy 2-core machine: one thread wins
    assert choose_threads(affinity=2, load=4.6).threads == 1
    assert choose_threads(affinity=8, load=3.1).threads == 5
    # this process's own share of the load is not another process's
    assert choose_threads(affinity=8, load=3.1, own_load=3.0).threads == 8


def test_quota_affinity_helpers_reserve_and_ceiling():
    assert choose_threads(affinity=16, quota=4.0, load=0).threads == 4
    assert choose_threads(affinity=16, quota=2.5, load=0).threads == 2  # rounded down
    assert choose_threads(affinity=16, quota=0.5, load=0).threads == 1
    # each niced helper thread counts as half a core
    assert choose_threads(affinity=8, helpers=3, load=0).threads == 7  # 8 - 1.5 -> 6.5 -> 7
    assert choose_threads(affinity=8, helpers=4, load=0).threads == 6
    assert choose_threads(affinity=8, reserve=1, load=0).threads == 7  # the GUI's core
    assert choose_threads(affinity=1, reserve=1, load=0).threads == 1  # never below 1
    assert choose_threads(affinity=8, load=0, ceiling=4).threads == 4  # OMP_NUM_THREADS
    assert choose_threads(affinity=16, load=0, share=4).threads == 4  # torchrun ranks


def test_requested_count_is_taken_as_is():
    c = choose_threads(3, affinity=2, load=9.0, ceiling=1)
    assert c.threads == 3 and c.requested == 3
    assert "requested -> 3 threads" in c.reason()
    assert choose_threads(0, affinity=2, load=0).requested is None  # 0: automatic


def test_reason_names_the_facts():
    c = choose_threads(affinity=4, quota=None, load=3.1, helpers=2,
                       helpers_note="read-ahead workers")  # fmt: skip
    assert c.reason() == (
        "4 cores available (affinity 4, cgroup quota none), 2 read-ahead workers, "
        "load 3.1 (0.0 of it this process) -> 1 thread"
    )


def test_parse_cpu_max():
    assert parse_cpu_max("max 100000\n") is None
    assert parse_cpu_max("200000 100000\n") == 2.0
    assert parse_cpu_max("150000 100000") == 1.5
    assert parse_cpu_max("") is None


def test_cgroup_v2_quota_smallest_along_the_path(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "cpu.max").write_text("300000 100000\n")
    (tmp_path / "a" / "b" / "cpu.max").write_text("max 100000\n")
    proc = tmp_path / "cgroup"
    proc.write_text("0::/a/b\n")
    assert cpu_quota(tmp_path, proc) == 3.0
    proc.write_text("0::/\n")
    assert cpu_quota(tmp_path, proc) is None
    assert cpu_quota(tmp_path, tmp_path / "missing") is None


def test_cgroup_v1_cfs_quota(tmp_path):
    folder = tmp_path / "cpu,cpuacct" / "docker" / "x"
    folder.mkdir(parents=True)
    (folder / "cpu.cfs_quota_us").write_text("150000\n")
    (folder / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "cgroup"
    proc.write_text("4:memory:/docker/x\n3:cpu,cpuacct:/docker/x\n")
    assert cpu_quota(tmp_path, proc) == 1.5
    (folder / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpu_quota(tmp_path, proc) is None


def test_this_machine_choice_is_within_bounds():
    c = thread_choice()
    assert isinstance(c, ThreadChoice)
    assert 1 <= c.threads <= max(1, c.cores)
    assert c.ceiling == torch.get_num_threads()


def test_use_threads_applies_logs_and_restores(caplog):
    import SimpleITK as sitk

    torch.set_num_threads(2)
    sitk_before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    with caplog.at_level(logging.INFO, logger="napari_vnet.workflows.threads"):
        with use_threads(1) as used:
            assert torch.get_num_threads() == 1 == used.threads
            assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == 1
    assert torch.get_num_threads() == 2
    assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == sitk_before
    assert "requested -> 1 thread" in caplog.text


@pytest.mark.usefixtures("one_torch_thread")
def test_predict_threads_option_is_applied(tmp_path, capsys, caplog):
    import numpy as np

    from napari_vnet.cli import main
    from napari_vnet.io import Volume, write_volume
    from napari_vnet.models import ClassInfo, ModelCard, build_model, save_checkpoint

    rng = np.random.default_rng(0)
    img = write_volume(Volume(rng.normal(size=(9, 20, 20)).astype(np.float32)),
                       tmp_path / "ct.nii.gz")  # fmt: skip
    card = ModelCard(arch="vnet", arch_kwargs={"channels": [4, 8], "kernel_size": 3},
                     classes=[ClassInfo(0, "background"), ClassInfo(1, "x")],
                     normalization={"kind": "zscore"}, patch_size=(8, 16, 16))  # fmt: skip
    ckpt = save_checkpoint(build_model(card), card, tmp_path / "tiny.pt")
    argv = ["predict", str(img), "-w", str(ckpt), "--json", "--threads"]
    with caplog.at_level(logging.INFO, logger="napari_vnet.workflows.threads"):
        assert main(["-v", *argv, "1", "-o", str(tmp_path / "a.nii.gz")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["threads"] == 1
    assert "requested -> 1 thread" in caplog.text
    assert main([*argv, "0", "-o", str(tmp_path / "b.nii.gz")]) == 0  # automatic
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["threads"] >= 1


def test_a_lagging_load_average_does_not_cost_threads_when_the_cores_are_idle_now():
    """The 1-minute load average still counts jobs that ended seconds ago; what other
    processes use right now decides when it is lower (an idle machine after a benchmark
    got 1 thread and ran 1.5x slower)."""
    lagging = choose_threads(affinity=2, load=1.9, busy_now=0.05)
    assert lagging.threads == 2 and "busy now 0.1 cores" in lagging.reason()
    busy = choose_threads(affinity=2, load=1.9, busy_now=1.8)
    assert busy.threads == 1
    # a sample never raises the load: a quiet average with a burst now keeps the cores
    assert choose_threads(affinity=2, load=0.1, busy_now=2.0).threads == 2


def test_busy_now_sees_another_process_spinning():
    import subprocess
    import sys

    from napari_vnet.workflows.threads import busy_now

    quiet = busy_now(0.3)
    assert quiet is not None and quiet >= 0.0
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time

        time.sleep(0.3)
        assert busy_now(0.5) >= 0.5  # one core spun by the child
    finally:
        spin.kill()
        spin.wait()
