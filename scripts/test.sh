#!/usr/bin/env bash
# Set everything up and run the test suite: ./scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/pytest "$@"
