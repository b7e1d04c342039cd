"""Ready VMs without starting QEMU: which machines can be pooled, the pool key, and the
command line of a VM whose disks can be swapped."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from vmwu.vmm.pool import ReadyVM, pool_key, poolable
from vmwu.vmm.qemu import Drive, DriveKind, MachineConfig, build_argv


def instance_cfg(inst: str) -> MachineConfig:
    d = Path(inst)
    return MachineConfig(
        kernel=Path("/c/vmlinux"),
        cmdline="console=ttyS0 vmwu.warm=1",
        drives=(
            Drive("app", d / "app.qcow2", "qcow2", serial="VMWU-APP"),
            Drive("out", d / "output.raw", "raw", serial="VMWU-OUT"),
            Drive("inst", d / "instance.iso", "raw", read_only=True, serial="VMWU-INST"),
        ),
        console_log=d / "console.log",
        events_log=d / "events.jsonl",
        qmp_socket=d / "qmp.sock",
        incoming=Path("/c/warm-x.sstate-1"),
        ram_file=Path("/c/warm-x.ram-1"),
    )


def test_instances_of_one_machine_share_a_pool_key() -> None:
    a, b = instance_cfg("/i/a"), instance_cfg("/i/b")
    assert pool_key(a) == pool_key(b)
    assert pool_key(a) != pool_key(dataclasses.replace(a, memory_mib=1024))
    assert pool_key(a) != pool_key(dataclasses.replace(a, ram_file=Path("/c/warm-x.ram-2")))
    serials = tuple(dataclasses.replace(d, serial=None) for d in a.drives)
    assert pool_key(a) != pool_key(dataclasses.replace(a, drives=serials))


def test_what_cannot_be_pooled() -> None:
    cfg = instance_cfg("/i/a")
    assert poolable(cfg) is None
    assert poolable(dataclasses.replace(cfg, ram_file=None)) is not None
    cdrom = (*cfg.drives[:2], dataclasses.replace(cfg.drives[2], kind=DriveKind.CDROM))
    assert poolable(dataclasses.replace(cfg, drives=cdrom)) is not None
    base = (Drive("base", Path("/i/b.qcow2"), "qcow2"), *cfg.drives)
    assert poolable(dataclasses.replace(cfg, drives=base)) is not None


def test_a_ready_vm_has_swappable_disks_over_its_own_placeholders(tmp_path: Path) -> None:
    vm = ReadyVM(instance_cfg("/i/a"), tmp_path / "vm-1")
    argv = build_argv(vm.cfg)
    joined = " ".join(argv)
    assert "-drive" not in argv and "-S" in argv
    assert f"filename={tmp_path}/vm-1/ph-app.raw" in joined
    assert "driver=raw,node-name=inst-top,file=inst-ph,cache.no-flush=on,read-only=on" in joined
    assert "virtio-blk-pci,drive=out-top,serial=VMWU-OUT" in argv
    assert "/i/a" not in joined  # nothing of the instance it will run
    assert argv[argv.index("-incoming") + 1] == "defer"
