#!/usr/bin/env bash
# Checks the systemd units with `systemd-analyze verify`, failing on any output on stderr.
# The units name /usr/local/bin/...; the check points them at the binaries just built instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(cd "${1:-${CARGO_TARGET_DIR:-$PWD/target}/release}" && pwd)
command -v systemd-analyze >/dev/null || { echo "systemd-analyze is missing (apt-get install systemd)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for unit in agent/systemd/factotum-agent.service coordinator/systemd/factotum-coordinator.service; do
  sed "s|/usr/local/bin/|$bin/|g" "$unit" > "$work/$(basename "$unit")"
done
systemd-analyze verify "$work"/*.service 2> "$work/stderr" || true
if [ -s "$work/stderr" ]; then
  echo "systemd-analyze verify reported:" >&2
  cat "$work/stderr" >&2
  exit 1
fi
echo "systemd units verified"
