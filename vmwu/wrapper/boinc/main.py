"""``vmwu wrap`` started by a BOINC client: the job runs as the client's app.

:func:`boinc_main` is what ``vmwu wrap`` (and the packaged executable, see
``package.py``) runs when its working directory is a BOINC slot (``init_data.xml`` and
``boinc_mmap_file`` there). It

1. opens the session (``boinc_lockfile``; another app in the slot: temporary exit, 10 min);
2. resolves the slot's logical names (``links.py``): inputs and app files become symbolic
   links to the project's files (the job file, the applications, ``copy_file_to_VM``
   files, file names on command lines); outputs are written as plain files in the slot
   and moved to their physical files (which the client uploads) when the job has ended;
3. runs the wrapper with the client as control source (:class:`BoincControl`), the job file
   the ``job.xml`` logical name resolves to, ``$PROJECT_DIR`` the client's project
   directory, ``$NTHREADS`` the client's ``ncpus``, and a VM checkpoint every
   ``checkpoint_period`` seconds of the client's preferences (unless given);
4. tells the client how it ended: ``boinc_finish_called`` with the job's exit code (0: the
   result is uploaded; else a computation error with the message in stderr.txt); after
   ``<quit/>`` or with the client gone, exit 0 (the client restarts the task, which goes on
   from its checkpoint); after ``<abort/>``, exit 194; a transient host problem (QEMU or
   another tool missing, the host's disk full, …): ``boinc_temporary_exit`` with the reason,
   so the client retries later instead of failing the workunit.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from vmwu.digest import copy_sha256
from vmwu.errors import ExitCode, HostFailure, ToolNotFound, VmwuError
from vmwu.wrapper.boinc.api import (
    EXIT_ABORTED_BY_CLIENT,
    BoincSession,
    SlotBusy,
    running_under_client,
    write_temporary_exit,
)
from vmwu.wrapper.boinc.control import BoincControl

if TYPE_CHECKING:
    from vmwu.wrapper.wrapper import WrapOptions

# Seconds before the client tries again after a temporary exit.
DELAY_MISSING_TOOL = 86400  # the volunteer has to install something: once a day
DELAY_HOST_FAILURE = 3600
DELAY_SLOT_BUSY = 600  # as boinc_init_options when it cannot lock the slot

JOB_FILE = "job.xml"
# A base file shipped with the app version (package.py): its sha256 is in its name.
BASE_FILE = re.compile(r"vmwu-base-([0-9a-f]{64})\Z")


def under_client(cwd: Path | None = None) -> bool:
    return running_under_client(cwd or Path.cwd())


def _given(argv: Sequence[str], option: str) -> bool:
    return any(a == option or a.startswith(option + "=") for a in argv)


def boinc_main(argv: Sequence[str]) -> int:
    """Run the job in the BOINC slot that is the working directory; the exit status."""
    slot = Path.cwd()
    try:
        session = BoincSession(slot)
    except SlotBusy as exc:
        return write_temporary_exit(slot, DELAY_SLOT_BUSY, f"{exc}: another instance may run")
    with session:
        init = session.init
        session.log(
            f"vmwu wrap under BOINC client {init.client_version}: result {init.result_name}, "
            f"checkpoint every {init.checkpoint_period:g} s"
        )
        controls: list[BoincControl] = []
        try:
            outputs = remember_outputs(slot, session.names.materialize()[1])
            # vmwu's node cache and catalog live in the project directory: shared by the
            # project's tasks, kept between them, removed with the project.
            if init.project_dir:
                os.environ.setdefault("VMWU_HOME", os.path.join(init.project_dir, "vmwu"))
            seed_base_files(slot, session)
            opts = _wrap_options(argv, slot, session)
            code = _run_job(opts, session, outputs, controls)
        except (ToolNotFound, HostFailure) as exc:
            return session.temporary_exit(_delay(exc), str(exc), notice=True)
        except VmwuError as exc:
            session.log(f"vmwu wrap: error: {exc}")
            return session.finish(int(exc.exit_code), cpu_time=init.wu_cpu_time, message=str(exc))
        cpu = _last_cpu(controls[0]) if controls else init.wu_cpu_time
        return _tell_client(session, code, cpu)


def _wrap_options(argv: Sequence[str], slot: Path, session: BoincSession) -> WrapOptions:
    """``vmwu wrap``'s options, with the client's settings where the command line gives
    none: the job file in the slot, its checkpoint period, its number of CPUs."""
    from vmwu.wrapper.cli import wrap_parser
    from vmwu.wrapper.tasks_vm import VmSettings
    from vmwu.wrapper.wrapper import WrapOptions

    init = session.init
    argv = list(argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    args = wrap_parser().parse_args(argv)
    job = Path(args.job) if args.job else slot / JOB_FILE
    if not job.is_absolute():
        job = slot / job
    interval = args.checkpoint_interval
    if not _given(argv, "--checkpoint-interval") and init.checkpoint_period > 0:
        interval = init.checkpoint_period
    nthreads = args.nthreads
    if not _given(argv, "--nthreads") and init.ncpus >= 1:
        nthreads = int(init.ncpus)
    opts = WrapOptions(
        job=job,
        slot=slot,
        project_dir=Path(args.project_dir or init.project_dir or slot).absolute(),
        nthreads=nthreads,
        checkpoint_interval=interval,
        keep_checkpoints=args.keep_checkpoints,
        status_file=Path(args.status_file) if args.status_file else None,
        socket=Path(args.socket) if args.socket else None,
        extra_args=tuple(extra),
        vm=VmSettings(
            catalog=Path(args.catalog) if args.catalog else None,
            accel=args.accel,
            warm=not args.no_warm,
            boot_timeout=args.boot_timeout,
        ),
        fresh=False,
        quiet=args.quiet,
    )
    if not job.is_file():
        raise VmwuError(f"job file {job} is missing from the slot")
    return opts


def _run_job(
    opts: WrapOptions,
    session: BoincSession,
    outputs: dict[str, str],
    controls: list[BoincControl],
) -> int:
    """Run the wrapper with the client as its control source (each control made is added
    to ``controls``); once the job is over for good, move its outputs where the client
    uploads them. The wrapper's exit status."""
    from vmwu.wrapper.wrapper import Wrapper

    def control(path: Path) -> BoincControl:
        controls.append(BoincControl(path, session))
        return controls[-1]

    code = Wrapper(opts, control_factory=control).run()
    if code != int(ExitCode.INTERRUPTED):  # done, failed or aborted: no more runs
        moved, missing = session.names.promote(outputs)
        if moved:
            session.log(f"output(s) {', '.join(moved)} moved to the project's files")
        if missing and code == 0:
            session.log(f"the job did not write its output(s) {', '.join(missing)}")
    return code


def _tell_client(session: BoincSession, code: int, cpu: float) -> int:
    """How the run ended, told the client's way: finished (uploaded or a computation
    error), aborted, to be restarted from its checkpoint, or a temporary exit."""
    state = session.state
    if state.abort_requested:
        session.log("aborted by the client")
        return EXIT_ABORTED_BY_CLIENT
    if code == int(ExitCode.INTERRUPTED) and (state.quit_requested or state.client_gone):
        why = "the client quit" if state.quit_requested else "the client is gone"
        session.log(f"stopped ({why}); the client restarts the task from its checkpoint")
        return 0
    if code == int(ExitCode.INTERRUPTED):
        # Stopped by a signal or `vmwu wrap ctl quit`, not by the client: come back soon.
        return session.temporary_exit(60, "vmwu wrap was stopped on this host")
    message = None if code == 0 else f"the job failed with exit code {code}"
    return session.finish(code, cpu_time=cpu, message=message)


OUTPUTS_RECORD = Path(".vmwu-wrap") / "boinc-outputs.json"


def remember_outputs(slot: Path, found: dict[str, str]) -> dict[str, str]:
    """The job's outputs (logical name -> physical file), found now or in an earlier run
    (whose links are gone from the slot), kept in ``.vmwu-wrap/boinc-outputs.json``."""
    from vmwu.hostfs import write_json_atomic

    record = slot / OUTPUTS_RECORD
    known: dict[str, str] = {}
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(record.read_text())
        if isinstance(data, dict):
            known = {str(k): str(v) for k, v in data.items()}
    if found.items() - known.items():
        known.update(found)
        record.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(record, known)
    return known


def seed_base_files(slot: Path, session: BoincSession) -> list[str]:
    """Put the base files shipped with the app version (``vmwu-base-SHA256`` in the slot)
    into the node cache, where a unit that references its base by sha256 finds it; each is
    copied once per host and verified."""
    from vmwu.cache import NodeCache
    from vmwu.errors import BaseNotFound

    seeded = []
    cache = NodeCache()
    for entry in sorted(os.listdir(slot)):
        match = BASE_FILE.match(entry)
        if match is None:
            continue
        sha = match.group(1)
        if cache.blob(sha) is not None:
            continue
        src = slot / entry

        def fill(tmp: Path, src: Path = src, sha: str = sha) -> None:
            if copy_sha256(src, tmp) != sha:
                raise BaseNotFound(f"base file {src} does not have the sha256 its name says")

        cache.ensure_blob(sha, fill)
        session.log(f"base file {sha[:16]}… copied into the node cache")
        seeded.append(sha)
    return seeded


def _last_cpu(control: BoincControl) -> float:
    reported = control.last_report.get("cpu_time")
    return float(reported) if reported is not None else control.session.init.wu_cpu_time


def _delay(exc: VmwuError) -> int:
    return DELAY_MISSING_TOOL if isinstance(exc, ToolNotFound) else DELAY_HOST_FAILURE


def main() -> int:
    """The packaged executable's entry point: under a client, :func:`boinc_main`; else
    ``vmwu wrap`` as on the command line."""
    from vmwu.cli import main as vmwu_main

    if getattr(sys, "frozen", False):
        restore_library_path()
    return vmwu_main(["wrap", *sys.argv[1:]])


def restore_library_path() -> None:
    """What this process starts must load the host's libraries, not those PyInstaller's
    bootloader unpacked (see :func:`vmwu.guard.host_library_path`)."""
    from vmwu.guard import host_library_path

    host_library_path(os.environ)
