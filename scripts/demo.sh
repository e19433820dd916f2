#!/usr/bin/env bash
# The main job on the embedded default store and the shipped sample:
# ingest -> judge -> remember -> export datasets -> report. Sets everything up first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh core
. .venv/bin/activate
export AFTERWORD_DB=${AFTERWORD_DB:-./afterword.db}
afterword run "$@"
