"""The memory a worker plans its RAM tier from: the host's RAM, or its cgroup's limit where lower
(admission.usable_memory), read from fake cgroup trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from picserve import admission

GIB = 2**30
RAM = 512 * GIB  # the node's
V1_UNLIMITED = "9223372036854771712"  # what cgroup v1 writes for "no limit"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


@pytest.fixture
def proc(tmp_path):
    """A /proc/self/cgroup of a process in the root cgroup (what a container sees of itself)."""
    path = tmp_path / "proc-self-cgroup"
    write(path, "0::/")
    return path


def test_cgroup_v2_limit(tmp_path, proc):
    write(tmp_path / "memory.max", str(64 * GIB))
    assert admission.cgroup_memory_limit(tmp_path, proc) == 64 * GIB
    assert admission.usable_memory(RAM, tmp_path, proc) == 64 * GIB


def test_cgroup_v2_max_is_no_limit(tmp_path, proc):
    write(tmp_path / "memory.max", "max")
    assert admission.cgroup_memory_limit(tmp_path, proc) is None
    assert admission.usable_memory(RAM, tmp_path, proc) == RAM


def test_cgroup_v1_limit(tmp_path):
    proc = tmp_path / "proc-self-cgroup"
    write(proc, "5:cpu,cpuacct:/\n4:memory:/\n0::/")
    write(tmp_path / "memory" / "memory.limit_in_bytes", str(48 * GIB))
    assert admission.usable_memory(RAM, tmp_path, proc) == 48 * GIB


def test_cgroup_v1_unlimited(tmp_path, proc):
    write(tmp_path / "memory" / "memory.limit_in_bytes", V1_UNLIMITED)
    assert admission.cgroup_memory_limit(tmp_path, proc) is None
    assert admission.usable_memory(RAM, tmp_path, proc) == RAM


def test_no_cgroup_files_leaves_the_ram(tmp_path):
    # neither the cgroup files nor /proc/self/cgroup: the host's RAM, no error
    assert admission.cgroup_memory_limit(tmp_path / "none", tmp_path / "nothing") is None
    assert admission.usable_memory(RAM, tmp_path / "none", tmp_path / "nothing") == RAM


def test_unreadable_values_are_no_limit(tmp_path, proc):
    write(tmp_path / "memory.max", "")
    write(tmp_path / "memory" / "memory.limit_in_bytes", "-1")
    assert admission.usable_memory(RAM, tmp_path, proc) == RAM


def test_a_limit_above_the_ram_leaves_the_ram(tmp_path, proc):
    write(tmp_path / "memory.max", str(2 * RAM))
    assert admission.usable_memory(RAM, tmp_path, proc) == RAM


def test_the_processs_own_cgroup_and_those_above_it_count(tmp_path):
    # a systemd unit with MemoryMax= under a slice with a larger one, on a host (no limit at the root)
    proc = tmp_path / "proc-self-cgroup"
    write(proc, "0::/system.slice/picserve.service")
    write(tmp_path / "system.slice" / "memory.max", str(100 * GIB))
    write(tmp_path / "system.slice" / "picserve.service" / "memory.max", str(40 * GIB))
    write(tmp_path / "user.slice" / "memory.max", str(1 * GIB))  # another branch: not ours
    assert admission.usable_memory(RAM, tmp_path, proc) == 40 * GIB
    write(tmp_path / "system.slice" / "memory.max", str(30 * GIB))  # the parent's is lower: it binds
    assert admission.usable_memory(RAM, tmp_path, proc) == 30 * GIB


def test_cgroup_v1_own_memory_cgroup(tmp_path):
    proc = tmp_path / "proc-self-cgroup"
    write(proc, "4:memory:/kubepods/pod1/abc\n1:cpu:/kubepods/pod1/abc")
    write(tmp_path / "memory" / "memory.limit_in_bytes", V1_UNLIMITED)
    write(tmp_path / "memory" / "kubepods" / "pod1" / "abc" / "memory.limit_in_bytes", str(24 * GIB))
    assert admission.usable_memory(RAM, tmp_path, proc) == 24 * GIB


def test_a_pods_limit_bounds_the_automatic_budgets(tmp_path, proc):
    # one GPU in a pod limited to 64 GiB on a 512 GiB node: the RAM tier plans for half the pod's memory
    write(tmp_path / "memory.max", str(64 * GIB))
    usable = admission.usable_memory(RAM, tmp_path, proc)
    _, host = admission.budgets("auto", "auto", "cuda", 80 * GIB, usable, 1)
    assert host == 32 * GIB
    device, host = admission.budgets("auto", "auto", "cpu", usable, usable, 0)  # a CPU worker: half of it
    assert (device, host) == (32 * GIB, 0)
    _, host = admission.budgets("auto", "auto", "cuda", 80 * GIB, usable, 4)  # four visible GPUs share it
    assert host == 8 * GIB
