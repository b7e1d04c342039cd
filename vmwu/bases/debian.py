"""The "debian" base: a Debian system from packages, with the vmwu agent, booted directly.

``vmwu base build debian [--release R] [--packages a,b] [--mirror URL]``:

1. ``mmdebstrap`` (user namespaces, else fakechroot; vmwu.bases.mmdebstrap) writes a
   ``minbase`` root file system as a tarball: Debian's cloud kernel, ``systemd-sysv``,
   ``busybox-static`` (for the initramfs) and the requested packages;
2. the tarball is unpacked into a staging tree (vmwu.images.rootfs), and the vmwu side
   is added: the agent and its helpers in ``/usr/local/bin``, ``vmwu.service`` and
   ``vmwu.target`` (the default target, so the agent is the only service started) and
   masks for systemd's generators;
3. ``mkfs.ext4 -d`` writes the root disk (no journal, no root, no loop mount; owners,
   modes and device nodes fixed up with ``debugfs``), stored as qcow2;
4. a small initramfs (busybox from the tree, the tree's own virtio modules, an ``/init``
   that mounts ``root=`` and ``switch_root``s into systemd) is written with vmwu's cpio
   writer, and the tree's kernel is copied next to it;
5. the three files are registered as one base, boot method ``direct-kernel`` with a
   ``base-disk``: QEMU loads the kernel itself (no boot loader, no menu) and the root
   disk is a per-instance qcow2 overlay. ``debian.json`` and ``dpkg-status`` beside them
   let ``vmwu pack`` add ``guest-packages`` later (vmwu.pack.layer).

docs/bases.md has the why of each choice and the measured times.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid as uuid_mod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vmwu import guest, paths
from vmwu.arch import canonical_arch
from vmwu.bases import foreign, mmdebstrap
from vmwu.bases.catalog import BaseImage, Catalog
from vmwu.bases.register import direct_kernel_base
from vmwu.bases.tiny import DIRS, PROFILES, ArchProfile, applet_links, module_order
from vmwu.errors import BadInput
from vmwu.guest.protocol import AGENT_VERSION, Label
from vmwu.images import cpio, ext4, ext4_read, qemu_img, rootfs
from vmwu.unit.model import FileRole

Step = Callable[[str], None]

DEFAULT_RELEASE = "bookworm"
KERNEL_PACKAGES = {"amd64": "linux-image-cloud-amd64", "arm64": "linux-image-cloud-arm64"}
BASE_PACKAGES = ("systemd-sysv", "busybox-static", "kmod")
# Loaded by the initramfs, in dependency order (the rest: vmwu-start in the guest).
ROOT_MODULES = ("virtio_pci", "virtio_blk")
MiB = 1024**2
GiB = 1024**3


def kernel_package(arch: str) -> str:
    try:
        return KERNEL_PACKAGES[arch]
    except KeyError:
        raise BadInput(
            f"no Debian kernel known for architecture {arch!r}",
            hint=f"supported: {', '.join(KERNEL_PACKAGES)}",
        ) from None


def guest_files(console: str = "ttyS0") -> list[tuple[str, bytes, int]]:
    """(path, contents, mode) of everything vmwu adds to a Debian tree; ``console`` is the
    serial console's device (the agent's messages go there)."""
    g = guest.read
    service = g(guest.DEBIAN_SERVICE).replace(b"/dev/ttyS0", f"/dev/{console}".encode())
    return [
        ("/usr/local/bin/vmwu-agent", g(guest.AGENT), 0o755),
        ("/usr/local/bin/vmwu-progress", g(guest.PROGRESS), 0o755),
        ("/usr/local/bin/vmwu-mount", g(guest.MOUNT), 0o755),
        ("/usr/local/bin/vmwu-findlabel", g(guest.FINDLABEL), 0o755),
        ("/usr/local/lib/vmwu/vmwu-start", g(guest.DEBIAN_START), 0o755),
        ("/etc/systemd/system/vmwu.service", service, 0o644),
        ("/etc/systemd/system/vmwu.target", g(guest.DEBIAN_TARGET), 0o644),
        ("/etc/vmwu/agent-version", f"{AGENT_VERSION}\n".encode(), 0o644),
        ("/etc/hostname", b"vmwu\n", 0o644),
        ("/etc/fstab", b"# the root file system is mounted by the initramfs (root= rw)\n", 0o644),
    ]


def install_guest_side(staged: rootfs.Staged, console: str = "ttyS0") -> None:
    """The vmwu agent, its units, and a boot that starts nothing else."""
    for path, data, mode in guest_files(console):
        staged.add_file(path, data, mode=mode)
    staged.add_symlink("/etc/systemd/system/default.target", "vmwu.target")
    # Generators run at every boot and cost ~2 s under emulation; nothing here needs
    # them (no fstab entries, no gettys, no GPT auto-mounts). A /dev/null link masks one.
    for gen_dir in ("usr/lib/systemd/system-generators", "lib/systemd/system-generators"):
        d = staged.root / gen_dir
        if d.is_dir() and not d.is_symlink():
            for gen in sorted(d.iterdir()):
                staged.add_symlink(f"/etc/systemd/system-generators/{gen.name}", "/dev/null")


def find_kernel(root: Path) -> tuple[Path, str]:
    """The tree's kernel image and its version."""
    found = sorted((root / "boot").glob("vmlinuz-*")) or sorted((root / "boot").glob("vmlinux-*"))
    if not found:
        raise BadInput("the Debian tree holds no /boot/vmlinuz-*: was a kernel installed?")
    kernel = found[-1]
    return kernel, kernel.name.split("-", 1)[1]


def build_initramfs(root: Path, version: str, dest: Path) -> None:
    """busybox + the root disk's modules + /init (guest/debian/initramfs-init)."""
    busybox = next(
        (p for p in (root / "usr/bin/busybox", root / "bin/busybox") if p.is_file()), None
    )
    if busybox is None:
        raise BadInput("the Debian tree holds no busybox (busybox-static was not installed)")
    moddir = root / "usr/lib/modules" / version
    if not moddir.is_dir():
        moddir = root / "lib/modules" / version
    modules = module_order(moddir, ROOT_MODULES)
    entries = [cpio.directory(d) for d in (*DIRS, "newroot")]
    entries += [
        cpio.chardev("dev/console", 5, 1),
        cpio.file("bin/busybox", busybox.read_bytes(), 0o755),
        cpio.file("init", guest.read(guest.DEBIAN_INITRAMFS_INIT), 0o755),
    ]
    taken = {e.path for e in entries}
    entries += [cpio.symlink(p, "/bin/busybox") for p in applet_links(busybox) if p not in taken]
    for ko in modules:
        entries.append(cpio.file(f"lib/modules/{ko.stem}.ko", ko.read_bytes()))
    order = "".join(ko.stem + "\n" for ko in modules)
    entries.append(cpio.file("etc/vmwu/modules", order.encode()))
    cpio.write_initramfs(dest, entries)


def disk_size(tree_bytes: int) -> int:
    """Capacity of the root disk: the tree, ext4's overhead, and room to work (sparse)."""
    size = max(2 * GiB, tree_bytes * 3 // 2 + GiB)
    return (size + 64 * MiB - 1) // (64 * MiB) * (64 * MiB)


@dataclass(frozen=True)
class _Plan:
    """What one ``vmwu base build debian`` makes, settled before anything is written."""

    name: str
    release: str
    arch: str  # vmwu's name: x86_64, aarch64
    profile: ArchProfile
    extra: tuple[str, ...]  # the user's --packages
    bootstrap: mmdebstrap.Bootstrap
    mirror: str | None

    @property
    def deb_arch(self) -> str:
        return self.profile.deb_arch

    @property
    def foreign(self) -> bool:
        """Another architecture than the host's: packages are installed in an emulated
        guest (the second stage), not by mmdebstrap."""
        return self.bootstrap.foreign

    @property
    def console(self) -> str:
        return self.profile.cmdline.split()[0].removeprefix("console=")


def _plan(name: str, release: str, packages: Sequence[str], arch: str, mirror: str | None) -> _Plan:
    arch = canonical_arch(arch)
    if arch not in PROFILES:
        raise BadInput(
            f"the Debian base cannot be built for {arch!r}", hint="use --arch amd64 or arm64"
        )
    prof = PROFILES[arch]
    extra = tuple(p.strip() for p in packages if p.strip())
    mmdebstrap.check_names(release, extra)
    wanted = (kernel_package(prof.deb_arch), *BASE_PACKAGES, *extra)
    spec = mmdebstrap.Bootstrap(
        release=release,
        arch=prof.deb_arch,
        packages=wanted,
        mirror=mirror,
        foreign=prof.deb_arch != mmdebstrap.host_arch(),
    )
    return _Plan(name, release, arch, prof, extra, spec, mirror)


def build_debian(
    catalog: Catalog,
    *,
    name: str = "debian",
    release: str = DEFAULT_RELEASE,
    packages: Sequence[str] = (),
    arch: str = "x86_64",
    mirror: str | None = None,
    replace: bool = False,
    step: Step = lambda msg: None,
) -> BaseImage:
    if not replace and catalog.exists(name):
        raise BadInput(f"base '{name}' already exists in {catalog.path}", hint="use --replace")
    plan = _plan(name, release, packages, arch, mirror)
    base_dir = paths.bases_dir() / name
    base_dir.parent.mkdir(parents=True, exist_ok=True)
    # the second stage's console, beside the base (not in the build's temp dir, which a
    # failure removes): what dpkg said in the guest
    console_log = base_dir.parent / f"{name}.second-stage.log"
    with tempfile.TemporaryDirectory(prefix=f".{name}-build-", dir=base_dir.parent) as tmp_str:
        tmp = Path(tmp_str)
        staged, kernel, version = _stage_tree(plan, tmp, step)
        out = tmp / "out"
        out.mkdir()
        step("writing the initramfs")
        build_initramfs(staged.root, version, out / "initrd.img")
        shutil.copyfile(kernel, out / "kernel")
        root = _write_root_disk(plan, staged, tmp, out, console_log, step)
        _write_package_info(plan, staged, out, root, version)
        if base_dir.exists():
            shutil.rmtree(base_dir)
        out.rename(base_dir)
    if plan.foreign:
        console_log.rename(base_dir / "second-stage-console.log")
    step("registering the base")
    return catalog.add(_base(plan, base_dir, version, root.cmdline), replace=replace)


def _stage_tree(plan: _Plan, tmp: Path, step: Step) -> tuple[rootfs.Staged, Path, str]:
    """Bootstrap the tree, unpack it under ``tmp`` and add vmwu's side; the staged tree,
    its kernel and the kernel's version."""
    how = " (packages unpacked only: installed in the guest next)" if plan.foreign else ""
    step(f"bootstrapping Debian {plan.release} ({plan.deb_arch}) with mmdebstrap{how}")
    mmdebstrap.bootstrap(plan.bootstrap, tmp / "rootfs.tar")
    step("unpacking the root file system")
    staged = rootfs.extract(tmp / "rootfs.tar", tmp / "root")
    (tmp / "rootfs.tar").unlink()
    kernel, version = find_kernel(staged.root)
    install_guest_side(staged, plan.console)
    if plan.foreign:
        foreign.add_script(staged)
    return staged, kernel, version


@dataclass(frozen=True)
class _RootDisk:
    cmdline: str  # the kernel command line that mounts it
    uuid: str  # its file system's UUID
    dpkg_status: bytes  # what is installed on it


def _write_root_disk(
    plan: _Plan, staged: rootfs.Staged, tmp: Path, out: Path, console_log: Path, step: Step
) -> _RootDisk:
    """``out/root.qcow2`` from the staged tree (for a foreign architecture, after the
    second stage has installed the packages in an emulated guest)."""
    step("writing the root disk (mkfs.ext4 -d)")
    fs_uuid = str(uuid_mod.uuid4())
    cmdline = f"{plan.profile.cmdline} root=UUID={fs_uuid} rw"
    raw = tmp / "root.raw"
    size = disk_size(rootfs.tree_size(staged.root))
    rootfs.make_ext4(raw, staged, size=size, label=Label.ROOT, uuid=fs_uuid)
    if plan.foreign:
        step(f"installing the packages in the {plan.deb_arch} guest (emulated: minutes)")
        foreign.run(
            raw,
            arch=plan.arch,
            kernel=out / "kernel",
            initrd=out / "initrd.img",
            cmdline=cmdline,
            work=tmp,
            console=console_log,
        )
        dpkg_status = ext4_read.read_file(raw, "/var/lib/dpkg/status") or b""
        # the .deb files the guest installed and deleted still fill their blocks
        ext4.compact(raw, tmp / "compact.raw")
        (tmp / "compact.raw").rename(raw)
    else:
        dpkg_status = (staged.root / "var/lib/dpkg/status").read_bytes()
    qemu_img.convert(raw, out / "root.qcow2", src_format="raw")
    raw.unlink()
    return _RootDisk(cmdline, fs_uuid, dpkg_status)


def _write_package_info(
    plan: _Plan, staged: rootfs.Staged, out: Path, root: _RootDisk, version: str
) -> None:
    """What ``guest-packages`` needs to resolve packages against this base
    (vmwu.pack.layer): what is installed, where it came from, the keys that sign it."""
    (out / "dpkg-status").write_bytes(root.dpkg_status)
    shutil.copyfile(staged.root / "etc/apt/sources.list", out / "sources.list")
    shutil.copytree(staged.root / "etc/apt/trusted.gpg.d", out / "trusted.gpg.d")
    (out / "autorun.sh").write_bytes(guest.read(guest.DEFAULT_TEMPLATE))
    info = {
        "distribution": "debian",
        "release": plan.release,
        "architecture": plan.deb_arch,
        "mirror": plan.mirror or mmdebstrap.DEFAULT_MIRROR,
        "packages": list(plan.bootstrap.packages),
        "kernel": version,
        "root_uuid": root.uuid,
    }
    (out / "debian.json").write_text(json.dumps(info, indent=1) + "\n")


def _base(plan: _Plan, base_dir: Path, version: str, cmdline: str) -> BaseImage:
    """The catalog entry of the three files in ``base_dir``."""
    shown = f", with {', '.join(plan.extra)}" if plan.extra else ""
    what = f"Debian {plan.release} {plan.deb_arch} (systemd, vmwu agent)"
    return direct_kernel_base(
        name=plan.name,
        description=f"{what} on kernel {version}{shown}",
        base_dir=base_dir,
        files=[
            (FileRole.KERNEL, "kernel", plan.profile.kernel_format),
            (FileRole.INITRD, "initrd.img", "cpio"),
            (FileRole.BASE_DISK, "root.qcow2", "qcow2"),
        ],
        architecture=plan.arch,
        kernel_version=version,
        cmdline=cmdline,
    )
