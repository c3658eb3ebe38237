#!/usr/bin/env bash
# Set up (if needed), then lint and run the whole test suite, as CI does.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests benchmarks
.venv/bin/pytest "$@"
