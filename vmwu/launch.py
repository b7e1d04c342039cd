"""``vmwu run``: one instance of a work unit, from options to outputs and an exit code.

``run_unit(options)`` prepares the instance (instance.py), boots it (resuming the node's
saved booted guest when it can), follows the agent's events with a live status, stops it
on timeout, and collects what it left (outcome.py). It returns a :class:`RunResult`
whatever happens inside the guest; it raises only for bad input found before anything
started.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from vmwu import __version__
from vmwu.errors import GuestNeverBooted, GuestTimeout, Interrupted, VMCrashed, VmwuError
from vmwu.events import EventReader, InstanceState, Phase, check_log_sizes
from vmwu.instance import RunOptions, prepare
from vmwu.outcome import RunResult, collect, salvage, write_status
from vmwu.vmm.qemu import MachineConfig, QemuMachine, build_argv

log = logging.getLogger(__name__)

Update = Callable[[InstanceState], None]

__all__ = ["RunOptions", "RunResult", "Update", "run_unit"]


def run_unit(opts: RunOptions, *, on_update: Update | None = None) -> RunResult:
    t_begin = time.monotonic()
    try:
        prepared = prepare(opts, check_output=not opts.print_cmdline)
    except VmwuError as exc:
        if not opts.print_cmdline:
            record_early_failure(opts, exc)
        raise
    if opts.print_cmdline:
        prepared.release()
        return RunResult(0, prepared.out_dir, {}, cmdline=build_argv(prepared.cfg))
    state = InstanceState()
    machine: QemuMachine | None = None
    try:
        cfg, start_how = prepared.warm_config()
        timeout = opts.timeout if opts.timeout is not None else prepared.desc.timeout
        t_launch = time.monotonic()
        machine, error = boot_and_watch(
            cfg, prepared.inst, state, timeout, opts.boot_timeout, on_update
        )
        no_events = not state.event_count
        if cfg.incoming is not None and machine.returncode not in (0, None) and no_events:
            # The saved state did not load (QEMU changed underneath?): forget it, boot cold.
            log.warning("warm start failed (%s); booting cold", machine.qemu_log_tail())
            cfg.incoming.unlink(missing_ok=True)
            start_how = "cold boot: the saved guest did not load"
            state = InstanceState()
            machine, error = boot_and_watch(
                prepared.cfg, prepared.inst, state, timeout, opts.boot_timeout, on_update
            )
        t_exit = time.monotonic()
        prepared.shrink_disks()
        result = collect(prepared, machine, state, error)
        timings = result.status.setdefault("timings", {})
        timings["prepare"] = round(t_launch - t_begin, 3)
        timings["qemu"] = round(t_exit - t_launch, 3)
        timings["collect"] = round(time.monotonic() - t_exit, 3)
        result.status["start"] = start_how
        if opts.keep:
            result.status["instance_dir"] = str(prepared.inst)
        if opts.overwrite and result.error is None:
            from vmwu.overwrite import overwrite_unit

            overwrite_unit(
                opts.unit, prepared.desc, prepared.inst, prepared.cache, mtime=int(time.time())
            )
        write_status(prepared.out_dir, result.status)
        return result
    except KeyboardInterrupt:
        if machine is not None:
            machine.shutdown(timeout=2.0)
        err = Interrupted("interrupted; partial outputs kept in " + str(prepared.out_dir))
        salvage(prepared.inst, prepared.out_dir, err, opts.output_filename)
        raise err from None
    finally:
        if machine is not None:
            machine.shutdown(timeout=2.0)
        prepared.release()
        state.phase = Phase.DONE


def record_early_failure(opts: RunOptions, exc: VmwuError) -> None:
    """vmwu failed before any guest ran (bad input, missing tool or base, cache): still
    leave a status.json with the error where the user asked for the outputs, if that
    place is usable (a new or empty directory), so that a sweep sees why."""
    out_dir = opts.output_directory
    if out_dir is None:
        return
    try:
        if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        salvage_status = {
            "vmwu_version": __version__,
            "unit_path": str(opts.unit),
            "outcome": "vmwu-error",
            "exit_code": int(exc.exit_code),
            "app_exit_code": None,
            "error": {"code": int(exc.exit_code), "kind": type(exc).__name__, "message": str(exc)},
            "params": list(opts.args),
        }
        write_status(out_dir, salvage_status)
    except OSError as err:
        log.debug("could not record the failure in %s: %s", out_dir, err)


def boot_and_watch(
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
        error = watch(
            machine, EventReader(inst / "events.jsonl"), state, timeout, boot_timeout, on_update
        )
    except BaseException:
        machine.shutdown(timeout=2.0)
        raise
    return machine, error


def watch(
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
    last_update = last_size_check = 0.0
    logs = (events.path, machine.cfg.console_log)
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
        if now - last_size_check >= 0.5:
            last_size_check = now
            flood = check_log_sizes(*logs)
            if flood is not None:
                machine.shutdown(timeout=2.0)
                return VMCrashed(f"{flood}; it was stopped")
        if on_update is not None and now - last_update >= 0.1:
            on_update(state)
            last_update = now
        machine.wait_exit_event(0.02)
