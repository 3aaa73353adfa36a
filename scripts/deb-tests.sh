#!/usr/bin/env bash
# CI: builds the Debian packages (scripts/build-debs.sh), installs them on this machine with
# dpkg -i, checks what they installed (units, binaries, user, config, man pages, completions; a
# coordinator and an agent started from them run a factfile), and purges them, always (a trap):
# the binaries they put in /usr/bin must not outlive the check, nor shadow the tree's.
# Usage (as root, on Debian): scripts/deb-tests.sh [BIN_DIR], BIN_DIR the release binaries,
# the CLI built with --features factotum/coordinator-docs. Refuses to run where either package
# or a /usr/bin/factotum* is already installed: it would replace and then purge them.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(cd "${1:-${CARGO_TARGET_DIR:-$PWD/target}/release}" && pwd)
[ "$(id -u)" -eq 0 ] || { echo "deb-tests: needs root (dpkg -i)" >&2; exit 1; }
packages=(factotum-agent factotum)
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2> /dev/null || true)
  case $status in
    '' | not-installed) ;;
    *) echo "deb-tests: package $p is $status here; not touching it" >&2; exit 1 ;;
  esac
done
if compgen -G '/usr/bin/factotum*' > /dev/null; then
  echo "deb-tests: $(echo /usr/bin/factotum*) already exist; not touching them" >&2
  exit 1
fi

work=$(mktemp -d)
pids=()
cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do kill "$pid" 2> /dev/null || true; done
  wait 2> /dev/null || true
  dpkg --purge "${packages[@]}" > "$work/purge.log" 2>&1 || { cat "$work/purge.log" >&2; status=1; }
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
fail() { echo "deb-tests: $*" >&2; exit 1; }
seconds() { echo $(($(date +%s%N) / 1000000)); }

t0=$(seconds)
scripts/build-debs.sh "$bin" "$work/debs" > "$work/debs.list"
t1=$(seconds)
echo "  built $(xargs -n1 basename < "$work/debs.list" | paste -sd' ') in $(((t1 - t0) / 1000)).$(((t1 - t0) % 1000 / 100)) s"

if ! dpkg -i "$work"/debs/*.deb > "$work/install.log" 2>&1; then
  # Only missing dependencies are fixed (on Debian 12 there are none: libc6, libgcc-s1).
  grep -q 'dependency problems' "$work/install.log" || { cat "$work/install.log" >&2; fail "dpkg -i failed"; }
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -f -y -qq > /dev/null
fi
# Installing again is an upgrade (to the same version): the user exists, the conffile is kept.
dpkg -i "$work"/debs/factotum-agent_*.deb > "$work/install.log" 2>&1 || { cat "$work/install.log" >&2; fail "reinstall failed"; }
t2=$(seconds)

units=(/lib/systemd/system/factotum-agent.service /lib/systemd/system/factotum-coordinator.service)
systemd-analyze verify "${units[@]}" 2> "$work/verify" || true
[ ! -s "$work/verify" ] || { cat "$work/verify" >&2; fail "systemd-analyze verify of the installed units"; }
for unit in "${units[@]}"; do
  grep -q '^ExecStart=/usr/bin/factotum-' "$unit" || fail "$unit does not start /usr/bin's binary"
  name=$(basename "$unit" .service)
  config=/etc/factotum/${name#factotum-}.toml
  grep -qx "Environment=FACTOTUM_CONFIG=$config" "$unit.d/10-package.conf" || fail "$unit: no FACTOTUM_CONFIG=$config drop-in"
  [ -f "$config" ] || fail "$config is missing"
  dpkg-query -W -f='${Conffiles}\n' "${packages[@]}" | grep -q " $config " || fail "$config is not a conffile"
done
version=$(dpkg-query -W -f='${Version}' factotum-agent)
for b in factotum factotum-coordinator factotum-agent factotum-shim; do
  [ "$("/usr/bin/$b" --version)" = "$b $version" ] || fail "/usr/bin/$b --version: $("/usr/bin/$b" --version)"
done
id factotum > /dev/null || fail "no factotum user"
home=$(getent passwd factotum | cut -d: -f6)
[ "$home" = /var/lib/factotum ] && [ "$(stat -c %U:%G "$home")" = factotum:factotum ] ||
  fail "the factotum user's home ($home) is missing or not its own"
for f in /usr/share/bash-completion/completions/factotum-agent /usr/share/zsh/vendor-completions/_factotum \
  /usr/share/fish/vendor_completions.d/factotum-coordinator.fish /usr/share/man/man1/factotum-agent.1.gz \
  /usr/share/man/man1/factotum-coordinator.1.gz /usr/share/man/man1/factotum-submit.1.gz; do
  [ -s "$f" ] || fail "$f is missing"
done
if command -v man > /dev/null; then man -w factotum-agent > /dev/null || fail "man -w factotum-agent"; fi
dpkg --verify "${packages[@]}" || fail "dpkg --verify"
# Enabled by the admin (links only, nothing starts): purge must remove the links.
if command -v systemctl > /dev/null; then
  systemctl --quiet enable factotum-agent.service factotum-coordinator.service 2> /dev/null
  [ -L /etc/systemd/system/multi-user.target.wants/factotum-agent.service ] || fail "systemctl enable made no link"
fi

# What the units would run: the coordinator with its config file, the agent as the factotum
# user with its own and a state directory (tasks recorded in its journal, children of the agent).
FACTOTUM_CONFIG=/etc/factotum/coordinator.toml /usr/bin/factotum-coordinator --listen 127.0.0.1:0 \
  --http-listen 127.0.0.1:0 > "$work/coordinator.out" 2> "$work/coordinator.log" &
pids+=($!)
for _ in $(seq 100); do grep -q '^listening on ' "$work/coordinator.out" 2> /dev/null && break; sleep 0.1; done
url="http://$(sed -n 's/^listening on //p' "$work/coordinator.out")"
[ "$url" != http:// ] || { cat "$work/coordinator.log" >&2; fail "the installed coordinator did not start"; }
install -d -o factotum -g factotum -m 0700 "$work/state"
chmod 0755 "$work"
(cd "$home" && exec env HOME="$home" USER=factotum LOGNAME=factotum FACTOTUM_CONFIG=/etc/factotum/agent.toml \
  FACTOTUM_STATE_DIR="$work/state" setpriv --reuid=factotum --regid=factotum --init-groups \
  /usr/bin/factotum-agent --coordinator "$url" --name deb-agent) 2> "$work/agent.log" &
pids+=($!)
for _ in $(seq 100); do /usr/bin/factotum agents --coordinator "$url" 2> /dev/null | grep -q deb-agent && break; sleep 0.1; done
# One task that says who runs it and under which supervisor.
cat > "$work/who.factfile" <<'EOF'
{
  "schema": "iglu:com.snowplowanalytics.factotum/factfile/jsonschema/1-0-0",
  "data": {
    "name": "who",
    "tasks": [
      {
        "name": "who",
        "executor": "shell",
        "command": "echo \"user=$(id -un) supervisor=$(readlink /proc/$PPID/exe)\"",
        "arguments": [],
        "dependsOn": [],
        "onResult": { "terminateJobWithSuccess": [], "continueJob": [0] }
      }
    ]
  }
}
EOF
/usr/bin/factotum submit "$work/who.factfile" --coordinator "$url" --wait > "$work/submit.out" 2>&1 ||
  { cat "$work/submit.out" "$work/agent.log" >&2; fail "a run on the installed coordinator and agent failed"; }
grep -q 'user=factotum supervisor=/usr/bin/factotum-agent' "$work/submit.out" ||
  { cat "$work/submit.out" >&2; fail "the task did not run as factotum under /usr/bin/factotum-agent"; }
[ -s "$work/state/journal" ] || fail "the agent recorded nothing in its state directory's journal"
kill "${pids[@]}" 2> /dev/null || true
wait "${pids[@]}" 2> /dev/null || true
pids=()
t3=$(seconds)

dpkg --purge "${packages[@]}" > "$work/purge.log" 2>&1 || { cat "$work/purge.log" >&2; fail "dpkg --purge failed"; }
t4=$(seconds)
! compgen -G '/usr/bin/factotum*' > /dev/null || fail "purge left $(echo /usr/bin/factotum*)"
! compgen -G '/lib/systemd/system/factotum-*' > /dev/null || fail "purge left units"
! compgen -G '/etc/systemd/system/*/factotum-*' > /dev/null || fail "purge left $(echo /etc/systemd/system/*/factotum-*)"
[ ! -e /etc/factotum ] || fail "purge left /etc/factotum: $(ls -A /etc/factotum)"
! getent passwd factotum > /dev/null || fail "purge left the factotum user"
! getent group factotum > /dev/null || fail "purge left the factotum group"
[ ! -e /var/lib/factotum ] || fail "purge left /var/lib/factotum"
echo "  installed, checked (a run on the installed coordinator and agent) and purged:" \
  "dpkg -i $(((t2 - t1) / 1000)).$(((t2 - t1) % 1000 / 100)) s, checks $(((t3 - t2) / 1000)).$(((t3 - t2) % 1000 / 100)) s," \
  "purge $(((t4 - t3) / 1000)).$(((t4 - t3) % 1000 / 100)) s"
