"""``vmwu base add``: register existing image files (a bootable disk, or a kernel and an
initramfs for direct boot) in the catalog, with their sha256."""

from __future__ import annotations

import datetime
from pathlib import Path

from vmwu.arch import canonical_arch
from vmwu.bases.catalog import BaseFile, BaseImage, Catalog, base_identity
from vmwu.digest import file_sha256
from vmwu.errors import BadInput
from vmwu.guest.protocol import AGENT_VERSION
from vmwu.images import inspect
from vmwu.unit.model import BootMethod, FileRole


def add_base(
    catalog: Catalog,
    *,
    name: str,
    disk: Path | None,
    kernel: Path | None,
    initrd: Path | None,
    architecture: str,
    guest_os: str,
    description: str = "",
    filesystem: str = "ext4",
    cmdline: str = "",
    script_template: Path | None = None,
    disk_format: str | None = None,
    replace: bool = False,
) -> BaseImage:
    if disk is None and kernel is None:
        raise BadInput("vmwu base add needs a disk image, or --kernel (and --initrd)")
    if initrd is not None and kernel is None:
        raise BadInput("--initrd needs --kernel")
    files: list[BaseFile] = []
    for role, path in (
        (FileRole.KERNEL, kernel),
        (FileRole.INITRD, initrd),
        (FileRole.BASE_DISK, disk),
    ):
        if path is None:
            continue
        path = path.absolute()
        if not path.is_file():
            raise BadInput(f"{path} does not exist or is not a file")
        if role == FileRole.BASE_DISK:
            fmt, _facts = inspect.inspect_file(
                path, what=f"the disk image {path}", declared=disk_format
            )
        else:
            fmt = "bzimage" if role == FileRole.KERNEL else "cpio"
        sha, size = file_sha256(path)
        files.append(BaseFile(role=role.value, path=path, sha256=sha, size=size, format=fmt))
    if script_template is not None and not script_template.is_file():
        raise BadInput(f"script template {script_template} does not exist")
    boot = BootMethod.DIRECT_KERNEL if kernel is not None else BootMethod.DISK
    location = (kernel or disk or Path(".")).absolute()
    base = BaseImage(
        id=None,
        name=name,
        description=description,
        location=str(location.parent if kernel is not None else location),
        architecture=canonical_arch(architecture),
        guest_os=guest_os,
        filesystem=filesystem,
        input_device="LABEL=VMWU-APP",
        output_device="LABEL=VMWU-OUT",
        cdrom_device="LABEL=VMWU-INST",
        script_template=str(script_template.absolute()) if script_template else None,
        date_added=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        sha256=base_identity(files),
        size=sum(f.size for f in files),
        format=files[-1].format if boot == BootMethod.DISK else "direct-kernel",
        boot_method=boot.value,
        agent_version=AGENT_VERSION,
        cmdline=cmdline,
        cdrom_as_hard_disk=True,
        files=tuple(files),
    )
    return catalog.add(base, replace=replace)


def direct_kernel_base(
    *,
    name: str,
    description: str,
    base_dir: Path,
    files: list[tuple[FileRole, str, str]],
    architecture: str,
    kernel_version: str,
    cmdline: str,
) -> BaseImage:
    """A built base that boots with -kernel/-initrd: its files (role, name in ``base_dir``,
    format) hashed, with the default auto-run template kept beside them (autorun.sh)."""
    registered = []
    for role, fname, fmt in files:
        sha, size = file_sha256(base_dir / fname)
        registered.append(
            BaseFile(role=role.value, path=base_dir / fname, sha256=sha, size=size, format=fmt)
        )
    return BaseImage(
        id=None,
        name=name,
        description=description,
        location=str(base_dir),
        architecture=architecture,
        guest_os="linux" + ".".join(kernel_version.split(".")[:2]),
        script_template=str(base_dir / "autorun.sh"),
        sha256=base_identity(registered),
        boot_method=BootMethod.DIRECT_KERNEL.value,
        agent_version=AGENT_VERSION,
        cmdline=cmdline,
        files=tuple(registered),
    )
