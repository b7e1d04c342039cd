"""One instance of a work unit, prepared: options checked, files resolved into the node
cache, instance directory with qcow2 overlays, a fresh output disk and the instance ISO,
and the QEMU machine configuration (cold, or resuming the node's saved booted guest).

``vmwu.run.instance.Instance`` starts, follows and collects a prepared instance, for
``vmwu run`` (launch.py) and the wrapper's VM tasks (which add suspend and checkpoints).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from vmwu.cache import NodeCache
from vmwu.errors import BadInput, HostDiskFull, UnitError
from vmwu.guest import protocol
from vmwu.guest.protocol import Label
from vmwu.images import templates
from vmwu.images.iso import IsoEntry, write_iso
from vmwu.run import cloudinit
from vmwu.run.instance_files import cdrom_entries, file_destinations
from vmwu.run.params import param_entries
from vmwu.run.resolve import ResolvedDisks, resolve_files
from vmwu.unit.model import BootMethod, UnitDescriptor
from vmwu.unit.reader import OvaReader
from vmwu.vmm import accel as accel_mod
from vmwu.vmm import warm
from vmwu.vmm.qemu import (
    Drive,
    DriveKind,
    MachineConfig,
    qemu_binary,
    qmp_socket_path,
    release_socket_dir,
)

log = logging.getLogger(__name__)

# Warm start from a saved guest whose RAM is a file (issue 15); VMWU_NO_SHARED_RAM=1 in
# the environment turns it off (the saved guest with its RAM in the state is used).
SHARED_RAM = True

# Files vmwu itself writes into the output directory.
CONSOLE_LOG = "console.log"


@dataclass(frozen=True)
class RunOptions:
    """Launcher options (thesis Appendix D plus vmwu's own)."""

    unit: Path
    args: tuple[str, ...] = ()
    files: tuple[Path, ...] = ()
    files_destination: tuple[str, ...] = ()
    output_directory: Path | None = None  # default: ./<unit name>-output
    output_filename: str | None = None  # keep the output disk image under this name
    base_image: str | None = None
    input_image: Path | None = None
    output_image: Path | None = None
    cdrom_image: Path | None = None
    cdrom_as_hard_disk: bool | None = None
    parameters_filename: str = "param"
    instance_script: Path | None = None
    instance_post_script: Path | None = None
    overwrite: bool = False
    vmm_architecture: str | None = None
    vmm_executable: str | None = None
    vmm_directory: Path | None = None
    vmm_local: bool = False
    vmm_graphics: bool = False
    vmm_memory: int | None = None  # MiB
    vmm_no_virtualisation: bool = False
    accel: str = "auto"
    cpus: int | None = None
    timeout: float | None = None
    boot_timeout: float = 120.0  # the agent must report "booted" within this
    keep: bool = False
    warm: bool = True  # resume the node's saved booted guest instead of booting
    print_cmdline: bool = False
    catalog: Path | None = None
    cache_dir: Path | None = None
    cache_limit: str | None = None  # --cache-limit (default $VMWU_CACHE_LIMIT, unlimited)
    # resume the node's saved guest with its RAM from a file when there is one (issue 15);
    # False for VMs that are checkpointed (the wrapper): a checkpoint is a whole state, and
    # one of a VM whose RAM came from a file loads only into a QEMU set up the same way
    shared_ram: bool = True
    # where the command was typed: the default output directory goes there (the node
    # pool service runs instances for commands typed elsewhere); None: the current one
    workdir: Path | None = None


def default_output_dir(unit_name: str, workdir: Path | None = None) -> Path:
    return (workdir or Path.cwd()) / f"{unit_name}-output"


def check_output_dir(path: Path) -> None:
    """The output directory must be new or empty, and writable."""
    if path.exists():
        if not path.is_dir():
            raise BadInput(f"output directory {path} exists and is not a directory")
        if any(path.iterdir()):
            raise BadInput(
                f"output directory {path} is not empty",
                hint="choose another --output-directory or remove it",
            )
    else:
        try:
            path.mkdir(parents=True)
        except OSError as exc:
            raise BadInput(f"cannot create output directory {path}: {exc.strerror}") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise BadInput(f"output directory {path} is not writable")


def check_inputs(opts: RunOptions) -> None:
    if opts.unit.is_dir():
        raise BadInput(f"work unit {opts.unit} is a directory", hint="give the .ova file")
    if not opts.unit.is_file():
        raise BadInput(f"work unit {opts.unit} does not exist")
    if opts.accel not in accel_mod.ACCELS:
        raise BadInput(
            f"unknown accelerator {opts.accel!r}", hint=f"use one of {', '.join(accel_mod.ACCELS)}"
        )
    for f in opts.files:
        if not f.is_file():
            raise BadInput(f"--files: {f} does not exist or is not a file")
    if opts.files_destination and len(opts.files_destination) != len(opts.files):
        raise BadInput(
            f"--files-destination names {len(opts.files_destination)} destinations "
            f"for {len(opts.files)} files",
            hint="give one destination per file, comma-separated, in the same order",
        )
    file_destinations(opts.files, opts.files_destination)
    for opt_name, path in (
        ("--input-image", opts.input_image),
        ("--output-image", opts.output_image),
        ("--cdrom-image", opts.cdrom_image),
        ("--instance-script", opts.instance_script),
        ("--instance-post-script", opts.instance_post_script),
    ):
        if path is not None and not path.is_file():
            raise BadInput(f"{opt_name}: {path} does not exist")
    if opts.cpus is not None and opts.cpus < 1:
        raise BadInput(f"--cpus must be at least 1, got {opts.cpus}")
    if opts.timeout is not None and opts.timeout <= 0:
        raise BadInput(f"--timeout must be positive, got {opts.timeout}")


def qemu_executable(opts: RunOptions, arch: str) -> tuple[str | None, Path | None]:
    """(executable, firmware dir) from vmm-executable / vmm-directory / vmm-local."""
    exe = opts.vmm_executable
    bios: Path | None = None
    if opts.vmm_directory is not None:
        name = exe or qemu_binary(arch)
        candidate = opts.vmm_directory / name
        if opts.vmm_local or exe is None or not shutil.which(name):
            exe = os.fspath(candidate)
        for sub in ("pc-bios", "share/qemu"):
            if (opts.vmm_directory / sub).is_dir():
                bios = opts.vmm_directory / sub
    return exe, bios


def instance_cmdline(
    desc: UnitDescriptor,
    *,
    cdrom_scsi: bool = False,
    cpus: int = 1,
    base_cmdline: str | None = None,
) -> str:
    """The base's kernel command line (``base_cmdline`` when --base-image swapped the base)
    plus the agent's settings (vmwu.KEY=VALUE)."""
    parts = (desc.base.cmdline if base_cmdline is None else base_cmdline).split()
    if cpus > 1:
        # Direct (PVH) boot finds the other CPUs only through ACPI tables; acpi=off, which
        # the tiny base uses to boot faster, would leave the guest with one CPU.
        parts = [p for p in parts if p != "acpi=off"]
    layout = desc.layout
    for key, value, default in (
        ("app", layout.app_dir, "/app"),
        ("out", layout.output_dir, "/output"),
        ("cdrom", layout.cdrom_dir, "/cdrom"),
    ):
        if value != default:
            if any(c.isspace() for c in value):
                raise BadInput(f"guest directory {value!r} contains white space")
            parts.append(f"vmwu.{key}={value}")
    if cdrom_scsi:
        parts.append(protocol.CDROM_SCSI)  # the tiny init loads the SCSI CD-ROM modules
    return " ".join(parts)


def iso_entries(opts: RunOptions) -> list[IsoEntry]:
    entries = param_entries(list(opts.args), opts.parameters_filename)
    # A resumed guest shares its clock and RNG state with every instance resumed from the
    # same save; the agent sets the clock and stirs this seed into the pool.
    entries.append(IsoEntry(protocol.ISO_TIME, data=f"{int(time.time())}\n".encode()))
    entries.append(IsoEntry(protocol.ISO_SEED, data=f"{secrets.token_hex(64)}\n".encode()))
    entries += cdrom_entries(
        files=opts.files,
        destinations=opts.files_destination,
        instance_script=opts.instance_script,
        instance_post_script=opts.instance_post_script,
        cdrom_image=opts.cdrom_image,
    )
    return entries


def prepare_disks(
    inst: Path, disks: ResolvedDisks, overlays: dict[Path, tuple[Path, str]]
) -> list[Drive]:
    """Overlays over the cached read-only images (each recorded in ``overlays`` with
    its backing image and format); a fresh raw output disk."""
    drives: list[Drive] = []
    if disks.base_disk is not None:
        overlay = inst / "base.qcow2"
        # issue 6: over the unit's guest-packages layer, which itself backs onto the base
        under = disks.base_layer or disks.base_disk
        templates.create_overlay(under.path, overlay, backing_format=under.format)
        # A base without a kernel of its own boots from this disk (its boot loader).
        boot = 0 if disks.kernel is None else None
        drives.append(Drive("base", overlay, "qcow2", serial=Label.BASE, bootindex=boot))
    app = inst / "app.qcow2"
    app_disk = disks.app_disk
    templates.create_overlay(app_disk.path, app, backing_format=app_disk.format)
    overlays[app] = (app_disk.path, app_disk.format)
    drives.append(Drive("app", app, "qcow2", serial=Label.APP))
    # The output disk is raw so that debugfs can read it back without a conversion.
    out = inst / "output.raw"
    templates.raw_copy(disks.output_disk.path, out, src_format=disks.output_disk.format)
    drives.append(Drive("out", out, "raw", serial=Label.OUTPUT))
    return drives


def uefi_flash(disks: ResolvedDisks, inst: Path, cache: NodeCache) -> tuple[Path, ...]:
    """OVMF's code and a fresh copy of its variables when the base boots from a disk that
    only UEFI can boot (vmwu/vmm/firmware.py); nothing for every other base."""
    if disks.kernel is not None or disks.base_disk is None:
        return ()
    from vmwu.vmm import firmware

    disk = disks.base_disk
    if firmware.detect(disk.path, disk.format, cache, disk.path.name) != "uefi":
        return ()
    code, template = firmware.ovmf()
    shutil.copyfile(template, inst / "efivars.fd")
    return (code, inst / "efivars.fd")


def choose_accel(opts: RunOptions, arch: str) -> accel_mod.AccelChoice:
    if opts.vmm_no_virtualisation:
        return accel_mod.AccelChoice("tcg", "TCG: vmm-no-virtualisation is set")
    return accel_mod.choose(opts.accel, guest_arch=arch)


def warm_start(
    cfg: MachineConfig,
    desc: UnitDescriptor,
    cache: NodeCache,
    inst: Path,
    sizes_before: dict[Path, int],
    boot_timeout: float,
    base_under: tuple[Path, str] | None = None,
    *,
    shared: SharedUse | None = None,
    overlays: dict[Path, tuple[Path, str]] | None = None,
) -> tuple[MachineConfig, str]:
    """``cfg`` set up to resume the node's saved booted guest (saving it first if this
    is the first such instance on the node), or unchanged with the reason why not. The
    instance disks are grown to the warm capacity; ``sizes_before`` records their sizes
    so that they can be shrunk back when the guest is done. With ``shared``, the saved
    guest whose RAM is a file is tried first (``shared`` then holds its files in use);
    when it cannot be had, the one with the RAM in its state."""
    sizes = {f.role.value: f.capacity or 0 for f in desc.files if f.is_disk}
    reason = warm.eligible(cfg, sizes)
    if reason is not None:
        return cfg, f"cold boot: {reason}"
    warm_cfg = warm.with_warm_cmdline(cfg)
    key = warm.state_key(
        warm_cfg, cfg.executable or qemu_binary(cfg.arch), base_under[0] if base_under else None
    )
    cache.hold(cache.derived_path(f"{key}.state"))  # the saved guest, until release
    failed_marker = cache.derived_path(f"{key}.failed")
    if failed_marker.exists():
        return cfg, "cold boot: this machine configuration failed to warm-start before"
    try:
        if shared is not None:
            saved = shared_start(warm_cfg, cache, key, inst, boot_timeout, base_under, shared)
            if saved is not None:
                how = "saved the booted guest for this node, then resumed it"
                how = how if shared.saved_now else "resumed"
                drives = warm_drives(cfg, inst, sizes_before, saved.base, overlays)
                resumed = dataclasses.replace(
                    warm_cfg, incoming=saved.state, ram_file=saved.ram, drives=drives
                )
                return resumed, f"warm start: {how} (guest RAM from a file)"
        frozen = None
        if base_under is not None:
            frozen = warm.FrozenBase(
                base_under[0], base_under[1], cache.derived_path(f"{key}.base.qcow2")
            )
            if not frozen.path.exists():  # removed by hand: the state without it is useless
                cache.derived_path(f"{key}.state").unlink(missing_ok=True)
        saved_now = not cache.derived_path(f"{key}.state").exists()
        state = cache.ensure_derived(
            f"{key}.state",
            lambda tmp: warm.save_state(
                warm_cfg, tmp, inst / "warm-template", timeout=boot_timeout, base=frozen
            ),
        )
    except warm.TemplateFailed as exc:
        # A base that does not boot: boot it cold, which reports the failure (console
        # tail, exit 243) like any other. A template that *stopped* (kernel panic, bad
        # init) will stop again with the same kernel, initramfs and command line: remember
        # that. One that was merely slow (a loaded node) may do better next time.
        log.info("warm-start template failed: %s", exc)
        if exc.stopped:
            failed_marker.parent.mkdir(parents=True, exist_ok=True)
            failed_marker.write_text(f"{exc}\n")
        return cfg, f"cold boot: the warm-start template failed ({exc})"
    drives = warm_drives(cfg, inst, sizes_before, frozen.path if frozen else None, overlays)
    how = "saved the booted guest for this node, then resumed it" if saved_now else "resumed"
    resumed = dataclasses.replace(warm_cfg, incoming=state, drives=drives)
    return resumed, f"warm start: {how}"


def warm_drives(
    cfg: MachineConfig,
    inst: Path,
    sizes_before: dict[Path, int],
    frozen: Path | None,
    overlays: dict[Path, tuple[Path, str]] | None = None,
) -> tuple[Drive, ...]:
    """The instance's drives for a warm start: disks grown to the saved capacity, and the
    root disk as the saved guest left it (an overlay over ``frozen``). A fresh overlay
    of ``overlays`` (not used yet) is made anew at that capacity instead of grown."""
    overlays = overlays if overlays is not None else {}
    drives = []
    for d in cfg.drives:
        if d.id == warm.BASE and frozen is not None:
            # the root disk as the saved guest left it (its own capacity), written to a
            # separate overlay: a cold-boot fallback still has the one over the base
            root = inst / "base-warm.qcow2"
            templates.create_overlay(frozen, root, backing_format="qcow2")
            drives.append(dataclasses.replace(d, path=root))
            continue
        if d.path not in sizes_before:  # a second try (fallback) finds them grown
            fresh = overlays.pop(d.path, None)
            if fresh is not None:
                backing, fmt = fresh
                sizes_before[d.path] = templates.virtual_size(backing, fmt)
                d.path.unlink()
                templates.create_overlay(backing, d.path, backing_format=fmt, size=warm.CAPACITY)
            else:
                sizes_before[d.path] = warm.virtual_size(d.path)
                warm.resize(d.path, warm.CAPACITY)
        drives.append(d)
    return tuple(drives)


@dataclass
class SharedUse:
    """The shared-RAM saved guest an instance uses: its key, whether this instance saved
    it, and the in-use locks held on its files until the instance is released."""

    holds: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    key: str | None = None
    saved_now: bool = False
    save: warm.SharedSave | None = None


def shared_ram_off(cache: NodeCache, key: str) -> Path:
    return cache.derived_path(f"{key}.shared-off")


def shared_start(
    warm_cfg: MachineConfig,
    cache: NodeCache,
    key: str,
    inst: Path,
    boot_timeout: float,
    base_under: tuple[Path, str] | None,
    use: SharedUse,
) -> warm.SharedSave | None:
    """The node's shared-RAM saved guest for ``key`` (saved now if there is none), held
    in use; None (with the reason in the debug log) when it cannot be had."""
    if not SHARED_RAM or os.environ.get("VMWU_NO_SHARED_RAM"):
        return None
    off = shared_ram_off(cache, key)
    if off.exists():
        log.debug("warm start without guest RAM from a file: %s", off.read_text().strip())
        return None
    pointer = cache.derived_path(f"{key}.shared")
    use.key = key
    use.saved_now = not pointer.exists()
    try:
        cache.ensure_derived(
            f"{key}.shared",
            lambda tmp: warm.save_shared(
                warm_cfg,
                tmp,
                cache.derived_path(""),
                key,
                inst / "warm-template-shm",
                timeout=boot_timeout,
                base_under=base_under,
            ),
        )
        save = warm.read_shared(pointer, key)
        for path in save.files():
            use.holds.enter_context(cache.in_use(path))
        warm.read_shared(pointer, key)  # still there now that it is held
    except (warm.TemplateFailed, HostDiskFull):
        raise
    except Exception as exc:  # noqa: BLE001 - any failure: the full state still works
        use.holds.close()
        reason = f"the shared-RAM save failed ({str(exc).splitlines()[0] if str(exc) else exc!r})"
        log.debug("warm start without guest RAM from a file: %s", reason)
        warm.drop_shared(pointer, key)
        off.parent.mkdir(parents=True, exist_ok=True)
        off.write_text(reason + "\n")
        return None
    use.save = save
    return save


@dataclass
class Prepared:
    """An instance ready to boot. ``release()`` removes its directory (unless kept)."""

    opts: RunOptions
    desc: UnitDescriptor
    cache: NodeCache
    inst: Path
    out_dir: Path
    cfg: MachineConfig  # cold boot
    accel: accel_mod.AccelChoice
    grown: dict[Path, int] = field(default_factory=dict)  # disks grown for a warm start
    # what the root disk's overlay is over (base disk or layer) and its format, if any
    base_under: tuple[Path, str] | None = None
    shared: SharedUse = field(default_factory=SharedUse)
    # overlays made and not used yet: path -> (backing image, its format)
    overlays: dict[Path, tuple[Path, str]] = field(default_factory=dict)

    def warm_config(self, *, shared_ram: bool = True) -> tuple[MachineConfig, str]:
        """The configuration to boot with (warm unless disabled or impossible) and how;
        ``shared_ram``: try the saved guest whose RAM is a file first."""
        if not self.opts.warm:
            return self.cfg, "cold boot: --no-warm"
        return warm_start(
            self.cfg,
            self.desc,
            self.cache,
            self.inst,
            self.grown,
            self.opts.boot_timeout,
            self.base_under,
            shared=self.shared if shared_ram and self.opts.shared_ram else None,
            overlays=self.overlays,
        )

    def shared_ram_failed(self, reason: str) -> None:
        """The shared-RAM saved guest did not load: forget it (and, if this instance had
        just saved it, stop trying it on this node: it would fail again)."""
        use = self.shared
        use.holds.close()
        if use.key is None:
            return
        log.debug("warm start without guest RAM from a file: %s", reason)
        warm.drop_shared(self.cache.derived_path(f"{use.key}.shared"), use.key)
        if use.saved_now:
            off = shared_ram_off(self.cache, use.key)
            off.write_text(f"a fresh shared-RAM save did not load ({reason})\n")

    def shrink_disks(self) -> None:
        """Give warm-started disks their own sizes back (after QEMU has exited) where they
        outlive the instance: the output disk (read back, maybe kept as output-filename),
        and the application disk when --overwrite writes it back into the unit. Shrinking
        a qcow2 overlay costs ~0.5 s, so the others are left as they are."""
        keep = {self.inst / "output.raw"}
        if self.opts.overwrite:
            keep.add(self.inst / "app.qcow2")
        for path, size in self.grown.items():
            if path in keep:
                warm.resize(path, size)
        self.grown.clear()

    def release(self) -> None:
        try:
            release_socket_dir(self.inst)
            if self.opts.keep:
                log.info("instance directory kept: %s", self.inst)
            else:
                shutil.rmtree(self.inst, ignore_errors=True)
        finally:
            self.shared.holds.close()
            self.cache.release_holds()  # the cache entries it used may now be evicted


def host_memory_mib() -> int | None:
    """The node's RAM (MemTotal), or None where /proc/meminfo cannot say."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class UnitTooLarge(UnitError):
    """A unit asks for more guest memory than this node has (``memory_mib``)."""

    def __init__(self, memory_mib: int, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.memory_mib = memory_mib


def check_unit_memory(memory_mib: int, unit: Path) -> None:
    """Refuse a unit that asks for more guest memory than the node has: QEMU would map it
    lazily, and a guest from elsewhere could then fill it and drive the node into swap or
    the OOM killer. The user's own ``--memory`` is trusted as given."""
    total = host_memory_mib()
    if total is not None and memory_mib > total:
        raise UnitTooLarge(
            memory_mib,
            f"{unit} asks for {memory_mib} MiB of guest memory, more than this node's {total} MiB",
            hint="run it on a node with more memory, or give the guest less with --vmm-memory MiB",
        )


def prepare(opts: RunOptions, *, check_output: bool = True) -> Prepared:
    """Check ``opts``, resolve the unit's files and prepare an instance directory."""
    check_inputs(opts)
    cache = NodeCache(opts.cache_dir, limit=opts.cache_limit)
    try:
        return _prepare(opts, cache, check_output=check_output)
    except BaseException:
        cache.release_holds()
        raise


def _prepare(opts: RunOptions, cache: NodeCache, *, check_output: bool) -> Prepared:
    with OvaReader(opts.unit) as reader:
        desc = reader.descriptor
        if opts.vmm_memory is None:
            check_unit_memory(desc.memory_mib, opts.unit)
        out_dir = (opts.output_directory or default_output_dir(desc.name, opts.workdir)).absolute()
        if check_output:
            check_output_dir(out_dir)
        disks = resolve_files(
            desc,
            reader,
            cache,
            opts.catalog,
            base_override=opts.base_image,
            input_image=opts.input_image,
            output_image=opts.output_image,
        )
    arch = opts.vmm_architecture or desc.base.architecture
    choice = choose_accel(opts, arch)
    inst = cache.new_instance_dir(desc.name)
    overlays: dict[Path, tuple[Path, str]] = {}
    try:
        drives = prepare_disks(inst, disks, overlays)
        iso = inst / "instance.iso"
        write_iso(iso, iso_entries(opts))
        as_disk = opts.cdrom_as_hard_disk
        if as_disk is None:
            as_disk = desc.base.cdrom_as_hard_disk
        kind = DriveKind.DISK if as_disk else DriveKind.CDROM
        drives.append(Drive("inst", iso, "raw", read_only=True, kind=kind, serial=Label.INSTANCE))
        if cloudinit.needs_seed(desc.base):  # issue 6: a base without the vmwu agent
            seed = cloudinit.write_seed(inst / "seed.iso")
            drives.append(Drive("seed", seed, "raw", read_only=True, serial=Label.SEED))
        pflash = uefi_flash(disks, inst, cache)  # issue 6: a GPT disk with an EFI partition
        exe, bios = qemu_executable(opts, arch)
        direct = desc.base.boot_method == BootMethod.DIRECT_KERNEL
        cpus = opts.cpus or desc.cpus
        cmdline = ""
        if direct:
            cmdline = instance_cmdline(
                desc, cdrom_scsi=not as_disk, cpus=cpus, base_cmdline=disks.cmdline
            )
        cfg = MachineConfig(
            arch=arch,
            accel=choice.accel,
            memory_mib=opts.vmm_memory or desc.memory_mib,
            cpus=cpus,
            kernel=disks.kernel,
            initrd=disks.initrd,
            cmdline=cmdline,
            drives=tuple(drives),
            console_log=inst / CONSOLE_LOG,
            events_log=inst / "events.jsonl",
            qmp_socket=qmp_socket_path(inst),
            graphics=opts.vmm_graphics,
            executable=exe,
            bios_dir=bios,
            pflash=pflash,
        )
    except BaseException:
        shutil.rmtree(inst, ignore_errors=True)
        raise
    under = disks.base_layer or disks.base_disk
    base_under = (under.path, under.format) if under is not None else None
    return Prepared(
        opts, desc, cache, inst, out_dir, cfg, choice, base_under=base_under, overlays=overlays
    )
