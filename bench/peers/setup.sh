#!/usr/bin/env bash
# Installs the peers `bench/peers/peers.py` measures, at pinned versions: make and ninja and
# redis-server from Debian, and one virtualenv per Python peer from its lock file
# (requirements-<peer>.lock: `pip freeze` of a working install; Airflow's own constraints file
# cannot be fetched here, so its lock is the constraint). Not part of CI: run on demand.
#
#   bash bench/peers/setup.sh [DIR]     # virtualenvs in DIR (default target/peers)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="${1:-$here/../../target/peers}"
mkdir -p "$dir"

if ! command -v ninja >/dev/null || ! command -v redis-server >/dev/null || ! command -v make >/dev/null; then
    apt-get install -y -q make ninja-build redis-server
fi

for peer in luigi snakemake celery airflow; do
    if [ -x "$dir/$peer/bin/python" ] && [ "$dir/$peer/.lock" -nt "$here/requirements-$peer.lock" ]; then
        continue
    fi
    echo "setting up $peer in $dir/$peer"
    python3 -m venv "$dir/$peer"
    "$dir/$peer/bin/pip" install -q --no-deps -r "$here/requirements-$peer.lock"
    touch "$dir/$peer/.lock"
done
echo "peers ready in $dir"
