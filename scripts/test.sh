#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and runs the whole test suite: linters, unit tests
# and the integration tests that boot real guests under QEMU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check vmwu tests bench examples
.venv/bin/ruff format --check vmwu tests bench examples
.venv/bin/mypy
.venv/bin/pytest -ra "$@"
