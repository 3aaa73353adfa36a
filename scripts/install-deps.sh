#!/usr/bin/env bash
# Installs what `make test` needs on a fresh Debian machine with the Rust toolchain (rustup).
# Idempotent: does nothing when everything is already there.
set -euo pipefail

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(gcc libc6-dev)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-pip)
# The schema checks and the webhook validation (../shared/tools/iglu-validate) use jsonschema.
python3 -c 'import jsonschema' >/dev/null 2>&1 || need_apt+=(python3-jsonschema)
# The API and chart tests (scripts/api-tests.sh, scripts/chart-tests.sh) install their pinned
# Python packages (a gRPC client; Helm's SDK and Kubernetes' schemas) in venvs.
python3 -c 'import ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
# etcd-client's build script needs a protoc; the store tests start real etcd processes.
command -v protoc >/dev/null 2>&1 || need_apt+=(protobuf-compiler)
command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)
# Fleet tests give agents their own hostnames with unshare(1).
command -v unshare >/dev/null 2>&1 || need_apt+=(util-linux)
# The web UI's tests (cli/tests/ui.rs) drive Debian's headless Chromium through chromedriver.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
  fi
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is missing: install the Rust toolchain (https://rustup.rs) first" >&2
  exit 1
fi
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  rustup component add rustfmt clippy
fi
