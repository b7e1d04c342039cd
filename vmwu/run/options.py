"""The launcher's options (thesis Appendix D plus vmwu's own), declared once: they feed
``vmwu run``'s command line (``--name value`` and the thesis's ``-name value``), its
``--config`` file (TOML or ``name=value`` lines) and the docs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vmwu.errors import BadInput
from vmwu.options import OptionDef, OptionKind, RawValue, Resolved, parse_cli, read_config, resolve
from vmwu.run.prepare import RunOptions

K = OptionKind

OPTIONS: tuple[OptionDef, ...] = (
    OptionDef(
        "vmwu", K.PATH, None, "the work unit to launch (or give it first)", aliases=("gva", "unit")
    ),
    OptionDef(
        "config",
        K.PATH,
        None,
        "a file of launcher options (TOML or name=value lines)",
        cli_only=True,
    ),
    OptionDef("files", K.STR, None, "files to put on the instance ISO: FILE1,FILE2,..."),
    OptionDef(
        "files-destination", K.STR, None, "their names on the ISO, in the same order: D1,D2,..."
    ),
    OptionDef(
        "output-directory",
        K.PATH,
        None,
        "where the outputs go (default ./UNIT-output; must be new or empty)",
    ),
    OptionDef(
        "output-filename",
        K.STR,
        None,
        "also keep the output disk image under this name (.qcow2 → compressed qcow2, else raw)",
    ),
    OptionDef(
        "parameters-filename",
        K.STR,
        "param",
        "name of the space-separated parameters file on the ISO",
    ),
    OptionDef(
        "base-image",
        K.STR,
        None,
        "use this catalog base instead of the unit's (name, id or sha256)",
    ),
    OptionDef("input-image", K.PATH, None, "use this application disk instead of the unit's"),
    OptionDef(
        "output-image", K.PATH, None, "use (a copy of) this output disk instead of the unit's"
    ),
    OptionDef("cdrom-image", K.PATH, None, "start the instance ISO from this ISO's files"),
    OptionDef(
        "cdrom-as-hard-disk",
        K.BOOL,
        None,
        "attach the instance ISO as a virtio disk (1) or a SCSI CD-ROM (0); default: the unit's",
    ),
    OptionDef("compressed", K.BOOL, None, "accepted for compatibility: compression is detected"),
    OptionDef("current-directory", K.PATH, None, "directory that relative paths are relative to"),
    OptionDef("instance-script", K.PATH, None, "a script run in the guest before the application"),
    OptionDef(
        "instance-post-script", K.PATH, None, "a script run in the guest after the application"
    ),
    OptionDef(
        "overwrite",
        K.BOOL,
        False,
        "write the instance's application and output disks back into the unit",
    ),
    OptionDef("vmm-type", K.STR, "qemu", "virtual machine monitor (only qemu)"),
    OptionDef("vmm-architecture", K.STR, None, "guest architecture (default: the base's)"),
    OptionDef(
        "vmm-directory", K.PATH, None, "directory holding the QEMU binary (and its firmware)"
    ),
    OptionDef("vmm-executable", K.STR, None, "QEMU binary name or path"),
    OptionDef(
        "vmm-local", K.BOOL, False, "use the QEMU in vmm-directory rather than the one on PATH"
    ),
    OptionDef("vmm-graphics", K.BOOL, False, "show the guest's screen (for debugging a unit)"),
    OptionDef("vmm-memory", K.MIB, None, "guest memory in MiB (default: the unit's)"),
    OptionDef(
        "vmm-no-virtualisation",
        K.BOOL,
        False,
        "emulate (TCG) even where KVM is usable",
        aliases=("vmm-no-virtualization",),
    ),
    OptionDef("accel", K.STR, "auto", "auto | kvm | tcg"),
    OptionDef("cpus", K.INT, None, "guest CPUs (default: the unit's)"),
    OptionDef("timeout", K.FLOAT, None, "stop the instance after this many seconds (exit 244)"),
    OptionDef(
        "boot-timeout",
        K.FLOAT,
        120.0,
        "give up if the agent has not started after this many seconds (exit 243)",
    ),
    OptionDef("keep", K.BOOL, False, "keep the instance directory (overlays, ISO, logs)"),
    OptionDef(
        "warm",
        K.BOOL,
        True,
        "resume a saved booted guest (saved once per node) instead of booting; "
        "--no-warm boots cold",
    ),
    OptionDef(
        "print-cmdline", K.BOOL, False, "print the QEMU command line and exit without running"
    ),
    OptionDef("catalog", K.PATH, None, "base catalog (default $VMWU_CATALOG or the data dir)"),
    OptionDef(
        "cache-limit",
        K.STR,
        None,
        "size limit of the node cache, e.g. 20G, or none (default $VMWU_CACHE_LIMIT, else none)",
    ),
    OptionDef("quiet", K.BOOL, False, "no live status line"),
)


def _split_list(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    return tuple(v.strip() for v in value.split(",") if v.strip())


def parse_run_args(argv: Sequence[str], cwd: Path | None = None) -> tuple[RunOptions, bool]:
    """``vmwu run`` arguments → (RunOptions, quiet). ``argv`` excludes ``run``."""
    args = list(argv)
    params: list[str] = []
    if "--" in args:
        cut = args.index("--")
        params = args[cut + 1 :]
        args = args[:cut]
    unit_pos: str | None = None
    if args and not args[0].startswith("-"):
        unit_pos = args.pop(0)
    cli = parse_cli(args, OPTIONS)
    file_values: list[RawValue] = []
    config = next((r for r in reversed(cli) if r.name == "config"), None)
    base = cwd or Path.cwd()
    if config is not None:
        cfg_path = base / str(config.value)
        if not cfg_path.is_file():
            raise BadInput(f"{config.origin}: config file {cfg_path} does not exist")
        file_values = read_config(cfg_path)
    resolved = resolve(OPTIONS, file_values, cli)
    return _to_run_options(
        resolved, unit_pos, params, base, cfg_path.parent if config else None
    ), bool(resolved.get("quiet", bool))


def _to_run_options(
    r: Resolved, unit_pos: str | None, params: list[str], cwd: Path, cfg_dir: Path | None
) -> RunOptions:
    cur = r.optional("current-directory", str)
    root = (cwd / cur) if cur else cwd

    def path(name: str) -> Path | None:
        value = r.optional(name, str)
        if value is None:
            return None
        p = Path(value).expanduser()
        if p.is_absolute():
            return p
        from_file = r.origin(name) not in ("default",) and not r.origin(name).startswith(
            "command line"
        )
        anchor = cfg_dir if (from_file and cfg_dir is not None and not cur) else root
        return anchor / p

    unit = Path(unit_pos) if unit_pos else path("vmwu")
    if unit is None:
        raise BadInput("no work unit given", hint="vmwu run UNIT.ova [options] [-- args...]")
    if not unit.is_absolute():
        unit = root / unit
    vmm_type = (r.optional("vmm-type", str) or "qemu").lower()
    if vmm_type != "qemu":
        raise BadInput(
            f"{r.origin('vmm-type')}: vmm-type {vmm_type!r} is not supported (only qemu)"
        )
    files = tuple(
        root / f if not Path(f).is_absolute() else Path(f)
        for f in _split_list(r.optional("files", str))
    )
    return RunOptions(
        unit=unit,
        args=tuple(params),
        files=files,
        files_destination=_split_list(r.optional("files-destination", str)),
        output_directory=path("output-directory"),
        output_filename=r.optional("output-filename", str),
        base_image=r.optional("base-image", str),
        input_image=path("input-image"),
        output_image=path("output-image"),
        cdrom_image=path("cdrom-image"),
        cdrom_as_hard_disk=r.optional("cdrom-as-hard-disk", bool),
        parameters_filename=r.get("parameters-filename", str),
        instance_script=path("instance-script"),
        instance_post_script=path("instance-post-script"),
        overwrite=r.get("overwrite", bool),
        vmm_architecture=r.optional("vmm-architecture", str),
        vmm_executable=r.optional("vmm-executable", str),
        vmm_directory=path("vmm-directory"),
        vmm_local=r.get("vmm-local", bool),
        vmm_graphics=r.get("vmm-graphics", bool),
        vmm_memory=r.optional("vmm-memory", int),
        vmm_no_virtualisation=r.get("vmm-no-virtualisation", bool),
        accel=r.get("accel", str),
        cpus=r.optional("cpus", int),
        timeout=r.optional("timeout", float),
        boot_timeout=r.get("boot-timeout", float),
        keep=r.get("keep", bool),
        warm=r.get("warm", bool),
        print_cmdline=r.get("print-cmdline", bool),
        workdir=cwd,
        catalog=path("catalog"),
        cache_limit=_cache_limit(r),
    )


def _cache_limit(r: Resolved) -> str | None:
    """The cache-limit option as given (checked here, where its origin is known)."""
    from vmwu.cache import limit_from

    value = r.optional("cache-limit", str)
    if value is not None:
        limit_from(value, origin=r.origin("cache-limit"))
    return value
