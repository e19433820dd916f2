#!/usr/bin/env bash
# Set up afterword on a fresh machine: a virtual environment in .venv with the package installed.
#   bash scripts/setup.sh          core install (light: no torch)
#   bash scripts/setup.sh all      every extra + system packages for the full test suite
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
profile=${1:-core}

if [ "$profile" = "all" ] && ! command -v chromium >/dev/null 2>&1; then
  # Browser tests drive Debian's Chromium through playwright (no browser download).
  if command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null
  fi
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
if [ "$profile" = "all" ]; then
  # torch first, pinned: the pin resolves to the CPU wheel; unpinned it would pull a CUDA build of GBs.
  python -m pip install -q "torch==2.13.0"
  # llama-cpp-python compiles llama.cpp (about 7 minutes), by default for this very CPU
  # (-march=native); pip caches that wheel, and another CPU sharing the cache then dies on an
  # illegal instruction at the first generation (seen: a wheel built on an AVX-512 host, run on
  # another). Build it for any x86-64 with AVX2, and never from the cache.
  if [ ! -f .venv/.llama-portable ] && [ "$(uname -m)" = "x86_64" ]; then
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON" \
      python -m pip install -q --no-cache-dir --force-reinstall --no-deps "llama-cpp-python>=0.3.7"
    touch .venv/.llama-portable
  fi
  python -m pip install -q -e ".[all]"
else
  python -m pip install -q -e .
fi
