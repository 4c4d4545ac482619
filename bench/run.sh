#!/usr/bin/env bash
# Reproduces bench/README.md's table: builds in release mode, installs wrk and the FastAPI
# reference into bench/.venv, then runs every scenario side by side (bench/run.py).
# Needs PostgreSQL and Redis on 127.0.0.1 (as for the tests). About 6 minutes plus the build.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
command -v taskset >/dev/null || { echo "taskset (util-linux) is required"; exit 1; }
if [ ! -x bench/.venv/bin/uvicorn ]; then
  python3 -m venv bench/.venv
  bench/.venv/bin/pip install -q -r bench/ref/fastapi/requirements.txt
fi
cargo build --release -p backend -p bare-axum
cargo bench -p backend --bench micro
exec bench/.venv/bin/python bench/run.py
