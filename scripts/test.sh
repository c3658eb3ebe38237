#!/usr/bin/env bash
# Set up (if needed), then lint and run the whole test suite, as CI does.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests benchmarks
# two workers (pytest-xdist) with one torch thread each: many tests wait on subprocesses and
# sockets, so two share 2 cores well; CAPRO_TEST_WORKERS=0 runs in one process
OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" .venv/bin/pytest -n "${CAPRO_TEST_WORKERS:-2}" --dist worksteal "$@"
