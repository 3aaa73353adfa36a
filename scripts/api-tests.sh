#!/usr/bin/env bash
# The client API (factotum.jobs.v2) driven as a third-party client would: Python stubs generated
# from proto/factotum/jobs/v2/jobs.proto, against real coordinator, agent and etcd processes.
# Needs the debug binaries (`cargo build --workspace --bins`; `make unit` builds them).
# The venv (pinned versions from tests/api/requirements.txt) is made once and reused until the
# requirements change; the stubs are generated anew on every run.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
target=${CARGO_TARGET_DIR:-target}
case "$target" in /*) ;; *) target=$root/$target ;; esac
venv=$target/api-venv
stubs=$target/api-stubs
req=tests/api/requirements.txt
bin=$target/debug

for b in factotum-coordinator factotum-agent factotum-shim; do
  [ -x "$bin/$b" ] || { echo "$bin/$b is missing: run 'cargo build --workspace --bins' first" >&2; exit 1; }
done

if [ ! -x "$venv/bin/python" ] || ! cmp -s "$req" "$venv/requirements.txt"; then
  echo "== api tests: creating $venv"
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

# grpc_tools.protoc adds the well-known types (google/protobuf/*.proto) it ships to the path.
rm -rf "$stubs"
mkdir -p "$stubs"
"$venv/bin/python" -m grpc_tools.protoc -I proto \
  --python_out="$stubs" --grpc_python_out="$stubs" \
  proto/factotum/jobs/v2/jobs.proto

echo "== api tests (factotum.jobs.v2 through generated Python stubs)"
export PYTHONPATH=$stubs PYTHONDONTWRITEBYTECODE=1 FACTOTUM_BIN_DIR=$bin
exec "$venv/bin/python" -m pytest -p no:cacheprovider -v -rfE --durations=5 tests/api "$@"
