"""``vmwu run``: one instance of a work unit, from options to outputs and an exit code.

``run_unit(options)`` is a short loop over :class:`vmwu.run.instance.Instance`: prepare,
start (resuming the node's saved booted guest when it can), poll until the guest has
ended, collect what it left. It returns a :class:`RunResult` whatever happens inside the
guest; it raises only for bad input found before anything started (after leaving a
status.json saying so where the outputs were to go) and when interrupted.
"""

from __future__ import annotations

import logging
import time

from vmwu.errors import Interrupted, VmwuError
from vmwu.run.instance import Instance, ReadySource
from vmwu.run.outcome import RunResult, salvage
from vmwu.run.prepare import RunOptions
from vmwu.run.status import RunStatus
from vmwu.vmm.guestrun import Update
from vmwu.vmm.qemu import build_argv

log = logging.getLogger(__name__)

__all__ = ["RunOptions", "RunResult", "Update", "run_unit"]


def run_unit(
    opts: RunOptions, *, on_update: Update | None = None, pool: ReadySource | None = None
) -> RunResult:
    """``pool``: ready VMs the instance may run in (the node pool service's)."""
    instance = Instance(opts, on_update=on_update, check_output=not opts.print_cmdline, pool=pool)
    try:
        prepared = instance.prepare()
    except VmwuError as exc:
        if not opts.print_cmdline:
            record_early_failure(opts, exc)
        raise
    try:
        if opts.print_cmdline:
            return RunResult(0, prepared.out_dir, None, cmdline=build_argv(prepared.cfg))
        instance.start()
        instance.run()
        result = instance.collect()
        if opts.overwrite and result.error is None:
            from vmwu.run.overwrite import overwrite_unit

            overwrite_unit(
                opts.unit, prepared.desc, prepared.inst, prepared.cache, mtime=int(time.time())
            )
        assert result.status is not None
        result.status.write(prepared.out_dir)
        return result
    except KeyboardInterrupt:
        instance.stop()
        err = Interrupted("interrupted; partial outputs kept in " + str(prepared.out_dir))
        salvage(prepared.inst, prepared.out_dir, err, opts.output_filename)
        raise err from None
    finally:
        instance.release()


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
        RunStatus.failed(exc, unit_path=str(opts.unit), params=list(opts.args)).write(out_dir)
    except (OSError, VmwuError) as err:
        log.debug("could not record the failure in %s: %s", out_dir, err)
