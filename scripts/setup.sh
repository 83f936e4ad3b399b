#!/usr/bin/env bash
# Idempotent project setup (what `make setup` runs):
#  1. the Debian packages the embedded PostgreSQL needs: installed when we are root; otherwise
#     we print the exact command to run with sudo and fail;
#  2. the project venv .venv with pgsnap installed editable, re-installed only when the
#     packaging files changed since the last install (hash stamp inside the venv).
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(postgresql-15 postgresql-15-cron postgresql-15-plpgsql-check)
PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.pgsnap-install-stamp

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
    for pkg in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    # Debian's own python3 ships venv/ensurepip separately
    if [ ! -x "$VENV/bin/python" ] && ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        missing+=(python3-venv)
    fi
else
    echo "setup: not a Debian system; make sure PostgreSQL 15 with pg_cron and plpgsql_check is installed" >&2
fi

if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then
        echo "setup: installing ${missing[*]}" >&2
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
    else
        echo "setup: missing Debian packages: ${missing[*]}. Install them as root, then re-run:" >&2
        echo "  sudo sh -c 'apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y ${missing[*]}'" >&2
        exit 1
    fi
fi

if ! "$VENV/bin/python" -c '' >/dev/null 2>&1; then
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
        echo "setup: pgsnap needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2
        exit 1
    }
    echo "setup: creating $VENV" >&2
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
fi

wanted=$(cat setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$wanted" ]; then
    echo "setup: installing pgsnap (editable) with its test extras into $VENV" >&2
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]'
    echo "$wanted" >"$STAMP"
fi
