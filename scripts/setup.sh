#!/usr/bin/env bash
# Sets up vmwu on a fresh Debian 12 / Ubuntu machine: apt packages, a virtualenv in .venv
# with vmwu and its pinned dependencies, and the "tiny" base image in the user's catalog.
# Idempotent: a second run only checks. Run as root or as a user with sudo.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# qemu-system-x86 / qemu-utils: the VMM and qemu-img; e2fsprogs: mkfs.ext4 -d and debugfs;
# lz4/zstd: the fast-boot kernel; dpkg/apt: building bases from packages; g++: the examples;
# qemu-system-arm + g++-aarch64-linux-gnu: arm64 guests and the arm64 Mandelbrot example.
PACKAGES=(python3 python3-venv python3-pip qemu-system-x86 qemu-utils e2fsprogs lz4 zstd
          g++ libc6-dev ca-certificates qemu-system-arm g++-aarch64-linux-gnu)
# slurm-wlm, slurmctld, slurmd, slurm-client, munge: the Slurm executor of `vmwu sweep` and the
# single-node test cluster its tests start (scripts/slurm-test-cluster.sh).
PACKAGES+=(slurm-wlm slurmctld slurmd slurm-client munge)
# gridengine-*: the Grid Engine executor and its single-node test cluster
# (scripts/sge-test-cluster.sh, which also answers their debconf questions before install).
PACKAGES+=(gridengine-master gridengine-exec gridengine-client)
# mmdebstrap, uidmap, fakechroot: `vmwu base build debian` (rootless: user namespaces, or
# fakechroot where they do not work); fdisk, mtools, dosfstools, syslinux, syslinux-common:
# bootable BIOS disk images for `vmwu base import` (tests, bench); ovmf: UEFI firmware;
# libxml2-utils: xmllint for the OVF schema check (docs/bases.md).
PACKAGES+=(mmdebstrap uidmap fakechroot fdisk mtools dosfstools syslinux syslinux-common ovmf
           libxml2-utils)
# boinc-client: the real BOINC client (and boinccmd) that the tests of `vmwu wrap` under BOINC
# start in a temporary data directory (docs/boinc.md); the system service is not used.
PACKAGES+=(boinc-client)
missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# `vmwu base build` uses apt-get download, which needs the package lists.
if [ "${#missing[@]}" -gt 0 ] || ! ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1; then
    echo "setup: apt-get update"
    $SUDO apt-get update -qq
fi
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    case " ${missing[*]} " in *" gridengine-"*) $SUDO bash scripts/sge-test-cluster.sh preseed ;; esac
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
# package: PyInstaller, for `vmwu boinc package` and its test; dask and report: the Dask
# executor and `vmwu sweep report` (optional for users, installed here for the tests).
.venv/bin/pip install -q --disable-pip-version-check -e '.[dev,package,dask,report]'
# An editable install leaves vmwu's bytecode to be written at first import, which
# PYTHONDONTWRITEBYTECODE (set on some machines, ours included) prevents: every `vmwu run`
# would then compile its modules again (~0.1 s). A regular pip install compiles them.
.venv/bin/python -m compileall -q vmwu

if ! .venv/bin/vmwu base show tiny >/dev/null 2>&1; then
    echo "setup: building the tiny base image"
    .venv/bin/vmwu base build tiny
fi
echo "setup: done ($(.venv/bin/vmwu --version))"
