"""Launcher options of thesis Appendix D and vmwu's own, each on a real guest."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess

from tests.integration.conftest import Vmwu
from vmwu.images.iso import IsoEntry, write_iso


def test_cdrom_as_real_cd_rom(vmwu: Vmwu) -> None:
    unit = vmwu.pack(
        "cat /cdrom/param > /output/p.txt; grep -c sr0 /proc/partitions > /output/sr.txt", name="cd"
    )
    result, out, status = vmwu.run(unit, "--cdrom-as-hard-disk", "0", params=("hello",))
    assert result.returncode == 0, result.stderr
    assert (out / "p.txt").read_text() == "hello\n"
    assert (out / "sr.txt").read_text() == "1\n"  # it really was a SCSI CD-ROM
    assert status["start"].startswith("cold boot")


def test_thesis_style_flags_and_config_file(vmwu: Vmwu) -> None:
    unit = vmwu.pack("cat /cdrom/in.txt > /output/copy.txt", name="thesisflags")
    (vmwu.tmp / "in.txt").write_text("via config\n")
    (vmwu.tmp / "run.cfg").write_text('files="in.txt"\nvmm-type=QEMU\ncompressed=1\n')
    # the thesis's launcher spelling: -gva UNIT -compressed -vmm-type QEMU -cdrom-as-hard-disk
    result = vmwu(
        "run",
        "-gva",
        unit,
        "-compressed",
        "-vmm-type",
        "QEMU",
        "-cdrom-as-hard-disk",
        "--config",
        "run.cfg",
        "--output-directory",
        "out",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    assert (vmwu.tmp / "out" / "copy.txt").read_text() == "via config\n"


def test_gzipped_unit_is_detected(vmwu: Vmwu) -> None:
    unit = vmwu.pack("echo gz > /output/gz.txt", name="gzunit")
    gz = vmwu.tmp / "gzunit.ova.gz"
    gz.write_bytes(gzip.compress(unit.read_bytes()))
    result, out, _ = vmwu.run(gz)
    assert result.returncode == 0, result.stderr
    assert (out / "gz.txt").read_text() == "gz\n"


def test_memory_cpus_and_print_cmdline(vmwu: Vmwu) -> None:
    unit = vmwu.pack(
        "nproc > /output/cpus.txt; grep MemTotal /proc/meminfo > /output/mem.txt", name="hw"
    )
    shown = vmwu("run", unit, "--vmm-memory", "256", "--cpus", "2", "--print-cmdline")
    assert shown.returncode == 0, shown.stderr
    argv = shown.stdout.split()
    assert argv[argv.index("-m") + 1] == "256" and argv[argv.index("-smp") + 1] == "2"
    assert not (vmwu.tmp / "hw-output").exists()  # printing runs nothing
    result, out, _ = vmwu.run(unit, "--vmm-memory", "256", "--cpus", "2")
    assert result.returncode == 0, result.stderr
    assert (out / "cpus.txt").read_text() == "2\n"
    mem_kib = int((out / "mem.txt").read_text().split()[1])
    assert 200_000 < mem_kib < 262_144


def test_vmm_executable_and_directory(vmwu: Vmwu) -> None:
    unit = vmwu.pack("true", name="vmmdir")
    qemu = shutil.which("qemu-system-x86_64")
    assert qemu
    vmm_dir = vmwu.tmp / "vmm"
    vmm_dir.mkdir()
    (vmm_dir / "my-qemu").symlink_to(qemu)
    result, _, status = vmwu.run(
        unit, "--vmm-directory", "vmm", "--vmm-executable", "my-qemu", "--vmm-local", "1"
    )
    assert result.returncode == 0, result.stderr
    assert status["cmdline"].startswith(str(vmm_dir / "my-qemu"))


def test_substituted_images_and_output_filename(vmwu: Vmwu) -> None:
    """--input-image / --output-image / --cdrom-image replace the unit's parts (the
    application disk carries its own auto-run script, so it brings its own command)."""
    unit = vmwu.pack("echo packed > /output/seen.txt", name="subst")
    other = vmwu.pack(
        "cat /app/which.txt /cdrom/extra.txt > /output/seen.txt",
        name="other",
        files={"which.txt": "substituted app disk\n"},
    )
    subprocess.run(["tar", "xf", str(other), "-C", str(vmwu.tmp)], check=True)
    app_disk = vmwu.tmp / "other-app.qcow2"
    iso = vmwu.tmp / "user.iso"
    write_iso(iso, [IsoEntry("extra.txt", data=b"from user iso\n")], label="USERDATA")
    result, out, _ = vmwu.run(
        unit,
        "--input-image",
        str(app_disk),
        "--cdrom-image",
        str(iso),
        "--output-filename",
        "output.img",
    )
    assert result.returncode == 0, result.stderr
    assert (out / "seen.txt").read_text() == "substituted app disk\nfrom user iso\n"
    image = out / "output.img"
    assert image.is_file() and image.stat().st_size < 300 * 1024**2  # not the warm-start size
    # that output image, given back as --output-image, starts the next instance
    unit2 = vmwu.pack("cat /output/seen.txt > /output/again.txt", name="again")
    result, out2, _ = vmwu.run(unit2, "--output-image", str(image), out="out2")
    assert result.returncode == 0, result.stderr
    assert (out2 / "again.txt").read_text() == "substituted app disk\nfrom user iso\n"


def test_overwrite_writes_the_instance_back_into_the_unit(vmwu: Vmwu) -> None:
    unit = vmwu.pack(
        "n=$(cat /app/count 2>/dev/null || echo 0); n=$((n+1)); "
        "echo $n > /app/count; echo $n > /output/n.txt",
        name="counter",
    )
    for expected in ("1", "2"):
        result, out, _ = vmwu.run(unit, "--overwrite", out=f"run{expected}")
        assert result.returncode == 0, result.stderr
        assert (out / "n.txt").read_text() == f"{expected}\n"
    summary = json.loads(vmwu("inspect", unit, "--json").stdout)
    assert summary["manifest"] == "verified"
    result, out, _ = vmwu.run(unit, out="run-plain")
    assert (out / "n.txt").read_text() == "3\n"
    result, out, _ = vmwu.run(unit, out="run-plain2")
    assert (out / "n.txt").read_text() == "3\n"  # without --overwrite nothing sticks


def test_base_image_override_by_name(vmwu: Vmwu) -> None:
    shown = json.loads(vmwu("base", "show", "tiny", "--json").stdout)
    files = {f["role"]: f["path"] for f in shown["files"]}
    added = vmwu(
        "base",
        "add",
        "tiny-copy",
        "--kernel",
        files["kernel"],
        "--initrd",
        files["initrd"],
        "--cmdline",
        shown["cmdline"],
        "--os",
        "linux6.1",
    )
    assert added.returncode == 0, added.stderr
    unit = vmwu.pack("uname -r > /output/k.txt", name="override")
    result, out, _ = vmwu.run(unit, "--base-image", "tiny-copy")
    assert result.returncode == 0, result.stderr
    assert (out / "k.txt").read_text().startswith("6.")
    vmwu("base", "remove", "tiny-copy")


def test_current_directory(vmwu: Vmwu) -> None:
    sub = vmwu.tmp / "elsewhere"
    sub.mkdir()
    (sub / "f.txt").write_text("rel\n")
    unit = vmwu.pack("cat /cdrom/f.txt > /output/f.txt", name="curdir")
    result = vmwu(
        "run",
        unit,
        "--current-directory",
        str(sub),
        "--files",
        "f.txt",
        "--output-directory",
        "o",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    assert (sub / "o" / "f.txt").read_text() == "rel\n"
