#!/usr/bin/env bash
# The Helm chart (helm/factotum) checked offline: lint, renders of several value sets validated
# as Kubernetes objects, renders that must fail, assertions on the objects; the Dockerfile's
# binaries against the workspace's; the flags the chart passes against the binaries' --help (the
# debug binaries `make unit` builds; those tests are skipped without them). Helm runs in-process
# through helm-python-sdk (its Go SDK as a shared library): no helm binary, no cluster, and no
# network once the venv exists.
# The venv (pinned versions from tests/chart/requirements.txt) is made once and reused until the
# requirements change.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
target=${CARGO_TARGET_DIR:-target}
case "$target" in /*) ;; *) target=$root/$target ;; esac
venv=$target/chart-venv
req=tests/chart/requirements.txt

if [ ! -x "$venv/bin/python" ] || ! cmp -s "$req" "$venv/requirements.txt"; then
  echo "== chart tests: creating $venv"
  rm -rf "$venv"
  python3 -m venv "$venv" || {
    echo "python3 -m venv failed: on Debian install python3-venv (scripts/install-deps.sh does)" >&2
    rm -rf "$venv"
    exit 1
  }
  "$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q \
    --only-binary=:all: -r "$req"
  cp "$req" "$venv/requirements.txt"
fi

echo "== chart tests (helm/factotum, Dockerfile)"
export PYTHONDONTWRITEBYTECODE=1 FACTOTUM_BIN_DIR=$target/debug
exec "$venv/bin/python" -m pytest -p no:cacheprovider -q -rfE --durations=5 \
  --rootdir tests/chart tests/chart "$@"
