"""One instance of a work unit: cache, overlays, instance ISO, boot, watch, collect.

``run_unit(options)`` returns a :class:`RunResult` whatever happens inside the guest; it
raises only for bad input found before anything started. Outputs, ``console.log`` and
``status.json`` always land in the output directory, also when the guest failed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmwu import __version__
from vmwu.cache import NodeCache
from vmwu.errors import (
    BadInput,
    BaseNotFound,
    ExitCode,
    GuestNeverBooted,
    GuestTimeout,
    Interrupted,
    OutputDiskFull,
    VMCrashed,
    VmwuError,
)
from vmwu.events import EventReader, InstanceState, Phase
from vmwu.images import ext4, qemu_img
from vmwu.images.iso import IsoEntry, write_iso
from vmwu.instance_files import cdrom_entries
from vmwu.ova import OvaReader
from vmwu.params import param_entries
from vmwu.resolve import ResolvedDisks, resolve_files
from vmwu.unit import BootMethod, UnitDescriptor
from vmwu.vmm import accel as accel_mod
from vmwu.vmm import warm
from vmwu.vmm.qemu import Drive, DriveKind, MachineConfig, QemuMachine, build_argv, qemu_binary

log = logging.getLogger(__name__)

# Files vmwu itself writes into the output directory.
CONSOLE_LOG = "console.log"
STATUS_JSON = "status.json"


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


@dataclass
class RunResult:
    exit_code: int
    output_dir: Path
    status: dict[str, Any]
    error: VmwuError | None = None
    cmdline: list[str] = field(default_factory=list)


Update = Callable[[InstanceState], None]


def default_output_dir(unit_name: str) -> Path:
    return Path.cwd() / f"{unit_name}-output"


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


def _check_inputs(opts: RunOptions) -> None:
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


def _qemu_executable(opts: RunOptions) -> tuple[str | None, Path | None]:
    """(executable, firmware dir) from vmm-executable / vmm-directory / vmm-local."""
    exe = opts.vmm_executable
    bios: Path | None = None
    if opts.vmm_directory is not None:
        name = exe or "qemu-system-x86_64"
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
        parts.append("vmwu.cdrom_dev=scsi")  # the tiny init loads the SCSI CD-ROM modules
    return " ".join(parts)


def qmp_socket_path(inst: Path) -> Path:
    """A unix socket path for QMP: in the instance dir when short enough (sun_path holds
    107 bytes), else in a private directory under /tmp (removed with the instance)."""
    path = inst / "qmp.sock"
    if len(os.fsencode(path)) < 100:
        return path
    short = Path(tempfile.mkdtemp(prefix="vmwu-"))
    (inst / "qmp-dir").symlink_to(short)
    return short / "qmp.sock"


def _iso_entries(opts: RunOptions) -> list[IsoEntry]:
    entries = param_entries(list(opts.args), opts.parameters_filename)
    # A resumed guest shares its clock and RNG state with every instance resumed from the
    # same save; the agent sets the clock and stirs this seed into the pool.
    entries.append(IsoEntry(".vmwu/time", data=f"{int(time.time())}\n".encode()))
    entries.append(IsoEntry(".vmwu/seed", data=secrets.token_bytes(64)))
    entries += cdrom_entries(
        files=opts.files,
        destinations=opts.files_destination,
        instance_script=opts.instance_script,
        instance_post_script=opts.instance_post_script,
        cdrom_image=opts.cdrom_image,
    )
    return entries


def _prepare_disks(inst: Path, disks: ResolvedDisks, opts: RunOptions) -> list[Drive]:
    """Overlays over the cached read-only images; a fresh raw output disk."""
    drives: list[Drive] = []
    if disks.base_disk is not None:
        overlay = inst / "base.qcow2"
        qemu_img.create_overlay(
            disks.base_disk.path, overlay, backing_format=disks.base_disk.format
        )
        drives.append(Drive("base", overlay, "qcow2", serial="VMWU-BASE"))
    app = inst / "app.qcow2"
    qemu_img.create_overlay(disks.app_disk.path, app, backing_format=disks.app_disk.format)
    drives.append(Drive("app", app, "qcow2", serial="VMWU-APP"))
    # The output disk is raw so that debugfs can read it back without a conversion.
    out = inst / "output.raw"
    qemu_img.convert(
        disks.output_disk.path, out, src_format=disks.output_disk.format, dst_format="raw"
    )
    drives.append(Drive("out", out, "raw", serial="VMWU-OUT"))
    return drives


def _accel(opts: RunOptions, arch: str) -> accel_mod.AccelChoice:
    if opts.vmm_no_virtualisation:
        return accel_mod.AccelChoice("tcg", "TCG: vmm-no-virtualisation is set")
    return accel_mod.choose(opts.accel, guest_arch=arch)


def _warm_start(
    cfg: MachineConfig,
    desc: UnitDescriptor,
    cache: NodeCache,
    inst: Path,
    sizes_before: dict[Path, int],
    boot_timeout: float,
) -> tuple[MachineConfig, str]:
    """``cfg`` set up to resume the node's saved booted guest (saving it first if this
    is the first such instance on the node), or unchanged with the reason why not. The
    instance disks are grown to the warm capacity; ``sizes_before`` records their sizes
    so that they can be shrunk back when the guest is done."""
    sizes = {f.role.value: f.capacity or 0 for f in desc.files if f.is_disk}
    reason = warm.eligible(cfg, sizes)
    if reason is not None:
        return cfg, f"cold boot: {reason}"
    warm_cfg = warm.with_warm_cmdline(cfg)
    key = warm.state_key(warm_cfg, cfg.executable or qemu_binary(cfg.arch))
    failed_marker = cache.derived_path(f"{key}.failed")
    if failed_marker.exists():
        return cfg, "cold boot: this machine configuration failed to warm-start before"
    saved_now = not cache.derived_path(f"{key}.state").exists()
    try:
        state = cache.ensure_derived(
            f"{key}.state",
            lambda tmp: warm.save_state(
                warm_cfg, tmp, inst / "warm-template", timeout=boot_timeout
            ),
        )
    except warm.TemplateFailed as exc:
        # A base that does not boot: boot it cold, which reports the failure (console
        # tail, exit 243) like any other.
        # The same kernel, initramfs and command line fail the same way next time: remember.
        log.info("warm-start template failed: %s", exc)
        failed_marker.parent.mkdir(parents=True, exist_ok=True)
        failed_marker.write_text(f"{exc}\n")
        return cfg, f"cold boot: the warm-start template failed ({exc})"
    for d in cfg.drives:
        sizes_before[d.path] = warm.virtual_size(d.path)
        warm.resize(d.path, warm.CAPACITY)
    how = "saved the booted guest for this node, then resumed it" if saved_now else "resumed"
    return dataclasses.replace(warm_cfg, incoming=state), f"warm start: {how}"


def run_unit(opts: RunOptions, *, on_update: Update | None = None) -> RunResult:
    t_begin = time.monotonic()
    _check_inputs(opts)
    cache = NodeCache(opts.cache_dir)
    with OvaReader(opts.unit) as reader:
        desc = reader.descriptor
        out_dir = (opts.output_directory or default_output_dir(desc.name)).absolute()
        if not opts.print_cmdline:
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
    choice = _accel(opts, arch)
    inst = cache.new_instance_dir(desc.name)
    state = InstanceState()
    machine: QemuMachine | None = None
    try:
        drives = _prepare_disks(inst, disks, opts)
        iso = inst / "instance.iso"
        write_iso(iso, _iso_entries(opts))
        as_disk = opts.cdrom_as_hard_disk
        if as_disk is None:
            as_disk = desc.base.cdrom_as_hard_disk
        kind = DriveKind.DISK if as_disk else DriveKind.CDROM
        drives.append(Drive("inst", iso, "raw", read_only=True, kind=kind, serial="VMWU-INST"))
        exe, bios = _qemu_executable(opts)
        direct = desc.base.boot_method == BootMethod.DIRECT_KERNEL
        cpus = opts.cpus or desc.cpus
        cfg = MachineConfig(
            arch=arch,
            accel=choice.accel,
            memory_mib=opts.vmm_memory or desc.memory_mib,
            cpus=cpus,
            kernel=disks.kernel,
            initrd=disks.initrd,
            cmdline=instance_cmdline(
                desc, cdrom_scsi=not as_disk, cpus=cpus, base_cmdline=disks.cmdline
            )
            if direct
            else "",
            drives=tuple(drives),
            console_log=inst / CONSOLE_LOG,
            events_log=inst / "events.jsonl",
            qmp_socket=qmp_socket_path(inst),
            graphics=opts.vmm_graphics,
            executable=exe,
            bios_dir=bios,
        )
        if opts.print_cmdline:
            return RunResult(0, out_dir, {}, cmdline=build_argv(cfg))
        start_how = "cold boot: --no-warm"
        cold_cfg = cfg
        grown: dict[Path, int] = {}
        if opts.warm:
            cfg, start_how = _warm_start(cfg, desc, cache, inst, grown, opts.boot_timeout)
        timeout = opts.timeout if opts.timeout is not None else desc.timeout
        t_launch = time.monotonic()
        machine, error = _boot_and_watch(cfg, inst, state, timeout, opts.boot_timeout, on_update)
        if cfg.incoming is not None and machine.returncode not in (0, None) and not state.events:
            # The saved state did not load (QEMU changed underneath?): forget it, boot cold.
            log.warning("warm start failed (%s); booting cold", machine.qemu_log_tail())
            cfg.incoming.unlink(missing_ok=True)
            start_how = "cold boot: the saved guest did not load"
            state = InstanceState()
            machine, error = _boot_and_watch(
                cold_cfg, inst, state, timeout, opts.boot_timeout, on_update
            )
        t_exit = time.monotonic()
        for path, size in grown.items():
            warm.resize(path, size)
        result = _collect(opts, desc, inst, out_dir, machine, state, error, cfg)
        timings = result.status.setdefault("timings", {})
        timings["prepare"] = round(t_launch - t_begin, 3)
        timings["qemu"] = round(t_exit - t_launch, 3)
        timings["collect"] = round(time.monotonic() - t_exit, 3)
        result.status["accel"] = choice.accel
        result.status["accel_reason"] = choice.reason
        result.status["start"] = start_how
        result.cmdline = machine.argv
        if opts.overwrite and result.error is None:
            from vmwu.overwrite import overwrite_unit

            overwrite_unit(opts.unit, desc, inst, cache, mtime=int(time.time()))
        _write_status(out_dir, result.status)
        return result
    except KeyboardInterrupt:
        if machine is not None:
            machine.shutdown(timeout=2.0)
        err = Interrupted("interrupted; partial outputs kept in " + str(out_dir))
        _salvage(inst, out_dir, err)
        raise err from None
    finally:
        if machine is not None:
            machine.shutdown(timeout=2.0)
        if (inst / "qmp-dir").is_symlink():
            shutil.rmtree((inst / "qmp-dir").resolve(), ignore_errors=True)
        if opts.keep:
            log.info("instance directory kept: %s", inst)
        else:
            shutil.rmtree(inst, ignore_errors=True)
        state.phase = Phase.DONE


def _boot_and_watch(
    cfg: MachineConfig,
    inst: Path,
    state: InstanceState,
    timeout: float | None,
    boot_timeout: float,
    on_update: Update | None,
) -> tuple[QemuMachine, VmwuError | None]:
    (inst / "events.jsonl").unlink(missing_ok=True)
    machine = QemuMachine(cfg, log_path=inst / "qemu.log")
    machine.launch()
    state.qemu_started = machine.started_at
    state.phase = Phase.BOOTING
    try:
        error = _watch(
            machine, EventReader(inst / "events.jsonl"), state, timeout, boot_timeout, on_update
        )
    except BaseException:
        machine.shutdown(timeout=2.0)
        raise
    return machine, error


def _watch(
    machine: QemuMachine,
    events: EventReader,
    state: InstanceState,
    timeout: float | None,
    boot_timeout: float,
    on_update: Update | None,
) -> VmwuError | None:
    """Follow the guest until QEMU exits; stop it on timeout. Returns the error that
    stopped it early (timeout), else None."""
    start = machine.started_at
    last_update = 0.0
    while True:
        code = machine.poll()
        now = time.monotonic()
        for event in events.read():
            state.apply(event, now)
        if code is not None:
            return None
        if timeout is not None and now - start > timeout:
            machine.shutdown(timeout=2.0)
            for event in events.read():
                state.apply(event, time.monotonic())
            return GuestTimeout(
                f"the instance ran longer than --timeout {timeout:g} s and was stopped"
            )
        if state.booted_at is None and now - start > boot_timeout:
            machine.shutdown(timeout=2.0)
            return GuestNeverBooted(
                f"the guest did not reach the vmwu agent within {boot_timeout:g} s"
            )
        if on_update is not None and now - last_update >= 0.1:
            on_update(state)
            last_update = now
        machine.wait_exit_event(0.02)


def _console_tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    rows = [r.strip() for r in text.replace("\r", "").splitlines() if r.strip()]
    return " | ".join(rows[-lines:])


def _classify(
    state: InstanceState,
    early: VmwuError | None,
    machine: QemuMachine,
    console: Path,
    out_dir: Path,
) -> VmwuError | None:
    """What went wrong, if anything, from what the host saw."""
    console_hint = f"see {out_dir / CONSOLE_LOG}"
    if early is not None:
        tail = _console_tail(console)
        early.hint = f"console: {tail}; {console_hint}" if tail else console_hint
        return early
    if state.exit_code is not None:
        if state.disk_full:
            return OutputDiskFull(
                "the output disk filled up inside the guest "
                f"(the app exited with {state.exit_code})",
                hint=f"raise app-output-size and re-pack; partial outputs kept in {out_dir}",
            )
        return None
    tail = _console_tail(console)
    try:
        text = console.read_text(errors="replace")
    except OSError:
        text = ""
    if state.agent_error:
        return GuestNeverBooted(f"the vmwu agent failed: {state.agent_error}", hint=console_hint)
    if "Kernel panic" in text:
        line = next((r for r in text.splitlines() if "Kernel panic" in r), "Kernel panic")
        cls: type[VmwuError] = GuestNeverBooted if state.booted_at is None else VMCrashed
        return cls(f"the guest kernel panicked: {line.strip()}", hint=console_hint)
    if machine.returncode not in (0, None):
        return VMCrashed(
            f"QEMU exited with status {machine.returncode}: {machine.qemu_log_tail() or tail}",
            hint=console_hint,
        )
    if state.booted_at is None:
        return GuestNeverBooted(
            "the guest stopped before the vmwu agent started" + (f": {tail}" if tail else ""),
            hint=console_hint,
        )
    return VMCrashed(
        "the guest stopped without reporting the application's exit"
        + (f": {tail}" if tail else ""),
        hint=console_hint,
    )


def _collect(
    opts: RunOptions,
    desc: UnitDescriptor,
    inst: Path,
    out_dir: Path,
    machine: QemuMachine,
    state: InstanceState,
    early: VmwuError | None,
    cfg: MachineConfig,
) -> RunResult:
    console = inst / CONSOLE_LOG
    error = _classify(state, early, machine, console, out_dir)
    out_disk = inst / "output.raw"
    guest_status: dict[str, Any] = {}
    collect_error: VmwuError | None = None
    try:
        written = ext4.read_tree(out_disk, out_dir, skip=("lost+found",))
        for entry in written:
            if entry.name in (CONSOLE_LOG, STATUS_JSON):
                entry.rename(out_dir / f"{entry.name}.app")
        state_dir = out_dir / ".vmwu"
        if (state_dir / "status.json").is_file():
            try:
                guest_status = json.loads((state_dir / "status.json").read_text())
            except ValueError:
                guest_status = {"unreadable": True}
        shutil.rmtree(state_dir, ignore_errors=True)
    except VmwuError as exc:
        collect_error = exc
    if opts.output_filename:
        _keep_output_image(out_disk, out_dir / opts.output_filename)
    shutil.copyfile(console, out_dir / CONSOLE_LOG) if console.exists() else None
    if error is None and collect_error is not None:
        error = collect_error
    app_code = state.exit_code
    if app_code is None and isinstance(guest_status.get("exit_code"), int):
        app_code = guest_status["exit_code"]
    exit_code = (
        int(error.exit_code)
        if error is not None
        else (app_code if app_code is not None else int(ExitCode.VM_CRASHED))
    )
    qemu_s = (machine.exited_at or time.monotonic()) - machine.started_at
    timings: dict[str, float | None] = {
        "boot": _delta(machine.started_at, state.started_at),
        "app": _delta(state.started_at, state.exit_at),
        "shutdown": _delta(state.exit_at, machine.exited_at or None),
        "qemu": round(qemu_s, 3),
    }
    status: dict[str, Any] = {
        "vmwu_version": __version__,
        "unit": desc.name,
        "unit_path": os.fspath(opts.unit.absolute()),
        "node": os.uname().nodename,
        "outcome": "vmwu-error" if error is not None else "app",
        "exit_code": exit_code,
        "app_exit_code": app_code,
        "signal": guest_status.get("signal"),
        "disk_full": state.disk_full,
        "error": None
        if error is None
        else {"code": int(error.exit_code), "kind": type(error).__name__, "message": str(error)},
        "params": list(opts.args),
        "progress": state.fraction,
        "timings": timings,
        "qemu_peak_rss_kib": machine.peak_rss_kib,
        "qemu_cpu_seconds": round(machine.cpu_seconds, 3),
        "console_log": CONSOLE_LOG,
        "guest": guest_status,
        "cmdline": shlex.join(machine.argv),
    }
    return RunResult(exit_code, out_dir, status, error)


def _delta(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    return round(b - a, 3)


def _keep_output_image(raw: Path, dest: Path) -> None:
    if dest.suffix in (".qcow2", ".qcow"):
        qemu_img.convert(raw, dest, src_format="raw", dst_format="qcow2", compress=True)
    else:
        # a sparse copy: an output disk is mostly empty
        from vmwu import tools

        tools.run(["cp", "--sparse=always", raw, dest], disk_hint=str(dest.parent))


def _write_status(out_dir: Path, status: dict[str, Any]) -> None:
    tmp = out_dir / f".{STATUS_JSON}.tmp"
    tmp.write_text(json.dumps(status, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out_dir / STATUS_JSON)


def _salvage(inst: Path, out_dir: Path, err: VmwuError) -> None:
    """Keep what we can after an interruption."""
    try:
        if (inst / CONSOLE_LOG).exists() and out_dir.is_dir():
            shutil.copyfile(inst / CONSOLE_LOG, out_dir / CONSOLE_LOG)
        if (inst / "output.raw").exists() and out_dir.is_dir():
            ext4.read_tree(inst / "output.raw", out_dir)
            shutil.rmtree(out_dir / ".vmwu", ignore_errors=True)
        _write_status(
            out_dir,
            {
                "vmwu_version": __version__,
                "outcome": "vmwu-error",
                "exit_code": int(err.exit_code),
                "error": {
                    "code": int(err.exit_code),
                    "kind": type(err).__name__,
                    "message": str(err),
                },
            },
        )
    except (OSError, VmwuError) as exc:
        log.debug("salvage failed: %s", exc)


__all__ = ["RunOptions", "RunResult", "run_unit", "BaseNotFound"]
