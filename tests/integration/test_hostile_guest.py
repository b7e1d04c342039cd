"""A hostile application in a real guest (issue 11, classes 1 and 2): it leaves links on
its output disk under vmwu's own names, and where the wrapper copies its outputs, pointing
at host files. vmwu must write its own files beside them, never through them, and never
carry a host file's bytes into the output directory or the slot."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.integration.conftest import Vmwu
from tests.integration.wrap import Wrap

SECRET = "host-secret-4f1d2a"


def host_files(tmp: Path) -> tuple[Path, Path]:
    secret = tmp / "host" / "secret.txt"
    secret.parent.mkdir(parents=True)
    secret.write_text(SECRET + "\n")
    victim = tmp / "host" / "victim"
    victim.mkdir()
    return secret, victim


def everything_under(root: Path) -> bytes:
    """All bytes of the regular files under ``root`` (links not followed)."""
    out = b""
    for base, _dirs, files in os.walk(root):
        for name in files:
            path = Path(base) / name
            if not path.is_symlink():
                out += path.read_bytes()
    return out


def test_links_under_vmwus_own_names_are_never_written_through(vmwu: Vmwu) -> None:
    secret, victim = host_files(vmwu.tmp)
    app = f"""#!/bin/sh
ln -s {secret} status.json
ln -s {secret} console.log
ln -s {secret} disk.img
ln -s {victim} subdir
ln -s {secret} .status.json.tmp
mkdir -p .vmwu
echo result > result.txt
"""
    unit = vmwu.pack("/app/evil.sh", files={"evil.sh": app})
    result, out, status = vmwu.run(unit, "--output-filename", "disk.img")
    assert result.returncode == 0, result.stderr
    assert secret.read_text() == SECRET + "\n"
    assert list(victim.iterdir()) == []
    # vmwu's own files are its own: real files, not the guest's links
    for name in ("status.json", "console.log", "disk.img"):
        assert not (out / name).is_symlink() and (out / name).is_file(), name
    assert status["exit_code"] == 0 and status["outcome"] == "app"
    assert (out / "disk.img").stat().st_size > 1 << 20  # the output disk itself
    # the guest's entries are kept beside them, as the links they are
    assert os.readlink(out / "status.json.app") == str(secret)
    assert os.readlink(out / "console.log.app") == str(secret)
    assert os.readlink(out / "disk.img.app") == str(secret)
    assert os.readlink(out / "subdir") == str(victim)
    assert (out / "result.txt").read_text() == "result\n"
    assert SECRET.encode() not in everything_under(out)


def test_the_guest_status_file_is_read_from_the_disk_not_through_a_link(vmwu: Vmwu) -> None:
    secret, _ = host_files(vmwu.tmp)
    (secret).write_text('{"exit_code": 77, "stolen": "' + SECRET + '"}\n')
    # the agent keeps its own status in /output/.vmwu: the app puts a link there, to the
    # folder of a host file that looks like such a status
    app = f"""#!/bin/sh
rm -rf /output/.vmwu; ln -s {secret.parent} /output/.vmwu
echo ok
"""
    unit = vmwu.pack("/app/evil.sh", files={"evil.sh": app})
    result, out, status = vmwu.run(unit)
    assert status["app_exit_code"] == 0, result.stderr
    assert SECRET not in json.dumps(status)
    assert not (out / ".vmwu").exists()


def test_the_wrapper_copies_no_link_and_no_host_file_into_the_slot(vmwu: Vmwu) -> None:
    secret, victim = host_files(vmwu.tmp)
    script = vmwu.tmp / "evil.sh"
    script.write_text(
        f"""#!/bin/sh
mkdir results
echo real > results/real.txt
ln -s {secret} results/leak.txt
ln -s {victim} results/into
ln -s {secret} steps.log
rm -f /output/stdout.log; ln -s {secret} /output/stdout.log
"""
    )
    script.chmod(0o755)
    job = vmwu.tmp / "job.xml"
    job.write_text(
        "<job_desc><task><virtualmachine>tiny</virtualmachine>"
        f"<application>{script}</application><copy_app_to_VM>1</copy_app_to_VM>"
        "<stdout_filename>app.out</stdout_filename>"
        "<copy_file_from_VM>results</copy_file_from_VM>"
        "</task></job_desc>"
    )
    wrap = Wrap(vmwu, job)
    (wrap.slot / "app.out").symlink_to(secret)  # a link already in the slot is replaced too
    result = wrap.run()
    assert result.returncode == 0, result.stderr
    assert secret.read_text() == SECRET + "\n"
    assert list(victim.iterdir()) == []
    slot = wrap.slot
    assert (slot / "results" / "real.txt").read_text() == "real\n"
    assert not (slot / "results" / "leak.txt").exists()
    assert not (slot / "results" / "into").exists()
    assert not (slot / "app.out").is_symlink()
    assert SECRET.encode() not in everything_under(slot)
    assert "not copied into the slot" in result.stderr


def test_a_guest_flooding_its_console_is_stopped(vmwu: Vmwu) -> None:
    """The emulated serial port runs at ~100 KB/s under TCG: the test lowers the limit
    (64 MiB by default) to 300 KB through the site setting."""
    vmwu.extra_env["VMWU_MAX_LOG_BYTES"] = str(300_000)
    unit = vmwu.pack("yes 0123456789abcdef0123456789abcdef > /dev/console", name="flood")
    result, out, status = vmwu.run(unit, "--timeout", "120")
    assert result.returncode == 245, result.stderr
    assert "wrote more than 300000 bytes to console.log" in status["error"]["message"]
    assert (out / "console.log").stat().st_size < 2_000_000
    assert "Traceback" not in result.stderr
