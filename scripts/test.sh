#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite: unit tests plus real-data integration tests
# on ../shared/data (or $RTG_ANOMALY_DATA). Extra arguments go to pytest (one run, as given).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "$#" -gt 0 ]; then
  exec .venv/bin/python -m pytest -q "$@"
fi
# The tests that start a local Ray (marker "ray") run in a pytest process of their own, after the others.
# ray.init replaces the process's SIGSEGV handler and ray.shutdown leaves Ray's native threads and handler
# behind: a crash later in the same process then prints no Python traceback (exit 139 and nothing else).
.venv/bin/python -m pytest -q -m "not ray"
exec .venv/bin/python -m pytest -q -m ray
