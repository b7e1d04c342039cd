"""``vmwu wrap``: run a BOINC-style job.xml; ``vmwu wrap ctl``: control a running one.

Called by ``vmwu.cli.main`` with the arguments after ``wrap``; errors are raised as
:class:`VmwuError` and turned into a one-line message and an exit code there.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from vmwu.errors import BadInput
from vmwu.vmm.accel import ACCELS
from vmwu.wrapper.control import Action, send
from vmwu.wrapper.tasks_vm import VmSettings
from vmwu.wrapper.wrapper import WrapOptions, Wrapper, socket_path


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise BadInput(f"{self.prog}: {message}", hint=f"see `{self.prog} --help`")


def _positive(kind: type[int] | type[float], what: str) -> Callable[[str], int | float]:
    def convert(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number, got {text!r}") from None
        if not math.isfinite(value) or value <= 0:  # float("nan") and float("inf") parse
            raise argparse.ArgumentTypeError(f"{what} must be positive, got {text}")
        return value

    return convert


def wrap_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="vmwu wrap",
        allow_abbrev=False,
        description="Run the tasks of a BOINC-style job.xml (host tasks and VM tasks) with "
        "checkpoints, suspend/resume and a status file. Arguments after -- are appended to "
        "the command lines of tasks with <append_cmdline_args>. "
        "`vmwu wrap ctl suspend|resume|quit|abort|checkpoint|status` controls a running one.",
    )
    p.add_argument("job", nargs="?", help="the job file (default: job.xml in the slot dir)")
    p.add_argument(
        "--slot-dir", default=".", metavar="DIR", help="where the tasks run ($PWD; default: .)"
    )
    p.add_argument(
        "--project-dir", metavar="DIR", help="$PROJECT_DIR (default: the job file's directory)"
    )
    nthreads = _positive(int, "--nthreads")
    p.add_argument("--nthreads", type=nthreads, default=1, metavar="N", help="$NTHREADS")
    p.add_argument(
        "--checkpoint-interval",
        type=_positive(float, "--checkpoint-interval"),
        default=600.0,
        metavar="SECONDS",
        help="checkpoint VM tasks this often (running time; default 600)",
    )
    p.add_argument(
        "--keep-checkpoints",
        type=_positive(int, "--keep-checkpoints"),
        default=2,
        metavar="N",
        help="checkpoints kept per VM task, newest first (default 2)",
    )
    p.add_argument(
        "--status-file", metavar="PATH", help="default: wrapper_status.json in the slot dir"
    )
    p.add_argument(
        "--socket", metavar="PATH", help="control socket (default: .vmwu-wrap/ctl.sock in the slot)"
    )
    p.add_argument(
        "--catalog", metavar="FILE", help="base catalog (default: $VMWU_CATALOG or the data dir)"
    )
    p.add_argument("--accel", choices=ACCELS, default="auto")
    p.add_argument("--no-warm", action="store_true", help="boot VM tasks cold")
    p.add_argument(
        "--boot-timeout",
        type=_positive(float, "--boot-timeout"),
        default=120.0,
        metavar="SECONDS",
        help="a VM task's guest must reach the agent within this (default 120)",
    )
    p.add_argument("--fresh", action="store_true", help="forget earlier runs of this job")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    return p


def ctl_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vmwu wrap ctl", allow_abbrev=False, description="control a running wrap")
    p.add_argument("action", choices=[a.value for a in Action])
    p.add_argument("--slot-dir", default=".", help="the wrapper's slot directory (default: .)")
    p.add_argument("--socket", help="its control socket (default: from --slot-dir)")
    p.add_argument("--timeout", type=_positive(float, "--timeout"), default=120.0)
    return p


def package_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="vmwu wrap package",
        allow_abbrev=False,
        description="Write what a BOINC project ships to run JOB.xml with vmwu: the wrapper "
        "as one executable, the job file, the files it names, the base files its units "
        "reference, app_info.xml (anonymous platform), version.xml (update_versions) and "
        "package.json (docs/boinc.md).",
    )
    p.add_argument("job", help="the job file")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="a new or empty directory")
    p.add_argument("--app-name", default="vmwu", help="the BOINC app's name (default vmwu)")
    p.add_argument(
        "--version-num",
        type=_positive(int, "--version-num"),
        default=100,
        help="the app version number (default 100)",
    )
    p.add_argument(
        "--executable",
        metavar="FILE",
        help="ship this already built wrapper instead of building one with PyInstaller",
    )
    p.add_argument("--catalog", metavar="FILE", help="where to find the units' base files")
    return p


def package_main(argv: Sequence[str]) -> int:
    from vmwu.wrapper.boinc.package import package

    args = package_parser().parse_args(list(argv))
    manifest = package(
        Path(args.job),
        Path(args.output),
        app=args.app_name,
        version_num=args.version_num,
        executable=Path(args.executable) if args.executable else None,
        catalog=Path(args.catalog) if args.catalog else None,
    )
    files = manifest["files"]
    assert isinstance(files, list)
    for f in files:
        print(f"{f['size']:>12}  {f['name']}")
    print(f"wrote {len(files)} files, app_info.xml and package.json into {args.output}")
    return 0


def ctl_main(argv: Sequence[str]) -> int:
    args = ctl_parser().parse_args(list(argv))
    sock = Path(args.socket) if args.socket else socket_path(Path(args.slot_dir))
    reply = send(sock, Action(args.action), timeout=args.timeout)
    print(json.dumps(reply, indent=2, sort_keys=True))
    if not reply.get("ok"):
        raise BadInput(f"vmwu wrap ctl {args.action}: {reply.get('error', 'refused')}")
    return 0


def main(argv: Sequence[str]) -> int:
    argv = list(argv)
    if argv[:1] == ["ctl"]:
        return ctl_main(argv[1:])
    if argv[:1] == ["package"]:
        return package_main(argv[1:])
    from vmwu.wrapper.boinc.main import boinc_main, under_client

    if under_client():  # started by a BOINC client in its slot (docs/boinc.md)
        return boinc_main(argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    args = wrap_parser().parse_args(argv)
    slot = Path(args.slot_dir).absolute()
    if not slot.is_dir():
        raise BadInput(f"slot directory {slot} does not exist")
    job = Path(args.job).absolute() if args.job else slot / "job.xml"
    if not job.is_file():
        raise BadInput(
            f"job file {job} does not exist" if not job.exists() else f"{job} is not a file"
        )
    opts = WrapOptions(
        job=job,
        slot=slot,
        project_dir=Path(args.project_dir).absolute() if args.project_dir else job.parent,
        nthreads=args.nthreads,
        checkpoint_interval=args.checkpoint_interval,
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
        fresh=args.fresh,
        quiet=args.quiet,
    )
    code = Wrapper(opts).run()
    sys.stderr.flush()
    return code
