#!/usr/bin/env bash
# The test suite, from a fresh clone: set-up (idempotent), then pytest. Unit tests run in-process; integration
# tests start the real TorchServe and tritonserver on free loopback ports. Extra arguments go to pytest,
# e.g. scripts/test.sh -m "not integration".
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
