#!/usr/bin/env bash
# Checks the systemd units: `systemd-analyze verify` must say nothing (any output on stderr
# fails), and `systemd-analyze security --offline=true` must not rate a unit's exposure above
# its ceiling below, so a later edit cannot quietly weaken the sandbox. Needs systemd 250 or
# newer (--offline, --threshold).
# The units name /usr/bin/factotum-...; the check points them at the binaries just built instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(cd "${1:-${CARGO_TARGET_DIR:-$PWD/target}/release}" && pwd)
command -v systemd-analyze >/dev/null || { echo "systemd-analyze is missing (apt-get install systemd)" >&2; exit 1; }
# Exposure ceilings, in tenths as --threshold takes them (it fails when exposure > N): the
# figures the units have now (README, "Unit hardening"). Lower one when its unit gets stricter;
# raise one only with a reason in the commit.
declare -A ceiling=(
  [factotum-coordinator.service]=11 # 1.1 OK
  [factotum-agent.service]=45       # 4.5 OK
)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for unit in agent/systemd/factotum-agent.service coordinator/systemd/factotum-coordinator.service; do
  sed "s|/usr/bin/factotum|$bin/factotum|g" "$unit" > "$work/$(basename "$unit")"
done
systemd-analyze verify "$work"/*.service 2> "$work/stderr" || true
if [ -s "$work/stderr" ]; then
  echo "systemd-analyze verify reported:" >&2
  cat "$work/stderr" >&2
  exit 1
fi
echo "systemd units verified"
failed=0
for name in factotum-coordinator.service factotum-agent.service; do
  max=${ceiling[$name]}
  status=0
  systemd-analyze security --offline=true --no-pager --threshold="$max" "$work/$name" \
    > "$work/security" 2> "$work/stderr" || status=$?
  overall=$(grep 'Overall exposure level' "$work/security" || true)
  echo "${overall:-$name: no exposure figure} (ceiling $((max / 10)).$((max % 10)))"
  if [ "$status" -ne 0 ] || [ -s "$work/stderr" ] || [ -z "$overall" ]; then
    echo "$name: exposure above its ceiling $((max / 10)).$((max % 10)), or the analysis failed;" \
      "what it still allows:" >&2
    grep '✗' "$work/security" >&2 || true
    cat "$work/stderr" >&2
    failed=1
  fi
done
exit "$failed"
