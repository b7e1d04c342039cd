"""Warm start: instances resume a saved booted guest; they must not notice."""

from __future__ import annotations

import time

from tests.integration.conftest import Vmwu

PROBE = "head -c 16 /dev/urandom | od -An -tx1 > /output/random.txt; date +%s > /output/now.txt"


def test_resumed_instances_get_their_own_randomness_and_the_right_time(vmwu: Vmwu) -> None:
    unit = vmwu.pack(PROBE, name="probe")
    seen = []
    for i in range(2):
        result, out, status = vmwu.run(unit, out=f"out{i}")
        assert result.returncode == 0, result.stderr
        assert status["start"].startswith("warm start"), status["start"]
        seen.append((out / "random.txt").read_text())
        guest_now = int((out / "now.txt").read_text())
        assert abs(guest_now - time.time()) < 30
    assert seen[0] != seen[1]


def test_cold_boot_still_works(vmwu: Vmwu) -> None:
    unit = vmwu.pack('echo "$@" > /output/args.txt; exit 5', name="cold")
    result, out, status = vmwu.run(unit, "--no-warm", params=("x", "y z"))
    assert result.returncode == 5, result.stderr
    assert status["start"] == "cold boot: --no-warm"
    assert (out / "args.txt").read_text() == "x y z\n"


def test_a_saved_guest_that_does_not_load_falls_back_to_a_cold_boot(cold_vmwu: Vmwu) -> None:
    cold_vmwu.extra_env["VMWU_NO_SHARED_RAM"] = "1"  # the saved guest with its RAM inside
    unit = cold_vmwu.pack("echo ok > /output/ok.txt", name="fallback")
    result, _, status = cold_vmwu.run(unit, out="first")
    assert result.returncode == 0, result.stderr
    states = list((cold_vmwu.tmp / "cache" / "derived").glob("warm-*.state"))
    assert len(states) == 1
    states[0].chmod(0o644)
    states[0].write_bytes(b"this is not a migration stream")
    result, out, status = cold_vmwu.run(unit, out="second")
    assert result.returncode == 0, result.stderr
    assert status["start"] == "cold boot: the saved guest did not load"
    assert (out / "ok.txt").read_text() == "ok\n"
    assert not states[0].exists()


def test_guest_ram_from_a_file_that_does_not_load_falls_back_to_the_full_state(
    cold_vmwu: Vmwu,
) -> None:
    unit = cold_vmwu.pack("echo ok > /output/ok.txt; cat /cdrom/param", name="shm")
    result, out, status = cold_vmwu.run(unit, out="first", params=("a",))
    assert result.returncode == 0, result.stderr
    assert status["start"].endswith("(guest RAM from a file)"), status["start"]
    derived = cold_vmwu.tmp / "cache" / "derived"
    (pointer,) = derived.glob("warm-*.shared")
    (state,) = derived.glob("warm-*.sstate-*[0-9a-f]")
    (ram,) = derived.glob("warm-*.ram-*[0-9a-f]")
    assert state.stat().st_size < 4 * 1024**2  # the RAM is not in it
    state.chmod(0o644)
    state.write_bytes(b"this is not a migration stream")
    result, out2, status = cold_vmwu.run(unit, out="second", params=("a",))
    assert result.returncode == 0, result.stderr
    assert status["start"] == "warm start: saved the booted guest for this node, then resumed it"
    assert (out2 / "ok.txt").read_text() == (out / "ok.txt").read_text() == "ok\n"
    assert (out2 / "stdout.log").read_text() == (out / "stdout.log").read_text()
    # forgotten, files and all, but not given up on: the next instance saves it again
    assert not pointer.exists() and not state.exists() and not ram.exists()
    assert not list(derived.glob("warm-*.shared-off"))
