#!/bin/sh
# Build the Mandelbrot application as a static x86_64 binary into app/ (the
# app-import dir). Static, because the vmwu guest has only busybox: no libc,
# no libstdc++. Safe to re-run; rebuilds only when the source is newer.
set -eu

cd "$(dirname "$0")"
src=src/mandelbrot.cpp
out=app/mandelbrot
CXX=${CXX:-g++}

if ! command -v "$CXX" >/dev/null 2>&1; then
    echo "build.sh: $CXX not found; install a C++ compiler (Debian: apt-get install g++)" >&2
    exit 1
fi
# `-print-file-name` echoes the bare name back when the archive is not installed.
case "$("$CXX" -print-file-name=libstdc++.a)" in
/*) ;;
*)
    echo "build.sh: static libstdc++ (libstdc++.a) not found for $CXX;" \
        "install it (Debian: apt-get install g++, which pulls libstdc++-dev)" >&2
    exit 1
    ;;
esac

if [ -x "$out" ] && [ "$out" -nt "$src" ] && [ "$out" -nt build.sh ]; then
    echo "build.sh: $out is up to date"
    exit 0
fi

mkdir -p app
# -s strips at link time; no -march=native, since the guest CPU may be a
# baseline x86-64 model (QEMU TCG) rather than the build host's.
"$CXX" -static -O2 -s -Wall -Wextra -o "$out.tmp" "$src"
mv "$out.tmp" "$out"
echo "build.sh: built $out"
