#!/bin/sh
# Build the Mandelbrot application as a static binary into the app-import dir:
#   ./build.sh                 x86_64 (the host compiler)  -> app/mandelbrot
#   ARCH=aarch64 ./build.sh    arm64 (Debian's cross g++)  -> app-aarch64/mandelbrot
# Static, because the vmwu guest has only busybox: no libc, no libstdc++. Safe to re-run;
# rebuilds only when the source is newer.
set -eu

cd "$(dirname "$0")"
src=src/mandelbrot.cpp
ARCH=${ARCH:-x86_64}
case "$ARCH" in
x86_64 | amd64)
    out=app/mandelbrot
    CXX=${CXX:-g++}
    pkg=g++
    ;;
aarch64 | arm64)
    out=app-aarch64/mandelbrot
    CXX=${CXX:-aarch64-linux-gnu-g++}
    pkg=g++-aarch64-linux-gnu
    ;;
*)
    echo "build.sh: unknown ARCH=$ARCH (use x86_64 or aarch64)" >&2
    exit 1
    ;;
esac

if ! command -v "$CXX" >/dev/null 2>&1; then
    echo "build.sh: $CXX not found; install a C++ compiler (Debian: apt-get install $pkg)" >&2
    exit 1
fi
# `-print-file-name` echoes the bare name back when the archive is not installed.
case "$("$CXX" -print-file-name=libstdc++.a)" in
/*) ;;
*)
    echo "build.sh: static libstdc++ (libstdc++.a) not found for $CXX;" \
        "install it (Debian: apt-get install $pkg)" >&2
    exit 1
    ;;
esac

if [ -x "$out" ] && [ "$out" -nt "$src" ] && [ "$out" -nt build.sh ]; then
    echo "build.sh: $out is up to date"
    exit 0
fi

mkdir -p "$(dirname "$out")"
# -s strips at link time; no -march=native, since the guest CPU may be a baseline model
# (QEMU TCG) rather than the build host's. -ffp-contract=off: no fused multiply-adds, so
# x86_64 and aarch64 round the same way and compute the same image.
"$CXX" -static -O2 -s -ffp-contract=off -Wall -Wextra -o "$out.tmp" "$src"
mv "$out.tmp" "$out"
echo "build.sh: built $out"
