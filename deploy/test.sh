#!/usr/bin/env bash
# Installs everything the tests need (Debian packages, ./.venv with the test
# dependencies) and runs the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install.sh --test
exec .venv/bin/python -m pytest "$@"
