#!/usr/bin/env bash
# GPU readiness check (see benchmarks/gpu_check.py): one JSON, under 8 minutes.
#   bash benchmarks/gpu_check.sh [--out PATH] [--dry-run] [--steps inference,training]
set -u
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
if [ -x "$root/.venv/bin/python" ]; then py="$root/.venv/bin/python"; else py="python3"; fi
exec timeout 475 "$py" "$here/gpu_check.py" "$@"
