#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite: unit tests plus real-data integration tests
# on ../shared/data (or $RTG_ANOMALY_DATA). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
