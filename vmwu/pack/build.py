"""``vmwu pack``: a spec and an application folder in, a work unit (``.ova``) out.

Steps (thesis 5.2.1): choose the base (named, or auto-sourced from the catalog), generate
the auto-run script from its template, stage the application disk's tree (app folder at
the root, input data under ``data/``, the script in the script-bin ``.vmwu/bin/``), build
the application disk (ext4 via ``mkfs -d``, no mount) and the empty output disk, convert
both to (compressed) qcow2, and write the ``.ova``: descriptor, manifest, disks, and the
base's files when embedded. Everything is deterministic: same inputs, same bytes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from vmwu import __version__, guest, tools
from vmwu.arch import canonical_arch, parse_os
from vmwu.bases.catalog import BaseImage, Catalog, choose_base
from vmwu.cache import NodeCache
from vmwu.digest import file_sha256
from vmwu.errors import BadInput, BaseNotFound, SpecError, ToolNotFound
from vmwu.guest.protocol import Label
from vmwu.images import ext4, inspect, qemu_img
from vmwu.pack.spec import Spec
from vmwu.pack.template import render
from vmwu.unit.archive import write_ova
from vmwu.unit.descriptor import default_href
from vmwu.unit.model import BaseRef, BootMethod, FileRole, GuestLayout, UnitDescriptor, UnitFile

log = logging.getLogger(__name__)

Step = Callable[[str], None]
# Every timestamp inside a unit (file systems, tar headers); SOURCE_DATE_EPOCH overrides.
DEFAULT_EPOCH = 946684800  # 2000-01-01


@dataclass(frozen=True)
class PackResult:
    path: Path
    descriptor: UnitDescriptor
    app_bytes: int  # size of the staged application tree
    base: BaseImage


def _epoch() -> int:
    value = os.environ.get("SOURCE_DATE_EPOCH")
    return int(value) if value and value.isdigit() else DEFAULT_EPOCH


def _check_dirs(spec: Spec) -> None:
    app = spec.app_import_dir
    if not app.is_dir():
        raise BadInput(
            f"{spec.origin('app-import-dir')}: app-import-dir {app} "
            + ("is not a directory" if app.exists() else "does not exist")
        )
    data = spec.input_import_dir
    if data is not None:
        if not data.is_dir():
            raise BadInput(
                f"{spec.origin('input-import-dir')}: input-import-dir {data} does not exist"
            )
        if (app / "data").exists():
            raise BadInput(
                f"{app}/data already exists, and input-import-dir would be copied there",
                hint="rename one of them",
            )


def select_base(spec: Spec, catalog: Catalog, *, interactive: bool | None = None) -> BaseImage:
    """The base named by ``base-image`` (catalog name, id, sha256, or a registered file),
    or the one auto-sourced from ``app-architecture``/``app-os``."""
    if spec.base_image:
        path = Path(spec.base_image)
        if not path.is_absolute():
            path = spec.anchor("base-image") / path
        if path.is_file():
            sha, _size = file_sha256(path)
            found = catalog.by_sha256(sha)
            if found is None:
                raise BaseNotFound(
                    f"{spec.origin('base-image')}: base image file {path} is not in the catalog",
                    hint=f"register it first: vmwu base add NAME {path}",
                )
            return found
        try:
            return catalog.get(spec.base_image)
        except BaseNotFound as exc:  # name the option and where it was set
            raise BaseNotFound(
                f"{spec.origin('base-image')}: base-image: {exc.message}", hint=exc.hint
            ) from None
    if not spec.base_image_autosource:
        raise BadInput(
            "no base image: set base-image, or base-image-autosource = 1",
            hint="`vmwu base list` shows what the catalog has",
        )
    ask = spec.base_image_autosource_interaction if interactive is None else interactive
    try:
        app_arch = canonical_arch(spec.app_architecture)
    except BadInput as exc:  # name the option and where it was set
        raise SpecError(spec.origin("app-architecture"), exc.message, hint=exc.hint) from None
    if spec.app_os.strip():
        try:
            parse_os(spec.app_os)  # checked here too, so that the error names the option
        except BadInput as exc:
            raise SpecError(spec.origin("app-os"), exc.message, hint=exc.hint) from None
    try:
        # the answer comes from standard input, a terminal or not (thesis 6.3: the tool read
        # it from stdin; scripts pipe it in: printf '2\n' | vmwu pack m.gvap)
        return choose_base(catalog, app_arch, spec.app_os, interactive=ask)
    except BadInput as exc:  # no answer: name the option and where it was set
        raise BadInput(
            f"{spec.origin('base-image-autosource-interaction')}: {exc.message}", hint=exc.hint
        ) from None


def token_values(spec: Spec, base: BaseImage) -> dict[str, str]:
    """Values of the 13 Appendix B tokens for this spec on this base."""
    return {
        "APPLICATION_DIRECTORY": spec.app_dir,
        "INPUT_DIRECTORY": spec.app_dir.rstrip("/") + "/data",
        "OUTPUT_DIRECTORY": spec.app_output_dir,
        "CDROM_DIRECTORY": spec.app_cdrom_dir,
        "WORKING_DIRECTORY": spec.app_working_dir or spec.app_output_dir,
        "OUTPUT_FILESYSTEM_FORMAT": spec.base_image_filesystem or base.filesystem or "ext4",
        "CDROM_FILESYSTEM_FORMAT": "iso9660",
        "INPUT_MOUNT_DEVICE": spec.base_image_input_mount_device
        or base.input_device
        or f"LABEL={Label.APP}",
        "OUTPUT_MOUNT_DEVICE": spec.base_image_output_mount_device
        or base.output_device
        or f"LABEL={Label.OUTPUT}",
        "CDROM_MOUNT_DEVICE": spec.base_image_cdrom_mount_device
        or base.cdrom_device
        or f"LABEL={Label.INSTANCE}",
        "LAUNCHING_COMMAND": spec.app_launch,
        "INSTANCE_COMMAND": spec.instance_script_cmd,
        "INSTANCE_POST_COMMAND": spec.instance_post_script_cmd,
    }


def autorun_script(spec: Spec, base: BaseImage) -> str:
    if spec.script_template is not None:
        path = spec.script_template
        if not path.is_file():
            raise BadInput(
                f"{spec.origin('script-template')}: script template {path} does not exist"
            )
        text, where = path.read_text(), str(path)
    elif base.script_template and Path(base.script_template).is_file():
        text, where = Path(base.script_template).read_text(), base.script_template
    else:
        text, where = guest.read(guest.DEFAULT_TEMPLATE).decode(), "built-in template"
    return render(text, token_values(spec, base), where)


def edit_script(script: str, spec: Spec) -> str:
    """Open the script in the user's editor (text-editor, $VISUAL, $EDITOR, vi)."""
    if not sys.stdin.isatty():
        raise BadInput(
            f"{spec.origin('edit-script')}: edit-script needs a terminal",
            hint="pass --edit-script 0 when packing non-interactively",
        )
    editor = spec.text_editor or os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as fh:
        fh.write(script)
        path = fh.name
    try:
        argv = shlex.split(editor) + [path]
        try:
            # in vmwu's own process group, which has the terminal; dies with vmwu
            with tools.spawn(argv) as proc:
                code = proc.wait()
        except ToolNotFound as exc:
            cause = exc.__cause__
            why = cause.strerror if isinstance(cause, OSError) else "not found"
            raise BadInput(f"cannot start the editor {editor!r}: {why}") from exc
        if code != 0:
            raise BadInput(f"the editor {editor!r} exited with {code}; nothing was packed")
        return Path(path).read_text()
    finally:
        os.unlink(path)


_SPECIAL_KINDS = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
)


def _copy_regular(src: str, dst: str) -> object:
    """shutil.copytree's copy function: regular files only. A device would be read without
    end (/dev/zero) and a FIFO would block, so they are refused by name."""
    mode = os.lstat(src).st_mode
    for test, kind in _SPECIAL_KINDS:
        if test(mode):
            raise BadInput(
                f"{src} is {kind}; an application folder may hold only regular files, "
                "directories and symbolic links",
                hint="remove it, or pack a copy of the folder without it",
            )
    return shutil.copy2(src, dst)


def _copy_tree(src: Path, dest: Path) -> None:
    try:
        shutil.copytree(src, dest, symlinks=True, copy_function=_copy_regular)
    except shutil.Error as exc:  # what copytree collected: unreadable files and the like
        first = exc.args[0][0] if exc.args and exc.args[0] else ("?", "?", str(exc))
        raise BadInput(f"cannot copy {first[0]}: {first[2]}") from None
    except OSError as exc:
        raise BadInput(f"cannot copy {exc.filename or src}: {exc.strerror}") from None


def stage_app(spec: Spec, script: str, dest: Path) -> None:
    """The application disk's tree: app folder, data/, script-bin, unit info."""
    _copy_tree(spec.app_import_dir, dest)
    if spec.input_import_dir is not None:
        _copy_tree(spec.input_import_dir, dest / "data")
    bin_dir = dest / ".vmwu" / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    script_path = bin_dir / spec.script_name
    if script_path.exists():
        raise BadInput(
            f"{spec.app_import_dir}/.vmwu/bin/{spec.script_name} would be replaced by the "
            "generated auto-run script",
            hint="rename it, or set script-name",
        )
    script_path.write_text(script)
    script_path.chmod(0o755)
    # the agent runs this script first and treats it as the application
    (dest / ".vmwu" / "autorun").write_text(spec.script_name + "\n")
    info = {"package-name": spec.package_name, "app-launch": spec.app_launch, "vmwu": __version__}
    (dest / ".vmwu" / "unit.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")


def _disk(raw: Path, qcow: Path, *, compress: bool, fmt: str = "qcow2") -> None:
    if fmt == "vmdk":  # issue 6: `pack --format vmdk` (vmwu/vmdk.py)
        from vmwu.images.vmdk import write_stream_optimized

        write_stream_optimized(raw, qcow)
    else:
        qemu_img.convert(raw, qcow, src_format="raw", dst_format="qcow2", compress=compress)
    raw.unlink()


def pack(
    spec: Spec,
    *,
    output: Path | None = None,
    catalog: Catalog,
    embed_base: bool | None = None,
    step: Step = lambda msg: None,
    progress: Callable[[int, int], None] | None = None,
) -> PackResult:
    _check_dirs(spec)
    step("choosing the base image")
    base = select_base(spec, catalog)
    if spec.guest_packages:  # issue 6: say now, not after the disks, if the base cannot
        from vmwu.pack.layer import base_info

        base_info(base)
    script = autorun_script(spec, base)
    if spec.edit_script:
        script = edit_script(script, spec)
    embed = spec.embed_base if embed_base is None else embed_base
    out_path = (output or Path.cwd() / f"{spec.package_name}.ova").absolute()
    epoch = _epoch()
    name = spec.package_name
    fstype = spec.base_image_filesystem or base.filesystem or "ext4"
    _check_sizes(spec, fstype)
    capacities = _base_capacities(base)
    with _work_dir(out_path) as tmp_str, _layer_cache(spec) as cache:
        tmp = Path(tmp_str)
        disks = _build_disks(spec, script, tmp, fstype=fstype, epoch=epoch, step=step)
        members: dict[str, Path] = {}
        files = _base_files(base, name, embed, capacities, members)
        files += _unit_disk_files(spec, disks, tmp, fstype, members)
        if spec.guest_packages:  # issue 6: a layer over the base disk (vmwu/pack/layer.py)
            layer = _guest_layer(spec, base, name, members, step, capacities, cache)
            if layer is not None:
                files.append(layer)
        desc = _descriptor(spec, base, files)
        step(f"writing {out_path.name}")
        write_ova(out_path, desc, members, mtime=epoch, progress=progress)
    return PackResult(out_path, desc, disks.app_bytes, base)


def _base_capacities(base: BaseImage) -> dict[str, int]:
    """sha256 -> capacity of the base's disks: an image from outside like any other,
    inspected before use."""
    return {
        bf.sha256: _capacity(bf.path, bf.format, f"disk {bf.path} of base '{base.name}'")
        for bf in base.files
        if bf.role == FileRole.BASE_DISK
    }


def _work_dir(out_path: Path) -> tempfile.TemporaryDirectory[str]:
    """A scratch directory beside the unit to write (so the last rename stays on one file
    system); a bad ``-o`` is the user's error, said in one line."""
    if out_path.is_dir():
        raise BadInput(f"cannot write the unit {out_path}: it is a directory", hint="pass -o FILE")
    try:
        return tempfile.TemporaryDirectory(prefix="vmwu-pack-", dir=out_path.parent)
    except OSError as exc:  # -o in a missing or read-only directory: bad input, not a bug
        raise BadInput(
            f"cannot write the unit {out_path}: {out_path.parent}: {exc.strerror}",
            hint="pass -o PATH in an existing, writable directory",
        ) from exc


@dataclass(frozen=True)
class _UnitDisks:
    """The application and output disks built in the scratch directory."""

    app_href: str
    app_capacity: int
    app_bytes: int  # the staged application's content size
    out_href: str
    out_capacity: int  # the output size rounded up to whole 4 KiB blocks


def _build_disks(
    spec: Spec, script: str, tmp: Path, *, fstype: str, epoch: int, step: Step
) -> _UnitDisks:
    """Stage the application, then make the application and output disks under ``tmp``."""
    name, dfmt = spec.package_name, spec.disk_format
    step("staging the application")
    stage = tmp / "app"
    stage_app(spec, script, stage)
    app_bytes, _inodes = ext4.content_size(stage)
    step("building the application disk")
    app_raw = tmp / "app.raw"
    app_size = ext4.image_size_for(stage, spec.app_buffer)
    ext4.check_size(app_size, fstype, f"the application disk ({spec.app_import_dir})")
    ext4.make_image(app_raw, app_size, label=Label.APP, src=stage, fstype=fstype, epoch=epoch)
    app_href = default_href(name, FileRole.APP_DISK, dfmt)
    _disk(app_raw, tmp / app_href, compress=spec.compress, fmt=dfmt)
    step("building the output disk")
    out_raw = tmp / "out.raw"
    # whole file-system blocks: a disk image's capacity is a multiple of 512 bytes
    # (qcow2, vmdk), and the unit must declare exactly the capacity its image has
    out_size = -(-spec.app_output_size // 4096) * 4096
    ext4.make_image(out_raw, out_size, label=Label.OUTPUT, fstype=fstype, epoch=epoch)
    out_href = default_href(name, FileRole.OUTPUT_DISK, dfmt)
    _disk(out_raw, tmp / out_href, compress=spec.compress, fmt=dfmt)
    return _UnitDisks(app_href, app_size, app_bytes, out_href, out_size)


def _base_files(
    base: BaseImage,
    name: str,
    embed: bool,
    capacities: dict[str, int],
    members: dict[str, Path],
) -> list[UnitFile]:
    """The base's files as unit files: embedded (added to ``members``) or referenced."""
    files: list[UnitFile] = []
    for bf in base.files:
        role = FileRole(bf.role)
        href = default_href(name, role, bf.format) if embed else bf.path.name
        if embed:
            if not bf.path.is_file():
                raise BaseNotFound(f"file {bf.path} of base '{base.name}' is missing")
            members[href] = bf.path
        files.append(
            UnitFile(
                id=role.value,
                href=href,
                role=role,
                sha256=bf.sha256,
                size=bf.size,
                embedded=embed,
                format=bf.format,
                capacity=capacities.get(bf.sha256) if role == FileRole.BASE_DISK else None,
            )
        )
    return files


def _unit_disk_files(
    spec: Spec, disks: _UnitDisks, tmp: Path, fstype: str, members: dict[str, Path]
) -> list[UnitFile]:
    """The application and output disks as embedded unit files (added to ``members``)."""
    files: list[UnitFile] = []
    for href, role, capacity, label in (
        (disks.app_href, FileRole.APP_DISK, disks.app_capacity, Label.APP),
        (disks.out_href, FileRole.OUTPUT_DISK, disks.out_capacity, Label.OUTPUT),
    ):
        sha, size = file_sha256(tmp / href)
        members[href] = tmp / href
        files.append(
            UnitFile(
                id=role.value,
                href=href,
                role=role,
                sha256=sha,
                size=size,
                embedded=True,
                format=spec.disk_format,
                capacity=capacity,
                label=label,
                filesystem=fstype,
            )
        )
    return files


def _descriptor(spec: Spec, base: BaseImage, files: list[UnitFile]) -> UnitDescriptor:
    """The unit's descriptor: the base it boots, its files, and the spec's settings."""
    cdrom_as_hard_disk = (
        base.cdrom_as_hard_disk if spec.cdrom_as_hard_disk is None else spec.cdrom_as_hard_disk
    )
    return UnitDescriptor(
        name=spec.package_name,
        base=BaseRef(
            name=base.name,
            sha256=base.sha256,
            architecture=base.architecture,
            guest_os=base.guest_os,
            boot_method=BootMethod(base.boot_method),
            cmdline=base.cmdline,
            agent_version=base.agent_version,
            cdrom_as_hard_disk=cdrom_as_hard_disk,
        ),
        files=tuple(files),
        memory_mib=spec.vmm_memory,
        cpus=spec.vmm_cpus,
        description=spec.description,
        app_launch=spec.app_launch,
        layout=GuestLayout(
            app_dir=spec.app_dir,
            output_dir=spec.app_output_dir,
            cdrom_dir=spec.app_cdrom_dir,
            script_name=spec.script_name,
        ),
        timeout=spec.timeout,
        vmwu_version=__version__,
    )


@contextlib.contextmanager
def _layer_cache(spec: Spec) -> Iterator[NodeCache | None]:
    """The node cache, for a spec with guest-packages: the layer is held in use there
    (``vmwu cache clean`` keeps it) until the unit is written."""
    if not spec.guest_packages:
        yield None
        return
    cache = NodeCache()
    try:
        yield cache
    finally:
        cache.release_holds()


def _guest_layer(
    spec: Spec,
    base: BaseImage,
    name: str,
    members: dict[str, Path],
    step: Step,
    capacities: dict[str, int],
    cache: NodeCache | None = None,
) -> UnitFile | None:
    from vmwu.pack.layer import build_layer

    packages = spec.guest_packages or ()
    layer = build_layer(base, packages, cache=cache, step=step)
    disk = base.file(FileRole.BASE_DISK)
    if layer is None or disk is None:
        step(f"base '{base.name}' already has {', '.join(packages)}")
        return None
    href = default_href(name, FileRole.BASE_LAYER, "qcow2")
    members[href] = layer
    sha, size = file_sha256(layer)
    return UnitFile(
        id=FileRole.BASE_LAYER.value,
        href=href,
        role=FileRole.BASE_LAYER,
        sha256=sha,
        size=size,
        embedded=True,
        format="qcow2",
        capacity=capacities[disk.sha256],
    )


def _check_sizes(spec: Spec, fstype: str) -> None:
    """The disks' sizes, before anything is written (one line naming the option)."""
    sizes = (("app-output-size", spec.app_output_size), ("app-buffer", spec.app_buffer))
    for option, size in sizes:
        try:
            ext4.check_size(size, fstype, option)
        except BadInput as exc:
            where = spec.origin(option)
            if where == "default":
                where = str(spec.spec_path) if spec.spec_path else "command line"
            raise SpecError(where, exc.message, hint=exc.hint) from None


def _capacity(path: Path, fmt: str, what: str) -> int:
    """The capacity of a base's disk (or layer), inspected like any image from outside."""
    _fmt, facts = inspect.inspect_file(path, what=what, declared=fmt)
    return facts.virtual_size
