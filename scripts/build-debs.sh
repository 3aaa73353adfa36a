#!/usr/bin/env bash
# Builds the Debian packages, with dpkg-deb on a staged tree (no cargo-deb):
#   factotum-agent  factotum-agent and factotum-shim, the agent's unit, /etc/factotum/agent.toml,
#                   the factotum user (postinst), its man page and completions
#   factotum        the factotum CLI and factotum-coordinator, the coordinator's unit,
#                   /etc/factotum/coordinator.toml, their man pages and completions
# Usage: scripts/build-debs.sh BIN_DIR OUT_DIR
# BIN_DIR holds the release binaries, the CLI built with the coordinator's man pages:
#   cargo build --release --workspace --bins --features factotum/coordinator-docs
# Writes OUT_DIR/<package>_<version>_<arch>.deb and prints their paths. The version is the
# workspace's (cargo metadata), the architecture dpkg's; Depends come from dpkg-shlibdeps
# (dpkg-dev) when it is installed. FACTOTUM_DEB_MAINTAINER and FACTOTUM_DEB_HOMEPAGE override
# the Maintainer and Homepage fields (by default the packages' `authors` and `homepage` or
# `repository` in Cargo.toml, when set). docs/DEPLOY-deb.md says what the packages do.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 BIN_DIR OUT_DIR" >&2; exit 2; }
repo=$(cd "$(dirname "$0")/.." && pwd)
bin=$(cd "$1" && pwd)
mkdir -p "$2"
out=$(cd "$2" && pwd)
for b in factotum factotum-coordinator factotum-agent factotum-shim; do
  [ -x "$bin/$b" ] || { echo "$bin/$b is missing: build the release binaries first" >&2; exit 1; }
done
command -v dpkg-deb >/dev/null || { echo "dpkg-deb is missing" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/factotum-debs.XXXXXX")
trap 'rm -rf "$work"' EXIT
arch=$(dpkg --print-architecture)

# name version description authors homepage repository, tab-separated, of each workspace package.
cargo metadata --format-version 1 --no-deps --manifest-path "$repo/Cargo.toml" > "$work/metadata.json"
field() { # package field
  python3 - "$work/metadata.json" "$1" "$2" <<'EOF'
import json, sys
meta = json.load(open(sys.argv[1]))
pkg = next(p for p in meta["packages"] if p["name"] == sys.argv[2])
value = pkg.get(sys.argv[3])
print(", ".join(value) if isinstance(value, list) else (value or ""))
EOF
}
maintainer=${FACTOTUM_DEB_MAINTAINER:-$(field factotum authors)}
maintainer=${maintainer:-Factotum maintainers <maintainers@factotum.invalid>}
homepage=${FACTOTUM_DEB_HOMEPAGE:-$(field factotum homepage)}
homepage=${homepage:-$(field factotum repository)}

# Man pages and completions come from the CLI (it knows all three programs' flags).
"$bin/factotum" man --out "$work/man" > /dev/null
[ -f "$work/man/factotum-coordinator.1" ] || {
  echo "$bin/factotum wrote no factotum-coordinator.1: build it with --features factotum/coordinator-docs" >&2
  exit 1
}

# Each package is staged in $work/debian/<package>, where dpkg-shlibdeps expects it.
mkdir -p "$work/debian"
printf 'Source: factotum\n\nPackage: factotum\nArchitecture: any\n\nPackage: factotum-agent\nArchitecture: any\n' \
  > "$work/debian/control"

stage_bin() { # package program
  local dest=$work/debian/$1/usr/bin/$2
  install -D -m 0755 "$bin/$2" "$dest"
  # As Debian's packages are: no symbol table (the release profile has no debug info anyway).
  if command -v strip >/dev/null; then strip --strip-unneeded "$dest"; fi
}
stage_completions() { # package program
  local root=$work/debian/$1/usr/share
  install -d "$root/bash-completion/completions" "$root/zsh/vendor-completions" \
    "$root/fish/vendor_completions.d"
  "$bin/factotum" completions bash --bin "$2" > "$root/bash-completion/completions/$2"
  "$bin/factotum" completions zsh --bin "$2" > "$root/zsh/vendor-completions/_$2"
  "$bin/factotum" completions fish --bin "$2" > "$root/fish/vendor_completions.d/$2.fish"
}
stage_man() { # package page.1...
  local pkg=$1 dir=$work/debian/$1/usr/share/man/man1 page
  shift
  install -d "$dir"
  for page in "$@"; do
    gzip -9n < "$page" > "$dir/$(basename "$page").gz"
  done
}
stage_unit() { # package unit config
  local root=$work/debian/$1
  install -D -m 0644 "$2" "$root/lib/systemd/system/$(basename "$2")"
  # The package's config file, set by a drop-in so that the unit itself stays the repository's:
  # installed by hand without a config file it starts as before (a FACTOTUM_CONFIG naming a
  # missing file is an error). A FACTOTUM_CONFIG in /etc/default/<unit> or an override
  # (`systemctl edit`, whose override.conf sorts after 10-package.conf) wins.
  install -d "$root/lib/systemd/system/$(basename "$2").d"
  printf '# Installed by the %s package: read its config file.\n[Service]\nEnvironment=FACTOTUM_CONFIG=/etc/factotum/%s\n' \
    "$1" "$(basename "$3")" > "$root/lib/systemd/system/$(basename "$2").d/10-package.conf"
  install -D -m 0644 "$3" "$root/etc/factotum/$(basename "$3")"
  echo "/etc/factotum/$(basename "$3")" >> "$root/DEBIAN/conffiles"
}
stage_doc() { # package
  local dir=$work/debian/$1/usr/share/doc/$1
  install -d "$dir"
  cat > "$dir/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: factotum
Source: ${homepage:-the Factotum repository}

Files: *
Copyright: the Factotum authors
License: $(field "$1" license)
 On Debian systems, the full text of the Apache License, Version 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
EOF
}

# Maintainer scripts. Both: `systemctl daemon-reload` only when systemd runs (not in containers,
# chroots or on a CI machine without it); the unit is not enabled or started (the agent needs
# a coordinator first), but its enablement links are recorded with deb-systemd-helper, so purge
# removes them even when the admin ran `systemctl enable`. On remove a running service is
# stopped; on upgrade it keeps running the old binary until restarted (an agent drains its
# tasks when stopped, which can take minutes: that is the admin's call, not dpkg's).
maintainer_scripts() { # package unit
  local pkg=$1 unit=$2 dir=$work/debian/$1/DEBIAN
  {
    echo '#!/bin/sh'
    echo 'set -e'
    if [ "$pkg" = factotum-agent ]; then
      cat <<'EOF'
# The user the unit runs as (User=factotum), with a home for tasks (WorkingDirectory=~). Its
# comment marks it as this package's: purge removes only a user so marked.
comment="Factotum agent (factotum-agent package)"
if [ "$1" = configure ] && ! getent passwd factotum > /dev/null; then
  if command -v adduser > /dev/null 2>&1; then
    if getent group factotum > /dev/null; then group="--ingroup factotum"; else group=--group; fi
    # --comment since adduser 3.122 (Debian 12), --gecos before.
    if adduser --help 2>&1 | grep -q -e --comment; then c=--comment; else c=--gecos; fi
    adduser --system --quiet $group --home /var/lib/factotum --shell /usr/sbin/nologin \
      $c "$comment" factotum
  else
    if getent group factotum > /dev/null; then group="--gid factotum"; else group=--user-group; fi
    # Its home empty, as adduser's (useradd --create-home would copy /etc/skel).
    useradd --system $group --no-create-home --home-dir /var/lib/factotum \
      --shell /usr/sbin/nologin --comment "$comment" factotum
    install -d -o factotum -g factotum -m 0755 /var/lib/factotum
  fi
fi
EOF
    fi
    cat <<EOF
if [ "\$1" = configure ]; then
  if command -v deb-systemd-helper > /dev/null 2>&1; then
    deb-systemd-helper update-state $unit > /dev/null || true
  fi
  if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload > /dev/null 2>&1 || true
    if [ -n "\$2" ] && systemctl is-active --quiet $unit 2> /dev/null; then
      echo "$unit still runs the previous version: systemctl restart $unit" >&2
    fi
  fi
fi
exit 0
EOF
  } > "$dir/postinst"
  cat > "$dir/prerm" <<EOF
#!/bin/sh
set -e
if [ "\$1" = remove ] && [ -d /run/systemd/system ]; then
  systemctl stop $unit > /dev/null 2>&1 || true
fi
exit 0
EOF
  {
    echo '#!/bin/sh'
    echo 'set -e'
    cat <<EOF
if [ "\$1" = remove ] && [ -d /run/systemd/system ]; then
  systemctl --system daemon-reload > /dev/null 2>&1 || true
fi
if [ "\$1" = purge ]; then
  if command -v deb-systemd-helper > /dev/null 2>&1; then
    deb-systemd-helper purge $unit > /dev/null || true
  fi
  # dpkg removes the conffile itself; these are what upgrades leave beside it.
  rm -f /etc/factotum/$3.dpkg-old /etc/factotum/$3.dpkg-new /etc/factotum/$3.dpkg-dist \\
    /etc/factotum/$3.dpkg-bak /etc/factotum/$3.dpkg-tmp
  rmdir /etc/factotum 2> /dev/null || true
EOF
    if [ "$pkg" = factotum-agent ]; then
      cat <<'EOF'
  # The agent's state (running tasks' records): this package's.
  rm -rf /var/lib/factotum-agent
  # The user goes only if this package made it, its home is empty (tasks may have left files
  # there, which would otherwise be owned by a number) and nothing runs as it (userdel refuses).
  # (adduser appends ",,," to the comment.)
  if [ "$(getent passwd factotum | cut -d: -f5 | cut -d, -f1)" = "Factotum agent (factotum-agent package)" ]; then
    home=$(getent passwd factotum | cut -d: -f6)
    if [ -n "$home" ] && [ -d "$home" ]; then rmdir "$home" 2> /dev/null || true; fi
    if [ -n "$home" ] && [ -e "$home" ]; then
      echo "factotum-agent: kept the factotum user: $home is not empty" >&2
    elif userdel factotum 2> /dev/null; then
      if getent group factotum > /dev/null; then groupdel factotum 2> /dev/null || true; fi
    else
      echo "factotum-agent: kept the factotum user (userdel failed: does something run as it?)" >&2
    fi
  fi
EOF
    fi
    echo 'fi'
    echo 'exit 0'
  } > "$dir/postrm"
  chmod 0755 "$dir/postinst" "$dir/prerm" "$dir/postrm"
}

build() { # package description-synopsis description-body
  local pkg=$1 root=$work/debian/$1 depends= version size
  version=$(field "$pkg" version)
  if command -v dpkg-shlibdeps > /dev/null; then
    depends=$(cd "$work" && dpkg-shlibdeps -O "$root"/usr/bin/* 2> /dev/null | sed -n 's/^shlibs:Depends=//p') || depends=
  fi
  depends=${depends:-libc6 (>= 2.36), libgcc-s1}
  # md5sums of everything but conffiles (dpkg --verify).
  (cd "$root" && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -print | sed 's|^\./||' |
    LC_ALL=C sort | xargs md5sum) > "$root/DEBIAN/md5sums"
  size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
  {
    echo "Package: $pkg"
    echo "Version: $version"
    echo "Architecture: $arch"
    echo "Maintainer: $maintainer"
    echo "Installed-Size: $size"
    echo "Depends: $depends"
    [ "$pkg" = factotum ] && echo "Suggests: factotum-agent"
    [ "$pkg" = factotum-agent ] && echo "Suggests: factotum"
    echo "Section: admin"
    echo "Priority: optional"
    [ -n "$homepage" ] && echo "Homepage: $homepage"
    echo "Description: $2"
    printf '%s\n' "$3" | fold -s -w 78 | sed 's/ *$//; s/^/ /'
  } > "$root/DEBIAN/control"
  find "$root" -type d -exec chmod 0755 {} +
  dpkg-deb --root-owner-group -Zxz --build "$root" "$out/${pkg}_${version}_${arch}.deb" > /dev/null
  echo "$out/${pkg}_${version}_${arch}.deb"
}

umask 022
install -d "$work/debian/factotum-agent/DEBIAN" "$work/debian/factotum/DEBIAN"

# factotum-agent
stage_bin factotum-agent factotum-agent
stage_bin factotum-agent factotum-shim
stage_unit factotum-agent "$repo/agent/systemd/factotum-agent.service" "$repo/packaging/agent.toml"
stage_man factotum-agent "$work/man/factotum-agent.1"
stage_completions factotum-agent factotum-agent
stage_doc factotum-agent
maintainer_scripts factotum-agent factotum-agent.service agent.toml
build factotum-agent "Factotum agent: runs the shell tasks a Factotum coordinator leases" \
  "The agent of Factotum, a DAG runner for shell tasks: it connects to one or more coordinators, takes the tasks they lease to this machine and runs them (sh -c, in their own process groups, recorded in its state directory so that they outlive the agent), streaming their output back. Installs factotum-agent and factotum-shim (the per-task supervisor of earlier agents; this one no longer starts it), the systemd unit factotum-agent.service (not enabled), /etc/factotum/agent.toml and the factotum system user the unit runs as."

# factotum: the CLI and the coordinator
stage_bin factotum factotum
stage_bin factotum factotum-coordinator
stage_unit factotum "$repo/coordinator/systemd/factotum-coordinator.service" "$repo/packaging/coordinator.toml"
pages=()
for page in "$work"/man/*.1; do
  [ "$(basename "$page")" = factotum-agent.1 ] || pages+=("$page")
done
stage_man factotum "${pages[@]}"
stage_completions factotum factotum
stage_completions factotum factotum-coordinator
stage_doc factotum
maintainer_scripts factotum factotum-coordinator.service coordinator.toml
build factotum "Factotum: a DAG runner for shell tasks (CLI and coordinator)" \
  "Factotum runs factfiles, DAGs of shell tasks compatible with Snowplow Factotum's, on this machine (factotum run) or across agents through a coordinator (factotum submit, watch, status). Installs the factotum command line, factotum-coordinator (the gRPC service that accepts runs and leases their tasks to factotum-agent machines), the systemd unit factotum-coordinator.service (not enabled; it runs as a transient user) and /etc/factotum/coordinator.toml."
