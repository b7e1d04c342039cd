"""Issue 6 on real guests: a Debian base built from packages, an imported BIOS image run
the thesis's way (its own script-bin daemon, devices from the template), a Debian cloud
image run through cloud-init, and the failures a user meets on the way.

The heavy images are built once per session and shared: the Debian base (mmdebstrap,
~1-2 min), the cloud image (~2 min) and the Mandelbrot unit with g++ installed into its
layer (~2-3 min, dpkg under TCG). Budget: about 10 minutes in all on 2 cores.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.budgets import slow_fixture
from tests.conftest import ROOT, run_vmwu
from tests.integration.conftest import Vmwu
from tests.integration.images import make_cloud_image, make_daemon_image

BAD_INPUT = 241
NEVER_BOOTED = 243

HELLO = '#!/bin/sh\necho "hello from $(cat /etc/debian_version 2>/dev/null || echo busybox)" "$@"\n'


def one_error_line(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    assert result.returncode == code, f"exit {result.returncode}: {result.stderr}"
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("vmwu: error:")]
    assert len(errors) == 1, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


DEBIAN_BUILD = 1500  # seconds for `vmwu base build debian` (mmdebstrap, a root disk)
LAYER_PACK = 1800  # seconds to pack a unit with guest-packages (apt and dpkg in a guest)
CLOUD_IMAGE = 900  # seconds for mmdebstrap of a Debian with cloud-init, and its disk


@slow_fixture(DEBIAN_BUILD + 60, scope="session")
def bases_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A VMWU_HOME whose catalog holds the Debian base (built once per session)."""
    home = tmp_path_factory.mktemp("vmwu-bases")
    env = {"VMWU_HOME": str(home)}
    result = run_vmwu("base", "build", "debian", env=env, timeout=DEBIAN_BUILD)
    assert result.returncode == 0, result.stderr
    return home


@pytest.fixture
def bases(bases_home: Path, tmp_path: Path) -> Vmwu:
    return Vmwu(bases_home, tmp_path, {})


@pytest.fixture(scope="session")
def daemon_image(tiny_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BIOS disk whose init is the thesis's script-bin daemon (no vmwu inside)."""
    dest = tmp_path_factory.mktemp("daemon-img") / "daemon.img"
    return make_daemon_image(tiny_home / "cache" / "downloads", dest)


@slow_fixture(CLOUD_IMAGE, scope="session")
def cloud_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Debian cloud image with cloud-init, booted by syslinux (no vmwu inside)."""
    return make_cloud_image(tmp_path_factory.mktemp("cloud-img") / "cloud.img")


# -- the Debian base -----------------------------------------------------------------------


def test_debian_base_is_registered_for_direct_boot_over_its_root_disk(bases: Vmwu) -> None:
    shown = json.loads(bases("base", "show", "debian", "--json").stdout)
    assert shown["boot_method"] == "direct-kernel"
    assert sorted(f["role"] for f in shown["files"]) == ["base-disk", "initrd", "kernel"]
    assert "root=UUID=" in shown["cmdline"] and "Debian bookworm" in shown["description"]
    assert shown["architecture"] == "x86_64" and shown["guest_os"].startswith("linux6")


def test_debian_base_runs_an_app_with_its_arguments_and_exit_code(bases: Vmwu) -> None:
    unit = bases.pack(
        '/app/hello.sh "$@"; exit 3',
        name="deb-hello",
        files={"hello.sh": HELLO},
        extra={"base-image": "debian", "app-output-size": "4M"},
    )
    result, out, status = bases.run(unit, params=("a", "b c"))
    assert result.returncode == 3, result.stderr
    assert (out / "stdout.log").read_text().startswith("hello from 12.")  # Debian 12
    assert "b c" in (out / "stdout.log").read_text()
    assert status["outcome"] == "app" and status["app_exit_code"] == 3


def test_debian_base_warm_starts_over_its_frozen_root_disk(bases: Vmwu) -> None:
    """The first instance saves the booted Debian guest with its root disk; the next ones
    resume it, each on its own overlay: what one instance writes to / the next does not
    see."""
    unit = bases.pack(
        'cat /etc/debian_version; ls /var/tmp/mark 2>&1; echo "$1" > /var/tmp/mark; echo "$1"',
        name="deb-warm",
        extra={"base-image": "debian", "app-output-size": "4M"},
    )
    starts, outs = [], []
    for word in ("first", "second", "third"):
        result, out, status = bases.run(unit, out=f"out-{word}", params=(word,))
        assert result.returncode == 0, result.stderr
        starts.append(status["start"])
        outs.append((out / "stdout.log").read_text().splitlines())
    assert "warm start" in starts[1] and "warm start: resumed" in starts[2], starts
    for word, lines in zip(("first", "second", "third"), outs, strict=True):
        assert lines[0].startswith("12.") and lines[-1] == word, lines
        assert "No such file or directory" in lines[1], lines  # no other instance's mark


@slow_fixture(LAYER_PACK + 60, scope="session")
def mandelbrot_debian(bases_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/mandelbrot/debian.toml packed: g++ installed into the unit's layer."""
    where = tmp_path_factory.mktemp("mandel-deb")
    example = where / "mandelbrot"
    shutil.copytree(ROOT / "examples" / "mandelbrot", example, ignore=shutil.ignore_patterns("app"))
    unit = where / "mandelbrot-debian.ova"
    env = {"VMWU_HOME": str(bases_home)}
    result = run_vmwu("pack", example / "debian.toml", "-o", unit, env=env, timeout=LAYER_PACK)
    assert result.returncode == 0, result.stderr
    return unit


@pytest.mark.timeout(1200)
def test_mandelbrot_compiled_by_gpp_in_the_guest_gives_the_native_rows(
    bases: Vmwu, mandelbrot_debian: Path
) -> None:
    """Thesis 6.1.1 as written: instance-script-cmd compiles the C++ source with g++ in
    the guest, then the program runs with the rows from /cdrom/param."""
    inspect = json.loads(bases("inspect", mandelbrot_debian, "--json").stdout)
    assert "base-layer" in json.dumps(inspect)  # g++ travels as a layer, not in the base
    job = "-2.0 1.0 -1.0 1.0 1600 800 100 0 300 1600 400".split()
    result, out, status = bases.run(mandelbrot_debian, params=tuple(job), timeout=900)
    assert result.returncode == 0, result.stderr
    native = bases.tmp / "native"
    subprocess.run(
        ["g++", "-O2", "-o", str(native), str(ROOT / "examples/mandelbrot/src/mandelbrot.cpp")],
        check=True,
    )
    subprocess.run([str(native), str(bases.tmp / "native.out"), *job], check=True)
    assert (out / "mandelbrot.out").read_bytes() == (bases.tmp / "native.out").read_bytes()
    assert status["progress"] == 1.0  # vmwu-progress works in the Debian guest too


def test_packing_the_same_guest_packages_again_reuses_the_layer(
    bases: Vmwu, mandelbrot_debian: Path
) -> None:
    example = bases.tmp / "again"
    shutil.copytree(ROOT / "examples" / "mandelbrot", example, ignore=shutil.ignore_patterns("app"))
    result = bases("pack", example / "debian.toml", "-o", bases.tmp / "again.ova")
    assert result.returncode == 0, result.stderr
    assert "reusing the guest-packages layer" in result.stderr


def test_unknown_release_and_missing_package_are_one_line_from_the_builder(
    bases: Vmwu,
) -> None:
    result = bases("base", "build", "debian", "--name", "x", "--release", "nosuchrelease")
    one_error_line(result, BAD_INPUT, "unknown Debian release 'nosuchrelease'")
    result = bases("base", "build", "debian", "--name", "y", "--packages", "vmwu-no-such-pkg")
    one_error_line(result, BAD_INPUT, "has no package vmwu-no-such-pkg")
    assert "x" not in bases("base", "list").stdout.split()


def test_guest_package_that_does_not_exist_is_one_line_from_pack(bases: Vmwu) -> None:
    (bases.tmp / "app").mkdir()
    spec = bases.tmp / "bad.toml"
    spec.write_text(
        'app-import-dir = "app"\napp-launch = "true"\nbase-image = "debian"\n'
        'guest-packages = ["vmwu-no-such-pkg"]\n'
    )
    one_error_line(bases("pack", spec), BAD_INPUT, "has no package vmwu-no-such-pkg")


# -- imported images -----------------------------------------------------------------------


def test_imported_bios_image_runs_the_thesis_way(bases: Vmwu, daemon_image: Path) -> None:
    """No vmwu inside: the image's own daemon runs the script-bin; the thesis template
    mounts /dev/vdc and /dev/vdd (base-image-*-mount-device) and shuts down."""
    result = bases("base", "import", daemon_image, "--name", "thesis", "--via", "daemon")
    assert result.returncode == 0, result.stderr
    shown = json.loads(bases("base", "show", "thesis", "--json").stdout)
    assert shown["boot_method"] == "disk" and shown["output_device"] == "/dev/vdc"
    unit = bases.pack(
        '/app/hello.sh "$@"; cat /cdrom/param > param.txt; exit 7',
        name="thesis-hello",
        files={"hello.sh": HELLO},
        extra={"base-image": "thesis", "app-output-size": "4M"},
    )
    result, out, status = bases.run(unit, params=("x", "y z"))
    assert result.returncode == 7, result.stderr
    assert (out / "stdout.log").read_text() == "hello from busybox x y z\n"
    assert (out / "param.txt").read_text() == "x y z\n"
    assert "thesis-daemon: running autorun.sh" in (out / "console.log").read_text()
    assert status["outcome"] == "app" and status["guest"]["exit_code"] == 7


def test_imported_uefi_image_boots_with_ovmf(bases: Vmwu, tiny_home: Path) -> None:
    """A GPT disk whose only boot loader is systemd-boot on an EFI system partition."""
    image = make_daemon_image(tiny_home / "cache" / "downloads", bases.tmp / "uefi.img", uefi=True)
    result = bases("base", "import", image, "--name", "uefi", "--via", "daemon")
    assert result.returncode == 0, result.stderr
    assert "UEFI" in json.loads(bases("base", "show", "uefi", "--json").stdout)["description"]
    unit = bases.pack(
        '/app/hello.sh "$@"',
        name="uefi-hello",
        files={"hello.sh": HELLO},
        extra={"base-image": "uefi", "app-output-size": "4M"},
    )
    result, out, status = bases.run(unit, params=("u",))
    assert result.returncode == 0, result.stderr
    assert (out / "stdout.log").read_text() == "hello from busybox u\n"
    assert "if=pflash" in status["cmdline"] and "BdsDxe" in (out / "console.log").read_text()


@pytest.mark.timeout(1000)
def test_cloud_image_runs_through_cloud_init(bases: Vmwu, cloud_image: Path) -> None:
    """A Debian cloud image: the launcher's NoCloud seed starts the vmwu agent."""
    result = bases("base", "import", cloud_image, "--name", "cloud")
    assert result.returncode == 0, result.stderr
    unit = bases.pack(
        '/app/hello.sh "$@"; vmwu-progress 1',
        name="cloud-hello",
        files={"hello.sh": HELLO},
        extra={"base-image": "cloud", "app-output-size": "4M"},
    )
    result, out, status = bases.run(unit, "--timeout", "600", params=("c",), timeout=700)
    assert result.returncode == 0, result.stderr
    assert (out / "stdout.log").read_text().startswith("hello from 12.")
    assert "cloud-init" in (out / "console.log").read_text()
    assert status["progress"] == 1.0


def test_image_that_is_not_a_disk_is_refused(bases: Vmwu) -> None:
    text = bases.tmp / "notes.txt"
    text.write_text("not a disk\n")
    one_error_line(bases("base", "import", text), BAD_INPUT, "is not a disk image")
    blank = bases.tmp / "blank.img"
    blank.write_bytes(bytes(4 * 1024 * 1024))
    one_error_line(bases("base", "import", blank), BAD_INPUT, "not a bootable disk image")


def test_image_that_never_reaches_the_agent_times_out_with_the_console_tail(
    bases: Vmwu, tiny_home: Path
) -> None:
    """A daemon that waits for an application disk that never comes."""
    image = make_daemon_image(
        tiny_home / "cache" / "downloads", bases.tmp / "stuck.img", app_device="/dev/vdz"
    )
    result = bases("base", "import", image, "--name", "stuck", "--via", "daemon")
    assert result.returncode == 0, result.stderr
    unit = bases.pack("true", name="stuck-unit", extra={"base-image": "stuck"})
    result, out, status = bases.run(unit, "--boot-timeout", "20")
    line = one_error_line(result, NEVER_BOOTED, "did not reach the vmwu agent within 20 s")
    assert "waiting for the application image /dev/vdz" in line  # the console's tail
    assert status["outcome"] == "vmwu-error"
