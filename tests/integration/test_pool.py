"""The node pool (issue 15): `vmwu run` through `vmwu pool serve` runs in ready VMs, with
the outputs an unpooled run leaves, one VM per instance, and no QEMU outliving the pool."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Vmwu
from tests.processes import MARK, assert_all_gone, comm, survivors, tree
from tests.waits import wait_for
from vmwu.run.poolclient import ask

POOLED = "warm start: a ready VM of the node's pool"
PROBE = 'echo "$@" > /output/args.txt; cat /cdrom/param > /output/param.txt; ls /app > /output/ls'


class Pool:
    def __init__(self, vmwu: Vmwu, size: int = 1) -> None:
        self.sock = vmwu.tmp / "pool" / "pool.sock"
        self.mark = f"vmwu-pool-test-{os.getpid()}-{id(self)}"
        self.log = vmwu.tmp / f"pool-{id(self)}.log"
        elsewhere = vmwu.tmp / f"service-cwd-{id(self)}"  # not where the commands are typed
        elsewhere.mkdir()
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "vmwu", "--debug", "pool", "serve"]
                + ["--socket", str(self.sock), "--size", str(size), "--idle", "600"],
                env={**os.environ, **vmwu.env, MARK: self.mark},
                cwd=elsewhere,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        wait_for(
            lambda: "serving on" in self.log.read_text(errors="replace"),
            60,
            "the pool service to listen",
            context=self.tail,
        )
        vmwu.extra_env["VMWU_POOL"] = str(self.sock)

    def tail(self) -> str:
        lines = self.log.read_text(errors="replace").splitlines()
        return "\n".join(line for line in lines if "qemu.qmp" not in line)[-3000:]

    def counts(self) -> tuple[int, int, int]:
        """(ready, made, warmed up)"""
        reply = ask(self.sock, {"v": 1, "status": True}, timeout=30)
        match = re.fullmatch(r"ready (\d+) made (\d+) warmed (\d+)", reply.summary or "")
        assert match, reply
        return int(match[1]), int(match[2]), int(match[3])

    def ready(self) -> int:
        return self.counts()[0]

    def wait_ready(self, n: int = 1) -> None:
        wait_for(lambda: self.ready() >= n, 120, f"{n} ready VM(s) in the pool", context=self.tail)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)


@pytest.fixture
def pool(cold_vmwu: Vmwu) -> Iterator[Pool]:
    p = Pool(cold_vmwu)
    try:
        yield p
    finally:
        p.stop()


def vm_dir(status: dict[str, object]) -> str:
    match = re.search(r"unix:(\S+)/qmp\.sock", str(status["cmdline"]))
    assert match, status["cmdline"]
    return match[1]


def test_a_pooled_instance_leaves_what_an_unpooled_one_does(cold_vmwu: Vmwu, pool: Pool) -> None:
    unit = cold_vmwu.pack(PROBE, name="probe", files={"tool": "x"})
    env = cold_vmwu.extra_env.pop("VMWU_POOL")
    plain, out0, status0 = cold_vmwu.run(unit, out="plain", params=("a", "b c"))
    assert plain.returncode == 0, plain.stderr
    assert POOLED != status0["start"]
    cold_vmwu.extra_env["VMWU_POOL"] = env
    first, _, status1 = cold_vmwu.run(unit, out="first", params=("a", "b c"))
    assert first.returncode == 0, first.stderr  # run in the service: it now knows the unit
    pool.wait_ready()
    pooled, out, status = cold_vmwu.run(unit, out="pooled", params=("a", "b c"))
    assert pooled.returncode == 0, pooled.stderr
    assert status["start"] == POOLED
    assert status["exit_code"] == status0["exit_code"] == 0
    _, made, warmed = pool.counts()
    assert warmed == made >= 1  # the agent mounted the warm-up disks in every ready VM
    names = sorted(p.name for p in out0.iterdir())
    assert sorted(p.name for p in out.iterdir()) == names
    assert {"args.txt", "param.txt", "ls"} <= set(names)
    for name in set(names) - {"status.json", "console.log"}:  # these say when and how
        assert (out / name).read_bytes() == (out0 / name).read_bytes(), name
    assert (out / "args.txt").read_text() == "a b c\n"


def test_two_instances_never_share_a_vm(cold_vmwu: Vmwu) -> None:
    pool = Pool(cold_vmwu, size=2)
    try:
        unit = cold_vmwu.pack("cat /cdrom/param > /output/p.txt", name="two")
        cold_vmwu.run(unit, out="warmup")
        pool.wait_ready(2)
        env = {**os.environ, **cold_vmwu.env}
        base = [sys.executable, "-m", "vmwu", "run", str(unit), "--quiet"]
        procs = [
            subprocess.Popen(
                [*base, "--output-directory", str(cold_vmwu.tmp / f"o{i}"), "--", str(i)],
                env=env,
                cwd=cold_vmwu.tmp,
            )
            for i in range(2)
        ]
        assert [p.wait(timeout=300) for p in procs] == [0, 0]
        pool.wait_ready(1)
        last, out2, status2 = cold_vmwu.run(unit, out="o2", params=("2",))
        assert last.returncode == 0, last.stderr
        statuses = [
            json.loads((cold_vmwu.tmp / f"o{i}" / "status.json").read_text()) for i in (0, 1)
        ]
        statuses.append(status2)
        starts = [s["start"] for s in statuses]
        assert all(s == POOLED for s in starts), (starts, pool.tail())
        dirs = [vm_dir(s) for s in statuses]
        assert len(set(dirs)) == 3, dirs  # each in a VM of its own, none given twice
        for i in range(3):
            assert (cold_vmwu.tmp / f"o{i}" / "p.txt").read_text() == f"{i}\n"
    finally:
        pool.stop()


def test_killing_the_pool_owner_leaves_no_qemu(cold_vmwu: Vmwu) -> None:
    pool = Pool(cold_vmwu, size=2)
    unit = cold_vmwu.pack("true", name="kill")
    result, _, _ = cold_vmwu.run(unit, out="first")
    assert result.returncode == 0, result.stderr
    pool.wait_ready(2)
    snapshot = tree(pool.proc.pid)
    qemus = [p for p in snapshot if comm(p).startswith("qemu-system")]
    assert len(qemus) >= 2, snapshot
    pool.proc.kill()
    pool.proc.wait(timeout=30)
    assert_all_gone(pool.mark, snapshot)


def test_relative_paths_and_the_default_output_directory_are_the_clients(
    cold_vmwu: Vmwu, pool: Pool
) -> None:
    unit = cold_vmwu.pack("cat /cdrom/in.txt > /output/got.txt", name="dflt")
    (cold_vmwu.tmp / "in.txt").write_text("from the client's directory\n")
    result = cold_vmwu("run", unit.name, "--quiet", "--files", "in.txt")
    assert result.returncode == 0, result.stderr
    got = cold_vmwu.tmp / "dflt-output" / "got.txt"
    assert got.read_text() == "from the client's directory\n"


def test_without_a_pool_vmwu_run_runs_the_instance_itself(cold_vmwu: Vmwu) -> None:
    cold_vmwu.extra_env["VMWU_POOL"] = str(cold_vmwu.tmp / "no-such" / "pool.sock")
    unit = cold_vmwu.pack("echo ok > /output/ok.txt", name="nopool")
    result, out, status = cold_vmwu.run(unit)
    assert result.returncode == 0, result.stderr
    assert (out / "ok.txt").read_text() == "ok\n"
    assert status["start"].startswith("warm start"), status["start"]
    assert "/pool-" not in vm_dir(status)  # its own QEMU, in its instance directory


def test_a_client_that_dies_takes_its_instance_with_it(cold_vmwu: Vmwu, pool: Pool) -> None:
    unit = cold_vmwu.pack("sleep 1000", name="sleeper")
    client = subprocess.Popen(
        [sys.executable, "-m", "vmwu", "run", str(unit), "--quiet", "--output-directory", "o"],
        env={**os.environ, **cold_vmwu.env},
        cwd=cold_vmwu.tmp,
    )
    instances = cold_vmwu.tmp / "cache" / "instances"

    def started() -> list[Path]:
        return [
            e.parent
            for e in instances.glob("sleeper-*/events.jsonl")
            if '"started"' in e.read_text(errors="replace")
        ]

    (inst,) = wait_for(started, 120, "the application to start", context=pool.tail)
    qemus = [p for p in tree(pool.proc.pid) if comm(p).startswith("qemu-system")]
    client.kill()
    client.wait(timeout=30)
    wait_for(lambda: not inst.exists(), 60, "the service to end the instance", context=pool.tail)
    left = [p for p in tree(pool.proc.pid) if comm(p).startswith("qemu-system")]
    assert len(set(qemus) - set(left)) == 1  # its QEMU, and no other, has ended
    assert pool.proc.poll() is None and pool.counts()  # the service goes on


def test_a_sweep_uses_the_pool_and_its_qemus_die_with_the_driver(vmwu: Vmwu) -> None:
    from tests.integration.sweeps import markers, sleeper_plan, sleeper_unit, start_sweep, summary

    unit = sleeper_unit(vmwu)
    plan = sleeper_plan(vmwu.tmp, unit, 6, seconds="3")
    res = vmwu.tmp / "res"
    vmwu.extra_env["VMWU_POOL"] = "auto"  # the driver owns a pool for the sweep
    driver = start_sweep(vmwu, plan, "--results", res, "-j", "2")
    # some jobs done (their instances ran in the driver's pool), others running
    wait_for(lambda: list((res / "jobs").glob("j-*")) and markers(res), 180, "a job done")

    def pool_qemus() -> dict[int, int] | None:
        # the service's, below the driver (the jobs' runners have none of their own); a
        # job between two guests may leave a moment with none: the pool refills only on
        # a core no job uses
        snapshot = tree(driver.pid)
        found = {p: t for p, t in snapshot.items() if comm(p).startswith("qemu-system")}
        return found or None

    qemus = wait_for(pool_qemus, 60, "a QEMU of the sweep's pool running")
    driver.kill()
    driver.wait(timeout=60)
    wait_for(lambda: not survivors(qemus), 60, "the pool's QEMUs to die with the driver")
    resumed = vmwu("sweep", "resume", res, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    jobs = summary(res)["jobs"]
    assert [j["state"] for j in jobs] == ["done"] * 6
    starts = [json.loads((res / j["result"] / "status.json").read_text())["start"] for j in jobs]
    assert POOLED in starts
