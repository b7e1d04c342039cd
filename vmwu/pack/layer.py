"""``guest-packages``: distribution packages added to one unit, without rebuilding its base.

Design (docs/bases.md): the packages are installed at pack time, by the guest itself,
into a **layer**: a qcow2 overlay over the base's root disk that travels in the unit
(role ``base-layer``). Every instance's base overlay is then created over the layer
instead of over the base disk. So a unit with ``guest-packages = ["g++"]`` ships only
what g++ adds (tens of MB, compressed), the base stays shared and content-addressed, and
the packages are installed exactly as Debian installs them (dpkg in the real guest, with
maintainer scripts, alternatives and triggers), not unpacked by hand.

1. **Resolve and download on the host**: ``apt-get`` with a private state directory, the
   base's own ``sources.list`` and archive keyring, and the base's ``dpkg`` status as the
   installed set, so only what the base lacks is fetched (``--download-only``).
2. **Install in the guest**: a throw-away VM boots the base (TCG is fine) with an
   application disk holding the ``.deb`` files and a script running ``dpkg -i`` on them;
   the vmwu agent runs it and reports its exit code. Its base overlay *is* the layer.
3. **Store**: the overlay is compressed (``qemu-img convert -c -B``) and its backing file
   renamed to the base disk's sha256, which is the name of that disk's blob in every node
   cache (so the layer finds its base next to it). Layers are cached per node by base and
   package list (``derived/layer-*.qcow2``): packing the same set again costs nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from vmwu import tools
from vmwu.bases.catalog import BaseImage
from vmwu.bases.mmdebstrap import check_names
from vmwu.cache import NodeCache
from vmwu.errors import BadInput, HostFailure, ToolFailed
from vmwu.guest import protocol
from vmwu.guest.protocol import Label
from vmwu.images import ext4, ext4_read, qemu_img
from vmwu.images.iso import write_iso
from vmwu.run.params import param_entries
from vmwu.unit.model import FileRole
from vmwu.vmm.guestrun import GuestRun
from vmwu.vmm.qemu import Drive, MachineConfig, qmp_socket_path, release_socket_dir

log = logging.getLogger(__name__)

Step = Callable[[str], None]
LAYER_VERSION = 1
INSTALL_TIMEOUT = 3600.0

INSTALL_SH = """#!/bin/sh
# vmwu guest-packages: install the unit's packages into this (throw-away) guest. The
# base overlay of this VM becomes the unit's base-layer (vmwu/layer.py).
export DEBIAN_FRONTEND=noninteractive
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
cd /app/debs || exit 1
dpkg --force-confdef --force-confold -i ./*.deb || exit $?
rm -rf /var/cache/apt/archives/*.deb /var/log/dpkg.log /tmp/* 2> /dev/null
sync
echo "vmwu: installed: $(ls | sed 's/_.*//' | tr '\\n' ' ')"
"""


def base_info(base: BaseImage) -> tuple[Path, dict[str, object]]:
    """The directory of a base built by ``vmwu base build debian`` and its debian.json."""
    base_dir = Path(base.location)
    info_file = base_dir / "debian.json"
    if base.file(FileRole.BASE_DISK) is None or not info_file.is_file():
        raise BadInput(
            f"guest-packages needs a base built by `vmwu base build debian`; "
            f"base '{base.name}' has no package manager vmwu can drive",
            hint="build one (`vmwu base build debian`), or put the packages in the base "
            "with `vmwu base build debian --packages …`",
        )
    data = json.loads(info_file.read_text())
    if not isinstance(data, dict):
        raise BadInput(f"{info_file} is not a vmwu base description")
    for needed in ("dpkg-status", "sources.list", "trusted.gpg.d"):
        if not (base_dir / needed).exists():
            raise BadInput(
                f"base '{base.name}' was built without {needed}",
                hint=f"rebuild it: vmwu base build debian --name {base.name} --replace",
            )
    return base_dir, data


def layer_key(base: BaseImage, packages: Sequence[str]) -> str:
    text = json.dumps([LAYER_VERSION, base.sha256, sorted(set(packages))])
    return "layer-" + hashlib.sha256(text.encode()).hexdigest()[:32] + ".qcow2"


def _apt_argv(root: Path, base_dir: Path, arch: str) -> list[str]:
    return [
        "apt-get",
        "-q",
        "-o",
        f"Dir={root}",
        "-o",
        f"Dir::State::status={root / 'status'}",
        "-o",
        f"Dir::Etc::SourceList={root / 'sources.list'}",
        "-o",
        "Dir::Etc::SourceParts=-",
        "-o",
        "Dir::Etc::Parts=-",
        "-o",
        f"Dir::Etc::TrustedParts={base_dir / 'trusted.gpg.d'}",
        "-o",
        "Dir::Etc::Trusted=-",
        "-o",
        "Dir::Etc::Preferences=-",
        "-o",
        "Dir::Etc::PreferencesParts=-",
        "-o",
        f"APT::Architecture={arch}",
        "-o",
        f"APT::Architectures={arch}",
        "-o",
        "APT::Sandbox::User=root",
        "-o",
        "Debug::NoLocking=1",
        "-o",
        "Acquire::Languages=none",
        "-o",
        "APT::Install-Recommends=false",
    ]


def download(
    base: BaseImage, packages: Sequence[str], dest: Path, step: Step = lambda m: None
) -> list[Path]:
    """The .deb files ``packages`` need on top of ``base`` (none: already installed)."""
    base_dir, info = base_info(base)
    check_names(str(info.get("release", "stable")), packages)
    arch = str(info.get("architecture", "amd64"))
    root = dest / "apt"
    for sub in ("var/lib/apt/lists/partial", "var/cache/apt/archives/partial", "etc/apt"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(base_dir / "dpkg-status", root / "status")
    shutil.copyfile(base_dir / "sources.list", root / "sources.list")
    argv = _apt_argv(root, base_dir, arch)
    release = str(info.get("release", "?"))
    step(f"resolving {', '.join(packages)} on Debian {release}")
    try:
        # apt-get starts its download methods as children: a tree (vmwu.guard)
        tools.run([*argv, "update"], timeout=600, tree=True)
        tools.run([*argv, "install", "--download-only", "-y", *packages], timeout=1800, tree=True)
    except ToolFailed as exc:
        raise _apt_error(exc.stderr, release, arch) from None
    return sorted((root / "var/cache/apt/archives").glob("*.deb"))


def _apt_error(stderr: str, release: str, arch: str) -> Exception:
    missing = re.findall(r"Unable to locate package (\S+)", stderr)
    missing += re.findall(r"Package '?([^' ]+)'? has no installation candidate", stderr)
    if missing:
        return BadInput(
            f"guest-packages: Debian {release} ({arch}) has no package "
            + ", ".join(dict.fromkeys(missing)),
            hint="check the name with `apt-cache policy NAME` (or on packages.debian.org)",
        )
    first = next((ln[3:] for ln in stderr.splitlines() if ln.startswith("E: ")), stderr.strip())
    return HostFailure(f"guest-packages: apt-get failed: {first}")


def _install_vm(
    base: BaseImage, debs: list[Path], work: Path, *, memory_mib: int, timeout: float
) -> Path:
    """Boot the base with the .debs, run dpkg -i; returns the base overlay it wrote."""
    kernel, initrd, disk = (
        base.file(r) for r in (FileRole.KERNEL, FileRole.INITRD, FileRole.BASE_DISK)
    )
    if kernel is None or disk is None:
        raise BadInput(f"base '{base.name}' has no kernel and root disk to install into")
    stage = work / "app"
    (stage / "debs").mkdir(parents=True)
    for deb in debs:
        shutil.copyfile(deb, stage / "debs" / deb.name)
    (stage / protocol.SCRIPT_BIN).mkdir(parents=True)
    script = stage / protocol.SCRIPT_BIN / "autorun.sh"
    script.write_text(INSTALL_SH)
    script.chmod(0o755)
    app = work / "app.raw"
    ext4.make_image(app, ext4.image_size_for(stage, 64 * 1024**2), label=Label.APP, src=stage)
    out = work / "out.raw"
    ext4.make_image(out, 16 * 1024**2, label=Label.OUTPUT)
    iso = work / "inst.iso"
    write_iso(iso, param_entries([]))
    overlay = work / "base.qcow2"
    qemu_img.create_overlay(disk.path, overlay, backing_format=disk.format)
    cfg = MachineConfig(
        arch=base.architecture,
        accel=_accel(base.architecture),
        memory_mib=memory_mib,
        kernel=kernel.path,
        initrd=initrd.path if initrd else None,
        cmdline=base.cmdline,
        drives=(
            Drive("base", overlay, "qcow2", serial=Label.BASE),
            Drive("app", app, "raw", serial=Label.APP),
            Drive("out", out, "raw", serial=Label.OUTPUT),
            Drive("inst", iso, "raw", read_only=True, serial=Label.INSTANCE),
        ),
        console_log=work / "console.log",
        events_log=work / "events.jsonl",
        qmp_socket=qmp_socket_path(work),
    )
    guest = GuestRun(cfg, work, timeout=timeout, boot_timeout=300.0)
    try:
        guest.launch()
        guest.run()
    finally:
        guest.stop()
        release_socket_dir(work)
    error, state = guest.error, guest.state
    if error is not None or state.exit_code != 0:
        log_text = (ext4_read.read_file(out, "/stderr.log") or b"") + (
            ext4_read.read_file(out, "/stdout.log") or b""
        )
        tail = " / ".join(log_text.decode(errors="replace").strip().splitlines()[-3:])
        console = " / ".join(
            (work / "console.log").read_text(errors="replace").strip().splitlines()[-3:]
        )
        why = str(error) if error is not None else f"dpkg exited with {state.exit_code}"
        raise HostFailure(
            f"guest-packages: installing in the guest failed ({why}): {tail or console}"
        )
    return overlay


def _accel(arch: str) -> str:
    from vmwu.vmm import accel

    return accel.choose("auto", guest_arch=arch).accel


def build_layer(
    base: BaseImage,
    packages: Sequence[str],
    *,
    cache: NodeCache | None = None,
    memory_mib: int = 1024,
    timeout: float = INSTALL_TIMEOUT,
    step: Step = lambda m: None,
) -> Path | None:
    """The layer for ``packages`` over ``base`` (from the node cache when it has it), or
    None when the base already has them all. The layer is held in use in ``cache``
    until its ``release_holds()``."""
    wanted = sorted({p.strip() for p in packages if p.strip()})
    if not wanted:
        return None
    base_info(base)
    cache = cache or NodeCache()
    key = layer_key(base, wanted)
    cache.hold(cache.derived_path(key))  # until the caller's release_holds()
    empty_marker = cache.derived_path(key + ".empty")
    if empty_marker.exists():
        return None
    if cache.derived_path(key).exists():
        step(f"reusing the guest-packages layer for {', '.join(wanted)}")
        return cache.derived_path(key)
    disk = base.file(FileRole.BASE_DISK)
    assert disk is not None
    cache.root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vmwu-layer-", dir=cache.root) as tmp_str:
        work = Path(tmp_str)
        debs = download(base, wanted, work, step)
        if not debs:
            empty_marker.parent.mkdir(parents=True, exist_ok=True)
            empty_marker.write_text("the base already has these packages\n")
            return None
        step(f"installing {len(debs)} packages in the guest (dpkg -i under QEMU)")
        t0 = time.monotonic()
        overlay = _install_vm(base, debs, work, memory_mib=memory_mib, timeout=timeout)
        log.info("guest-packages installed in %.1f s", time.monotonic() - t0)
        step("compressing the layer")

        def fill(tmp: Path) -> None:
            convert = ["qemu-img", "convert", "-q", "-c", "-f", "qcow2", "-O", "qcow2"]
            backing = ["-B", str(disk.path), "-F", disk.format]
            tools.run([*convert, *backing, overlay, tmp])
            # The blob of the base disk in a node cache is named by its sha256: a relative
            # backing file name finds it next to the layer's own blob.
            rebase = ["qemu-img", "rebase", "-q", "-u", "-f", "qcow2"]
            tools.run([*rebase, "-b", disk.sha256, "-F", disk.format, tmp])

        return cache.ensure_derived(key, fill)
