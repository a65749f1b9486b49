#!/usr/bin/env bash
# Quickstart: set up, then run the demo curation job end to end on the embedded defaults
# (embedded PostgreSQL + pgvector, local Ray, local storage, real photos from registry packages).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/curation demo "$@"
