"""QEMU command lines and the accelerator choice, without starting QEMU."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmwu.errors import BadInput
from vmwu.vmm.accel import choose
from vmwu.vmm.qemu import Drive, DriveKind, MachineConfig, build_argv, opt


def test_commas_in_paths_are_escaped() -> None:
    assert opt("/tmp/a,b") == "/tmp/a,,b"
    cfg = MachineConfig(drives=(Drive("app", Path("/x/a,b.qcow2"), "qcow2"),))
    argv = build_argv(cfg)
    assert "file=/x/a,,b.qcow2,if=none,id=app,format=qcow2,cache=unsafe" in argv


def test_direct_kernel_tcg_command_line() -> None:
    cfg = MachineConfig(
        kernel=Path("/k"),
        initrd=Path("/i"),
        cmdline="console=ttyS0 quiet",
        memory_mib=256,
        cpus=2,
        console_log=Path("/run/con.log"),
        events_log=Path("/run/ev.log"),
        drives=(
            Drive("app", Path("/app.qcow2"), "qcow2"),
            Drive("inst", Path("/i.iso"), "raw", read_only=True),
        ),
    )
    argv = build_argv(cfg)
    assert argv[0] == "qemu-system-x86_64"
    joined = " ".join(argv)
    assert "-accel tcg,thread=multi" in joined
    assert "-no-reboot" in argv and "-nodefaults" in argv
    assert argv[argv.index("-kernel") + 1] == "/k"
    assert argv[argv.index("-append") + 1] == "console=ttyS0 quiet"
    assert argv[argv.index("-m") + 1] == "256"
    assert "-cpu" not in argv  # -cpu max costs 0.35 s of boot under TCG
    assert "file,id=con,path=/run/con.log" in argv
    assert "file,id=ev,path=/run/ev.log" in argv
    assert (
        "readonly=on"
        in argv[argv.index("file=/i.iso,if=none,id=inst,format=raw,cache=unsafe,readonly=on")]
    )
    assert argv.count("virtio-blk-pci,drive=app") == 1


def test_cdrom_drive_uses_virtio_scsi() -> None:
    cfg = MachineConfig(drives=(Drive("inst", Path("/i.iso"), "raw", True, DriveKind.CDROM),))
    argv = build_argv(cfg)
    assert "virtio-scsi-pci,id=scsi0" in argv
    assert "scsi-cd,drive=inst,bus=scsi0.0" in argv


def test_kvm_uses_host_cpu() -> None:
    argv = build_argv(MachineConfig(accel="kvm"))
    assert "-accel" in argv and argv[argv.index("-accel") + 1] == "kvm"
    assert argv[argv.index("-cpu") + 1] == "host"


def _fake_sys(tmp_path: Path, *modules: str) -> tuple[Path, Path]:
    sysmod = tmp_path / "sys"
    for m in modules:
        (sysmod / m).mkdir(parents=True)
    kvm = tmp_path / "kvm"
    kvm.write_text("")
    return kvm, sysmod


def test_kvm_pvm_falls_back_to_tcg(tmp_path: Path) -> None:
    kvm, sysmod = _fake_sys(tmp_path, "kvm", "kvm_pvm")
    choice = choose("auto", guest_arch="x86_64", dev_kvm=kvm, sys_module=sysmod)
    assert choice.accel == "tcg"
    assert "kvm_pvm" in choice.reason


def test_kvm_intel_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    kvm, sysmod = _fake_sys(tmp_path, "kvm", "kvm_intel")
    assert choose("auto", guest_arch="x86_64", dev_kvm=kvm, sys_module=sysmod).accel == "kvm"


def test_no_kvm_device(tmp_path: Path) -> None:
    choice = choose("auto", dev_kvm=tmp_path / "missing", sys_module=tmp_path)
    assert choice.accel == "tcg"


def test_kvm_requested_but_unusable(tmp_path: Path) -> None:
    kvm, sysmod = _fake_sys(tmp_path, "kvm_pvm")
    with pytest.raises(BadInput, match="kvm_pvm"):
        choose("kvm", guest_arch="x86_64", dev_kvm=kvm, sys_module=sysmod)


def test_foreign_guest_is_never_kvm(tmp_path: Path) -> None:
    kvm, sysmod = _fake_sys(tmp_path, "kvm_intel")
    assert choose("auto", guest_arch="aarch64", dev_kvm=kvm, sys_module=sysmod).accel == "tcg"


def test_unknown_accel() -> None:
    with pytest.raises(BadInput):
        choose("hvf")


def test_warm_start_takes_a_base_disk_but_not_a_disk_boot_or_a_cdrom() -> None:
    from vmwu.vmm import warm

    base = Drive("base", Path("/i/base.qcow2"), "qcow2", serial="VMWU-BASE")
    app = Drive("app", Path("/i/app.qcow2"), "qcow2", serial="VMWU-APP")
    direct = MachineConfig(kernel=Path("/k"), initrd=Path("/i"), drives=(base, app))
    # a root disk bigger than the blank disks' capacity is fine: it keeps its own
    assert warm.eligible(direct, {"base-disk": 2 * warm.CAPACITY, "app-disk": 1}) is None
    assert "larger than" in str(warm.eligible(direct, {"app-disk": 2 * warm.CAPACITY}))
    assert "own disk" in str(warm.eligible(MachineConfig(drives=(base, app)), {}))
    cd = Drive("inst", Path("/i/i.iso"), "raw", kind=DriveKind.CDROM)
    assert "CD-ROM" in str(warm.eligible(MachineConfig(kernel=Path("/k"), drives=(cd,)), {}))


def test_warm_state_key_depends_on_what_the_root_disk_is(monkeypatch: pytest.MonkeyPatch) -> None:
    from vmwu.vmm import warm

    monkeypatch.setattr(warm, "_qemu_identity", lambda exe: exe)
    cfg = MachineConfig(kernel=Path("/k"), drives=(Drive("base", Path("/i/b.qcow2"), "qcow2"),))
    keys = {
        warm.state_key(cfg, "qemu", None),
        warm.state_key(cfg, "qemu", Path("/cache/blobs/aaa")),
        warm.state_key(cfg, "qemu", Path("/cache/derived/layer-bbb.qcow2")),
    }
    assert len(keys) == 3
    assert warm.state_key(cfg, "qemu", Path("/cache/blobs/aaa")) in keys  # stable


def test_guest_ram_from_a_file_command_line() -> None:
    base = MachineConfig(memory_mib=256, ram_file=Path("/c/ram,1"), incoming=Path("/c/st"))
    argv = build_argv(base)
    spec = argv[argv.index("-object") + 1]
    assert spec == "memory-backend-file,id=vmwu.ram,size=256M,mem-path=/c/ram,,1,share=off"
    assert "memory-backend=vmwu.ram" in argv
    assert argv[argv.index("-incoming") + 1] == "defer"  # the capability goes first
    template = MachineConfig(ram_file=Path("/c/ram"), ram_share=True)
    argv = build_argv(template)
    assert argv[argv.index("-object") + 1].endswith("share=on")
    assert "-incoming" not in argv
    assert build_argv(MachineConfig(incoming=Path("/s")))[-2:] == ["-incoming", "fd:0"]
