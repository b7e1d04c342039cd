"""``vmwu base import IMAGE``: register an existing disk image that boots by its own boot
loader (BIOS, or UEFI for a GPT disk with an EFI system partition: vmwu.vmm.firmware)
and knows nothing of vmwu.

The image is inspected before qemu-img opens it (vmwu/images/inspect.py: its format, no
backing file, data file or vmdk extent naming other files) and checked (a disk image
with a boot sector), kept where
it is (qcow2, raw and vmdk) or converted to qcow2 into ``<data>/bases/NAME/`` (vdi and
other formats a unit cannot carry), and registered with boot method ``disk`` and no
agent version. Two ways to get the work unit's auto-run script run in such a guest:

- ``--via cloud-init`` (default): a cloud image. Every instance gets a NoCloud seed that
  installs and starts the vmwu agent (vmwu.run.cloudinit); the default template is vmwu's.
- ``--via daemon``: the thesis's way. The image has its own script-bin daemon (thesis
  5.1.4.1) that mounts the application disk and runs ``/app/.vmwu/bin/*``; the auto-run
  script (template ``guest/templates/thesis.sh`` unless ``--script-template``) mounts the
  output disk and the instance CD-ROM by the devices given with ``--output-device`` and
  ``--cdrom-device``, reports events, writes ``status.json`` and shuts the VM down.
  With vmwu's launcher the devices are ``/dev/vda`` (the base), ``/dev/vdb`` (app),
  ``/dev/vdc`` (output) and ``/dev/vdd`` (instance ISO as a disk; ``/dev/sr0`` as a
  CD-ROM), which are the defaults.
"""

from __future__ import annotations

import datetime
import tempfile
from collections.abc import Callable
from pathlib import Path

from vmwu import guest, paths, tools
from vmwu.arch import canonical_arch, parse_os
from vmwu.bases.catalog import BaseFile, BaseImage, Catalog, base_identity
from vmwu.digest import file_sha256
from vmwu.errors import BadInput
from vmwu.images import inspect, qemu_img
from vmwu.unit.model import BootMethod, FileRole

Step = Callable[[str], None]

VIA = ("cloud-init", "daemon")
KEPT_FORMATS = ("qcow2", "raw", "vmdk")  # what a unit can reference as they are
IMPORT_FORMATS = ("qcow2", "raw", "vmdk", "vdi", "vhdx", "vpc")
DAEMON_DEVICES = ("/dev/vdb", "/dev/vdc", "/dev/vdd")
LABEL_DEVICES = ("LABEL=VMWU-APP", "LABEL=VMWU-OUT", "LABEL=VMWU-INST")
MIN_SIZE = 1024 * 1024


def detect_format(image: Path, given: str | None) -> tuple[str, int]:
    """The image's format (``given``, which must be what its content is) and capacity,
    after the inspection that lets qemu-img open it."""
    if given is not None and given not in IMPORT_FORMATS:
        raise BadInput(f"--format {given!r}: expected one of {', '.join(IMPORT_FORMATS)}")
    fmt, facts = inspect.inspect_file(
        image, what=f"the image {image}", declared=given, allowed=IMPORT_FORMATS
    )
    return fmt, facts.virtual_size


def check_bootable(image: Path, fmt: str, size: int) -> None:
    """A disk that boots by its own boot loader has a boot sector (0x55 0xAA at 510)."""
    if size < MIN_SIZE:
        raise BadInput(f"{image} is not a disk image: {size} bytes is too small for a disk")
    with tempfile.TemporaryDirectory(prefix="vmwu-import-") as tmp:
        sector = Path(tmp) / "sector0"
        argv = ["qemu-img", "dd", "-f", fmt, "-O", "raw", "bs=512", "count=1"]
        tools.run([*argv, f"if={image}", f"of={sector}"])
        data = sector.read_bytes()
    if len(data) < 512 or data[510:512] != b"\x55\xaa":
        raise BadInput(
            f"{image} is not a bootable disk image: its first sector has no boot signature",
            hint="give a whole-disk image with a partition table and a boot loader",
        )


def import_base(
    catalog: Catalog,
    image: Path,
    *,
    name: str | None = None,
    fmt: str | None = None,
    guest_os: str = "linux",
    architecture: str = "x86_64",
    via: str = "cloud-init",
    input_device: str | None = None,
    output_device: str | None = None,
    cdrom_device: str | None = None,
    filesystem: str = "ext4",
    script_template: Path | None = None,
    description: str = "",
    replace: bool = False,
    step: Step = lambda msg: None,
) -> BaseImage:
    image = image.absolute()
    if not image.is_file():
        raise BadInput(f"{image} does not exist or is not a file")
    if via not in VIA:
        raise BadInput(f"--via {via!r}: expected one of {', '.join(VIA)}")
    name = name or image.name.split(".")[0]
    if not replace and catalog.exists(name):
        raise BadInput(f"base '{name}' already exists in {catalog.path}", hint="use --replace")
    architecture = canonical_arch(architecture)
    parse_os(guest_os)
    if script_template is not None and not script_template.is_file():
        raise BadInput(f"script template {script_template} does not exist")
    step("checking the image")
    fmt, capacity = detect_format(image, fmt)
    check_bootable(image, fmt, capacity)
    base_dir = paths.bases_dir() / name
    disk = image
    if fmt not in KEPT_FORMATS:
        step(f"converting the {fmt} image to qcow2")
        base_dir.mkdir(parents=True, exist_ok=True)
        disk = base_dir / "disk.qcow2"
        qemu_img.convert(image, disk, src_format=fmt, dst_format="qcow2")
        fmt = "qcow2"
    template = script_template
    if template is None:
        base_dir.mkdir(parents=True, exist_ok=True)
        template = base_dir / "autorun.sh"
        source = guest.THESIS_TEMPLATE if via == "daemon" else guest.DEFAULT_TEMPLATE
        template.write_bytes(guest.read(source))
    defaults = DAEMON_DEVICES if via == "daemon" else LABEL_DEVICES
    step("hashing the image")
    sha, size = file_sha256(disk)
    files = (BaseFile(role=FileRole.BASE_DISK.value, path=disk, sha256=sha, size=size, format=fmt),)
    how = "its own script-bin daemon" if via == "daemon" else "cloud-init (NoCloud seed)"
    from vmwu.vmm import firmware  # BIOS or UEFI is read from the disk at run time too

    fw = firmware.classify(firmware.read_head(disk, fmt))
    boots = "UEFI (GPT with an EFI system partition; needs OVMF)" if fw == "uefi" else "BIOS"
    base = BaseImage(
        id=None,
        name=name,
        description=description or f"imported {image.name}: boots by {boots}; {how}",
        location=str(disk),
        architecture=architecture,
        guest_os=guest_os,
        filesystem=filesystem,
        input_device=input_device or defaults[0],
        output_device=output_device or defaults[1],
        cdrom_device=cdrom_device or defaults[2],
        script_template=str(template.absolute()),
        date_added=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        sha256=base_identity(files),
        size=size,
        format=fmt,
        boot_method=BootMethod.DISK.value,
        agent_version=None,  # the launcher brings the agent (cloud-init seed) or not
        cmdline="",
        cdrom_as_hard_disk=True,
        files=files,
    )
    step("registering the base")
    return catalog.add(base, replace=replace)
