"""Trouble of the host, not of the job (vmwu/wrapper/hostcheck.py): not enough memory
for the VM now, QEMU unable to use KVM. Under a BOINC client both are temporary exits."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.boinc.fake import FakeClient
from vmwu.wrapper.boinc import main as boinc_main_module
from vmwu.wrapper.hostcheck import (
    QEMU_OVERHEAD_MIB,
    AcceleratorTrouble,
    NotEnoughMemory,
    accelerator_trouble,
    check_memory,
    mem_available_mib,
)

MEMINFO = """MemTotal:       32768000 kB
MemFree:         1000000 kB
MemAvailable:    {kb} kB
Buffers:          200000 kB
"""


def meminfo(tmp_path: Path, kb: int) -> Path:
    path = tmp_path / "meminfo"
    path.write_text(MEMINFO.format(kb=kb))
    return path


def test_mem_available(tmp_path: Path) -> None:
    assert mem_available_mib(meminfo(tmp_path, 2048 * 1024)) == 2048
    (tmp_path / "old").write_text("MemTotal: 1000 kB\nMemFree: 10 kB\n")
    assert mem_available_mib(tmp_path / "old") is None, "kernels before 3.14 do not say"
    assert mem_available_mib(tmp_path / "missing") is None
    assert mem_available_mib() is not None, "this host's /proc/meminfo"


def test_check_memory(tmp_path: Path) -> None:
    enough = meminfo(tmp_path, (512 + QEMU_OVERHEAD_MIB) * 1024)
    check_memory(512, enough)
    with pytest.raises(NotEnoughMemory) as info:
        check_memory(513, enough)
    assert str(info.value) == (
        "not enough memory for the VM now: it needs 613 MiB "
        "(513 MiB for the guest, 100 for QEMU) and 612 MiB are available (MemAvailable) "
        "(close programs or run it later)"
    )


@pytest.mark.parametrize(
    ("log", "reason"),
    [
        (
            "qemu-system-x86_64: Could not access KVM kernel module: Device or resource busy"
            " / qemu-system-x86_64: failed to initialize kvm: Device or resource busy",
            "Could not access KVM kernel module: Device or resource busy",
        ),
        (
            "ioctl(KVM_CREATE_VM) failed: 16 Device or resource busy",
            "ioctl(KVM_CREATE_VM) failed: 16 Device or resource busy",
        ),
        (
            "qemu-system-x86_64: failed to initialize kvm: Invalid argument",
            "failed to initialize kvm: Invalid argument",
        ),
        ("qemu-system-x86_64: -drive file=x: Could not open 'x'", None),
        ("", None),
    ],
)
def test_accelerator_trouble(log: str, reason: str | None) -> None:
    assert accelerator_trouble(log) == reason


@given(st.text(max_size=400))
def test_accelerator_trouble_takes_any_log(log: str) -> None:
    found = accelerator_trouble(log)
    assert found is None or "KVM" in found or "kvm" in found


@pytest.mark.parametrize(
    ("error", "delay"),
    [
        (NotEnoughMemory("not enough memory for the VM now"), 3600),
        (AcceleratorTrouble("QEMU could not use the accelerator: busy"), 86400),
    ],
)
def test_host_trouble_is_a_temporary_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception, delay: int
) -> None:
    fake = FakeClient(tmp_path / "data")
    try:
        (fake.project_dir / "job.xml").write_text(
            "<job_desc><task><application>true</application></task></job_desc>"
        )
        fake.link("job.xml", "job.xml")

        def run(self: object) -> int:
            raise error

        monkeypatch.setattr("vmwu.wrapper.wrapper.Wrapper.run", run)
        monkeypatch.chdir(fake.slot)
        monkeypatch.setenv("VMWU_HOME", str(fake.data / "home"))
        assert boinc_main_module.boinc_main([]) == 0
        text = (fake.slot / "boinc_temporary_exit").read_text()
        assert text == f"{delay}\n{error}\nnotice\n"
        assert not (fake.slot / "boinc_finish_called").exists()
    finally:
        fake.close()
