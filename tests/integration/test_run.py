"""Real guests under QEMU (TCG): the core loop and its failure modes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.integration.conftest import Vmwu
from tests.integration.sweeps import app_started
from tests.processes import comm, running, start_time, tree
from tests.waits import wait_for

ECHO_ARGS = '#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done > /output/args.txt\n'


@pytest.mark.parametrize("code", [0, 1, 7, 255])
def test_exit_code_propagates(vmwu: Vmwu, code: int) -> None:
    unit = vmwu.pack(f"exit {code}", name=f"exit{code}")
    result, out, status = vmwu.run(unit)
    assert result.returncode == code, result.stderr
    assert status["outcome"] == "app"
    assert status["app_exit_code"] == code
    assert (out / "console.log").is_file()


def test_outputs_stdout_and_progress(vmwu: Vmwu) -> None:
    app = (
        '#!/bin/sh\necho "to stdout"\necho "to stderr" >&2\n'
        "vmwu-progress 0.5 half\necho data > /output/result.txt\n"
    )
    unit = vmwu.pack("/app/job.sh", name="outputs", files={"job.sh": app})
    result, out, status = vmwu.run(unit)
    assert result.returncode == 0, result.stderr
    assert (out / "result.txt").read_text() == "data\n"
    assert (out / "stdout.log").read_text() == "to stdout\n"
    assert (out / "stderr.log").read_text() == "to stderr\n"
    assert status["progress"] == 0.5
    assert status["timings"]["boot"] > 0
    assert not (out / ".vmwu").exists()


def test_parameters_arrive_exactly(vmwu: Vmwu) -> None:
    unit = vmwu.pack('/app/echo.sh "$@"', name="params", files={"echo.sh": ECHO_ARGS})
    params = (
        "plain",
        "with space",
        "quote'single",
        'quote"double',
        "$HOME",
        "`id`",
        "ünïcødé ✓",
        "",
    )
    result, out, status = vmwu.run(unit, params=params)
    assert result.returncode == 0, result.stderr
    assert (out / "args.txt").read_text().split("\n")[:-1] == list(params)
    assert status["params"] == list(params)


def test_thesis_param_file_is_space_separated(vmwu: Vmwu) -> None:
    unit = vmwu.pack("/app/echo.sh `cat /cdrom/param`", name="thesis", files={"echo.sh": ECHO_ARGS})
    result, out, _ = vmwu.run(unit, params=("-2.0", "1.0", "a b"))
    assert result.returncode == 0, result.stderr
    assert (out / "args.txt").read_text() == "-2.0\n1.0\na\nb\n"


def test_files_with_destinations(vmwu: Vmwu) -> None:
    (vmwu.tmp / "in1.txt").write_text("one\n")
    (vmwu.tmp / "in2.txt").write_text("two\n")
    unit = vmwu.pack("cat /cdrom/a.txt /cdrom/sub/b.txt > /output/joined.txt", name="files")
    result, out, _ = vmwu.run(
        unit, "--files", "in1.txt,in2.txt", "--files-destination", "a.txt,sub/b.txt"
    )
    assert result.returncode == 0, result.stderr
    assert (out / "joined.txt").read_text() == "one\ntwo\n"


def test_files_destination_count_mismatch(vmwu: Vmwu) -> None:
    (vmwu.tmp / "in1.txt").write_text("one\n")
    unit = vmwu.pack("true", name="mismatch")
    result, _, _ = vmwu.run(unit, "--files", "in1.txt", "--files-destination", "a,b")
    assert result.returncode == 241
    assert "files-destination" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_file_is_bad_input(vmwu: Vmwu) -> None:
    unit = vmwu.pack("true", name="missing")
    result, _, _ = vmwu.run(unit, "--files", "nope.txt")
    assert result.returncode == 241
    assert "nope.txt" in result.stderr and "Traceback" not in result.stderr


def test_instance_scripts_and_commands(vmwu: Vmwu) -> None:
    (vmwu.tmp / "pre.sh").write_text("echo pre >> /output/order.txt\n")
    (vmwu.tmp / "post.sh").write_text("echo post >> /output/order.txt\n")
    unit = vmwu.pack(
        "echo app >> /output/order.txt",
        name="scripts",
        extra={
            "instance-script-cmd": "echo cmd >> /output/order.txt",
            "instance-post-script-cmd": "echo postcmd >> /output/order.txt",
        },
    )
    result, out, _ = vmwu.run(
        unit, "--instance-script", "pre.sh", "--instance-post-script", "post.sh"
    )
    assert result.returncode == 0, result.stderr
    assert (out / "order.txt").read_text().split() == ["cmd", "pre", "app", "postcmd", "post"]


def test_timeout_keeps_console_and_partial_outputs(vmwu: Vmwu) -> None:
    unit = vmwu.pack("echo partial > /output/early.txt; sync; sleep 600", name="slow")
    result, out, status = vmwu.run(unit, "--timeout", "8")
    assert result.returncode == 244, result.stderr
    assert status["outcome"] == "vmwu-error"
    assert status["error"]["kind"] == "GuestTimeout"
    assert "timeout" in result.stderr
    assert (out / "console.log").is_file()
    assert (out / "early.txt").read_text() == "partial\n"


def test_output_disk_full_is_reported_and_partial_kept(vmwu: Vmwu) -> None:
    unit = vmwu.pack(
        "echo first > /output/first.txt; dd if=/dev/zero of=/output/big bs=1M count=64",
        name="full",
        extra={"app-output-size": "4M"},
    )
    result, out, status = vmwu.run(unit)
    assert result.returncode == 246, result.stderr
    assert status["disk_full"] is True
    assert "output disk" in result.stderr
    assert (out / "first.txt").read_text() == "first\n"
    assert (out / "big").stat().st_size > 1024 * 1024


def test_app_killed_by_signal(vmwu: Vmwu) -> None:
    unit = vmwu.pack("/app/die.sh", name="killed", files={"die.sh": "#!/bin/sh\nkill -9 $$\n"})
    result, _, status = vmwu.run(unit)
    assert result.returncode == 137
    assert status["signal"] == 9


def test_corrupt_unit_is_refused(cold_vmwu: Vmwu) -> None:
    """A flipped byte in a disk member is caught when the member is unpacked into the cache
    (a member already cached under its sha256 is not read again)."""
    unit = cold_vmwu.pack("true", name="corrupt")
    data = bytearray(unit.read_bytes())
    with tarfile.open(unit) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("-app.qcow2"))
    data[member.offset_data + member.size // 2] ^= 0xFF
    bad = cold_vmwu.tmp / "bad.ova"
    bad.write_bytes(bytes(data))
    result, out, _ = cold_vmwu.run(bad)
    assert result.returncode == 241, result.stderr
    assert "corrupt" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not list((cold_vmwu.tmp / "cache" / "tmp").iterdir())


def test_two_concurrent_cold_cache_runs(cold_vmwu: Vmwu) -> None:
    unit = cold_vmwu.pack("echo $1 > /output/me.txt", name="conc")
    procs = []
    for i in range(2):
        out = cold_vmwu.tmp / f"out{i}"
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "vmwu",
                    "run",
                    unit,
                    "--quiet",
                    "--output-directory",
                    out,
                    "--",
                    str(i),
                ],
                env={**os.environ, **cold_vmwu.env},
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    for i in range(2):
        assert (cold_vmwu.tmp / f"out{i}" / "me.txt").read_text() == f"{i}\n"
    blobs = list((cold_vmwu.tmp / "cache" / "blobs").iterdir())
    assert len(blobs) == 4  # kernel, initrd, app disk, output disk: each once
    assert not list((cold_vmwu.tmp / "cache" / "tmp").iterdir())


def test_output_image_kept_and_extractable(vmwu: Vmwu) -> None:
    unit = vmwu.pack("echo kept > /output/k.txt", name="keepimg")
    result, out, _ = vmwu.run(unit, "--output-filename", "output.qcow2")
    assert result.returncode == 0, result.stderr
    image = out / "output.qcow2"
    assert image.is_file()
    dest = vmwu.tmp / "extracted"
    ex = vmwu("extract", image, dest)
    assert ex.returncode == 0, ex.stderr
    assert (dest / "k.txt").read_text() == "kept\n"
    # the thesis's Phaser plan keeps the image beside the output directory
    result, out, _ = vmwu.run(unit, "--output-filename", "../up.img", out="out2")
    assert result.returncode == 0, result.stderr
    assert (vmwu.tmp / "up.img").is_file() and not (out / "up.img").exists()
    result, out, _ = vmwu.run(unit, "--output-filename", "sub/in.img", out="out3")
    assert result.returncode == 0, result.stderr
    assert (out / "sub" / "in.img").is_file()


def test_referenced_base_missing_on_node(vmwu: Vmwu, tmp_path: Path) -> None:
    unit = vmwu.pack("true", name="nobase")
    other = tmp_path / "other-home"
    result = Vmwu(other, vmwu.tmp, {}).run(unit)[0]
    assert result.returncode == 249
    assert "base 'tiny'" in result.stderr


def test_qemu_missing_names_the_package(vmwu: Vmwu) -> None:
    unit = vmwu.pack("true", name="noqemu")
    env_path = "/nonexistent"
    tools_dir = vmwu.tmp / "bin"
    tools_dir.mkdir()
    for tool in ("qemu-img", "debugfs", "cp", "lz4"):
        target = subprocess.run(["which", tool], capture_output=True, text=True).stdout.strip()
        if target:
            (tools_dir / tool).symlink_to(target)
    result = Vmwu(vmwu.home, vmwu.tmp, {"PATH": f"{tools_dir}:{env_path}"}).run(unit)[0]
    assert result.returncode == 242, result.stderr
    assert "qemu-system-x86" in result.stderr


def test_inspect_verifies(vmwu: Vmwu) -> None:
    unit = vmwu.pack("true", name="insp")
    result = vmwu("inspect", unit, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["manifest"] == "verified"
    assert summary["base"]["name"] == "tiny"
    assert not summary["base"]["embedded"]


def test_script_bin_extra_scripts_run_after_the_application(vmwu: Vmwu) -> None:
    """Scripts the app folder brings in .vmwu/bin/ run after the unit's auto-run script
    (thesis 5.1.4.1), even when their names sort first; the app's exit code is kept."""
    unit = vmwu.pack(
        "echo app >> /output/order.txt; exit 3",
        name="scriptbin",
        files={".vmwu/bin/00-extra.sh": "#!/bin/sh\necho extra >> /output/order.txt\nexit 9\n"},
    )
    result, out, status = vmwu.run(unit)
    assert result.returncode == 3, result.stderr
    assert (out / "order.txt").read_text() == "app\nextra\n"
    assert status["app_exit_code"] == 3


def test_sigterm_stops_the_guest_and_keeps_outputs(vmwu: Vmwu) -> None:
    unit = vmwu.pack("echo started > /output/s.txt; sync; sleep 600", name="term")
    out = vmwu.tmp / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmwu", "run", unit, "--quiet", "--output-directory", out],
        env={**os.environ, **vmwu.env},
        stderr=subprocess.PIPE,
        text=True,
    )

    def guest_running() -> int | None:  # the QEMU whose guest started the application
        below = tree(proc.pid)
        return next((p for p in below if comm(p).startswith("qemu") and app_started(p)), None)

    qemu = wait_for(guest_running, 120, "the application to start")
    qemu_started = start_time(qemu)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 248, err
    status = json.loads((out / "status.json").read_text())
    assert status["error"]["kind"] == "Interrupted"
    assert (out / "console.log").is_file()
    # vmwu run stopped its QEMU (and waited for it) before it exited: none is left behind
    assert not running(qemu, qemu_started)


def test_early_failure_still_writes_status_json(vmwu: Vmwu) -> None:
    unit = vmwu.pack("true", name="early")
    result, out, status = vmwu.run(unit, "--files", "missing.txt")
    assert result.returncode == 241
    assert status["outcome"] == "vmwu-error"
    assert status["error"]["code"] == 241 and "missing.txt" in status["error"]["message"]
