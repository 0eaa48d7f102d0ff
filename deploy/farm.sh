#!/usr/bin/env bash
# Installs msession into ./.venv and runs a local farm of N nodes on this machine,
# one loopback address each (127.0.0.11, 127.0.0.12, ...), until Ctrl-C or SIGTERM.
# Arguments go to `msession farm`, e.g.:
#   bash deploy/farm.sh --nodes 3
#   bash deploy/farm.sh --nodes 5 --port 9000 -- --log-level debug
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install.sh
exec .venv/bin/msession farm "$@"
