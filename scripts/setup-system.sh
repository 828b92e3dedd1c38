#!/usr/bin/env bash
# Installs the Debian packages that `kubefit-sandbox` needs (idempotent, fast when all is present).
# Called on every `make test`, so the common path must do nothing but a few checks.
# Sourcing it only defines the functions (tests/unit/test_setup_scripts.py).
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# package -> a file it installs (dpkg -s is slower and also reports half-removed packages)
declare -A PACKAGE_FILES=(
  [etcd-server]=/usr/bin/etcd
  [golang-go]=/usr/bin/go
  # Go's recommends, left out by --no-install-recommends: cgo needs them to build the Kubernetes tree
  [gcc]=/usr/bin/gcc
  [libc6-dev]=/usr/include/stdio.h
  [rsync]=/usr/bin/rsync
  [openssl]=/usr/bin/openssl
  [prometheus]=/usr/bin/promtool
  [make]=/usr/bin/make
)
# Services these packages start under systemd that kubefit does not want: the sandbox starts its own etcd
# and the tests their own prometheus, on free loopback ports; the packaged ones listen on fixed ports.
declare -A UNWANTED_SERVICES=(
  [etcd-server]=etcd.service
  [prometheus]=prometheus.service
)
DEB_SRC_FILE=/etc/apt/sources.list.d/kubefit-bookworm-src.sources
DEBIAN_SOURCES=/etc/apt/sources.list.d/debian.sources
# Wait for another apt (unattended-upgrades on a fresh boot) instead of failing at once (the default).
APT_GET=(apt-get -o DPkg::Lock::Timeout=600)

missing_packages() {
  local package
  for package in "${!PACKAGE_FILES[@]}"; do
    [ -e "${PACKAGE_FILES[$package]}" ] || echo "$package"
  done
  # `make` creates the virtualenv with python3 -m venv; Debian ships venv/ensurepip separately.
  if ! command -v python3 >/dev/null 2>&1; then
    echo python3 python3-venv
  elif ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    echo python3-venv
  fi
}

# `apt-get source kubernetes` needs a deb-src entry for bookworm main that apt uses. apt itself lists the
# index files its sources ask for, from the configuration alone (--no-release-info: fetched or not), so
# what it ignores counts for nothing: files other than *.list and *.sources (*.disabled, *.save, ...),
# `Enabled: no` stanzas, a deb-src line of another suite or component (a vendor's `bookworm stable`).
# The package lists and dpkg's status point at nothing: indextargets needs neither, and would otherwise
# build apt's package cache first (0.4 s where apt keeps none on disk, as in containers; 15 ms without).
has_deb_src() {
  local targets
  # shellcheck disable=SC2016  # apt's --format fields, not shell expansions
  targets=$(apt-get -o Dir::State::Lists=/nonexistent -o Dir::State::status=/dev/null \
    indextargets --no-release-info --format '$(IDENTIFIER) $(RELEASE) $(COMPONENT)' 2>/dev/null) || return 1
  grep -qx 'Sources bookworm main' <<< "$targets"
}

systemd_runs() { [ -d /run/systemd/system ]; }

# Stops and disables what the packages just installed (the arguments) started; nothing else.
stop_unwanted_services() {
  systemd_runs || return 0
  local package service
  for package in "$@"; do
    service=${UNWANTED_SERVICES[$package]:-}
    [ -n "$service" ] || continue
    echo "setup-system: stopping and disabling $service, which the $package package started"
    $SUDO systemctl disable --now "$service" >/dev/null 2>&1 || true
  done
}

# apt-get as root (through $SUDO), waiting for the lock; a failure adds one line on what to check.
apt_get() {
  local status=0
  $SUDO env DEBIAN_FRONTEND=noninteractive "${APT_GET[@]}" "$@" || status=$?
  if [ "$status" -ne 0 ]; then
    echo "setup-system: apt-get $1 failed (exit $status): check the messages above, the network and the" \
      "apt mirror (/etc/apt/sources.list.d/), then rerun \`make system\`" >&2
  fi
  return "$status"
}

# Another user than root goes through sudo, which a minimal Debian does not have ("sudo: command not
# found" would say neither what is missing nor what to do): then name what is missing and the command to
# run as root, and stop. Arguments: 1 when the deb-src entry is to be added (else 0), the missing packages.
require_root() {
  local add_deb_src=$1 command
  shift
  if [ -z "$SUDO" ] || command -v "$SUDO" >/dev/null 2>&1; then return 0; fi
  if [ "$add_deb_src" -eq 1 ]; then
    command="bash $(realpath "${BASH_SOURCE[0]}")"  # this script: it also adds the deb-src entry
  else
    command="apt-get update"
    if [ $# -gt 0 ]; then command+=" && apt-get install -y --no-install-recommends $*"; fi
  fi
  {
    echo "setup-system: this user is not root and sudo is not installed, so nothing can be installed"
    if [ $# -gt 0 ]; then echo "setup-system: missing packages: $*"; fi
    if [ "$add_deb_src" -eq 1 ]; then echo "setup-system: missing: a deb-src entry for bookworm main"; fi
    echo "setup-system: run as root, then rerun make:"
    echo "  su -c '$command'"
  } >&2
  exit 1
}

add_deb_src_entry() {
  local uris="http://deb.debian.org/debian" signed_by="/usr/share/keyrings/debian-archive-keyring.gpg"
  if [ -f "$DEBIAN_SOURCES" ]; then
    # first stanza of debian.sources is bookworm main; reuse its mirror and key
    uris=$(awk '/^URIs:/{print $2; exit}' "$DEBIAN_SOURCES")
    signed_by=$(awk '/^Signed-By:/{print $2; exit}' "$DEBIAN_SOURCES")
  fi
  echo "setup-system: adding deb-src for bookworm main ($uris) in $DEB_SRC_FILE"
  printf 'Types: deb-src\nURIs: %s\nSuites: bookworm\nComponents: main\nSigned-By: %s\n' \
    "$uris" "$signed_by" | $SUDO tee "$DEB_SRC_FILE" >/dev/null
}

main() {
  local -a missing
  local need_update=0 add_deb_src=0
  read -r -a missing <<< "$(missing_packages | tr '\n' ' ')"

  if ! has_deb_src; then add_deb_src=1; need_update=1; fi
  # deb-src entry present but its index never fetched (e.g. added by hand without an update)
  if ! ls /var/lib/apt/lists/*_Sources >/dev/null 2>&1 && ! ls /var/lib/apt/lists/*_Sources.* >/dev/null 2>&1; then
    need_update=1
  fi
  if [ ${#missing[@]} -gt 0 ]; then need_update=1; fi
  if [ "$need_update" -eq 0 ]; then
    echo "setup-system: all system packages present"
    return 0
  fi

  require_root "$add_deb_src" "${missing[@]}"
  if [ "$add_deb_src" -eq 1 ]; then add_deb_src_entry; fi
  echo "setup-system: apt-get update"
  apt_get update -qq
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup-system: installing ${missing[*]}"
    apt_get install -y -qq --no-install-recommends "${missing[@]}"
    stop_unwanted_services "${missing[@]}"
  fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main "$@"
fi
