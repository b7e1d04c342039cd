"""Bases side by side (issue 6 §4): build time, size, boot and shutdown per base. Prints JSON.

    .venv/bin/python bench/bases.py [--runs 3] [--skip cloud]

In a fresh VMWU_HOME it builds or makes, and times:

- ``tiny``: `vmwu base build tiny` (busybox initramfs, direct boot);
- ``debian``: `vmwu base build debian` (mmdebstrap, systemd, direct boot over a root disk);
- ``tiny-arm64`` and ``debian-arm64``: the same for arm64 guests, emulated by
  qemu-system-aarch64 (Debian's packages installed by dpkg in the emulated guest);
- ``imported-daemon``: a BIOS disk (syslinux, busybox, the thesis's script-bin daemon) made
  from tiny's packages and registered with `vmwu base import --via daemon`;
- ``imported-cloud``: a Debian cloud image (mmdebstrap with cloud-init, syslinux) made here
  and registered with `vmwu base import` (cloud-init NoCloud seed starts the agent).

For each base: ``build_s`` (making the image and registering it), ``size_bytes`` (what the
catalog holds: the base's files), then ``--runs`` runs of a no-op unit (``app-launch =
"true"``) on it, cold boot (``--no-warm``; bases booted directly also warm, resuming the
node's saved guest), medians of the status.json timings: ``boot_to_app_start_s`` (QEMU
start → the agent's ``started``), ``app_exit_to_poweroff_s`` (the ``exit`` event → QEMU
gone), ``qemu_s`` and the wall clock of `vmwu run`. Timings on a shared machine are noisy:
compare within one run of this script.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
VMWU = [sys.executable, "-m", "vmwu"]


def sh(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, text=True, capture_output=True, check=True)


def timed(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return round(time.perf_counter() - t, 1)


def med(xs: list[float]) -> float:
    return round(statistics.median(xs), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--skip", action="append", default=[], help="a base to leave out")
    args = ap.parse_args()
    from tests.integration.images import make_cloud_image, make_daemon_image

    work = Path(tempfile.mkdtemp(prefix="vmwu-bench-bases-"))
    env = dict(os.environ)
    env["VMWU_HOME"] = str(work / "home")
    downloads = work / "home" / "cache" / "downloads"
    builds: dict[str, float] = {}
    try:
        builds["tiny"] = timed(lambda: sh(VMWU + ["base", "build", "tiny", "-q"], env))
        if "debian" not in args.skip:
            builds["debian"] = timed(lambda: sh(VMWU + ["base", "build", "debian", "-q"], env))
        arm64 = {
            "tiny-arm64": ["base", "build", "tiny", "--arch", "arm64"],
            "debian-arm64": ["base", "build", "debian", "--arch", "arm64"],
        }
        for name, argv in arm64.items():
            if name not in args.skip:
                command = [*VMWU, *argv, "--name", name, "-q"]
                builds[name] = timed(lambda command=command: sh(command, env))
        if "imported-daemon" not in args.skip:
            img = work / "daemon.img"

            def daemon() -> None:
                make_daemon_image(downloads, img)
                sh(VMWU + ["base", "import", str(img), "--name", "imported-daemon", "--via",
                           "daemon", "-q"], env)  # fmt: skip

            builds["imported-daemon"] = timed(daemon)
        if "imported-cloud" not in args.skip:
            cloud = work / "cloud.img"

            def cloud_image() -> None:
                make_cloud_image(cloud)
                sh(VMWU + ["base", "import", str(cloud), "--name", "imported-cloud", "-q"], env)

            builds["imported-cloud"] = timed(cloud_image)

        catalog = {
            b["name"]: b for b in json.loads(sh(VMWU + ["base", "list", "--json"], env).stdout)
        }
        app = work / "app"
        app.mkdir()
        result: dict[str, Any] = {"runs": args.runs, "bases": {}}
        for name, build_s in builds.items():
            spec = work / f"{name}.toml"
            spec.write_text(
                f'package-name = "noop-{name}"\napp-import-dir = "{app}"\napp-launch = "true"\n'
                f'base-image = "{name}"\napp-output-size = "4M"\n'
            )
            unit = work / f"noop-{name}.ova"
            sh(VMWU + ["pack", str(spec), "-o", str(unit), "-q"], env)
            modes = {"cold": ["--no-warm"]}
            if catalog[name]["boot_method"] == "direct-kernel":
                modes["warm"] = []  # the node's saved booted guest (a root disk too)
            entry: dict[str, Any] = {
                "build_s": build_s,
                "size_bytes": catalog[name]["size"],
                "boot_method": catalog[name]["boot_method"],
            }
            for mode, extra in modes.items():
                runs = []
                for i in range(args.runs + (1 if mode == "warm" else 0)):
                    out = work / f"out-{name}-{mode}-{i}"
                    t = time.perf_counter()
                    sh(VMWU + ["run", str(unit), "--quiet", "--timeout", "900",
                               "--output-directory", str(out), *extra], env)  # fmt: skip
                    wall = time.perf_counter() - t
                    status = json.loads((out / "status.json").read_text())
                    runs.append((wall, status["timings"]))
                if mode == "warm":
                    runs = runs[1:]  # the first run saves the booted guest
                entry[mode] = {
                    "boot_to_app_start_s": med([t["boot"] for _, t in runs]),
                    "app_exit_to_poweroff_s": med([t["shutdown"] for _, t in runs]),
                    "qemu_s": med([t["qemu"] for _, t in runs]),
                    "run_wall_s": med([w for w, _ in runs]),
                }
            result["bases"][name] = entry
        result["accel"] = status["accel"] if builds else None
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
