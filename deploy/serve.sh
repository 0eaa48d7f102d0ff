#!/usr/bin/env bash
# Installs msession into ./.venv and runs one node on its defaults
# (127.0.0.1:8086). Extra arguments go to `msession serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install.sh
exec .venv/bin/msession serve "$@"
