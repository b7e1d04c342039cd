"""The ``vmwu`` command. Thin: parses, calls the library, renders; the one place that turns
a :class:`VmwuError` into a one-line message and an exit code (docs/exit-codes.md)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from vmwu import __version__
from vmwu.errors import BadInput, ExitCode, VmwuError

log = logging.getLogger("vmwu")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise BadInput(f"{self.prog}: {message}", hint=f"see `{self.prog} --help`")


def _catalog(path: Path | None):  # type: ignore[no-untyped-def]
    from vmwu.bases.catalog import Catalog

    return Catalog.open(path)


# -- pack ---------------------------------------------------------------------------------


_BOOL_WORDS = {"0", "1", "true", "false", "yes", "no", "on", "off"}


def _pack_args(argv: list[str]) -> tuple[str | None, str | None, str | None, bool, list[str]]:
    """(spec, output, catalog, quiet, spec overrides) from ``vmwu pack`` arguments: pack's
    own flags, --OPTION VALUE spec overrides and the spec file, in any order."""
    from vmwu.options import OptionKind, normalize
    from vmwu.pack.spec import OPTIONS

    kinds = {normalize(n): o.kind for o in OPTIONS for n in (o.name, *o.aliases)}
    spec = output = catalog = None
    quiet = False
    rest: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        key, has_value, inline = token.partition("=")
        if key in ("-o", "--output", "--catalog"):
            if not has_value:
                if i >= len(argv):
                    raise BadInput(f"vmwu pack: {token} needs a value")
                inline = argv[i]
                i += 1
            if key == "--catalog":
                catalog = inline
            else:
                output = inline
        elif token in ("-q", "--quiet"):
            quiet = True
        elif token.startswith("-") and token.strip("-"):
            rest.append(token)
            kind = kinds.get(normalize(key.lstrip("-")).removeprefix("no-"))
            # an unknown option keeps its value: parse_cli then names it (did you mean ...?)
            takes_value = kind is not OptionKind.BOOL
            if kind is OptionKind.BOOL and i < len(argv) and argv[i].lower() in _BOOL_WORDS:
                takes_value = True
            if not has_value and takes_value and i < len(argv):
                rest.append(argv[i])
                i += 1
        elif spec is None:
            spec = token
        else:
            raise BadInput(f"vmwu pack: unexpected argument {token!r} (one spec file only)")
    return spec, output, catalog, quiet, rest


def cmd_pack(args: argparse.Namespace, extra: list[str]) -> int:
    from vmwu.options import parse_cli
    from vmwu.pack.build import pack
    from vmwu.pack.spec import OPTIONS, load_spec
    from vmwu.sizes import format_size
    from vmwu.ui import Steps

    spec_file, output, catalog, quiet, rest = _pack_args(extra)
    overrides = parse_cli(rest, OPTIONS)
    spec = load_spec(Path(spec_file) if spec_file else None, overrides)
    catalog_path = Path(catalog) if catalog else spec.vmddb
    args.output, args.quiet = output, quiet
    steps = Steps(quiet=args.quiet)
    try:
        result = pack(
            spec,
            output=Path(args.output) if args.output else None,
            catalog=_catalog(catalog_path),
            step=steps.step,
            progress=steps.progress,
        )
    finally:
        steps.close()
    size = result.path.stat().st_size
    embedded = (
        "embedded"
        if any(
            f.embedded
            for f in result.descriptor.files
            if f.role in ("kernel", "initrd", "base-disk")
        )
        else "referenced by sha256"
    )
    print(f"{result.path}  ({format_size(size)}; base '{result.base.name}' {embedded})")
    return 0


# -- run ----------------------------------------------------------------------------------


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _run_in_pool(extra: list[str]) -> int | None:
    """Have the node pool service ($VMWU_POOL) run the instance; None if there is none."""
    from vmwu.run.poolclient import pool_socket, report, run_via_pool

    sock = pool_socket()
    if sock is None:
        return None
    reply = run_via_pool(sock, extra)
    if reply is None or reply.local:
        return None
    return report(reply)


def cmd_run(args: argparse.Namespace, extra: list[str]) -> int:
    import shlex

    # A batch system stops jobs with SIGTERM (Slurm: scancel, time limit): treat it like
    # Ctrl-C, so QEMU is stopped and the outputs, console.log and status.json are kept.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    # (through the node pool, the connection closes and the service stops the instance)
    # the node pool's client first: it parses nothing (the service does, the same way)
    if (code := _run_in_pool(extra)) is not None:
        return code
    from vmwu.run.launch import run_unit
    from vmwu.run.options import parse_run_args
    from vmwu.ui import InstanceLine

    opts, quiet = parse_run_args(extra)
    if opts.print_cmdline:
        result = run_unit(opts)
        print(shlex.join(result.cmdline))
        return 0
    with InstanceLine(opts.unit.stem, quiet=quiet) as line:
        result = run_unit(opts, on_update=line.update)
    status = result.status
    if opts.keep and status is not None:
        print(f"vmwu: instance directory kept: {status.instance_dir}", file=sys.stderr)
    if result.error is not None:
        # One line, like every other error (issue 3 section 8): say where the outputs are
        # unless the error's hint already names the output directory.
        message = str(result.error)
        if str(result.output_dir) not in message:
            message += f"; outputs, console.log and status.json are in {result.output_dir}"
        print(f"vmwu: error: {message}", file=sys.stderr)
    elif not quiet and status is not None and status.timings is not None:
        t = status.timings
        print(
            f"vmwu: {status.unit}: exit {result.exit_code} "
            f"(boot {t.boot}s, app {t.app}s, total {t.qemu}s); outputs in {result.output_dir}",
            file=sys.stderr,
        )
    return result.exit_code


# -- extract / inspect ----------------------------------------------------------------------


def cmd_extract(args: argparse.Namespace, extra: list[str]) -> int:
    from vmwu.unit.extract import extract

    dest = Path(args.dest)
    report = extract(Path(args.image), dest, component=args.component)
    for name in report.top:
        print(dest / name)
    for skipped in report.skipped:
        print(f"vmwu: not extracted: {skipped}", file=sys.stderr)
    return 0


def cmd_inspect(args: argparse.Namespace, extra: list[str]) -> int:
    from vmwu.unit.extract import inspect_unit

    summary = inspect_unit(Path(args.unit), verify=not args.no_verify)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        from vmwu.unit.extract import format_summary

        print(format_summary(summary))
    return 0


# -- base -----------------------------------------------------------------------------------


def cmd_base_build(args: argparse.Namespace, extra: list[str]) -> int:
    from vmwu.bases import build_base
    from vmwu.ui import Steps

    steps = Steps(quiet=args.quiet)
    # Options of one kind only (issue 6: `debian` has --release/--packages/--mirror).
    kind_args: dict[str, object] = {"arch": args.arch}
    if args.kind == "tiny":
        kind_args["kernel_deb"] = Path(args.kernel_deb) if args.kernel_deb else None
        kind_args["busybox_deb"] = Path(args.busybox_deb) if args.busybox_deb else None
    elif args.kernel_deb or args.busybox_deb:
        raise BadInput("--kernel-deb and --busybox-deb are options of `base build tiny` only")
    if args.kind == "debian":
        kind_args["release"] = args.release or "bookworm"
        kind_args["packages"] = [p for p in (args.packages or "").split(",") if p.strip()]
        if args.mirror:
            kind_args["mirror"] = args.mirror
    elif args.release or args.packages or args.mirror:
        raise BadInput("--release, --packages and --mirror are options of `base build debian`")
    try:
        base = build_base(
            args.kind,
            _catalog(args.catalog),
            name=args.name or args.kind,
            replace=args.replace,
            step=steps.step,
            **kind_args,
        )
    finally:
        steps.close()
    print(
        f"base '{base.name}' registered: {base.architecture} {base.guest_os}, "
        f"sha256 {base.sha256[:16]}…"
    )
    return 0


def cmd_base_list(args: argparse.Namespace, extra: list[str]) -> int:
    from vmwu.sizes import format_size

    cat = _catalog(args.catalog)
    bases = cat.list()
    if args.json:
        print(json.dumps([b.to_dict() for b in bases], indent=2))
        return 0
    if not bases:
        print(f"the catalog {cat.path} is empty; run `vmwu base build tiny`")
        return 0
    print(f"{'ID':>3}  {'NAME':<16} {'ARCH':<8} {'OS':<10} {'BOOT':<14} {'SIZE':>10}  SHA256")
    for b in bases:
        print(
            f"{b.id:>3}  {b.name:<16} {b.architecture:<8} {b.guest_os:<10} {b.boot_method:<14} "
            f"{format_size(b.size):>10}  {b.sha256[:16]}"
        )
    return 0


def cmd_base_show(args: argparse.Namespace, extra: list[str]) -> int:
    base = _catalog(args.catalog).get(args.name)
    data = base.to_dict()
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        for key, value in data.items():
            if key == "files":
                for f in value:
                    print(
                        f"file.{f['role']:<11} {f['path']}  "
                        f"({f['format']}, {f['size']} bytes, sha256 {f['sha256']})"
                    )
            else:
                print(f"{key:<16} {value}")
    return 0


def cmd_base_add(args: argparse.Namespace, extra: list[str]) -> int:
    from vmwu.bases.register import add_base

    base = add_base(
        _catalog(args.catalog),
        name=args.name,
        disk=Path(args.disk) if args.disk else None,
        kernel=Path(args.kernel) if args.kernel else None,
        initrd=Path(args.initrd) if args.initrd else None,
        architecture=args.arch,
        guest_os=args.os,
        description=args.description or "",
        filesystem=args.filesystem,
        cmdline=args.cmdline,
        script_template=Path(args.script_template) if args.script_template else None,
        disk_format=args.format,
        replace=args.replace,
    )
    print(f"base '{base.name}' registered: sha256 {base.sha256}")
    return 0


def cmd_base_import(args: argparse.Namespace, extra: list[str]) -> int:
    """`vmwu base import IMAGE` (issue 6; vmwu/bases/importer.py)."""
    from vmwu.bases.importer import import_base
    from vmwu.ui import Steps

    steps = Steps(quiet=args.quiet)
    try:
        base = import_base(
            _catalog(args.catalog),
            Path(args.image),
            name=args.name,
            fmt=args.format,
            guest_os=args.os,
            architecture=args.arch,
            via=args.via,
            input_device=args.input_device,
            output_device=args.output_device,
            cdrom_device=args.cdrom_device,
            filesystem=args.filesystem,
            script_template=Path(args.script_template) if args.script_template else None,
            description=args.description or "",
            replace=args.replace,
            step=steps.step,
        )
    finally:
        steps.close()
    print(
        f"base '{base.name}' registered: {base.architecture} {base.guest_os}, boots from "
        f"its disk ({base.format}), sha256 {base.sha256[:16]}…"
    )
    return 0


def cmd_base_remove(args: argparse.Namespace, extra: list[str]) -> int:
    cat = _catalog(args.catalog)
    base = cat.get(args.name)
    cat.remove(base.name)
    print(f"base '{base.name}' removed from {cat.path} (its files are left in {base.location})")
    return 0


# -- doctor / cache ------------------------------------------------------------------------


def cmd_doctor(args: argparse.Namespace, extra: list[str]) -> int:
    from vmwu.doctor import diagnose, format_report

    report = diagnose(catalog=args.catalog)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0 if report["ok"] else int(ExitCode.MISSING_TOOL)


def cmd_cache(args: argparse.Namespace, extra: list[str]) -> int:
    from vmwu import cache_report
    from vmwu.cache import NodeCache

    cache = NodeCache(limit=args.cache_limit)
    if args.action == "clean":
        print(cache_report.removal("clean", cache, cache.clean()))
    elif args.action == "trim":
        if cache.limit is None:
            print(f"{cache.root}: no cache limit set (--cache-limit or $VMWU_CACHE_LIMIT)")
        else:
            print(cache_report.removal("trim", cache, cache.trim()))
    elif args.json:
        print(json.dumps(cache_report.info(cache), indent=2))
    else:
        print(cache_report.format_info(cache_report.info(cache)))
    return 0


# -- main -----------------------------------------------------------------------------------


_Commands = argparse._SubParsersAction  # the type of add_subparsers()'s result


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="vmwu",
        allow_abbrev=False,
        description="Virtual Machine Work Units: pack an application into a VM work unit, "
        "run it many times under QEMU.",
    )
    p.add_argument("--version", action="version", version=f"vmwu {__version__}")
    p.add_argument(
        "--debug", action="store_true", help="log every external command; tracebacks on errors"
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    # parsed by their own modules (see main): listed here for the help
    sub.add_parser("pack", help="pack an application into a work unit (.ova)", add_help=False)
    sub.add_parser("run", help="launch one instance of a work unit", add_help=False)
    sub.add_parser("sweep", help="run a parameter sweep (Nimrod plan) locally, on Slurm or Dask")
    sub.add_parser("wrap", help="run a BOINC-style job.xml (host and VM tasks, checkpoints)")

    _add_unit_commands(sub)
    _add_node_commands(sub)
    b = sub.add_parser("base", help="base images: build, list, show, add, remove")
    bsub = b.add_subparsers(dest="base_command", required=True, parser_class=_Parser)
    _add_base_build(bsub)
    _add_catalog_commands(bsub)
    _add_base_add(bsub)
    _add_base_import(bsub)
    s = bsub.add_parser("remove", help="remove a base from the catalog")
    s.add_argument("name")
    s.add_argument("--catalog")
    s.set_defaults(func=cmd_base_remove)
    return p


def _add_unit_commands(sub: _Commands[_Parser]) -> None:
    """``vmwu extract`` and ``vmwu inspect``: looking into a unit or an output image."""
    s = sub.add_parser("extract", help="copy the files out of an output image or a unit's disk")
    s.add_argument("image", help="an output image (raw/qcow2) or a .ova")
    s.add_argument("dest", help="directory to copy the files into")
    s.add_argument(
        "--component", default="output-disk", help="for a .ova: output-disk (default) or app-disk"
    )
    s.set_defaults(func=cmd_extract)

    s = sub.add_parser("inspect", help="summarise a unit and verify its manifest")
    s.add_argument("unit")
    s.add_argument("--json", action="store_true")
    s.add_argument("--no-verify", action="store_true", help="skip hashing the members")
    s.set_defaults(func=cmd_inspect)


def _add_node_commands(sub: _Commands[_Parser]) -> None:
    """``vmwu doctor`` and ``vmwu cache``: this node's tools and cache."""
    s = sub.add_parser("doctor", help="check tools, accelerator, catalog and cache")
    s.add_argument("--catalog")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_doctor)

    s = sub.add_parser("cache", help="show, trim or clean the node cache")
    s.add_argument("action", choices=("info", "trim", "clean"), nargs="?", default="info")
    s.add_argument(
        "--cache-limit",
        metavar="SIZE",
        help="size limit, e.g. 20G, or none (default $VMWU_CACHE_LIMIT, else none)",
    )
    s.add_argument("--json", action="store_true", help="info as JSON")
    s.set_defaults(func=cmd_cache)


def _add_base_build(bsub: _Commands[_Parser]) -> None:
    s = bsub.add_parser("build", help="build a base from distribution packages and register it")
    s.add_argument("kind", choices=("tiny", "debian"))
    s.add_argument("--arch", default="amd64", help="amd64 (default) or arm64 (built on any host)")
    s.add_argument("--name")
    s.add_argument("--kernel-deb", help="use this linux-image .deb instead of downloading one")
    s.add_argument("--busybox-deb", help="use this busybox-static .deb instead of downloading one")
    # `base build debian` (vmwu/bases/debian.py, docs/bases.md)
    s.add_argument("--release", help="debian: Debian release or suite (default: bookworm)")
    s.add_argument("--packages", help="debian: extra packages, comma-separated")
    s.add_argument("--mirror", help="debian: Debian mirror URL (default: deb.debian.org)")
    s.add_argument("--replace", action="store_true")
    s.add_argument("--catalog")
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=cmd_base_build)


def _add_catalog_commands(bsub: _Commands[_Parser]) -> None:
    """``vmwu base list`` and ``vmwu base show``."""
    s = bsub.add_parser("list", help="list the catalog")
    s.add_argument("--catalog")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_base_list)
    s = bsub.add_parser("show", help="show one base")
    s.add_argument("name")
    s.add_argument("--catalog")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_base_show)


def _add_base_add(bsub: _Commands[_Parser]) -> None:
    s = bsub.add_parser("add", help="register existing image files as a base")
    s.add_argument("name")
    s.add_argument("disk", nargs="?", help="a bootable disk image (boot method: disk)")
    s.add_argument("--kernel", help="kernel for direct boot (with --initrd)")
    s.add_argument("--initrd")
    s.add_argument("--cmdline", default="", help="kernel command line for direct boot")
    s.add_argument("--arch", default="x86_64")
    s.add_argument("--os", default="linux")
    s.add_argument("--format", help="disk format (default: what the inspection finds)")
    s.add_argument("--filesystem", default="ext4")
    s.add_argument("--script-template")
    s.add_argument("--description")
    s.add_argument("--replace", action="store_true")
    s.add_argument("--catalog")
    s.set_defaults(func=cmd_base_add)


def _add_base_import(bsub: _Commands[_Parser]) -> None:
    s = bsub.add_parser(
        "import", help="register an existing bootable disk image (BIOS) that lacks vmwu"
    )
    s.add_argument("image", help="a whole-disk image with a boot loader")
    s.add_argument("--name", help="catalog name (default: the image's file name)")
    s.add_argument("--format", help="qcow2, raw, vmdk, vdi, … (default: detected)")
    s.add_argument("--os", default="linux")
    s.add_argument("--arch", default="x86_64")
    s.add_argument(
        "--via",
        choices=("cloud-init", "daemon"),
        default="cloud-init",
        help="how the guest runs the auto-run script: cloud-init (a NoCloud seed starts "
        "the vmwu agent) or daemon (the image's own script-bin daemon, thesis 5.1.4.1)",
    )
    s.add_argument("--input-device", help="thesis base-image-input-mount-device")
    s.add_argument("--output-device", help="thesis base-image-output-mount-device")
    s.add_argument("--cdrom-device", help="thesis base-image-cdrom-mount-device")
    s.add_argument("--filesystem", default="ext4")
    s.add_argument("--script-template")
    s.add_argument("--description")
    s.add_argument("--replace", action="store_true")
    s.add_argument("--catalog")
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=cmd_base_import)


SUBSYSTEMS = {
    "sweep": "vmwu.sweep.cli",
    "wrap": "vmwu.wrapper.cli",
    "pool": "vmwu.run.poolserve",
}

RUN_HELP = """usage: vmwu run UNIT.ova [--OPTION VALUE ...] [-- ARGS ...]

Launch one instance of a work unit. ARGS become the instance parameters (/cdrom/param).
Options (thesis Appendix D names; -name value also works; --config FILE reads them):
"""


PACK_HELP = """usage: vmwu pack SPEC [-o UNIT.ova] [--catalog FILE] [-q] [--OPTION VALUE ...]

Pack SPEC (vmwu.toml, or a thesis-style .gvap) into a work unit, ./PACKAGE-NAME.ova by
default. Every spec option can be given or overridden on the command line (thesis
Appendix A names; -name value also works):
"""


def _pack_help() -> str:
    from vmwu.pack.spec import OPTIONS

    lines = [PACK_HELP]
    for o in OPTIONS:
        lines.append(f"  --{o.name:<34} {o.help}")
    return "\n".join(lines)


def _run_help() -> str:
    from vmwu.run.options import OPTIONS

    lines = [RUN_HELP]
    for o in OPTIONS:
        lines.append(f"  --{o.name:<24} {o.help}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:  # a frozen vmwu whose entry is this function: maybe the process guard
        from vmwu.guard import dispatch

        dispatch()
    args_list = list(sys.argv[1:] if argv is None else argv)
    debug = (
        "--debug" in args_list[: args_list.index("--")]
        if "--" in args_list
        else "--debug" in args_list
    )
    if debug:
        args_list.remove("--debug")
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # qemu.qmp logs a QEMU that is already going away (a failed connect while vmwu stops
    # it) as an error; vmwu reports what matters itself, in one line
    logging.getLogger("qemu.qmp").setLevel(logging.DEBUG if debug else logging.CRITICAL)
    try:
        # pack and run take free-form --OPTION VALUE lists (thesis appendices A and D)
        command = args_list[0] if args_list else ""
        if command in ("pack", "run"):
            rest = args_list[1:]
            if rest[:1] in (["-h"], ["--help"]):
                print(_pack_help() if command == "pack" else _run_help())
                return 0
            func = cmd_pack if command == "pack" else cmd_run
            return int(func(argparse.Namespace(), rest))
        # Subsystems with command lines of their own: `vmwu sweep ...` (vmwu/sweep/cli.py)
        # and `vmwu wrap ...` (vmwu/wrapper/cli.py) parse their arguments themselves.
        if command in SUBSYSTEMS:
            import importlib

            try:
                module = importlib.import_module(SUBSYSTEMS[command])
            except ModuleNotFoundError as exc:
                if exc.name != SUBSYSTEMS[command]:
                    raise
                raise BadInput(f"`vmwu {command}` is not available in vmwu {__version__}") from None
            return int(module.main(args_list[1:]))
        ns = build_parser().parse_args(args_list)
        return int(ns.func(ns, []))
    except VmwuError as exc:
        if debug:
            log.exception("vmwu failed")
        print(f"vmwu: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("vmwu: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    except BrokenPipeError:
        return 0
    except Exception:  # a bug: say so, with the traceback only under --debug
        if debug:
            raise
        import traceback

        last = traceback.format_exc().strip().splitlines()[-1]
        print(
            f"vmwu: internal error: {last} "
            f"(a bug in vmwu {__version__}; rerun with --debug and report it)",
            file=sys.stderr,
        )
        return int(ExitCode.INTERNAL)


if __name__ == "__main__":
    sys.exit(main())
