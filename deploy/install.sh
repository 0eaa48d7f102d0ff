#!/usr/bin/env bash
# Installs msession into ./.venv (created if missing). With --test, also the test
# dependencies and the Debian packages the tests and benchmarks use.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

apt_install() {
    # Installs Debian packages that are missing, when we are root and have apt.
    local missing=()
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        echo "install.sh: please install these Debian packages: ${missing[*]}" >&2
        return 1
    fi
    echo "install.sh: installing Debian packages: ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

PY=${PYTHON:-python3}
"$PY" -c 'import sys; assert sys.version_info >= (3, 11), "msession needs Python 3.11 or newer"'

if [ ! -x .venv/bin/python ]; then
    if ! "$PY" -m venv --help >/dev/null 2>&1 || ! "$PY" -c 'import ensurepip' 2>/dev/null; then
        apt_install python3-venv
    fi
    "$PY" -m venv .venv
fi

# Reinstall only when pyproject.toml, the set of packages or the wanted extras changed: the install
# is editable, so code changes need none, and a restart needs no network.
# The packages count too: an editable install only maps those it saw.
hash=$( { cat pyproject.toml; ls -d */__init__.py 2>/dev/null; } | sha256sum | cut -d' ' -f1)
installed=$(cat .venv/.msession-installed 2>/dev/null || true)
mode=$([ $want_test -eq 1 ] && echo test || echo run)
# The test install is a superset of the run install.
if [ "$installed" != "$hash test" ] && [ "$installed" != "$hash $mode" ]; then
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    if [ $want_test -eq 1 ]; then
        .venv/bin/python -m pip install -q -e ".[test]"
    else
        .venv/bin/python -m pip install -q -e .
    fi
    echo "$hash $mode" > .venv/.msession-installed
fi

if [ $want_test -eq 1 ]; then
    # The benchmarks compare against redis-server (and, for PHP, phpredis and
    # php-memcached); the PHP tests need php-cli, php-msgpack and phpunit,
    # php-apcu holds a farm's routing table. Without root we cannot install
    # them; the tests that need them then skip and say why.
    apt_install redis-server procps php-cli php-msgpack php-apcu phpunit php-redis php-memcached memcached || echo "install.sh: continuing without redis-server or the PHP packages" >&2
fi
