"""The packager's spec: every option of thesis Appendix A plus a few modern ones.

Kept apart: the schema (:class:`Spec`, whose field defaults are the option defaults, and
the :data:`OPTIONS` table), loading (:func:`load_spec`: read the file, apply command-line
overrides, anchor relative paths) and validation (:func:`validate_spec`). Paths are made
absolute here but never checked for existence: that is ``pack``'s job, and it names the
option's origin (``spec.origin("app-import-dir")``) when one is missing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

from vmwu.errors import BadInput, SpecError
from vmwu.options import OptionDef, RawValue, Resolved, normalize, read_config, resolve
from vmwu.options import OptionKind as K
from vmwu.sizes import MAX_DISK_SIZE, format_over, format_size

MiB = 1024**2


@dataclass(frozen=True, kw_only=True)
class Spec:
    package_name: str = "unit"
    app_import_dir: Path
    input_import_dir: Path | None = None
    app_launch: str
    app_architecture: str = "x86_64"
    app_os: str = "linux"
    app_buffer: int = 16 * MiB
    app_output_size: int = 64 * MiB
    app_dir: str = "/app"
    app_output_dir: str = "/output"
    app_cdrom_dir: str = "/cdrom"
    app_working_dir: str | None = None
    base_image: str | None = None
    base_image_autosource: bool = True
    base_image_autosource_interaction: bool = False
    base_image_filesystem: str | None = None
    base_image_input_mount_device: str | None = None
    base_image_output_mount_device: str | None = None
    base_image_cdrom_mount_device: str | None = None
    cdrom_as_hard_disk: bool | None = None
    compress: bool = True
    current_directory: Path | None = None
    edit_script: bool = False
    edit_vm: bool = False
    embed_base: bool = False
    instance_script_cmd: str = ""
    instance_post_script_cmd: str = ""
    script_name: str = "autorun.sh"
    script_template: Path | None = None
    text_editor: str | None = None
    vmddb: Path | None = None
    vmm_type: str = "qemu"
    vmm_architecture: str | None = None
    vmm_directory: str | None = None
    vmm_executable: str | None = None
    vmm_local: bool | None = None
    vmm_memory: int = 512
    vmm_cpus: int = 1
    description: str = ""
    timeout: float | None = None
    # issue 6: Debian packages installed into a layer over the base (vmwu/layer.py), and
    # the format of the unit's disks (qcow2, or vmdk streamOptimized for other OVF tools)
    guest_packages: tuple[str, ...] | None = None
    disk_format: str = "qcow2"
    spec_path: Path | None = field(default=None, compare=False)
    # Provenance, not part of the spec's value: option name -> where it was set, and
    # option name -> directory a relative path in it is relative to.
    origins: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    anchors: Mapping[str, Path] = field(default_factory=dict, compare=False, repr=False)

    def origin(self, option: str) -> str:
        """``"mandelbrot.gvap:3"``, ``"command line (--app-launch)"`` or ``"default"``."""
        return self.origins.get(normalize(option), "default")

    def anchor(self, option: str) -> Path:
        """Directory that a relative path given in ``option`` is relative to (e.g. for a
        ``base-image`` that turns out to be a file)."""
        if normalize(option) in self.anchors:
            return self.anchors[normalize(option)]
        return self.spec_path.parent if self.spec_path else Path.cwd()


def _opt(name: str, kind: K, help: str, **extra: Any) -> OptionDef:
    """An option whose default is the default of the matching :class:`Spec` field."""
    default = {f.name: f.default for f in fields(Spec)}[name.replace("-", "_")]
    return OptionDef(name, kind, None if default is MISSING else default, help, **extra)


_NODE = "node-specific: accepted and ignored by pack; give it to `vmwu run` instead"
_EDIT_VM = (
    "editing a shared, content-addressed base in place would change every unit using it; "
    "build a new base (`vmwu base build`) or use instance-script-cmd"
)

OPTIONS: tuple[OptionDef, ...] = (
    # Thesis Appendix A, alphabetical.
    _opt("app-architecture", K.STR, "architecture the application needs (x86, x86_64, …)"),
    _opt("app-buffer", K.SIZE, "free space added to the application disk for temporary files"),
    _opt("app-cdrom-dir", K.STR, "where the instance ISO is mounted in the guest"),
    _opt("app-dir", K.STR, "where the application disk is mounted in the guest"),
    _opt(
        "app-import-dir",
        K.PATH,
        "host directory copied to the root of the application disk",
        aliases=("app-import",),
    ),
    _opt("app-launch", K.COMMAND, "shell command that starts the application in the guest"),
    _opt("app-os", K.STR, "operating system the application needs (linux, linux2.6, …)"),
    _opt("app-output-dir", K.STR, "where the output disk is mounted in the guest"),
    _opt("app-output-size", K.SIZE, "size of the output disk"),
    _opt("app-working-dir", K.STR, "working directory of app-launch (default: app-output-dir)"),
    _opt("base-image", K.STR, "base to run on: catalog name, sha256 (prefix) or image file"),
    _opt("base-image-autosource", K.BOOL, "pick a base from the catalog by architecture and OS"),
    _opt(
        "base-image-autosource-interaction",
        K.BOOL,
        "choose the base from a list instead of taking the best match",
        aliases=("vm-interaction",),
    ),
    _opt("base-image-cdrom-mount-device", K.STR, "thesis: guest device of the instance CD-ROM"),
    _opt("base-image-filesystem", K.STR, "file system of the unit's disks: ext2, ext3 or ext4"),
    _opt("base-image-input-mount-device", K.STR, "thesis: guest device of the application disk"),
    _opt("base-image-output-mount-device", K.STR, "thesis: guest device of the output disk"),
    _opt("cdrom-as-hard-disk", K.BOOL, "attach the instance ISO as a hard disk, not a CD-ROM"),
    _opt("compress", K.BOOL, "compress the unit's disks"),
    OptionDef("config", K.PATH, None, "the spec file (command line only)", cli_only=True),
    _opt("current-directory", K.PATH, "directory that relative paths are relative to"),
    _opt("edit-script", K.BOOL, "open the generated auto-run script in text-editor before packing"),
    _opt("edit-vm", K.BOOL, "edit the base interactively before packing", unsupported=_EDIT_VM),
    _opt("input-import-dir", K.PATH, "host directory copied to data/ on the application disk"),
    _opt("instance-post-script-cmd", K.COMMAND, "shell command run after app-launch"),
    _opt("instance-script-cmd", K.COMMAND, "shell command run before app-launch"),
    _opt("package-name", K.STR, "name of the unit (NAME.ova); default: the spec file's name"),
    _opt("script-name", K.STR, "file name of the generated auto-run script"),
    _opt("script-template", K.PATH, "template of the auto-run script (default: the base's)"),
    _opt("text-editor", K.STR, "editor command for edit-script (default: $VISUAL, $EDITOR, vi)"),
    _opt(
        "vmddb",
        K.PATH,
        "base catalog (thesis: virtual machine disk database)",
        aliases=("virtual-machine-disk-database",),
    ),
    _opt("vmm-architecture", K.STR, "thesis: QEMU architecture for edit-vm; ignored by pack"),
    _opt("vmm-directory", K.STR, f"directory holding QEMU; {_NODE}"),
    _opt("vmm-executable", K.STR, f"QEMU executable; {_NODE}"),
    _opt("vmm-local", K.BOOL, f"QEMU is in a local directory; {_NODE}"),
    _opt("vmm-type", K.STR, "virtual machine monitor; only qemu"),
    # Modern additions.
    _opt("description", K.STR, "one-line description recorded in the unit"),
    _opt("embed-base", K.BOOL, "embed the base in the .ova instead of referencing its sha256"),
    _opt("timeout", K.FLOAT, "default wall-clock limit of `vmwu run`, in seconds"),
    _opt("vmm-cpus", K.INT, "default number of virtual CPUs"),
    _opt("vmm-memory", K.MIB, "default guest memory: 512 (MiB), 512M, 1G"),
    # issue 6 (docs/bases.md)
    OptionDef(
        "guest-packages",
        K.STR,
        None,
        "Debian packages to add to the base for this unit (a list, or comma-separated)",
    ),
    _opt(
        "disk-format",
        K.STR,
        "format of the unit's disks: qcow2, or vmdk (streamOptimized)",
        aliases=("format",),
    ),
)

_PATH_FIELDS = ("app-import-dir", "input-import-dir", "script-template", "vmddb")


# --- loading ------------------------------------------------------------------------------


def load_spec(
    path: Path | None, overrides: Sequence[RawValue] = (), *, cwd: Path | None = None
) -> Spec:
    """The spec in ``path`` (``.toml``, else the thesis ``.gvap`` form) with command-line
    ``overrides`` applied (see ``vmwu.options.parse_cli``), validated.

    Relative paths in the file are relative to the file's directory, those on the command
    line to ``cwd``; when ``current-directory`` is set, all are relative to it (and it is
    itself relative to where it was given). A ``config`` override names the spec file
    when ``path`` is None.
    """
    cwd = (cwd or Path.cwd()).absolute()
    path = _config_path(path, overrides)
    file_path = cwd / path.expanduser() if path else None
    file_values = read_config(file_path, source=str(path)) if path and file_path else []
    for raw in (*file_values, *overrides):
        # an empty value means "the default" for every other option; a unit must have a name
        if normalize(raw.name) == "package-name" and not str(raw.value).strip():
            hint = 'name the unit, e.g. package-name="mandel"'
            raise SpecError(raw.origin, "package-name is empty", hint=hint)
    r = resolve(OPTIONS, file_values, overrides)
    anchors = _anchors(r, file_path.parent if file_path else cwd, cwd)
    paths = {name: _path(r, name, anchors) for name in _PATH_FIELDS}
    if paths["app-import-dir"] is None:
        _missing(r, "app-import-dir", file_path, 'e.g. app-import-dir="./app"')
    spec = _spec(r, file_path, anchors, paths)
    validate_spec(spec)
    return spec


def _anchors(r: Resolved, file_dir: Path, cwd: Path) -> dict[str, Path]:
    """Option -> the directory its relative path is relative to: the spec file's for the
    file's values, ``cwd`` for the command line's, ``current-directory`` when it is set."""
    anchors = {name: cwd if name in r.from_cli else file_dir for name in r.values}
    current = _path(r, "current-directory", anchors)
    if current:  # every other relative path is relative to it
        anchors = {
            name: anchors[name] if name == "current-directory" else current for name in anchors
        }
    return anchors


def _spec(
    r: Resolved,
    file_path: Path | None,
    anchors: dict[str, Path],
    paths: Mapping[str, Path | None],
) -> Spec:
    """The :class:`Spec` of resolved values (not validated yet)."""
    app_import_dir = paths["app-import-dir"]
    assert app_import_dir is not None  # load_spec said it was missing
    return Spec(
        package_name=_package_name(r, file_path),
        app_import_dir=app_import_dir,
        input_import_dir=paths["input-import-dir"],
        app_launch=r.optional("app-launch", str) or "",
        app_architecture=r.get("app-architecture", str),
        app_os=r.get("app-os", str),
        app_buffer=r.get("app-buffer", int),
        app_output_size=r.get("app-output-size", int),
        app_dir=_guest_dir(r.get("app-dir", str)),
        app_output_dir=_guest_dir(r.get("app-output-dir", str)),
        app_cdrom_dir=_guest_dir(r.get("app-cdrom-dir", str)),
        app_working_dir=_optional_guest_dir(r.optional("app-working-dir", str)),
        base_image=r.optional("base-image", str),
        base_image_autosource=r.get("base-image-autosource", bool),
        base_image_autosource_interaction=r.get("base-image-autosource-interaction", bool),
        base_image_filesystem=_lower(r.optional("base-image-filesystem", str)),
        base_image_input_mount_device=r.optional("base-image-input-mount-device", str),
        base_image_output_mount_device=r.optional("base-image-output-mount-device", str),
        base_image_cdrom_mount_device=r.optional("base-image-cdrom-mount-device", str),
        cdrom_as_hard_disk=r.optional("cdrom-as-hard-disk", bool),
        compress=r.get("compress", bool),
        current_directory=_path(r, "current-directory", anchors),
        edit_script=r.get("edit-script", bool),
        edit_vm=r.get("edit-vm", bool),
        embed_base=r.get("embed-base", bool),
        instance_script_cmd=r.get("instance-script-cmd", str),
        instance_post_script_cmd=r.get("instance-post-script-cmd", str),
        script_name=r.get("script-name", str),
        script_template=paths["script-template"],
        text_editor=r.optional("text-editor", str),
        vmddb=paths["vmddb"],
        vmm_type=r.get("vmm-type", str).strip().lower(),
        vmm_architecture=r.optional("vmm-architecture", str),
        vmm_directory=r.optional("vmm-directory", str),
        vmm_executable=r.optional("vmm-executable", str),
        vmm_local=r.optional("vmm-local", bool),
        vmm_memory=r.get("vmm-memory", int),
        vmm_cpus=r.get("vmm-cpus", int),
        description=r.get("description", str),
        timeout=r.optional("timeout", float),
        guest_packages=_words(r.optional("guest-packages", str)),
        disk_format=r.get("disk-format", str).strip().lower(),
        spec_path=file_path,
        origins=MappingProxyType(dict(r.origins)),
        anchors=MappingProxyType(anchors),
    )


def _config_path(path: Path | None, overrides: Sequence[RawValue]) -> Path | None:
    given = [raw for raw in overrides if normalize(raw.name) == "config"]
    if not given:
        return path
    if path is not None or len(given) > 1:
        raise BadInput("the spec file is given more than once", hint="give one spec file")
    value = given[0].value
    if not isinstance(value, str) or not value.strip():
        raise SpecError(given[0].origin, "config needs a file name")
    return Path(value)


def _path(r: Resolved, name: str, anchors: Mapping[str, Path]) -> Path | None:
    text = r.optional(name, str)
    return None if text is None else anchors[name] / Path(text).expanduser()


def _package_name(r: Resolved, file_path: Path | None) -> str:
    if r.origin("package-name") != "default":
        return r.get("package-name", str).strip()
    if file_path is None:
        return "unit"
    # A spec named like the tool (vmwu.toml) is named after its directory instead.
    return file_path.parent.name if file_path.stem.lower() == "vmwu" else file_path.stem


def _guest_dir(path: str) -> str:
    """``/output/`` (as the thesis writes it) → ``/output``."""
    return path.strip().rstrip("/") or path.strip()


def _optional_guest_dir(path: str | None) -> str | None:
    return None if path is None else _guest_dir(path)


def _words(text: str | None) -> tuple[str, ...] | None:
    """``"g++, make"`` or ``"g++ make"`` → ``("g++", "make")``; nothing → None."""
    return tuple(w for w in re.split(r"[\s,]+", text or "") if w) or None


def _lower(text: str | None) -> str | None:
    return text.strip().lower() if text else None


def _missing(r: Resolved, name: str, file_path: Path | None, hint: str) -> NoReturn:
    origin = r.origin(name)
    if origin != "default":
        raise SpecError(origin, f"{name} is empty", hint=hint)
    raise SpecError(_where(origin, file_path), f"{name} is required", hint=hint)


def _where(origin: str, spec_path: Path | None) -> str:
    """Where to point an error about an option: its origin, else the spec file."""
    if origin != "default":
        return origin
    return str(spec_path) if spec_path else "command line"


# --- validation ---------------------------------------------------------------------------

_SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")
FILESYSTEMS = ("ext2", "ext3", "ext4")
VMM_TYPES = ("qemu",)
DISK_FORMATS = ("qcow2", "vmdk")
_PACKAGE = re.compile(r"[a-z0-9][a-z0-9.+-]+(:[a-z0-9]+)?(=[A-Za-z0-9.+~:-]+)?")


_Fail = Callable[..., NoReturn]  # fail(option, message, hint=None)


def validate_spec(spec: Spec) -> None:
    """Raise :class:`SpecError` naming the option's origin for the first invalid value."""

    def fail(option: str, message: str, hint: str | None = None) -> NoReturn:
        raise SpecError(_where(spec.origin(option), spec.spec_path), message, hint=hint)

    for option in OPTIONS:  # also caught while reading; here for hand-made specs
        if option.unsupported and getattr(spec, option.name.replace("-", "_"), None):
            fail(option.name, f"option {option.name} is not supported: {option.unsupported}")
    _check_launch_and_name(spec, fail)
    _check_numbers(spec, fail)
    _check_guest_dirs(spec, fail)
    _check_choices(spec, fail)


def _check_launch_and_name(spec: Spec, fail: _Fail) -> None:
    if not spec.app_launch.strip():
        empty = "is empty" if spec.origin("app-launch") != "default" else "is required"
        fail(
            "app-launch",
            f"app-launch {empty}",
            'the command that starts the application, e.g. app-launch="/app/run \\"$@\\""',
        )
    if not _SAFE_NAME.fullmatch(spec.package_name):
        fail(
            "package-name",
            f"package-name {spec.package_name!r} is not a safe file name",
            "use letters, digits, '.', '_' and '-', not starting with '.'",
        )


def _check_numbers(spec: Spec, fail: _Fail) -> None:
    """Disk sizes, memory, CPUs and the timeout."""
    if spec.app_output_size < MiB:
        fail("app-output-size", f"app-output-size must be at least 1M, got {spec.app_output_size}")
    for name, size in (("app-output-size", spec.app_output_size), ("app-buffer", spec.app_buffer)):
        if size > MAX_DISK_SIZE:
            fail(
                name,
                f"{name} {format_over(size, MAX_DISK_SIZE)} is over the maximum disk size of "
                f"{format_size(MAX_DISK_SIZE)}",
                "an ext4 output disk costs the host only what the guest writes to it: "
                "ask for what the application may write",
            )
    for name, number in (("vmm-memory", spec.vmm_memory), ("vmm-cpus", spec.vmm_cpus)):
        if number < 1:
            fail(name, f"{name} must be at least 1, got {number}")
    if spec.timeout is not None and spec.timeout <= 0:
        fail("timeout", f"timeout must be more than 0 seconds, got {spec.timeout:g}")


def _check_guest_dirs(spec: Spec, fail: _Fail) -> None:
    """The guest's mount points and working directory: absolute, usable, distinct."""
    mounts = {
        "app-dir": spec.app_dir,
        "app-output-dir": spec.app_output_dir,
        "app-cdrom-dir": spec.app_cdrom_dir,
    }
    for name, guest in (*mounts.items(), ("app-working-dir", spec.app_working_dir)):
        if guest is not None and (not guest.startswith("/") or "\n" in guest or "\0" in guest):
            fail(name, f"{name} must be an absolute path in the guest, got {guest!r}")
    for name, guest in mounts.items():
        # the agent is told a mount point on the kernel command line (vmwu.out=DIR), which
        # white space would split: `vmwu run` refuses it, so packing it is refused too
        if any(c.isspace() for c in guest):
            fail(name, f"{name} {guest!r} contains white space", "use a path without spaces")
    clashes = [n for n, g in mounts.items() if g == "/" or list(mounts.values()).count(g) > 1]
    if clashes:  # blame an option that was given rather than a default
        name = next((n for n in clashes if spec.origin(n) != "default"), clashes[0])
        fail(
            name,
            f"{name} {mounts[name]!r} cannot be a mount point",
            "app-dir, app-output-dir and app-cdrom-dir must be distinct, and not /",
        )


def _check_choices(spec: Spec, fail: _Fail) -> None:
    """The script's name, and the options that name one of a few choices."""
    if spec.script_name in ("", ".", "..") or any(c in spec.script_name for c in "/\0\n"):
        fail("script-name", f"script-name must be a plain file name, got {spec.script_name!r}")
    if spec.base_image_filesystem and spec.base_image_filesystem not in FILESYSTEMS:
        fail(
            "base-image-filesystem",
            f"base-image-filesystem {spec.base_image_filesystem!r} is not supported",
            f"use one of: {', '.join(FILESYSTEMS)}",
        )
    for pkg in spec.guest_packages or ():
        if not _PACKAGE.fullmatch(pkg):
            fail("guest-packages", f"guest-packages: {pkg!r} is not a Debian package name")
    if spec.disk_format not in DISK_FORMATS:
        fail(
            "disk-format",
            f"disk-format {spec.disk_format!r} is not supported",
            f"use one of: {', '.join(DISK_FORMATS)}",
        )
    if spec.vmm_type not in VMM_TYPES:
        fail(
            "vmm-type",
            f"vmm-type {spec.vmm_type!r} is not supported (supported: qemu)",
            "vmwu runs units under QEMU; KVM is used automatically by `vmwu run` when usable",
        )
